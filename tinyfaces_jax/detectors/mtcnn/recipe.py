"""MTCNN's training input: fixed-size face / non-face crops cut on the fly from a WIDER-format
dataset, as AITTSMD/MTCNN-Tensorflow's `prepare_data` scripts cut them offline
(../shared/references/mtcnn_alignment.md 1f), mixed in the paper's proportions.

P-Net (12 px) crops, per image (stateless random draws seeded by (seed, stream, image
counter), so a run is reproducible), boxes xyxy in pixels, faces = the `trainable` ones
(`draw_samples`):
  * negatives (label 0, `gen_12net_data.py`): `negatives` random squares of side
    U{12 .. min(W, H) / 2 - 1} anywhere in the image, and per face with max(w, h) >= 20 and
    non-negative corners `near_negatives` squares of that side shifted by U{max(-side, -x1)
    .. w - 1} (and y), clipped at 0, kept when inside the image and their IoU with every
    annotated face of positive size (trainable or not) is < 0.3;
  * positives (label 1, IoU >= 0.65) and part faces (label -1, 0.4 <= IoU < 0.65): per such
    face `tries` squares of side U{int(0.8 min(w, h)) .. ceil(1.25 max(w, h)) - 1} centred on
    the face shifted by U{-0.2 w .. 0.2 w} (and h), inside the image; box targets
    ((x1 - nx1) / side, (y1 - ny1) / side, (x2 - nx2) / side, (y2 - ny2) / side);
  * landmark samples (label -2, `gen_landmark_aug_*.py`), on faces with 5 points: the face's
    own square box plus, for faces of side >= 40, `tries` shifted squares (as positives) with
    IoU > 0.65; targets x1..x5, y1..y5 as fractions of the crop (the released O-Net's layout),
    a sample with any point outside (0, 1) dropped. Only when the dataset has landmarks (the
    stream is otherwise left out, and the log says so).
R-Net (24 px) and O-Net (48 px) crops: the negatives, positives and part faces are the hard
samples mining.py found with the earlier stages (`hard_samples`: its file; squares with their
labels and targets, looked up by image), the landmark samples as above at the stage's size.
Crops are resampled bilinearly to `size` (12 / 24 / 48; cv2.resize's half-pixel centres and
replicated border);
samples are drawn from the four streams with weights `mix` (neg : pos : part : landmark, the
paper's 3 : 1 : 1 : 2; the landmark stream only where the dataset has landmarks and the
stage's net a landmark head: P-Net (AITTSMD's conv4_3) and O-Net, not the released R-Net),
then colour-distorted (contrast 0.5-1.5, brightness +-0.2, hue +-0.2, saturation 0.5-1.5) and
positives / landmark samples mirrored half the time (their targets flipped with them).
Batches: image [b, size, size, 3] float32 0..255, label [b] int32, bbox [b, 4], landmarks
[b, 10]. Deviations: AITTSMD's +-5 degree rotations of landmark samples are left out;
resuming at step k regenerates and skips the first k batches.
"""

from __future__ import annotations

import tensorflow as tf

import numpy as np

from tinyfaces_jax import settings
from tinyfaces_jax.data import pipeline, transforms

STAGE_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}
LANDMARK_STAGES = ("pnet", "onet")      # the nets with a landmark head
LABELS = {"negative": 0, "positive": 1, "part": -1, "landmark": -2}
FLIP_POINTS = (1, 0, 2, 4, 3)


def _uniform_int(seed, shape, lo, hi):
  """Integers in [lo, hi) (hi > lo, float tensors broadcast to `shape`), stateless."""
  u = tf.random.stateless_uniform(shape, seed, dtype=tf.float32)
  return tf.floor(lo + u * (hi - lo))


def _iou(a, b):
  """IoU of xyxy boxes a [..., 4] and b [..., 4], broadcast (a[:, None], b[None]: [N, M])."""
  inter = transforms.box_area(tf.concat([tf.maximum(a[..., :2], b[..., :2]),
                                         tf.minimum(a[..., 2:], b[..., 2:])], -1))
  return tf.math.divide_no_nan(inter, transforms.box_area(a) + transforms.box_area(b) - inter)


def _crop(image, squares, size: int):
  """image [H, W, 3] float, squares [N, 4] xyxy (sides w, h) -> [N, size, size, 3] bilinear
  with cv2.resize's sample points x1 + (j + 0.5) w / size - 0.5 (and y) and its replicated
  border (an upsampled crop reaches up to half a pixel past the square)."""
  image = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")   # edge pixels, once
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  w, h = squares[:, 2] - squares[:, 0], squares[:, 3] - squares[:, 1]
  first = lambda s: 0.5 * s / size - 0.5 + 1.0
  last = lambda s: (size - 0.5) * s / size - 0.5 + 1.0
  norm = tf.stack([(squares[:, 1] + first(h)) / (hw[0] - 1),
                   (squares[:, 0] + first(w)) / (hw[1] - 1),
                   (squares[:, 1] + last(h)) / (hw[0] - 1),
                   (squares[:, 0] + last(w)) / (hw[1] - 1)], 1)
  return tf.image.crop_and_resize(image[None], norm, tf.zeros(tf.shape(squares)[:1], tf.int32),
                                  [size, size], method="bilinear")


def _shifted_squares(seed, faces, tries: int):
  """[F * tries, 4] squares around each face (the positive / part sampler)."""
  x1, y1, x2, y2 = tf.unstack(faces, axis=1)
  w, h = x2 - x1, y2 - y1
  rep = lambda v: tf.repeat(v, tries)
  x1, y1, w, h = rep(x1), rep(y1), rep(w), rep(h)
  n = tf.shape(x1)
  s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  side = _uniform_int(s1, n, tf.floor(0.8 * tf.minimum(w, h)),
                      tf.maximum(tf.math.ceil(1.25 * tf.maximum(w, h)),
                                 tf.floor(0.8 * tf.minimum(w, h)) + 1))
  dx = _uniform_int(s2, n, tf.math.ceil(-0.2 * w), tf.floor(0.2 * w) + 1)
  dy = _uniform_int(s3, n, tf.math.ceil(-0.2 * h), tf.floor(0.2 * h) + 1)
  nx1 = tf.maximum(x1 + w / 2 + dx - side / 2, 0.0)
  ny1 = tf.maximum(y1 + h / 2 + dy - side / 2, 0.0)
  return tf.stack([nx1, ny1, nx1 + side, ny1 + side], 1)


def _samples(ex, seed, kind: str, size: int, negatives: int, near_negatives: int, tries: int):
  """One image's crops of one stream -> dict of [K, ...] tensors (K varies)."""
  d = pipeline.decode_example(ex)
  image = tf.cast(d["image"], tf.float32)
  out = draw_samples(d, seed, kind, negatives, near_negatives, tries)
  return dict(out, image=_crop(image, out.pop("squares"), size))


def draw_samples(d, seed, kind: str, negatives: int, near_negatives: int, tries: int) -> dict:
  """The squares of one stream (module docstring) on a decoded example `d` (image, boxes,
  trainable, landmarks, landmarks_present) -> dict(squares [K, 4] xyxy, label [K], bbox [K,
  4], landmarks [K, 10]); `seed` [2] int64."""
  hw = tf.cast(tf.shape(d["image"])[:2], tf.float32)
  height, width = hw[0], hw[1]
  boxes = d["boxes"]
  wh = boxes[:, 2:] - boxes[:, :2]
  all_faces = tf.boolean_mask(boxes, (wh[:, 0] > 0) & (wh[:, 1] > 0))
  big = (d["trainable"] & (tf.reduce_max(wh, 1) >= 20) & (boxes[:, 0] >= 0)
         & (boxes[:, 1] >= 0))
  faces = tf.boolean_mask(boxes, big)
  empty = tf.zeros([0, 4], tf.float32)
  inside = lambda q: (q[:, 2] <= width) & (q[:, 3] <= height) & (q[:, 2] > q[:, 0])
  bbox = lmk = None
  if kind == "negative":
    s1, s2, s3, s4 = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    half = tf.maximum(tf.floor(tf.minimum(width, height) / 2), 13.0)
    side = _uniform_int(s1, [negatives], 12.0, half)
    x = _uniform_int(s2, [negatives], 0.0, tf.maximum(width - side, 0.0) + 1)
    y = _uniform_int(s3, [negatives], 0.0, tf.maximum(height - side, 0.0) + 1)
    rand = tf.stack([x, y, x + side, y + side], 1)
    f = tf.repeat(faces, near_negatives, axis=0)
    m = tf.shape(f)[:1]
    t1, t2, t3 = tf.unstack(tf.random.experimental.stateless_split(s4, 3))
    side = _uniform_int(t1, m, 12.0, half)
    fw, fh = f[:, 2] - f[:, 0], f[:, 3] - f[:, 1]
    dx = _uniform_int(t2, m, tf.maximum(-side, -f[:, 0]), tf.maximum(fw, tf.maximum(
        -side, -f[:, 0]) + 1))
    dy = _uniform_int(t3, m, tf.maximum(-side, -f[:, 1]), tf.maximum(fh, tf.maximum(
        -side, -f[:, 1]) + 1))
    nx1, ny1 = tf.maximum(0.0, f[:, 0] + dx), tf.maximum(0.0, f[:, 1] + dy)
    squares = tf.concat([rand, tf.stack([nx1, ny1, nx1 + side, ny1 + side], 1)], 0)
    iou = _iou(squares[:, None], tf.concat([all_faces, empty], 0)[None])
    max_iou = tf.reduce_max(tf.concat([iou, tf.zeros([tf.shape(iou)[0], 1])], 1), 1)
    squares = tf.boolean_mask(squares, inside(squares) & (max_iou < 0.3))
    label = tf.fill(tf.shape(squares)[:1], LABELS["negative"])
  elif kind in ("positive", "part"):
    squares = _shifted_squares(seed, faces, tries)
    own = tf.repeat(faces, tries, axis=0)
    iou = _iou(squares, own)
    ok = inside(squares) & ((iou >= 0.65) if kind == "positive"
                            else (iou >= 0.4) & (iou < 0.65))
    squares, own = tf.boolean_mask(squares, ok), tf.boolean_mask(own, ok)
    side = (squares[:, 2] - squares[:, 0])[:, None]
    bbox = (own - squares) / side
    label = tf.fill(tf.shape(squares)[:1], LABELS[kind])
  else:                                                       # landmark
    has = d["trainable"] & d["landmarks_present"] & (tf.reduce_max(wh, 1) > 0)
    lf = tf.boolean_mask(boxes, has)
    pts = tf.boolean_mask(d["landmarks"], has)                  # [F, 5, 2]
    side = tf.maximum(lf[:, 2] - lf[:, 0], lf[:, 3] - lf[:, 1])
    cx, cy = (lf[:, 0] + lf[:, 2]) / 2, (lf[:, 1] + lf[:, 3]) / 2
    own_sq = tf.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)
    aug_faces = tf.boolean_mask(lf, side >= 40)
    aug = _shifted_squares(seed, aug_faces, tries)
    aug_own = tf.repeat(aug_faces, tries, axis=0)
    keep_aug = inside(aug) & (_iou(aug, aug_own) > 0.65)
    aug_pts = tf.boolean_mask(tf.repeat(tf.boolean_mask(pts, side >= 40), tries, axis=0),
                              keep_aug)
    squares = tf.concat([own_sq, tf.boolean_mask(aug, keep_aug)], 0)
    pts = tf.concat([pts, aug_pts], 0)
    s = (squares[:, 2] - squares[:, 0])[:, None]
    rel = tf.concat([(pts[..., 0] - squares[:, :1]) / s, (pts[..., 1] - squares[:, 1:2]) / s], 1)
    ok = tf.reduce_all((rel > 0) & (rel < 1), 1) & (squares[:, 0] >= 0) & (squares[:, 1] >= 0) \
        & inside(squares)
    squares, lmk = tf.boolean_mask(squares, ok), tf.boolean_mask(rel, ok)
    label = tf.fill(tf.shape(squares)[:1], LABELS["landmark"])
  k = tf.shape(squares)[:1]
  return {"squares": squares, "label": label,
          "bbox": bbox if bbox is not None else tf.zeros(tf.concat([k, [4]], 0)),
          "landmarks": lmk if lmk is not None else tf.zeros(tf.concat([k, [10]], 0))}


def _distort(sample, seed, mirror: bool, colour: bool):
  """Colour distortion of every sample; positives / landmark samples mirrored half the time."""
  s1, s2, s3, s4, s5 = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  x = sample["image"] / 255.0
  if colour:
    x = tf.image.stateless_random_contrast(x, 0.5, 1.5, s1)
    x = tf.image.stateless_random_brightness(x, 0.2, s2)
    x = tf.image.stateless_random_hue(x, 0.2, s3)
    x = tf.image.stateless_random_saturation(x, 0.5, 1.5, s4)
  out = dict(sample, image=tf.clip_by_value(x, 0.0, 1.0) * 255.0)
  if mirror:
    label = sample["label"]
    flip = ((label == LABELS["positive"]) | (label == LABELS["landmark"])) & (
        tf.random.stateless_uniform([], s5) < 0.5)
    b = sample["bbox"]
    xs = 1.0 - tf.gather(sample["landmarks"][:5], FLIP_POINTS)
    ys = tf.gather(sample["landmarks"][5:], FLIP_POINTS)
    flipped_lmk = tf.where(label == LABELS["landmark"], tf.concat([xs, ys], 0),
                           sample["landmarks"])
    out["image"] = tf.cond(flip, lambda: out["image"][:, ::-1], lambda: out["image"])
    out["bbox"] = tf.cond(flip, lambda: tf.stack([-b[2], b[1], -b[0], b[3]]), lambda: b)
    out["landmarks"] = tf.cond(flip, lambda: flipped_lmk, lambda: sample["landmarks"])
  return out


def has_landmarks(builder) -> bool:
  """Whether the dataset carries 5-point landmarks (RetinaFace's label.txt was read)."""
  return bool(builder.info.metadata.get("landmarks_file")) if builder.info.metadata else False


class _MinedSamples:
  """The hard samples file as TensorFlow constants, looked up by image key (mining.py)."""

  def __init__(self, path):
    from tinyfaces_jax.detectors.mtcnn import mining
    z = mining.load_samples(path)
    self.numpy = z
    self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(z["keys"].astype(str)), tf.range(len(z["keys"]), dtype=tf.int64)), -1)
    self.offsets = tf.constant(z["offsets"], tf.int64)
    self.squares = tf.constant(z["squares"], tf.float32)
    self.labels = tf.constant(z["labels"].astype(np.int32))
    self.bbox = tf.constant(z["bbox"], tf.float32)

  def rows(self, key, kind: str):
    """Indices [K] of the image's samples of `kind`."""
    row = self.table.lookup(key)
    lo = self.offsets[tf.maximum(row, 0)]
    hi = tf.where(row >= 0, self.offsets[tf.maximum(row, 0) + 1], lo)
    idx = tf.range(lo, hi)
    return tf.boolean_mask(idx, tf.gather(self.labels, idx) == LABELS[kind])

  def crops(self, ex, kind: str, size: int):
    """One image's samples of `kind` -> dict of [K, ...] tensors."""
    idx = self.rows(ex["image/filename"], kind)
    image = tf.cast(pipeline.decode_example(ex)["image"], tf.float32)
    k = tf.shape(idx)[:1]
    return {"image": _crop(image, tf.gather(self.squares, idx), size),
            "label": tf.fill(k, LABELS[kind]), "bbox": tf.gather(self.bbox, idx),
            "landmarks": tf.zeros(tf.concat([k, [10]], 0))}


def _host_kinds(mined: _MinedSamples, images) -> dict:
  """{kind: samples of it on this host's images} (reads the image keys, not the pixels)."""
  z = mined.numpy
  row = {k: i for i, k in enumerate(z["keys"].astype(str))}
  per_sample = np.zeros(len(z["labels"]), bool)
  for key in images.map(lambda ex: ex["image/filename"]).as_numpy_iterator():
    i = row.get(key.decode())
    if i is not None:
      per_sample[z["offsets"][i]:z["offsets"][i + 1]] = True
  lab = z["labels"][per_sample]
  return {k: int((lab == LABELS[k]).sum()) for k in ("negative", "positive", "part")}


def train_dataset(builder, split, *, batch_size, size, max_boxes, seed, start_step,
                  shuffle_buffer, threads, ram_budget_gb, stage: str = "pnet",
                  hard_samples: str = "", negatives: int = 50, near_negatives: int = 5,
                  tries: int = 20, mix: tuple = (3.0, 1.0, 1.0, 2.0), mirror: bool = True,
                  colour: bool = True, log=print):
  """This host's batches for the MTCNN `stage` (module docstring); `size` must be the stage's
  crop size (data.image_size: 12 / 24 / 48); `hard_samples` (rnet / onet): the mined samples
  file (mining.py; the family's prepare_training sets it)."""
  del max_boxes, ram_budget_gb
  import tensorflow_datasets as tfds
  if stage not in STAGE_SIZES:
    raise settings.ConfigError(f"config.data.recipe_options.stage: {stage!r}; known: "
                               f"{sorted(STAGE_SIZES)}")
  if size != STAGE_SIZES[stage]:
    raise settings.ConfigError(f"config.data.image_size: {size} for MTCNN's {stage} "
                               f"(its crops are {STAGE_SIZES[stage]} px)")
  if (stage != "pnet") != bool(hard_samples):
    raise settings.ConfigError(
        f"MTCNN's {stage} stage " + ("trains on the hard samples of the earlier stages "
                                     "(config.data.recipe_options.mining; configs/mtcnn.py "
                                     ":stage=...,previous=DIR)" if stage != "pnet" else
                                     "cuts its own crops: hard_samples is for rnet / onet"))
  if len(mix) != 4 or min(mix) < 0 or sum(mix[:3]) <= 0:
    raise settings.ConfigError(f"config.data.recipe_options.mix: {mix} (neg, pos, part, "
                               "landmark weights)")
  kinds = ["negative", "positive", "part", "landmark"]
  weights = [float(w) for w in mix]
  if stage not in LANDMARK_STAGES:
    kinds, weights = kinds[:3], weights[:3]
  elif not has_landmarks(builder):
    if weights[3] > 0:
      log("mtcnn recipe: the dataset has no landmarks; training without landmark samples")
    kinds, weights = kinds[:3], weights[:3]
  host = pipeline.host_split(split)
  images = builder.as_dataset(split=host, shuffle_files=True,
                              read_config=tfds.ReadConfig(shuffle_seed=seed),
                              decoders={"image": tfds.decode.SkipDecoding()})
  mined = _MinedSamples(hard_samples) if hard_samples else None
  if mined is not None:
    here = _host_kinds(mined, builder.as_dataset(
        split=host, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}))
    log(f"mtcnn recipe: {stage} hard samples on this host's images: "
        + ", ".join(f"{v} {k}" for k, v in here.items()))
    missing = [k for k, w in zip(kinds, weights) if k in here and w > 0 and not here[k]]
    if missing:
      raise ValueError(f"{hard_samples}: no {' / '.join(missing)} sample on this host's "
                       f"share of {split} ({here}); mine with a better earlier stage or set "
                       f"their weight in config.data.recipe_options.mix to 0")
  streams = []
  for c, kind in enumerate(kinds):
    if mined is not None and kind != "landmark":
      def has_kind(ex, kind=kind):
        return tf.size(mined.rows(ex["image/filename"], kind)) > 0

      def mined_crops(ex, kind=kind):
        return tf.data.Dataset.from_tensor_slices(mined.crops(ex, kind, size))

      ds = images.filter(has_kind).repeat().interleave(
          mined_crops, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE,
          deterministic=True)
    else:
      def per_image(i, ex, c=c, kind=kind):
        s = tf.stack([tf.cast(seed * 4 + c, tf.int64), i])
        return tf.data.Dataset.from_tensor_slices(
            _samples(ex, s, kind, size, negatives, near_negatives, tries))

      ds = images.repeat().enumerate().interleave(
          per_image, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    streams.append(ds.shuffle(shuffle_buffer, seed=seed + c))
  total = sum(weights)
  ds = tf.data.Dataset.sample_from_datasets(streams, [w / total for w in weights], seed=seed)
  ds = ds.enumerate().map(
      lambda i, x: _distort(x, tf.stack([tf.cast(seed + 17, tf.int64), i]), mirror, colour),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).skip(start_step)
  options = tf.data.Options()
  if threads:
    options.threading.private_threadpool_size = threads
  return ds.with_options(options).prefetch(2)
