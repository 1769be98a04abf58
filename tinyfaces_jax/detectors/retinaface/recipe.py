"""RetinaFace training recipe (Pytorch_Retinaface `data/data_augment.py` `preproc`):
`transform(example, seed, **options)` for data/pipeline.train_dataset (the example contract of
data/transforms.py), its crop scales, input sizes and colour distortion.
"""

from __future__ import annotations

import tensorflow as tf

from tinyfaces_jax.data import transforms as T
from tinyfaces_jax.detectors.retinaface.model import MEAN_BGR

# Pytorch_Retinaface data/config.py rgb_mean (104, 117, 123) is BGR (model.MEAN_BGR); RGB here.
RGB_MEAN = tuple(MEAN_BGR[::-1])
PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)


def crop_candidates(boxes: tf.Tensor, hw: tf.Tensor, seed: tf.Tensor, *,
                           num_candidates: int = 250, img_dim: int = 640,
                           scale_mode: str = "pre_scales", min_face_px: float = 0.0):
  """All `_crop` tries of Pytorch_Retinaface at once (vectorised over candidates).

  boxes [N, 4] xyxy, hw [2] int image size. Per try: a square of side int(scale * short side)
  (scale from PRE_SCALES, or 'uniform': 1.0 w.p. 0.2 else U(0.3, 1)), left/top from
  randrange(W - w) / randrange(H - h) (0 when equal). A try is valid iff some box lies fully
  inside it (matrix_iof >= 1) and some box has its centre strictly inside it and, clipped to it,
  a min side (x2 - x1 + 1) / w * img_dim > min_face_px.
  Returns (rois [K, 4] float xyxy, keep [K, N] bool (centre + size rule), valid [K] bool).
  """
  s = T.split_seed(seed, 4)
  k = num_candidates
  h_img, w_img = tf.cast(hw[0], tf.float32), tf.cast(hw[1], tf.float32)
  short = tf.minimum(h_img, w_img)
  if scale_mode == "pre_scales":
    scale = tf.gather(tf.constant(PRE_SCALES, tf.float32),
                      T.randrange(s[0], len(PRE_SCALES), [k]))
  elif scale_mode == "uniform":
    u = T.uniform(s[0], [k, 2])
    scale = tf.where(u[:, 0] <= 0.2, 1.0, 0.3 + 0.7 * u[:, 1])
  else:
    raise ValueError(f"unknown scale_mode {scale_mode!r}")
  side = tf.floor(scale * short)
  lt = tf.floor(T.uniform(s[1], [k, 2]) * tf.stack([w_img - side, h_img - side], 1))
  rois = tf.concat([lt, lt + side[:, None]], 1)  # [K, 4]
  b = boxes[None, :, :]
  r = rois[:, None, :]
  inter = T.box_area(T.clip_boxes(b, r))
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  inside = inter / tf.maximum(area, 1.0)[None, :] >= 1.0
  centre = (b[..., :2] + b[..., 2:]) / 2
  centre_in = tf.reduce_all((r[..., :2] < centre) & (centre < r[..., 2:]), axis=-1)
  clipped = T.clip_boxes(b, r)
  min_side = tf.minimum(clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1])
  big = (min_side + 1.0) / side[:, None] * img_dim > min_face_px
  keep = centre_in & big
  valid = tf.reduce_any(inside, 1) & tf.reduce_any(keep, 1)
  return rois, keep, valid


def transform(ex: dict, seed: tf.Tensor, *, size: int = 640,
                         num_candidates: int = 250, scale_mode: str = "pre_scales",
                         min_face_px: float = 0.0, distort: bool = True,
                         flip_prob: float = 0.5, random_interpolation: bool = True,
                         rgb_mean=RGB_MEAN) -> dict:
  """RetinaFace `preproc`: _crop -> _distort -> _pad_to_square -> _mirror -> resize.

  _crop: first valid of `num_candidates` square crops (`crop_candidates`); kept faces
  (centre inside) are clipped to the crop, present landmarks shifted and clamped into it. If no
  try is valid the whole image is used and padded to a square with the mean at the top-left
  (reference: pad only when the crop failed). _expand exists in the reference but is unused.
  Flip swaps left/right landmarks. Output image float32 [size, size, 3] 0..255 RGB.
  """
  s = T.split_seed(seed, 5)
  image = tf.cast(ex["image"], tf.float32)
  hw = tf.shape(image)[:2]
  boxes = ex["boxes"]
  n = tf.shape(boxes)[0]
  rois, keep_kn, valid = crop_candidates(
      boxes, hw, s[0], num_candidates=num_candidates, img_dim=size, scale_mode=scale_mode,
      min_face_px=min_face_px)
  found = tf.reduce_any(valid)
  first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
  whole = tf.cast(tf.stack([0, 0, hw[1], hw[0]]), tf.float32)
  roi = tf.where(found, rois[first], whole)
  keep = tf.where(found, keep_kn[first], tf.ones([n], tf.bool))
  roi_i = tf.cast(roi, tf.int32)
  crop_wh = roi_i[2:] - roi_i[:2]
  crop = tf.slice(image, [roi_i[1], roi_i[0], 0], [crop_wh[1], crop_wh[0], 3])
  shift = tf.tile(roi[:2], [2])
  boxes = tf.where(found, T.clip_boxes(boxes, roi) - shift, boxes)
  lm = ex["landmarks"] - roi[:2]
  lm = tf.where(found, tf.clip_by_value(lm, 0.0, tf.cast(crop_wh, tf.float32)), lm)
  lm = tf.where(ex["landmarks_present"][:, None, None], lm, -tf.ones_like(lm))
  if distort:
    crop = T.photometric_distort(crop, s[1])
  side = tf.reduce_max(crop_wh)  # == crop side when found, else long side
  canvas = T.paste(crop, 0, 0, side, side, rgb_mean)
  out = dict(ex, image=canvas, boxes=boxes, landmarks=lm,
             valid_region=tf.concat([[0.0, 0.0], tf.cast(crop_wh, tf.float32)], 0))
  out = T.mask_faces(out, keep)
  out = T.random_hflip(out, s[2], flip_prob)
  factor = size / tf.cast(side, tf.float32)
  out["image"] = T.random_resize(out["image"], size, s[3], random_interpolation)
  out["boxes"] = out["boxes"] * factor
  out["landmarks"] = T.transform_landmarks(out["landmarks"], out["landmarks_present"],
                                           factor, [0.0, 0.0])
  out["valid_region"] = out["valid_region"] * factor
  return T.finish(out, size)
