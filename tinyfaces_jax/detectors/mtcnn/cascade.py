"""MTCNN's three-stage cascade inside one jitted function, with static shapes.

`make_cascade_predict(detector, cascade_cfg, infer_cfg)` -> predict(variables, images [B, H, W,
3] float32 RGB 0..255 (uint8 values), image_hw [B, 2] int32 or None) -> dict(boxes [B, K, 4],
scores [B, K], landmarks [B, K, 5, 2], valid [B, K]) in descending score order (K =
infer_cfg.max_output), the contract of inference.make_predict_fn. One compile per bucket
shape (H, W) and batch size; each image's own size `image_hw` (default: the whole bucket)
drives its pyramid and its clipping, so images of several sizes share one bucket and batch.

Semantics are facenet-pytorch's `detect_face` (models/utils/detect_face.py, PyPI 2.6.0;
../shared/references/mtcnn_alignment.md 1c), stage by stage:
  1. pyramid: scales m * factor^k (m = 12 / min_face_size) while min(h, w) * m * factor^k >=
     12 (python float64, as facenet; static per bucket, the levels an image is too small for
     are masked); level size (int(h s + 1), int(w s + 1)); area resampling (torch
     `interpolate(mode="area")`: output i averages input [floor(i n / o), ceil((i + 1) n / o)),
     computed exactly from an int32 integral image of the uint8 values, whose wrap-around
     arithmetic stays exact for any bin under 2^31 / 255 pixels);
  2. P-Net per level (padding excluded from its ceil pool, so each cell equals P-Net on the
     image alone), cells with face probability >= t1, boxes floor((2 [c, r] + 1) / s),
     floor((2 [c, r] + 12) / s) in float32; NMS 0.5 per level, then 0.7 over all levels
     (continuous areas, suppress IoU > t, stable score order);
  3. regression with widths x2 - x1, squared (`rerec`), cropped as facenet's `pad`: truncated
     to integers and clipped to [1, w] x [1, h] (border faces are stretched, not padded),
     area-resampled to 24 x 24; R-Net score > t2, NMS 0.7, regression with widths x2 - x1 + 1,
     squared;
  4. the same crops at 48 x 48 for O-Net, score > t3, landmarks x = (x2 - x1 + 1) p + x1 - 1
     (and y) from the boxes before regression, regression, NMS 0.7 over the smaller area
     (+1 areas).
Static capacities replace facenet's unbounded lists: the levels keep at most `level_keep`
boxes together after their NMS (one call, each level's boxes shifted apart), `rnet_max` boxes (the best by P-Net score) reach R-Net and `onet_max`
(the best by R-Net score) reach O-Net; a crowded image beyond them loses its lowest-scoring
candidates, never a crash. Deviations: a box whose crop is empty is dropped (facenet would
misalign its crop list); boxes of different levels with exactly equal scores enter the
cross-level NMS in score order, not level order; ties in the 'Min' NMS go to the lower index (numpy's argsort there is
not stable); outputs come in score order (facenet's `select_largest` sorts by area).

`resample="bilinear"` swaps the area resampling for the original MATLAB code's kind
(`bilinear_resample`: bilinear sampling with half-pixel centres; the 24 / 48 px crops take the
whole truncated box, zero outside the image, so border faces are padded, not stretched); the
rest of the cascade is unchanged, so this is that resampling inside facenet's cascade, not a
port of the MATLAB pipeline (its ceil level sizes, fix() boxes and +1 NMS differ too).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.detection import nms as nms_lib
from tinyfaces_jax.detectors.mtcnn.model import (PNET_CELL, PNET_STRIDE, normalise,
                                                 pnet_output_size)


RESAMPLE = ("area", "bilinear")


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
  """Cascade settings (defaults: facenet-pytorch's MTCNN).

  Attributes:
    min_face_size: the smallest face searched, in pixels (the first scale is 12 / it).
    thresholds: P-Net (>=), R-Net (>) and O-Net (>) face-probability thresholds.
    factor: pyramid scale step.
    nms: per-level, cross-level, R-Net and O-Net ('Min') NMS thresholds.
    level_keep / rnet_max / onet_max: the static capacities (module docstring);
      level_keep bounds the boxes all levels together keep after their per-level NMS.
    rnet_chunk / onet_chunk: crops per R-Net / O-Net call; chunks holding no candidate of
      any image are skipped, so compute follows the candidates (speed only, not results).
    resample: "area" (facenet-pytorch: area averaging, crops clipped to the image) or
      "bilinear" (the original MATLAB code's way: bilinear sampling, half-pixel centres, and
      crops of the whole unclipped box with zeros outside the image; the level sizes stay
      facenet's).
    stages: run the cascade up to stage 1 (P-Net alone), 2 or 3 (all): a stage being trained
      is evaluated as the detector it ends (its regressed boxes, not squared).
  """
  min_face_size: float = 20.0
  thresholds: tuple = (0.6, 0.7, 0.7)
  factor: float = 0.709
  nms: tuple = (0.5, 0.7, 0.7, 0.7)
  level_keep: int = 4096
  rnet_max: int = 2048
  onet_max: int = 512
  rnet_chunk: int = 256
  onet_chunk: int = 64
  resample: str = "area"
  stages: int = 3

  def __post_init__(self):
    if self.min_face_size < 12:
      raise ValueError(f"min_face_size must be >= 12 (P-Net's 12-pixel cell), got "
                       f"{self.min_face_size}")
    if not 0 < self.factor < 1:
      raise ValueError(f"factor must be in (0, 1), got {self.factor}")
    if self.stages not in (1, 2, 3):
      raise ValueError(f"stages must be 1, 2 or 3, got {self.stages}")
    if self.resample not in RESAMPLE:
      raise ValueError(f"resample must be one of {RESAMPLE}, got {self.resample!r}")
    if len(self.thresholds) != 3 or len(self.nms) != 4:
      raise ValueError(f"thresholds needs 3 values and nms 4, got {self.thresholds} and "
                       f"{self.nms}")


def pyramid_scales(min_side: int, cfg: CascadeConfig) -> list:
  """facenet's scale list for an image whose shorter side is `min_side` (python floats)."""
  scale, minl, out = 12.0 / cfg.min_face_size, min_side * (12.0 / cfg.min_face_size), []
  while minl >= 12:
    out.append(scale)
    scale *= cfg.factor
    minl *= cfg.factor
  return out


def level_count_table(max_side: int, cfg: CascadeConfig) -> np.ndarray:
  """[max_side + 1] int32: the number of pyramid levels of an image with that shorter side."""
  return np.asarray([len(pyramid_scales(n, cfg)) for n in range(max_side + 1)], np.int32)


def level_size_table(max_len: int, scale: float) -> np.ndarray:
  """[max_len + 1] int32: int(n * scale + 1) in float64 for n = 0..max_len."""
  return np.asarray([int(n * scale + 1) for n in range(max_len + 1)], np.int32)


def cell_edges(n: int, scale: float) -> tuple:
  """P-Net cells 0..n-1 -> ([n] starts, [n] ends) in image pixels: floor((2 i + 1) / s) and
  floor((2 i + 12) / s), float32 arithmetic (facenet's generateBoundingBox)."""
  i = np.arange(n, dtype=np.float32)
  s = np.float32(scale)
  return (np.floor((np.float32(PNET_STRIDE) * i + np.float32(1)) / s),
          np.floor((np.float32(PNET_STRIDE) * i + np.float32(PNET_CELL)) / s))


def integral_image(image) -> jnp.ndarray:
  """[H, W, 3] uint8-valued float -> [H + 1, W + 1, 3] int32 inclusive prefix sums (wrapping)."""
  x = jnp.round(image).astype(jnp.int32)
  s = jnp.cumsum(jnp.cumsum(x, axis=0), axis=1)
  return jnp.pad(s, ((1, 0), (1, 0), (0, 0)))


def _bins(start, length, out_len, out_size: int):
  """Area bins along one axis: [out_size] (lo, hi) absolute indices of input [start, start +
  length) resampled to `out_len` (<= out_size; bins past it are empty)."""
  i = jnp.arange(out_size, dtype=jnp.int32)
  o = jnp.maximum(out_len, 1)
  lo = start + (i * length) // o
  hi = start + ((i + 1) * length + o - 1) // o
  live = i < out_len
  return jnp.where(live, lo, 0), jnp.where(live, hi, 0)


def area_resample(integral, y0, x0, h, w, out_h, out_w, size_hw: tuple):
  """torch area interpolation of image rows [y0, y0 + h), cols [x0, x0 + w) to out_h x out_w
  (traced ints), written into a static `size_hw` array (zeros beyond out_h / out_w)
  -> [size_hw[0], size_hw[1], 3] float32."""
  ylo, yhi = _bins(y0, h, out_h, size_hw[0])
  xlo, xhi = _bins(x0, w, out_w, size_hw[1])
  s = (integral[yhi[:, None], xhi[None, :]] - integral[ylo[:, None], xhi[None, :]]
       - integral[yhi[:, None], xlo[None, :]] + integral[ylo[:, None], xlo[None, :]])
  kh = jnp.maximum(yhi - ylo, 1).astype(jnp.float32)[:, None, None]
  kw = jnp.maximum(xhi - xlo, 1).astype(jnp.float32)[None, :, None]
  return s.astype(jnp.float32) / kh / kw          # torch's CPU kernel: sum / kh / kw


def bilinear_resample(image, valid_hw, y0, x0, h, w, out_h, out_w, size_hw: tuple):
  """Bilinear resampling of the window rows [y0, y0 + h), cols [x0, x0 + w) of `image` [H, W,
  3] to out_h x out_w (traced ints) in a static `size_hw` array: output (i, j) samples the
  window at ((i + 0.5) h / out_h - 0.5, (j + 0.5) w / out_w - 0.5), clamped to the window;
  window pixels outside the image's own `valid_hw` (rows, cols) read 0 (the MATLAB code's
  zero-filled crop buffer). -> [size_hw[0], size_hw[1], 3] float32 (zeros beyond out_h /
  out_w)."""
  def axis(start, length, out_len, size, valid):
    i = jnp.arange(size, dtype=jnp.float32)
    src = (i + 0.5) * length.astype(jnp.float32) / jnp.maximum(out_len, 1).astype(
        jnp.float32) - 0.5
    src = jnp.clip(src, 0.0, (length - 1).astype(jnp.float32))
    lo = jnp.floor(src)
    frac = src - lo
    a = start + lo.astype(jnp.int32)
    b = start + jnp.minimum(lo.astype(jnp.int32) + 1, length - 1)
    live = jnp.arange(size) < out_len
    return a, b, frac, live, valid

  ya, yb, fy, ly, vh = axis(y0, h, out_h, size_hw[0], valid_hw[0])
  xa, xb, fx, lx, vw = axis(x0, w, out_w, size_hw[1], valid_hw[1])

  def at(yy, xx):
    inside = ((yy >= 0) & (yy < vh))[:, None] & ((xx >= 0) & (xx < vw))[None, :]
    v = image[jnp.clip(yy, 0, image.shape[0] - 1)[:, None],
              jnp.clip(xx, 0, image.shape[1] - 1)[None, :]]
    return jnp.where(inside[..., None], v, 0.0)

  fy, fx = fy[:, None, None], fx[None, :, None]
  out = ((1 - fy) * ((1 - fx) * at(ya, xa) + fx * at(ya, xb))
         + fy * ((1 - fx) * at(yb, xa) + fx * at(yb, xb)))
  return jnp.where((ly[:, None] & lx[None, :])[..., None], out, 0.0)


def rerec(boxes):
  """[..., 4] -> squares on the same centres with side max(w, h) (w = x2 - x1), facenet's
  float32 operation order."""
  x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
  h, w = y2 - y1, x2 - x1
  side = jnp.maximum(w, h)
  nx1 = x1 + w * 0.5 - side * 0.5
  ny1 = y1 + h * 0.5 - side * 0.5
  return jnp.stack([nx1, ny1, nx1 + side, ny1 + side], -1)


def regress(boxes, reg, plus_one: bool):
  """Box regression: b + reg * (w, h, w, h), w = x2 - x1 (+ 1 for facenet's `bbreg`)."""
  off = 1.0 if plus_one else 0.0
  w = boxes[..., 2] - boxes[..., 0] + off
  h = boxes[..., 3] - boxes[..., 1] + off
  return boxes + reg * jnp.stack([w, h, w, h], -1)


def crop_windows(boxes, image_hw, clip: bool = True):
  """facenet's `pad`: boxes [B, N, 4] float, image_hw [B, 2] -> (y0, x0, h, w) [B, N] int32 of
  the 0-based crop rows [y0, y0 + h) / cols [x0, x0 + w) and a [B, N] non-empty mask; with
  `clip=False` the whole truncated box, reaching outside the image (the MATLAB crops)."""
  b = boxes.astype(jnp.int32)                       # trunc toward zero, as .trunc().int()
  if not clip:
    h, w = b[..., 3] - b[..., 1] + 1, b[..., 2] - b[..., 0] + 1
    return b[..., 1] - 1, b[..., 0] - 1, jnp.maximum(h, 1), jnp.maximum(w, 1), (h >= 1) & (w >= 1)
  height, width = image_hw[:, 0, None], image_hw[:, 1, None]
  x = jnp.maximum(b[..., 0], 1)
  y = jnp.maximum(b[..., 1], 1)
  ex = jnp.minimum(b[..., 2], width)
  ey = jnp.minimum(b[..., 3], height)
  ok = (ey > y - 1) & (ex > x - 1)
  return y - 1, x - 1, jnp.maximum(ey - y + 1, 1), jnp.maximum(ex - x + 1, 1), ok


def _take(x, idx):
  """x [B, N, ...], idx [B, K] (>= 0) -> [B, K, ...]."""
  return jax.vmap(lambda a, i: a[i])(x, jnp.maximum(idx, 0))


def make_cascade_predict(detector, cfg: CascadeConfig, infer_cfg):
  """The jitted cascade `predict` of the module docstring for the MTCNN `detector`."""
  model = detector.model
  max_output = int(infer_cfg.max_output)
  t1, t2, t3 = (float(t) for t in cfg.thresholds)
  n1, n2, n3, n4 = (float(t) for t in cfg.nms)

  def resample(src, y0, x0, h, w, out_h, out_w, size_hw):
    """One image's window resampled the configured way (src: its integral image, or its
    pixels and size)."""
    if cfg.resample == "area":
      return area_resample(src, y0, x0, h, w, out_h, out_w, size_hw)
    image, hw = src
    return bilinear_resample(image, hw, y0, x0, h, w, out_h, out_w, size_hw)

  def stage_one(variables, sources, image_hw, height: int, width: int):
    """-> boxes [B, R, 4] (after regression, not squared), P-Net scores [B, R], valid [B, R],
    R = rnet_max, in descending score order."""
    scales = pyramid_scales(min(height, width), cfg)
    if not scales:
      bsz = image_hw.shape[0]
      return (jnp.zeros((bsz, 1, 4), jnp.float32), jnp.zeros((bsz, 1), jnp.float32),
              jnp.zeros((bsz, 1), bool))
    bsz = image_hw.shape[0]
    n_levels = jnp.asarray(level_count_table(max(height, width), cfg))[
        jnp.minimum(image_hw[:, 0], image_hw[:, 1])]                       # [B]
    levels = []                   # per level: boxes [B, n, 4], scores [B, n], live [B, n], reg
    for k, s in enumerate(scales):
      th, tw = level_size_table(height, s), level_size_table(width, s)
      lh, lw = int(th[height]), int(tw[width])
      oh, ow = jnp.asarray(th)[image_hw[:, 0]], jnp.asarray(tw)[image_hw[:, 1]]
      level = jax.vmap(lambda src, a, b, c, d: resample(src, 0, 0, a, b, c, d, (lh, lw)))(
          sources, image_hw[:, 0], image_hw[:, 1], oh, ow)
      out = model.apply(variables, normalise(level), jnp.stack([oh, ow], -1), method="pnet")
      prob = jax.nn.softmax(out["logits"], axis=-1)[..., 1]               # [B, ch, cw]
      bsz, ch, cw = prob.shape
      rows = jnp.arange(ch)[None, :, None] < pnet_output_size(oh)[:, None, None]
      cols = jnp.arange(cw)[None, None, :] < pnet_output_size(ow)[:, None, None]
      live = rows & cols & (k < n_levels)[:, None, None] & (prob >= t1)
      # Cell windows as numpy constants: float32 division as torch does it (XLA would turn a
      # division by a constant into a multiplication by its reciprocal, off by one after floor).
      x1, x2 = (jnp.asarray(a) for a in cell_edges(cw, s))
      y1, y2 = (jnp.asarray(a) for a in cell_edges(ch, s))
      boxes = jnp.stack(jnp.broadcast_arrays(x1[None, :], y1[:, None], x2[None, :],
                                             y2[:, None]), -1).reshape(1, -1, 4)
      levels.append((jnp.broadcast_to(boxes, (bsz,) + boxes.shape[1:]),
                     prob.reshape(bsz, -1), live.reshape(bsz, -1),
                     out["reg"].reshape(bsz, -1, 4)))
    # The per-level NMS of every level in one call: each level's boxes are shifted by its
    # own offset, beyond any other level's coordinates, so no box suppresses across levels.
    offset = 4.0 * (height + width + 1)
    level_id = jnp.concatenate([jnp.full((lv[1].shape[1],), k, jnp.float32)
                                for k, lv in enumerate(levels)])
    shift = (level_id * offset)[None, :, None]
    boxes = jnp.concatenate([lv[0] for lv in levels], 1) + shift
    scores = jnp.concatenate([lv[1] for lv in levels], 1)
    live = jnp.concatenate([lv[2] for lv in levels], 1)
    reg = jnp.concatenate([lv[3] for lv in levels], 1)
    res = nms_lib.batched_nms(boxes, scores, iou_threshold=n1,
                              max_output=min(cfg.level_keep, scores.shape[1]), valid=live)
    shift = jnp.broadcast_to(shift[..., 0], scores.shape)
    boxes = res.boxes - _take(shift, res.indices)[..., None]
    scores, reg, valid = res.scores, _take(reg, res.indices), res.valid
    res = nms_lib.batched_nms(boxes, scores, iou_threshold=n2,
                              max_output=min(cfg.rnet_max, boxes.shape[1]), valid=valid)
    return regress(res.boxes, _take(reg, res.indices), plus_one=False), res.scores, res.valid

  def refine(variables, sources, image_hw, boxes, valid, net: str, size: int, chunk: int):
    """Crops of `boxes` [B, N, 4] through R-Net / O-Net -> (face prob [B, N], outputs [B, N,
    ...], valid & non-empty crop). The N boxes go in chunks of `chunk` per image, and a chunk
    with no valid box in any image is skipped (valid boxes come first), so the work follows
    the number of candidates, not the capacity."""
    y0, x0, h, w, ok = crop_windows(boxes, image_hw, clip=cfg.resample == "area")
    valid = valid & ok
    bsz, n = valid.shape
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def split(a):   # [B, N] -> [n_chunks, B, chunk]
      a = jnp.pad(a, ((0, 0), (0, pad)))
      return jnp.moveaxis(a.reshape(bsz, n_chunks, chunk), 1, 0)

    one = jax.vmap(lambda src, a, b, c, d: resample(src, a, b, c, d, size, size,
                                                    (size, size)),
                   in_axes=(None, 0, 0, 0, 0))

    def run(win):
      x = normalise(jax.vmap(one)(sources, *win))                   # [B, chunk, s, s, 3]
      out = model.apply(variables, x.reshape((bsz * chunk,) + x.shape[2:]), method=net)
      return jax.tree.map(lambda v: v.reshape((bsz, chunk) + v.shape[1:]), out)

    windows = tuple(split(a) for a in (y0, x0, h, w))
    live = jnp.any(split(valid), axis=(1, 2))                          # [n_chunks]
    shapes = jax.eval_shape(run, tuple(a[0] for a in windows))
    skip = lambda _: jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), shapes)
    out = jax.lax.map(lambda args: jax.lax.cond(args[0], run, skip, args[1]),
                      (live, windows))
    out = jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1).reshape((bsz, n_chunks * chunk)
                                                               + v.shape[3:])[:, :n], out)
    prob = jax.nn.softmax(out["logits"], axis=-1)[..., 1]
    return prob, out, valid

  def early_output(boxes, scores, valid):
    """The detections of a cascade cut after stage 1 or 2 (a stage being trained): its
    regressed boxes (not squared) and scores, the first `max_output`, no landmarks."""
    k = min(max_output, boxes.shape[1])
    pad = max_output - k
    out = {"boxes": boxes[:, :k], "scores": jnp.where(valid, scores, 0.0)[:, :k],
           "valid": valid[:, :k]}
    return jax.tree.map(lambda v: jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2)),
                        out)

  @jax.jit
  def predict(variables, images, image_hw=None):
    bsz, height, width = images.shape[:3]
    if image_hw is None:
      image_hw = jnp.tile(jnp.asarray([[height, width]], jnp.int32), (bsz, 1))
    image_hw = jnp.clip(jnp.asarray(image_hw, jnp.int32), 1,
                        jnp.asarray([height, width], jnp.int32))
    sources = (jax.vmap(integral_image)(images) if cfg.resample == "area"
               else (images.astype(jnp.float32), image_hw))
    # Stage 1: P-Net over the pyramid.
    boxes, scores, valid = stage_one(variables, sources, image_hw, height, width)
    if cfg.stages == 1:
      return early_output(boxes, scores, valid)
    boxes = rerec(boxes)
    # Stage 2: R-Net.
    prob, out, valid = refine(variables, sources, image_hw, boxes, valid, "rnet", 24,
                              cfg.rnet_chunk)
    valid = valid & (prob > t2)
    res = nms_lib.batched_nms(boxes, prob, iou_threshold=n3,
                              max_output=min(cfg.onet_max, boxes.shape[1]), valid=valid)
    boxes = regress(res.boxes, _take(out["reg"], res.indices), plus_one=True)
    if cfg.stages == 2:
      return early_output(boxes, res.scores, res.valid)
    boxes = rerec(boxes)
    # Stage 3: O-Net.
    prob, out, valid = refine(variables, sources, image_hw, boxes, res.valid, "onet", 48,
                              cfg.onet_chunk)
    valid = valid & (prob > t3)
    w = boxes[..., 2] - boxes[..., 0] + 1
    h = boxes[..., 3] - boxes[..., 1] + 1
    p = out["landmarks"]
    lm = jnp.stack([w[..., None] * p[..., :5] + boxes[..., 0:1] - 1,
                    h[..., None] * p[..., 5:] + boxes[..., 1:2] - 1], -1)   # [B, N, 5, 2]
    boxes = regress(boxes, out["reg"], plus_one=True)
    res = nms_lib.batched_nms(boxes, prob, iou_threshold=n4, max_output=max_output,
                              valid=valid, pixel_offset=1.0, overlap="min")
    lm = jnp.where(res.valid[..., None, None], _take(lm, res.indices), 0.0)
    return {"boxes": res.boxes, "scores": res.scores, "landmarks": lm, "valid": res.valid}

  return predict
