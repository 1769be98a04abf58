"""Plain-numpy statement of facenet-pytorch 2.6.0 MTCNN detection (no jax, no torch).

States `MTCNN(keep_all=True, post_process=False).detect(img, landmarks=True)` with the defaults
min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709, select_largest=True:

- networks: `PNet` / `RNet` / `ONet` of `facenet_pytorch/models/mtcnn.py` (VALID stride-1 convs
  with bias, per-channel PReLU, MaxPool ceil_mode=True, RNet/ONet flatten in (N, W, H, C)
  order before the first dense layer, softmax over the two class logits);
- pipeline: `detect_face`, `generateBoundingBox`, `bbreg`, `rerec`, `pad`, `imresample`,
  `nms_numpy` / `batched_nms_numpy` of `facenet_pytorch/models/utils/detect_face.py`;
- final ordering: `MTCNN.detect` (select_largest: area (x2-x1)*(y2-y1), `np.argsort(...)[::-1]`).

Written independently from the semantics (not a transcription of the torch code). Everything
after the networks runs in float32 with facenet's operation order. Details:

- `imresample` is `F.interpolate(mode='area')`, i.e. adaptive average pooling: output i of n
  averages input [floor(i*N/n), ceil((i+1)*N/n)) in y and x (the 2-D bin). Stated here as an
  exact bin sum (float64 integral image) rounded to float32, then `/ kh / kw` in float32 like
  torch's CPU kernel; for the integer-valued images detect() resamples this is bit-identical.
- The stage-1/2 NMS is the one the reference fixture ran (a pure-torch stand-in for torchvision's
  `batched_nms`, see /work/shared/reference/README.md "Deviations" 2): greedy, STABLE descending
  score sort (ties: lower index first), areas without +1, suppress when IoU > threshold. A single
  image, so the per-image coordinate offsets are zero and are omitted.
- The stage-3 NMS is `nms_numpy(..., 'Min')`: +1 areas, o = inter / min(area_i, area_j), keep
  o <= 0.7, numpy's default (non-stable) `np.argsort` ascending, pick from the end.
- Networks are computed in float64 (im2col + matmul), outputs cast to float32. facenet computes
  them in float32; the difference is float32 rounding (~1e-7), not semantics.

Deviations from facenet-pytorch:
- Single image only (facenet also takes equal-size batches; image index is always 0 here).
- facenet builds a 24/48 crop only for boxes with ey > y-1 and ex > x-1 but then indexes the
  network outputs against *all* boxes (a mask-length mismatch, i.e. an error in torch). Here such
  boxes are dropped before the network, so the crops and boxes stay aligned.
- An empty result is returned as empty arrays ([0,4], [0], [0,5,2]) instead of None / [None].
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

F32 = np.float32


# ----------------------------------------------------------------------------------------------
# weights


def load_state_dicts(folder) -> dict:
  """{'pnet': sd, 'rnet': sd, 'onet': sd}, each a dict name -> float32 numpy array."""
  from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of
  out = {}
  for name in ("pnet", "rnet", "onet"):
    sd = state_dict_of(load_torch_checkpoint(f"{folder}/{name}.pt"))
    out[name] = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  return out


# ----------------------------------------------------------------------------------------------
# area resampling (torch interpolate mode='area' == adaptive_avg_pool2d)


def _bin_edges(n_in, n_out):
  """Adaptive-pooling bins: start floor(i*n_in/n_out), end ceil((i+1)*n_in/n_out)."""
  i = np.arange(n_out, dtype=np.int64)
  start = (i * n_in) // n_out
  end = -((-(i + 1) * n_in) // n_out)
  return start, end


class _Integral:
  """Summed-area table of a CHW image (float64), for exact bin sums of any sub-rectangle."""

  def __init__(self, img_chw):
    img = np.asarray(img_chw, np.float64)
    c, h, w = img.shape
    s = np.zeros((c, h + 1, w + 1), np.float64)
    s[:, 1:, 1:] = img.cumsum(1).cumsum(2)
    self.s = s

  def resize(self, y0, x0, h, w, out_h, out_w):
    """Area-resize the region rows [y0, y0+h), cols [x0, x0+w) to (out_h, out_w) -> CHW f32."""
    ys, ye = _bin_edges(h, out_h)
    xs, xe = _bin_edges(w, out_w)
    ys, ye, xs, xe = ys + y0, ye + y0, xs + x0, xe + x0
    s = self.s
    total = (s[:, ye[:, None], xe[None, :]] - s[:, ys[:, None], xe[None, :]]
             - s[:, ye[:, None], xs[None, :]] + s[:, ys[:, None], xs[None, :]])
    kh = (ye - ys).astype(F32)[:, None]
    kw = (xe - xs).astype(F32)[None, :]
    return (total.astype(F32) / kh) / kw  # torch CPU kernel: sum / kh / kw in float32


def area_resize(img_chw, out_h, out_w) -> np.ndarray:
  """Adaptive average pooling of a CHW image to (out_h, out_w); float32 CHW."""
  img = np.asarray(img_chw)
  _, h, w = img.shape
  return _Integral(img).resize(0, 0, h, w, out_h, out_w)


def _normalise(x):
  return (np.asarray(x, F32) - F32(127.5)) * F32(0.0078125)


# ----------------------------------------------------------------------------------------------
# networks (internally NHWC float64)


def _conv(x, w, b):
  """VALID stride-1 conv. x [N,H,W,C], w [O,C,kh,kw] (torch layout), b [O] -> [N,Ho,Wo,O]."""
  o, c, kh, kw = w.shape
  wm = np.asarray(w, np.float64).reshape(o, c * kh * kw)
  win = sliding_window_view(x, (kh, kw), axis=(1, 2))  # [N, Ho, Wo, C, kh, kw]
  n, ho, wo = win.shape[:3]
  cols = win.reshape(n * ho * wo, c * kh * kw)
  out = cols @ wm.T + np.asarray(b, np.float64)
  return out.reshape(n, ho, wo, o)


def _prelu(x, a):
  a = np.asarray(a, np.float64)
  return np.where(x > 0, x, a * x)


def _pool_out(n, k, s):
  """torch MaxPool2d output size, padding 0, ceil_mode=True."""
  o = -(-(n - k) // s) + 1
  if (o - 1) * s >= n:
    o -= 1
  return o


def _maxpool_ceil(x, k, s):
  """MaxPool2d(k, s, ceil_mode=True): windows running past the edge take the max of what is in."""
  n, h, w, c = x.shape
  ho, wo = _pool_out(h, k, s), _pool_out(w, k, s)
  ph, pw = max((ho - 1) * s + k - h, 0), max((wo - 1) * s + k - w, 0)
  xp = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-np.inf)
  win = sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s][:, :ho, :wo]
  return win.max(axis=(-2, -1))


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _dense(x, w, b):
  return x @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)


def _flatten_nwhc(x):
  """torch x.permute(0, 3, 2, 1).view(N, -1) of an NCHW tensor, from our NHWC array."""
  return x.transpose(0, 2, 1, 3).reshape(x.shape[0], -1)


def _to_nhwc(x_nchw):
  return np.asarray(x_nchw, np.float64).transpose(0, 2, 3, 1)


def pnet(sd, x_nchw):
  """PNet forward (float64 inside). x [N,3,H,W] -> reg [N,4,H',W'], prob [N,2,H',W'] float32."""
  x = _to_nhwc(x_nchw)
  x = _prelu(_conv(x, sd["conv1.weight"], sd["conv1.bias"]), sd["prelu1.weight"])
  x = _maxpool_ceil(x, 2, 2)
  x = _prelu(_conv(x, sd["conv2.weight"], sd["conv2.bias"]), sd["prelu2.weight"])
  x = _prelu(_conv(x, sd["conv3.weight"], sd["conv3.bias"]), sd["prelu3.weight"])
  prob = _softmax(_conv(x, sd["conv4_1.weight"], sd["conv4_1.bias"]))
  reg = _conv(x, sd["conv4_2.weight"], sd["conv4_2.bias"])
  return (reg.transpose(0, 3, 1, 2).astype(F32), prob.transpose(0, 3, 1, 2).astype(F32))


def _rnet_one(sd, x):
  x = _prelu(_conv(x, sd["conv1.weight"], sd["conv1.bias"]), sd["prelu1.weight"])
  x = _maxpool_ceil(x, 3, 2)
  x = _prelu(_conv(x, sd["conv2.weight"], sd["conv2.bias"]), sd["prelu2.weight"])
  x = _maxpool_ceil(x, 3, 2)
  x = _prelu(_conv(x, sd["conv3.weight"], sd["conv3.bias"]), sd["prelu3.weight"])
  x = _prelu(_dense(_flatten_nwhc(x), sd["dense4.weight"], sd["dense4.bias"]), sd["prelu4.weight"])
  prob = _softmax(_dense(x, sd["dense5_1.weight"], sd["dense5_1.bias"]))
  reg = _dense(x, sd["dense5_2.weight"], sd["dense5_2.bias"])
  return reg, prob


def _onet_one(sd, x):
  x = _prelu(_conv(x, sd["conv1.weight"], sd["conv1.bias"]), sd["prelu1.weight"])
  x = _maxpool_ceil(x, 3, 2)
  x = _prelu(_conv(x, sd["conv2.weight"], sd["conv2.bias"]), sd["prelu2.weight"])
  x = _maxpool_ceil(x, 3, 2)
  x = _prelu(_conv(x, sd["conv3.weight"], sd["conv3.bias"]), sd["prelu3.weight"])
  x = _maxpool_ceil(x, 2, 2)
  x = _prelu(_conv(x, sd["conv4.weight"], sd["conv4.bias"]), sd["prelu4.weight"])
  x = _prelu(_dense(_flatten_nwhc(x), sd["dense5.weight"], sd["dense5.bias"]), sd["prelu5.weight"])
  prob = _softmax(_dense(x, sd["dense6_1.weight"], sd["dense6_1.bias"]))
  reg = _dense(x, sd["dense6_2.weight"], sd["dense6_2.bias"])
  lmk = _dense(x, sd["dense6_3.weight"], sd["dense6_3.bias"])
  return reg, lmk, prob


def _chunked(fn, sd, x_nchw, chunk=256):
  x = _to_nhwc(x_nchw)
  outs = [fn(sd, x[i:i + chunk]) for i in range(0, len(x), chunk)]
  return tuple(np.concatenate(parts, 0).astype(F32) for parts in zip(*outs))


def rnet(sd, x_nchw):
  """RNet forward (float64 inside). x [N,3,24,24] -> reg [N,4], prob [N,2] float32."""
  return _chunked(_rnet_one, sd, x_nchw)


def onet(sd, x_nchw):
  """ONet forward (float64 inside). x [N,3,48,48] -> reg [N,4], landmarks [N,10], prob [N,2]."""
  return _chunked(_onet_one, sd, x_nchw)


# ----------------------------------------------------------------------------------------------
# box helpers (float32, facenet's operation order)


def pyramid_scales(h, w, min_face_size=20, factor=0.709):
  """detect_face's scale pyramid (python floats)."""
  m = 12.0 / min_face_size
  minl = min(h, w) * m
  scales = []
  scale = m
  while minl >= 12:
    scales.append(scale)
    scale = scale * factor
    minl = minl * factor
  return scales


def generate_bounding_box(reg, prob, scale, thresh):
  """generateBoundingBox for one image. reg [4,H,W], prob [H,W] (face channel) float32.

  -> [K, 9] float32 rows (x1, y1, x2, y2, score, r0..r3), cells in row-major order.
  """
  rows, cols = np.nonzero(prob >= F32(thresh))
  col_row = np.stack([cols, rows], 1).astype(F32)
  q1 = np.floor((F32(2) * col_row + F32(1)) / F32(scale))
  q2 = np.floor((F32(2) * col_row + F32(12)) / F32(scale))
  score = prob[rows, cols][:, None]
  r = reg[:, rows, cols].T
  return np.concatenate([q1, q2, score, r], 1).astype(F32)


def nms_greedy(boxes, scores, thresh):
  """Stage-1/2 NMS: stable descending score order, areas without +1, drop IoU > thresh.

  Returns kept indices in keep (= score-descending) order.
  """
  boxes = np.asarray(boxes, F32)
  scores = np.asarray(scores, F32)
  n = len(boxes)
  if n == 0:
    return np.zeros(0, np.int64)
  order = np.argsort(-scores, kind="stable")
  x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
  area = (x2 - x1) * (y2 - y1)
  suppressed = np.zeros(n, bool)
  keep = []
  zero = F32(0)
  thr = F32(thresh)
  for a in range(n):
    if suppressed[a]:
      continue
    keep.append(order[a])
    rest = slice(a + 1, n)
    w = np.maximum(zero, np.minimum(x2[a], x2[rest]) - np.maximum(x1[a], x1[rest]))
    h = np.maximum(zero, np.minimum(y2[a], y2[rest]) - np.maximum(y1[a], y1[rest]))
    inter = w * h
    iou = inter / (area[a] + area[rest] - inter)
    suppressed[rest] |= iou > thr
  return np.asarray(keep, np.int64)


def nms_min_numpy(boxes, scores, thresh):
  """Stage-3 `nms_numpy(..., 'Min')`: +1 areas, inter/min(area), keep o <= thresh.

  Ordering is numpy's default `np.argsort(scores)` (ascending, not stable), picking the last.
  """
  boxes = np.asarray(boxes, F32)
  scores = np.asarray(scores, F32)
  if len(boxes) == 0:
    return np.zeros(0, np.int64)
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  one, zero = F32(1), F32(0)
  area = (x2 - x1 + one) * (y2 - y1 + one)
  remaining = np.argsort(scores)
  keep = []
  while len(remaining):
    i = remaining[-1]
    keep.append(i)
    others = remaining[:-1]
    w = np.maximum(zero, np.minimum(x2[i], x2[others]) - np.maximum(x1[i], x1[others]) + one)
    h = np.maximum(zero, np.minimum(y2[i], y2[others]) - np.maximum(y1[i], y1[others]) + one)
    o = (w * h) / np.minimum(area[i], area[others])
    remaining = others[o <= F32(thresh)]
  return np.asarray(keep, np.int64)


def rerec(boxes):
  """Square boxes around their centres (l = max(w, h), w = x2 - x1, no +1). Returns a copy."""
  b = np.array(boxes, F32)
  h = b[:, 3] - b[:, 1]
  w = b[:, 2] - b[:, 0]
  side = np.maximum(w, h)
  half = F32(0.5)
  b[:, 0] = b[:, 0] + w * half - side * half
  b[:, 1] = b[:, 1] + h * half - side * half
  b[:, 2] = b[:, 0] + side
  b[:, 3] = b[:, 1] + side
  return b


def bbreg(boxes, reg):
  """Apply regression with w = x2 - x1 + 1, h = y2 - y1 + 1. Returns a copy."""
  b = np.array(boxes, F32)
  reg = np.asarray(reg, F32)
  w = b[:, 2] - b[:, 0] + F32(1)
  h = b[:, 3] - b[:, 1] + F32(1)
  x1 = b[:, 0] + reg[:, 0] * w
  y1 = b[:, 1] + reg[:, 1] * h
  x2 = b[:, 2] + reg[:, 2] * w
  y2 = b[:, 3] + reg[:, 3] * h
  b[:, 0], b[:, 1], b[:, 2], b[:, 3] = x1, y1, x2, y2
  return b


def pad(boxes, w, h):
  """Truncate to int32 and clip: x, y >= 1, ex <= w, ey <= h. -> (y, ey, x, ex) int arrays."""
  t = np.trunc(np.asarray(boxes, F32)[:, :4]).astype(np.int32)
  x = np.maximum(t[:, 0], 1)
  y = np.maximum(t[:, 1], 1)
  ex = np.minimum(t[:, 2], w)
  ey = np.minimum(t[:, 3], h)
  return y, ey, x, ex


def _crops(integral, boxes, w, h, size):
  """Crops img[:, y-1:ey, x-1:ex] area-resized to size; -> (valid mask, normalised NCHW)."""
  y, ey, x, ex = pad(boxes, w, h)
  valid = (ey > y - 1) & (ex > x - 1)
  out = [integral.resize(y[k] - 1, x[k] - 1, ey[k] - y[k] + 1, ex[k] - x[k] + 1, size, size)
         for k in np.nonzero(valid)[0]]
  data = np.stack(out, 0) if out else np.zeros((0, 3, size, size), F32)
  return valid, _normalise(data)


# ----------------------------------------------------------------------------------------------
# detect


def detect(sds, image_rgb_uint8, min_face_size=20, thresholds=(0.6, 0.7, 0.7), factor=0.709,
           stats=None):
  """MTCNN.detect(img, landmarks=True) with keep_all=True, select_largest=True, one image.

  image_rgb_uint8: [H, W, 3] uint8 RGB. Returns dict(boxes [N,4] f32 xyxy (not clipped),
  probs [N] f32 (ONet score), landmarks [N,5,2] f32 (x, y)), largest box first.
  If `stats` is a dict it receives the stage counts (see keys below) and the scales.
  """
  img = np.asarray(image_rgb_uint8)
  h, w = img.shape[:2]
  integral = _Integral(img.transpose(2, 0, 1))
  st = {} if stats is None else stats
  scales = pyramid_scales(h, w, min_face_size, factor)
  st["scales"] = list(scales)
  st["level_sizes"] = []
  st["pnet_candidates"] = []
  st["pnet_kept"] = []

  # Stage 1: P-Net per pyramid level, NMS 0.5 per level, then 0.7 over all levels.
  per_level = []
  for scale in scales:
    hs, ws = int(h * scale + 1), int(w * scale + 1)
    st["level_sizes"].append((hs, ws))
    x = _normalise(integral.resize(0, 0, h, w, hs, ws))[None]
    reg, prob = pnet(sds["pnet"], x)
    cand = generate_bounding_box(reg[0], prob[0, 1], scale, thresholds[0])
    keep = nms_greedy(cand[:, :4], cand[:, 4], 0.5)
    st["pnet_candidates"].append(int(len(cand)))
    st["pnet_kept"].append(int(len(keep)))
    per_level.append(cand[keep])
  boxes = np.concatenate(per_level, 0) if per_level else np.zeros((0, 9), F32)
  boxes = boxes[nms_greedy(boxes[:, :4], boxes[:, 4], 0.7)]
  st["pnet_after_global_nms"] = int(len(boxes))

  # P-Net regression with regw = x2 - x1 (no +1), then square.
  regw = boxes[:, 2] - boxes[:, 0]
  regh = boxes[:, 3] - boxes[:, 1]
  boxes = np.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                    boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                    boxes[:, 4]], 1).astype(F32)
  boxes = rerec(boxes)

  # Stage 2: R-Net on 24x24 crops.
  st["rnet_in"] = st["rnet_pass"] = st["rnet_after_nms"] = 0
  if len(boxes):
    valid, data = _crops(integral, boxes, w, h, 24)
    boxes = boxes[valid]  # deviation: facenet would misalign (error) if any crop were skipped
    st["rnet_in"] = int(len(boxes))
    reg, prob = rnet(sds["rnet"], data)
    score = prob[:, 1]
    ipass = score > F32(thresholds[1])
    boxes = np.concatenate([boxes[ipass, :4], score[ipass, None]], 1)
    mv = reg[ipass]
    st["rnet_pass"] = int(len(boxes))
    pick = nms_greedy(boxes[:, :4], boxes[:, 4], 0.7)
    boxes, mv = boxes[pick], mv[pick]
    st["rnet_after_nms"] = int(len(boxes))
    boxes = rerec(bbreg(boxes, mv))

  # Stage 3: O-Net on 48x48 crops, landmarks from the pre-regression boxes, 'Min' NMS.
  points = np.zeros((0, 5, 2), F32)
  st["onet_in"] = st["onet_pass"] = 0
  if len(boxes):
    valid, data = _crops(integral, boxes, w, h, 48)
    boxes = boxes[valid]  # deviation: see above
    st["onet_in"] = int(len(boxes))
    reg, lmk, prob = onet(sds["onet"], data)
    score = prob[:, 1]
    ipass = score > F32(thresholds[2])
    lmk = lmk[ipass]
    boxes = np.concatenate([boxes[ipass, :4], score[ipass, None]], 1)
    mv = reg[ipass]
    st["onet_pass"] = int(len(boxes))
    wi = (boxes[:, 2] - boxes[:, 0] + F32(1))[:, None]
    hi = (boxes[:, 3] - boxes[:, 1] + F32(1))[:, None]
    px = wi * lmk[:, :5] + boxes[:, 0:1] - F32(1)
    py = hi * lmk[:, 5:10] + boxes[:, 1:2] - F32(1)
    points = np.stack([px, py], 2).astype(F32)
    boxes = bbreg(boxes, mv)
    pick = nms_min_numpy(boxes[:, :4], boxes[:, 4], 0.7)
    boxes, points = boxes[pick], points[pick]
  boxes = np.asarray(boxes, F32).reshape(-1, 5)
  st["final"] = int(len(boxes))

  # MTCNN.detect, select_largest=True: area descending via np.argsort(...)[::-1].
  order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
  boxes, points = boxes[order], points[order]
  return dict(boxes=boxes[:, :4].copy(), probs=boxes[:, 4].copy(), landmarks=points)
