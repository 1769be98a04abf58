"""S3FD training recipe (the Caffe `train.prototxt` data layer, ../shared/references/s3fd_ssh.md
1.5): `transform(example, seed, **options)` for data/pipeline.train_dataset.

Per image: five batch samplers (max_sample 1, `trials` tries each, aspect 1,
min_object_coverage 1.0): the first with scale 1, the other four with scale U(0.3, 1), each try
a pixel square of side scale x short side at a uniform position (the S3FD modification of SSD's
SampleBBox); a try succeeds when it fully covers at least one face. One sample is drawn
uniformly among the samplers that succeeded (the whole image when none did). Faces are kept
by centre (emit_constraint CENTER) and clipped to the crop; with `min_face_px` (S3FD.pytorch:
6) faces whose projected side is smaller are dropped. Then SSD's photometric distortion
(data/transforms.photometric_distort), a WARP resize to `size` x `size` with a random
interpolation, a random horizontal flip. No zoom-out (no expand_param).
"""

from __future__ import annotations

import tensorflow as tf

from tinyfaces_jax.data import transforms as T

NUM_SAMPLERS = 5


def sample_crops(boxes: tf.Tensor, hw: tf.Tensor, seed: tf.Tensor, trials: int = 50):
  """boxes [N, 4] xyxy, hw [2] -> (roi [4] float xyxy, found bool): the sample of the module
  docstring (vectorised over the 5 x `trials` tries)."""
  s = T.split_seed(seed, 3)
  h_img, w_img = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
  short = tf.minimum(h_img, w_img)
  k = NUM_SAMPLERS * trials
  scale = 0.3 + 0.7 * T.uniform(s[0], [NUM_SAMPLERS, trials])
  scale = tf.concat([tf.ones([1, trials]), scale[1:]], 0)
  side = tf.reshape(tf.floor(scale * short), [k])
  lt = tf.floor(T.uniform(s[1], [k, 2]) * tf.stack([w_img - side, h_img - side], 1))
  rois = tf.concat([lt, lt + side[:, None]], 1)                          # [K, 4]
  inter = T.box_area(T.clip_boxes(boxes[None], rois[:, None]))           # [K, N]
  area = T.box_area(boxes)
  covered = tf.reduce_any((inter >= area[None] - 1e-3) & (area[None] > 0), 1)
  ok = tf.reshape(covered, [NUM_SAMPLERS, trials])
  first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)  # per sampler
  found_s = tf.reduce_any(ok, 1)                                          # [5]
  # A uniform choice among the samplers that succeeded.
  u = T.uniform(s[2], [NUM_SAMPLERS])
  pick = tf.argmax(tf.where(found_s, u, -1.0), output_type=tf.int32)
  roi = rois[pick * trials + first[pick]]
  return roi, tf.reduce_any(found_s)


def transform(ex: dict, seed: tf.Tensor, *, size: int = 640, trials: int = 50,
              distort: bool = True, flip_prob: float = 0.5, random_interpolation: bool = True,
              min_face_px: float = 0.0) -> dict:
  """The S3FD data layer of the module docstring; output image float32 [size, size, 3] RGB
  0..255, faces in output pixels."""
  s = T.split_seed(seed, 4)
  image = tf.cast(ex["image"], tf.float32)
  hw = tf.shape(image)[:2]
  boxes = ex["boxes"]
  roi, found = sample_crops(boxes, hw, s[0], trials)
  whole = tf.cast(tf.stack([0, 0, hw[1], hw[0]]), tf.float32)
  roi = tf.where(found, roi, whole)
  roi_i = tf.cast(roi, tf.int32)
  crop_wh = roi_i[2:] - roi_i[:2]
  crop = tf.slice(image, [roi_i[1], roi_i[0], 0], [crop_wh[1], crop_wh[0], 3])
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  keep = tf.reduce_all((roi[None, :2] <= centre) & (centre < roi[None, 2:]), axis=1)
  factor = tf.cast(size, tf.float32) / tf.cast(crop_wh, tf.float32)      # (fx, fy)
  f4 = tf.tile(factor, [2])
  boxes = (T.clip_boxes(boxes, roi) - tf.tile(roi[:2], [2])) * f4
  if min_face_px:
    keep &= tf.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face_px
  present = ex["landmarks_present"]
  lm = (ex["landmarks"] - roi[:2]) * factor
  lm = tf.where(present[:, None, None], lm, -tf.ones_like(lm))
  if distort:
    crop = T.photometric_distort(crop, s[1])
  out = dict(ex, image=crop, boxes=boxes, landmarks=lm,
             valid_region=tf.constant([0.0, 0.0, float(size), float(size)]))
  out["image"] = T.random_resize(out["image"], size, s[2], random_interpolation)
  out = T.mask_faces(out, keep)
  out = T.random_hflip(out, s[3], flip_prob)
  return T.finish(out, size)
