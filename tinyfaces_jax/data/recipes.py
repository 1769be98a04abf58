"""Per-detector training augmentation recipes: `(example, seed [2] int) -> example`.

See transforms.py for the example contract. Recipes:
  tiny_faces_transform  -- Hu & Ramanan 2017 (peiyunh/tiny cnn_get_batch_hardmine.m)
  retinaface_transform  -- Pytorch_Retinaface data/data_augment.py `preproc`
  make_transform(name)  -- binds a recipe's keyword options for pipeline.train_dataset.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from tinyfaces_jax.data import transforms as T

# Pytorch_Retinaface data/config.py rgb_mean (104, 117, 123) is BGR; ours is RGB.
RETINA_RGB_MEAN = (123.0, 117.0, 104.0)
RETINA_PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
RETINA_SIZES = {"mobilenet0.25": 640, "resnet50": 840}


def _finish(ex: dict, size: int) -> dict:
  """Static shapes + dtypes of an output example; trainable only for positive-size boxes."""
  out = dict(ex)
  out["image"] = tf.ensure_shape(tf.cast(ex["image"], tf.float32), [size, size, 3])
  b = ex["boxes"]
  positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
  out["trainable"] = ex["trainable"] & positive
  out["valid_region"] = tf.ensure_shape(tf.cast(ex["valid_region"], tf.float32), [4])
  return out


def tiny_sample_geometry(hw: tf.Tensor, seed: tf.Tensor, *, size: int = 500,
                         scales=(0.5, 1.0, 2.0)) -> dict:
  """Random geometry of one Tiny Faces sample for an image of size hw [2] (int32 [H, W]):
  factor [] (uniform over scales), scaled_hw [2] = ceil(hw * factor), crop_hw [2] =
  min(scaled_hw, size), crop_yx [2] uniform in [0, scaled_hw - crop_hw] (top-left of the crop
  in the scaled image), paste_yx [2] uniform in [0, size - crop_hw] (where it lands)."""
  s = T.split_seed(seed, 3)
  factor = tf.gather(tf.constant(scales, tf.float32), T.randrange(s[0], len(scales)))
  scaled_hw = tf.cast(tf.math.ceil(tf.cast(hw, tf.float32) * factor), tf.int32)
  crop_hw = tf.minimum(scaled_hw, size)
  return {"factor": factor, "scaled_hw": scaled_hw, "crop_hw": crop_hw,
          "crop_yx": T.randrange(s[1], scaled_hw - crop_hw + 1, [2]),
          "paste_yx": T.randrange(s[2], size - crop_hw + 1, [2])}


def tiny_faces_transform(ex: dict, seed: tf.Tensor, *, size: int = 500,
                         scales=(0.5, 1.0, 2.0), min_visible: float = 0.3,
                         flip_prob: float = 0.5, color_jitter: str | None = "release") -> dict:
  """Tiny Faces / HR training augmentation (cnn_get_batch_hardmine.m + cnn_widerface.m).

  1. rescale the whole image by a factor drawn uniformly from `scales` (release: 0.5 if
     rand < 1/3, 2 if rand > 2/3, else 1; bilinear imresize, new size ceil(H*s) x ceil(W*s));
  2. crop a window of min(size, Hs) x min(size, Ws) at a uniform position inside the rescaled
     image and paste it at a uniform position on a size x size canvas of the RGB mean;
  3. drop faces with less than `min_visible` (release: negThresh 0.3) of their area inside the
     crop window; kept boxes are clipped to it (= the pasted region, `valid_region`);
  4. horizontal flip with p = flip_prob (release: 'f5' transformation set, half flipped);
  5. PCA lighting noise (`T.pca_lighting`, mode color_jitter; None disables) on the whole
     canvas, padding included (the release subtracts averageImage + noise from the buffer).
  Returns image float32 [size, size, 3] (0..255 RGB, not mean-subtracted).
  """
  s = T.split_seed(seed, 3)
  image = tf.cast(ex["image"], tf.float32)
  g = tiny_sample_geometry(tf.shape(image)[:2], s[0], size=size, scales=scales)
  factor, crop_yx, crop_hw, paste_yx = g["factor"], g["crop_yx"], g["crop_hw"], g["paste_yx"]
  # 1. rescale
  image = tf.cond(tf.equal(factor, 1.0), lambda: image,
                  lambda: tf.image.resize(image, g["scaled_hw"], "bilinear", antialias=True))
  # 2. crop + paste
  crop = tf.slice(image, tf.concat([crop_yx, [0]], 0), tf.concat([crop_hw, [3]], 0))
  canvas = T.paste(crop, paste_yx[0], paste_yx[1], size, size, T.TINY_RGB_MEAN)
  # 3. faces: >= min_visible of the area inside the crop window, clipped to it
  c_xy = tf.cast(tf.reverse(crop_yx, [0]), tf.float32)
  p_xy = tf.cast(tf.reverse(paste_yx, [0]), tf.float32)
  wh = tf.cast(tf.reverse(crop_hw, [0]), tf.float32)
  window = tf.concat([c_xy, c_xy + wh], 0)
  boxes = ex["boxes"] * factor
  frac = T.visible_fraction(boxes, window)
  shift = tf.tile(p_xy - c_xy, [2])
  boxes = T.clip_boxes(boxes, window) + shift
  keep = (frac >= min_visible) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  out = dict(ex, image=canvas, boxes=boxes,
             landmarks=T.transform_landmarks(ex["landmarks"], ex["landmarks_present"],
                                             factor, p_xy - c_xy),
             valid_region=tf.concat([p_xy, p_xy + wh], 0))
  out = T.mask_faces(out, keep)
  # 4. flip, 5. colour
  out = T.random_hflip(out, s[1], flip_prob)
  if color_jitter is not None:
    out["image"], _ = T.pca_lighting(out["image"], s[2], color_jitter)
  return _finish(out, size)


def retina_crop_candidates(boxes: tf.Tensor, hw: tf.Tensor, seed: tf.Tensor, *,
                           num_candidates: int = 250, img_dim: int = 640,
                           scale_mode: str = "pre_scales", min_face_px: float = 0.0):
  """All `_crop` tries of Pytorch_Retinaface at once (vectorised over candidates).

  boxes [N, 4] xyxy, hw [2] int image size. Per try: a square of side int(scale * short side)
  (scale from RETINA_PRE_SCALES, or 'uniform': 1.0 w.p. 0.2 else U(0.3, 1)), left/top from
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
    scale = tf.gather(tf.constant(RETINA_PRE_SCALES, tf.float32),
                      T.randrange(s[0], len(RETINA_PRE_SCALES), [k]))
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


def retinaface_transform(ex: dict, seed: tf.Tensor, *, size: int = 640,
                         num_candidates: int = 250, scale_mode: str = "pre_scales",
                         min_face_px: float = 0.0, distort: bool = True,
                         flip_prob: float = 0.5, random_interpolation: bool = True,
                         rgb_mean=RETINA_RGB_MEAN) -> dict:
  """RetinaFace `preproc`: _crop -> _distort -> _pad_to_square -> _mirror -> resize.

  _crop: first valid of `num_candidates` square crops (`retina_crop_candidates`); kept faces
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
  rois, keep_kn, valid = retina_crop_candidates(
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
  return _finish(out, size)


RECIPES = {"tiny_faces": tiny_faces_transform, "retinaface": retinaface_transform}


def make_transform(name: str, **options):
  """`(example, seed) -> example` for pipeline.train_dataset; options are the recipe's
  keyword arguments (e.g. make_transform('retinaface', size=840) for ResNet-50)."""
  return functools.partial(RECIPES[name], **options)
