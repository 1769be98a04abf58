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

`anchor_sampling_prob` > 0 (S3FD.pytorch uses 0.5): with that probability an image is
instead cropped by PyramidBox's data-anchor-sampling (yxlijun/S3FD.pytorch
`utils/augmentations.py anchor_crop_image_sampling`): one face drawn uniformly, its side
sqrt((w + 1)(h + 1)); the nearest anchor size a_i of (16, 32, 64, 128, 256, 512) (first on
ties); a target a_j drawn uniformly from a_0 .. a_min(i + 1, 5); the image rescaled by
a_j / side * 2^U(-1, 1) (its area capped at 12000^2); a `size` x `size` window placed, over up
to `trials` tries, so that it contains the face (when the rescaled image is larger than the
window; else anywhere over the image, the window hanging over its top / left), a try counting
when some face lies wholly inside it or overlaps it with IoU > 0.7; one of the counted tries
drawn uniformly (none: the whole rescaled image). The window's part above / left of the image
is the mean colour, its part below / right of the image is cut off (the release slices the
array) and the rest is stretched back to `size` x `size`; faces kept by centre (strictly
inside). Here the rescale and the crop are one crop-and-resize of the original image
(bilinear), which samples the same window without building the rescaled image.
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


ANCHOR_SIZES = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
MAX_SIDE = 12000.0


def anchor_sample_window(boxes: tf.Tensor, hw: tf.Tensor, seed: tf.Tensor, size: int,
                         trials: int = 50) -> tf.Tensor:
  """boxes [N, 4] xyxy (N >= 1), hw [2] -> the data-anchor-sampling window [4] xyxy in the
  ORIGINAL image's pixels (module docstring; it may extend above / left of the image, never
  below / right of it)."""
  s = T.split_seed(seed, 6)
  h_img, w_img = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
  n = tf.shape(boxes)[0]
  pick = T.randrange(s[0], n)
  b = boxes[pick]
  side = tf.sqrt((b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0))
  anchors = tf.constant(ANCHOR_SIZES)
  nearest = tf.argmin(tf.abs(anchors - side), output_type=tf.int32)
  target = anchors[T.randrange(s[1], tf.minimum(nearest + 1, 5) + 1)]
  ratio = target / side * tf.pow(2.0, T.uniform(s[2], (), -1.0, 1.0))
  ratio = tf.minimum(ratio, MAX_SIDE / tf.sqrt(h_img * w_img))
  height, width = tf.round(h_img * ratio), tf.round(w_img * ratio)      # the rescaled image
  rb = boxes * ratio
  x1, y1 = rb[pick, 0], rb[pick, 1]
  bw, bh = rb[pick, 2] - x1 + 1.0, rb[pick, 3] - y1 + 1.0
  win = float(size)
  u = T.uniform(s[3], [trials, 2])

  def span(lo, extent):        # an offset range containing the face [lo, lo + extent)
    a = tf.where(extent <= win, lo + extent - win, lo)
    c = tf.where(extent <= win, lo, lo + extent - win)
    return a, c

  ax, cx = span(x1, bw)
  ay, cy = span(y1, bh)
  big = win < tf.maximum(height, width)
  ox = tf.where(big, ax + u[:, 0] * (cx - ax), (width - win) * (1.0 - u[:, 0]))
  oy = tf.where(big, ay + u[:, 1] * (cy - ay), (height - win) * (1.0 - u[:, 1]))
  off = tf.floor(tf.stack([ox, oy], 1))                                    # [K, 2]
  rects = tf.concat([off, off + win], 1)                                   # [K, 4]
  inside = tf.reduce_any((rects[:, None, 0] <= rb[None, :, 0]) & (rects[:, None, 1] <= rb[None, :, 1])
                         & (rects[:, None, 2] >= rb[None, :, 2])
                         & (rects[:, None, 3] >= rb[None, :, 3]), 1)
  inter = T.box_area(T.clip_boxes(rb[None], rects[:, None]))               # [K, N]
  union = T.box_area(rb)[None] + win * win - inter
  ok = inside | tf.reduce_any(inter / tf.maximum(union, 1e-6) > 0.7, 1)
  choice = tf.argmax(tf.where(ok, T.uniform(s[4], [trials]), -1.0), output_type=tf.int32)
  rect = tf.where(tf.reduce_any(ok), rects[choice], tf.stack([0.0, 0.0, width, height]))
  rect = tf.concat([rect[:2], tf.minimum(rect[2:], tf.stack([width, height]))], 0)
  return rect / ratio


def transform(ex: dict, seed: tf.Tensor, *, size: int = 640, trials: int = 50,
              distort: bool = True, flip_prob: float = 0.5, random_interpolation: bool = True,
              min_face_px: float = 0.0, anchor_sampling_prob: float = 0.0) -> dict:
  """The S3FD data layer of the module docstring; output image float32 [size, size, 3] RGB
  0..255, faces in output pixels."""
  s = T.split_seed(seed, 6)
  image = tf.cast(ex["image"], tf.float32)
  hw = tf.shape(image)[:2]
  boxes = ex["boxes"]
  if anchor_sampling_prob > 0:
    return _anchor_sampled(ex, image, hw, boxes, s, size=size, trials=trials, distort=distort,
                           flip_prob=flip_prob, min_face_px=min_face_px,
                           prob=anchor_sampling_prob)
  roi, found = sample_crops(boxes, hw, s[0], trials)
  whole = tf.cast(tf.stack([0, 0, hw[1], hw[0]]), tf.float32)
  roi = tf.where(found, roi, whole)
  roi_i = tf.cast(roi, tf.int32)
  crop_wh = roi_i[2:] - roi_i[:2]
  crop = tf.slice(image, [roi_i[1], roi_i[0], 0], [crop_wh[1], crop_wh[0], 3])
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  keep = tf.reduce_all((roi[None, :2] <= centre) & (centre < roi[None, 2:]), axis=1)
  factor = tf.cast(size, tf.float32) / tf.cast(crop_wh, tf.float32)      # (fx, fy)
  boxes = (T.clip_boxes(boxes, roi) - tf.tile(roi[:2], [2])) * tf.tile(factor, [2])
  if distort:
    crop = T.photometric_distort(crop, s[1])
  crop = T.random_resize(crop, size, s[2], random_interpolation)
  return _emit(ex, crop, boxes, keep, roi[:2], factor, size=size, min_face_px=min_face_px,
               flip_seed=s[3], flip_prob=flip_prob)


def _emit(ex, image, boxes, keep, origin, factor, *, size, min_face_px, flip_seed, flip_prob):
  """The output example of a `size` x `size` crop: `image` the crop, `boxes` already in its
  pixels, landmarks mapped by (x - origin) * factor (factor (fx, fy)); faces not in `keep`
  (and, with min_face_px, smaller ones) dropped; a random flip."""
  if min_face_px:
    keep &= tf.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face_px
  present = ex["landmarks_present"]
  lm = (ex["landmarks"] - origin) * factor
  lm = tf.where(present[:, None, None], lm, -tf.ones_like(lm))
  out = dict(ex, image=image, boxes=boxes, landmarks=lm,
             valid_region=tf.constant([0.0, 0.0, float(size), float(size)]))
  out = T.mask_faces(out, keep)
  out = T.random_hflip(out, flip_seed, flip_prob)
  return T.finish(out, size)


def _anchor_sampled(ex, image, hw, boxes, s, *, size, trials, distort, flip_prob,
                    min_face_px, prob):
  """transform() with data-anchor-sampling drawn with probability `prob` (else the Caffe
  samplers): both windows are computed, one bilinear crop-and-resize samples the chosen one
  (so this path has no random interpolation)."""
  h_img, w_img = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
  roi, found = sample_crops(boxes, hw, s[0], trials)
  whole = tf.stack([0.0, 0.0, w_img, h_img])
  roi = tf.where(found, roi, whole)
  has_face = tf.shape(boxes)[0] > 0
  anchor_win = tf.cond(has_face, lambda: anchor_sample_window(boxes, hw, s[4], size, trials),
                       lambda: whole)
  use_anchor = has_face & (T.uniform(s[5]) < prob)
  win = tf.where(use_anchor, anchor_win, roi)
  if distort:
    image = T.photometric_distort(image, s[1])
  # One bilinear crop-and-resize of the window; outside the image: the mean colour (S3FD's
  # data layer pads with it; the Caffe samplers' windows lie inside the image anyway).
  mean = tf.constant([v for v in reversed((104.0, 117.0, 123.0))], tf.float32)
  norm = tf.stack([win[1] / h_img, win[0] / w_img, win[3] / h_img, win[2] / w_img])
  crop = tf.image.crop_and_resize((image - mean)[None], norm[None], [0], [size, size],
                                  extrapolation_value=0.0)[0] + mean
  crop = tf.clip_by_value(crop, 0.0, 255.0)
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  keep_caffe = tf.reduce_all((win[None, :2] <= centre) & (centre < win[None, 2:]), axis=1)
  keep_anchor = tf.reduce_all((win[None, :2] < centre) & (centre < win[None, 2:]), axis=1)
  keep = tf.where(use_anchor, keep_anchor, keep_caffe)
  wh = win[2:] - win[:2]
  factor = float(size) / wh
  f4 = tf.tile(factor, [2])
  mapped = (T.clip_boxes(boxes, win) - tf.tile(win[:2], [2])) * f4
  unclipped = (boxes - tf.tile(win[:2], [2])) * f4
  boxes = tf.where(use_anchor, unclipped, mapped)
  return _emit(ex, crop, boxes, keep, win[:2], factor, size=size, min_face_px=min_face_px,
               flip_seed=s[3], flip_prob=flip_prob)
