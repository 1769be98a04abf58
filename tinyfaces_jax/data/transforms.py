"""Shared training-augmentation ops (TF graph mode, usable inside `tf.data.Dataset.map`).

Every op is a pure TensorFlow function of its inputs and an explicit stateless seed (an int
tensor of shape [2]), so a transform is deterministic given the seed; no `tf.py_function`.

Example contract (one image):
  in:  image uint8 [H, W, 3] RGB, boxes float32 [N, 4] xyxy pixels (x2 = x1 + w),
       trainable bool [N], landmarks float32 [N, 5, 2] (-1 where absent), landmarks_present [N]
  out: image float32 [S, S, 3] (0..255 scale, RGB, not normalised), boxes/landmarks in output
       pixels, faces dropped by the recipe removed, valid_region float32 [4] xyxy (real pixels).
Other keys (e.g. filename) pass through untouched. A family's recipe (its augmentation and its
constants) is `detectors/<family>/recipe.py`: `transform(example, seed, **options)`.
"""

from __future__ import annotations

import tensorflow as tf

from tinyfaces_jax.detection import box_coder

FACE_KEYS = ("boxes", "trainable", "landmarks", "landmarks_present")


def split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
  """[2] int seed -> [num, 2] independent stateless seeds."""
  return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num)


def uniform(seed: tf.Tensor, shape=(), minval=0.0, maxval=1.0) -> tf.Tensor:
  """Stateless float32 uniform in [minval, maxval)."""
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def randrange(seed: tf.Tensor, n: tf.Tensor, shape=()) -> tf.Tensor:
  """Stateless ints uniform in [0, n) (n >= 1, scalar or broadcastable to shape), int32."""
  n = tf.cast(n, tf.float32)
  r = tf.floor(uniform(seed, shape) * n)
  return tf.cast(tf.minimum(r, n - 1.0), tf.int32)


# ---- face bookkeeping ----------------------------------------------------------------------

def mask_faces(ex: dict, keep: tf.Tensor) -> dict:
  """Removes faces where keep [N] is False from every per-face key."""
  out = dict(ex)
  for k in FACE_KEYS:
    out[k] = tf.boolean_mask(ex[k], keep)
  return out


def box_area(boxes: tf.Tensor) -> tf.Tensor:
  """[..., 4] xyxy -> [...] area (0 for empty/negative boxes)."""
  w = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  h = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return w * h


def clip_boxes(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """Clips boxes [..., 4] to window [..., 4] (broadcast), both xyxy."""
  lo = tf.maximum(boxes[..., :2], window[..., :2])
  hi = tf.minimum(boxes[..., 2:], window[..., 2:])
  return tf.concat([lo, hi], axis=-1)


def visible_fraction(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """Fraction of each box's area inside window: boxes [N, 4], window [4] -> [N] in [0, 1].
  Zero-area boxes get 0."""
  inter = box_area(clip_boxes(boxes, window))
  area = box_area(boxes)
  return tf.where(area > 0, inter / tf.maximum(area, 1e-12), 0.0)


def transform_landmarks(landmarks: tf.Tensor, present: tf.Tensor, scale, offset) -> tf.Tensor:
  """landmarks [N, 5, 2] -> landmarks * scale + offset ([2]) where present, -1 elsewhere."""
  moved = landmarks * scale + tf.reshape(tf.cast(offset, tf.float32), [1, 1, 2])
  return tf.where(present[:, None, None], moved, -tf.ones_like(landmarks))


# ---- geometry ------------------------------------------------------------------------------

def paste(image: tf.Tensor, top, left, height: int, width: int, fill) -> tf.Tensor:
  """Places image [h, w, 3] float at (top, left) of a [height, width, 3] canvas of colour
  fill [3]; the image must fit."""
  fill = tf.reshape(tf.constant(fill, tf.float32), [1, 1, 3])
  canvas = tf.image.pad_to_bounding_box(image - fill, top, left, height, width) + fill
  return canvas


def hflip(ex: dict) -> dict:
  """Mirrors an output example left/right: image [S, S', 3] float, boxes [N, 4],
  landmarks [N, 5, 2] (+ left/right point swap; absent stay -1), valid_region [4]."""
  out = dict(ex)
  image = ex["image"]
  width = tf.cast(tf.shape(image)[1], tf.float32)
  out["image"] = tf.reverse(image, axis=[1])
  b = ex["boxes"]
  out["boxes"] = tf.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
  lm = tf.gather(ex["landmarks"], box_coder.FIVE_POINT_MIRROR, axis=1)
  lm = tf.stack([width - lm[..., 0], lm[..., 1]], axis=-1)
  out["landmarks"] = tf.where(ex["landmarks_present"][:, None, None], lm, ex["landmarks"])
  if "valid_region" in ex:
    v = ex["valid_region"]
    out["valid_region"] = tf.stack([width - v[2], v[1], width - v[0], v[3]])
  return out


def random_hflip(ex: dict, seed: tf.Tensor, prob: float = 0.5) -> dict:
  """hflip with probability prob (stateless)."""
  do = uniform(seed) < prob
  flipped = hflip(ex)
  out = dict(ex)
  for k in ("image", "boxes", "landmarks", "valid_region"):
    if k in ex:
      out[k] = tf.where(do, flipped[k], ex[k])
  return out


# ---- resize --------------------------------------------------------------------------------

RESIZE_METHODS = ("bilinear", "bicubic", "area", "nearest", "lanczos5")


def random_resize(image: tf.Tensor, size: int, seed: tf.Tensor, random_method: bool = True):
  """Resizes float [h, w, 3] to [size, size, 3] with an interpolation drawn uniformly from
  RESIZE_METHODS (stand-ins for cv2 LINEAR, CUBIC, AREA, NEAREST, LANCZOS4), clipped to 0..255."""
  if not random_method:
    out = tf.image.resize(image, [size, size], "bilinear")
  else:
    idx = randrange(seed, len(RESIZE_METHODS))
    branches = [lambda m=m: tf.image.resize(image, [size, size], m) for m in RESIZE_METHODS]
    out = tf.switch_case(idx, branches)
  out = tf.clip_by_value(out, 0.0, 255.0)
  return tf.ensure_shape(out, [size, size, 3])


def finish(ex: dict, size: int) -> dict:
  """Static shapes + dtypes of an output example; trainable only for positive-size boxes."""
  out = dict(ex)
  out["image"] = tf.ensure_shape(tf.cast(ex["image"], tf.float32), [size, size, 3])
  b = ex["boxes"]
  positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
  out["trainable"] = ex["trainable"] & positive
  out["valid_region"] = tf.ensure_shape(tf.cast(ex["valid_region"], tf.float32), [4])
  return out


def photometric_distort(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """SSD's photometric distortion (Caffe `DistortImage` with random_order_prob 0; RetinaFace's
  `_distort` in Pytorch_Retinaface data/data_augment.py; S3FD's distort_param) on float32
  [H, W, 3] RGB 0..255. With p=0.5 the order is brightness, contrast, saturation, hue, else brightness,
  saturation, hue, contrast; each op applied independently with p=0.5:
    brightness: + U(-32, 32); contrast: * U(0.5, 1.5); both clipped to [0, 255];
    saturation (HSV S): * U(0.5, 1.5), clipped; hue: + randint(-18, 18) OpenCV units (of 180)
    = +-36 degrees, wrapped.
  Skipped ops use identity parameters (vectorised, no tf.cond)."""
  s = split_seed(seed, 6)
  coin = uniform(s[0], [5]) < 0.5
  contrast_first, do_b, do_c, do_s, do_h = [coin[i] for i in range(5)]
  beta = tf.where(do_b, uniform(s[1], (), -32.0, 32.0), 0.0)
  alpha = tf.where(do_c, uniform(s[2], (), 0.5, 1.5), 1.0)
  sat = tf.where(do_s, uniform(s[3], (), 0.5, 1.5), 1.0)
  hue = tf.where(do_h, tf.cast(tf.random.stateless_uniform((), s[4], -18, 19, tf.int32),
                               tf.float32), 0.0) / 180.0
  img = tf.clip_by_value(image + beta, 0.0, 255.0)
  img = tf.clip_by_value(img * tf.where(contrast_first, alpha, 1.0), 0.0, 255.0)
  hsv = tf.image.rgb_to_hsv(img / 255.0)
  h = tf.math.floormod(hsv[..., 0] + hue, 1.0)
  sv = tf.clip_by_value(hsv[..., 1] * sat, 0.0, 1.0)
  img = tf.image.hsv_to_rgb(tf.stack([h, sv, hsv[..., 2]], axis=-1)) * 255.0
  img = tf.clip_by_value(img * tf.where(contrast_first, 1.0, alpha), 0.0, 255.0)
  return img
