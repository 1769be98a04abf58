"""Plain numpy statement of the S3FD releases' forward pass and decoding, read from a torch
state dict (OIHW), as face-alignment's `net_s3fd.py` + `detect.py` and S3FD.pytorch's
`s3fd.py` compute them (../shared/references/s3fd_ssh.md 1.1, 1.2, 3): NCHW, cross-correlation
with zero padding, ReLU, 2x2/s2 max pools (floor, or ceil with the partial window), L2Norm
x / (sqrt(sum_c x^2) + 1e-10) * w, heads permuted to NHWC and flattened in source order,
max-out of conv3_3's three background channels; priors centred at stride / 2 + j * stride
with side 4 * stride; boxes decoded with variances 0.1 / 0.2; softmax face score."""

from __future__ import annotations

import numpy as np

FA_TRUNK = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
            "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def conv2d(x, w, b, pad: int, stride: int = 1, dilation: int = 1):
  """x [C, H, W], w [O, C, k, k] -> [O, Ho, Wo] (torch.nn.functional.conv2d)."""
  c, h, wd = x.shape
  o, _, k, _ = w.shape
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
  span = dilation * (k - 1) + 1
  ho = (h + 2 * pad - span) // stride + 1
  wo = (wd + 2 * pad - span) // stride + 1
  out = np.zeros((o, ho, wo), np.float64)
  for i in range(k):
    for j in range(k):
      patch = xp[:, i * dilation: i * dilation + stride * (ho - 1) + 1: stride,
                 j * dilation: j * dilation + stride * (wo - 1) + 1: stride]
      out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
  return out + b[:, None, None]


def max_pool(x, ceil: bool):
  """2x2 / stride 2 (torch max_pool2d, ceil_mode=ceil)."""
  c, h, w = x.shape
  ho, wo = ((h + 1) // 2, (w + 1) // 2) if ceil else (h // 2, w // 2)
  xp = np.full((c, 2 * ho, 2 * wo), -np.inf)
  hh, ww = min(h, 2 * ho), min(w, 2 * wo)
  xp[:, :hh, :ww] = x[:, :hh, :ww]
  return xp.reshape(c, ho, 2, wo, 2).max(axis=(2, 4))


def forward(sd: dict, image_chw: np.ndarray, *, fc6_pad: int, fc6_dilation: int, ceil: tuple,
            names: dict):
  """-> (loc [A, 4], conf [A, 2]) of one preprocessed image [3, H, W]. `names` maps the
  Caffe layer names (FA_TRUNK, fc6, fc7, conv6_1.., the norms and heads) to the file's."""
  def c(name, x, pad=1, stride=1, dilation=1):
    n = names[name]
    return conv2d(x, sd[f"{n}.weight"], sd[f"{n}.bias"], pad, stride, dilation)

  relu = lambda v: np.maximum(v, 0.0)
  x = image_chw.astype(np.float64)
  taps, blocks = {}, [2, 2, 3, 3, 3]
  idx = 0
  for b, n in enumerate(blocks):
    if b:
      x = max_pool(x, ceil[b - 1])
    for _ in range(n):
      x = relu(c(FA_TRUNK[idx], x))
      idx += 1
    taps[b] = x
  x = max_pool(x, ceil[4])
  x = relu(c("fc6", x, pad=fc6_pad, dilation=fc6_dilation))
  fc7 = relu(c("fc7", x, pad=0))
  x = relu(c("conv6_1", fc7, pad=0))
  c6 = relu(c("conv6_2", x, stride=2))
  x = relu(c("conv7_1", c6, pad=0))
  c7 = relu(c("conv7_2", x, stride=2))
  sources = []
  for b, name in ((2, "conv3_3"), (3, "conv4_3"), (4, "conv5_3")):
    t = taps[b]
    norm = np.sqrt((t * t).sum(0, keepdims=True)) + 1e-10
    sources.append(t / norm * sd[f"{names[name + '_norm']}.weight"][:, None, None])
  sources += [fc7, c6, c7]
  heads = ["conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2"]
  locs, confs, shapes = [], [], []
  for k, (head, src) in enumerate(zip(heads, sources)):
    loc = c(f"{head}_mbox_loc", src)
    conf = c(f"{head}_mbox_conf", src)
    if k == 0:
      conf = np.concatenate([conf[:3].max(0, keepdims=True), conf[3:]], 0)
    shapes.append(loc.shape[1:])
    locs.append(loc.transpose(1, 2, 0).reshape(-1, 4))
    confs.append(conf.transpose(1, 2, 0).reshape(-1, 2))
  return np.concatenate(locs), np.concatenate(confs), shapes


def decode(loc, conf, shapes):
  """face-alignment detect.py: priors per map of stride 4 * 2^k, boxes xyxy, face score."""
  anchors = []
  for k, (h, w) in enumerate(shapes):
    s = 4 * 2 ** k
    for i in range(h):
      for j in range(w):
        anchors.append((s / 2 + j * s, s / 2 + i * s, 4.0 * s, 4.0 * s))
  a = np.asarray(anchors)
  cxy = a[:, :2] + loc[:, :2] * 0.1 * a[:, 2:]
  wh = a[:, 2:] * np.exp(loc[:, 2:] * 0.2)
  boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1)
  e = np.exp(conf - conf.max(1, keepdims=True))
  return boxes, e[:, 1] / e.sum(1)
