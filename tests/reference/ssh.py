"""Plain numpy statement of the SSH release (Najibi et al. 2017), read from
mahyarnajibi/SSH (../shared/references/s3fd_ssh.md 2):

- @5f41b5c : SSH/layers/generate_anchors.py, SSH/layers/anchor_target_layer.py,
  SSH/layers/proposal_layer.py
- @be1e6a6 : lib/utils/bbox_transform.py, lib/utils/bbox.pyx (bbox_overlaps), lib/utils/blob.py
- @a0d10a8 : SSH/configs/default_config.yml, SSH/configs/wider.yml, SSH/configs/wider_pyramid.yml
- @7401699 : SSH/models/train_ssh.prototxt; @aa45b4f : SSH/models/test_ssh.prototxt
- @41751ea : SSH/test.py; @56f96f7 : lib/utils/test_utils.py
- @5ecbf30 : lib/nms/nms_wrapper.py, gpu_nms.pyx, nms_kernel.cu
- @7308a2f : lib/roi_data_layer/minibatch.py; @07b390d : lib/datasets/wider.py;
  @4234c06 : lib/datasets/imdb.py; @0583419 : SSH/train.py
- the Caffe layers (caffe-ssh itself is not stored): py-faster-rcnn's SmoothL1Loss
  (WalterMa/caffe-fast-rcnn @fc4e619 : src/caffe/layers/smooth_L1_loss_layer.cu) and BVLC
  SoftmaxWithLoss (`get_normalizer`, VALID -> max(1, valid count); -log(max(p, FLT_MIN))).

Conventions (all float64 unless stated):
- Boxes are x1 y1 x2 y2 in the +1 convention: w = x2 - x1 + 1.
- The centre used by bbox_transform is x1 + 0.5 w, so an anchor [0, 0, 15, 15] has centre 8
  there, while generate_anchors places it at 7.5. Decoding returns x2 = ctr + 0.5 w with no -1,
  so bbox_transform_inv(a, bbox_transform(a, g)) = g + [0, 0, 1, 1] (and zero deltas give
  a + [0, 0, 1, 1]).
- **Flat anchor order (h, w, a), a fastest.** The release builds shifts from
  np.meshgrid(shift_x, shift_y), raveled row-major (h outer, w inner), and adds the A base
  anchors as (K, A, 4) -> (K*A, 4). Network outputs are permuted to match:
  - cls_score is (1, 2A, H, W). After the (1, 2, A*H, W) reshape, channel a is the bg logit and
    channel A + a the fg logit of anchor a.
  - bbox_pred is (1, 4A, H, W), with channel 4a + (dx, dy, dw, dh).
  - Both are moved to (H, W, A, .) and flattened.
- Ties. numpy's default argsort (used by the release for the OHEM ranks, the per-module
  top-1000 and gpu_nms) is not stable, and the release reverses it with [::-1], so tied items
  come out in an unspecified order (arrays of 16 or fewer, sorted by insertion sort, come out
  higher index first). This reference breaks every tie by **lower flat index first**.
"""

from __future__ import annotations

import math

import numpy as np

from . import nms as nms_ref
from .s3fd import conv2d, max_pool

FLT_MIN = float(np.finfo(np.float32).tiny)

# Anchor modules as the prototxts' param_str give them: (stride, scales, allowed_border).
MODULES = {
  "m1": (8, (1, 2), 0),
  "m2": (16, (4, 8), 0),
  "m3": (32, (16, 32), 512),
}

TRUNK = [("conv1_1", 64, 3), ("conv1_2", 64, 64), ("conv2_1", 128, 64), ("conv2_2", 128, 128),
         ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
         ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
         ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)]
MODULE_WIDTHS = {"m1": (128, 128, 64), "m2": (512, 256, 128), "m3": (512, 256, 128)}


# ------------------------------------------------------------------------------ anchors

def generate_anchors(base_size=16, ratios=(1,), scales=(1, 2)):
  """py-faster-rcnn generate_anchors: the (0, 0, base-1, base-1) window; per ratio
  w = round(sqrt(w h / r)), h = round(w r) (numpy round, half to even) about the centre
  x1 + (w - 1) / 2; then per scale w * s, h * s about the same centre. -> [R*S, 4], ratio
  outer, scale inner."""
  ratios = np.asarray(ratios, np.float64)
  scales = np.asarray(scales, np.float64)
  w = h = float(base_size)
  cx = cy = 0.5 * (base_size - 1)
  out = []
  for r in ratios:
    rw = np.round(np.sqrt(w * h / r))
    rh = np.round(rw * r)
    for s in scales:
      sw, sh = rw * s, rh * s
      out.append([cx - 0.5 * (sw - 1), cy - 0.5 * (sh - 1),
                  cx + 0.5 * (sw - 1), cy + 0.5 * (sh - 1)])
  return np.asarray(out, np.float64)


def anchor_grid(stride, scales, map_hw, base_size=16, ratios=(1,)):
  """-> [H*W*A, 4], row (h * W + w) * A + a = base anchor a + (w, h, w, h) * stride."""
  base = generate_anchors(base_size, ratios, scales)
  h, w = map_hw
  out = np.zeros((h, w, len(base), 4), np.float64)
  for y in range(h):
    for x in range(w):
      out[y, x] = base + np.array([x, y, x, y], np.float64) * stride
  return out.reshape(-1, 4)


def module_anchors(map_hws: dict) -> dict:
  """{module: map_hw} -> {module: anchor_grid} with MODULES' strides and scales."""
  return {m: anchor_grid(MODULES[m][0], MODULES[m][1], hw) for m, hw in map_hws.items()}


# ------------------------------------------------------------------------------ box coding

def bbox_transform(anchors, gt):
  """Targets (dx, dy, dw, dh): +1 widths, centres x1 + 0.5 w, no variances."""
  a = np.asarray(anchors, np.float64).reshape(-1, 4)
  g = np.asarray(gt, np.float64).reshape(-1, 4)
  aw, ah = a[:, 2] - a[:, 0] + 1.0, a[:, 3] - a[:, 1] + 1.0
  ax, ay = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
  gw, gh = g[:, 2] - g[:, 0] + 1.0, g[:, 3] - g[:, 1] + 1.0
  gx, gy = g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
  return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], 1)


def bbox_transform_inv(anchors, deltas, overflow_clamp=True):
  """Boxes: ctr = d * w + ctr_a, size = exp(d) * w_a, x1 = ctr - 0.5 size, x2 = ctr + 0.5 size.

  The release runs with np.seterr(over='raise') on float32 Caffe blobs. If exp(dw) or exp(dh)
  overflows in float32 for any row of the call, it replaces every dw and dh above 50 by 5 and
  decodes again (bbox_transform.py:52-65). overflow_clamp=True reproduces this."""
  a = np.asarray(anchors, np.float64).reshape(-1, 4)
  d = np.array(deltas, np.float64).reshape(-1, 4)
  if overflow_clamp:
    with np.errstate(over="ignore"):
      big = ~np.isfinite(np.exp(d[:, 2:].astype(np.float32)))
    if big.any():
      sub = d[:, 2:]
      sub[sub > 50] = 5.0
  aw, ah = a[:, 2] - a[:, 0] + 1.0, a[:, 3] - a[:, 1] + 1.0
  ax, ay = a[:, 0] + 0.5 * aw, a[:, 1] + 0.5 * ah
  cx, cy = d[:, 0] * aw + ax, d[:, 1] * ah + ay
  pw, ph = np.exp(d[:, 2]) * aw, np.exp(d[:, 3]) * ah
  return np.stack([cx - 0.5 * pw, cy - 0.5 * ph, cx + 0.5 * pw, cy + 0.5 * ph], 1)


def clip_boxes(boxes, hw):
  """x into [0, W - 1], y into [0, H - 1] (hw = the network input's im_info[:2])."""
  b = np.array(boxes, np.float64).reshape(-1, 4)
  h, w = hw
  b[:, 0::2] = np.maximum(np.minimum(b[:, 0::2], w - 1), 0)
  b[:, 1::2] = np.maximum(np.minimum(b[:, 1::2], h - 1), 0)
  return b


def bbox_overlaps(boxes, gt):
  """lib/utils/bbox.pyx: +1 IoU, float64; a pair counts only when iw > 0 and ih > 0.
  -> [N, M]."""
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  g = np.asarray(gt, np.float64).reshape(-1, 4)
  out = np.zeros((len(b), len(g)), np.float64)
  area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
  for k in range(len(g)):
    area_g = (g[k, 2] - g[k, 0] + 1) * (g[k, 3] - g[k, 1] + 1)
    iw = np.minimum(b[:, 2], g[k, 2]) - np.maximum(b[:, 0], g[k, 0]) + 1
    ih = np.minimum(b[:, 3], g[k, 3]) - np.maximum(b[:, 1], g[k, 1]) + 1
    ok = (iw > 0) & (ih > 0)
    inter = iw * ih
    out[ok, k] = inter[ok] / (area_b[ok] + area_g - inter[ok])
  return out


# ------------------------------------------------------------------------------ targets

def _rank(values, descending):
  """Indices sorted by value, ties lower index first."""
  v = np.asarray(values, np.float64)
  idx = np.arange(len(v))
  return np.lexsort((idx, -v if descending else v))


def anchor_targets(anchors, gt, image_hw, *, border, fg_scores=None, num_samples=256,
                   fg_fraction=0.25, pos_iou=0.5, neg_iou=0.3, hard_positives=True,
                   rng=None, gt_mask=None):
  """AnchorTargetLayer.forward for one module of one image.

  anchors [A, 4] in anchor_grid order; gt [M, 4]; image_hw = the blob (H, W).
  fg_scores [A] are the OHEM branch's softmax fg probabilities in the same order. None means
  the layer has 4 bottoms (no OHEM), so positives and negatives are both subsampled at random
  with rng.choice(..., replace=False), disabling the surplus as the release does.

  Steps, in the release's order:
  1. Border filter. An anchor is "inside" when x1 >= -b, y1 >= -b, x2 < W + b and y2 < H + b.
     If no anchor passes, every anchor is used.
  2. Inside anchors start at -1. Those with max IoU < neg_iou become 0, then those with
     max IoU >= pos_iou become 1. No per-gt forced positive (FORCE_FG_FOR_EACH_GT False).
  3. If there are more than int(fg_fraction * num_samples) positives, keep that many:
     - with fg_scores and hard_positives, the lowest fg_scores (the release ranks 1 - p);
     - otherwise a random choice.
  4. Negatives: keep num_samples - #positives of them. With fg_scores these are the highest
     fg_scores among all label-0 anchors (whatever hard_positives is); without, random.
  5. bbox_targets = bbox_transform(anchor, gt[argmax IoU]) for every inside anchor, including
     negatives and ignored ones (their inside weights are 0). Outside anchors get label -1 and
     target 0.
  6. num_examples = #(labels >= 0): the outside weight 1 / num_examples that normalises the
     regression loss.

  GT edge cases:
  - Zero-filled rows of wider.py keep gt_class 1 (gt_classes is np.ones), so minibatch.py does
    not drop them. They act as the 1x1 box at pixel (0, 0), or (W - 1, 0) after a flip, with
    IoU 1 / area(anchor) for anchors covering that pixel. That is never positive for a
    16 px anchor, but such a row can be an anchor's argmax. This function keeps them unless
    gt_mask drops them.
  - With no gt (M = 0, or all masked) the release would crash (argmax over an empty axis).
    Here every inside anchor has max IoU 0, so all are negative candidates, and targets are 0.
  Ties: lower anchor index first.
  -> (labels [A] int64 in {1, 0, -1}, bbox_targets [A, 4], num_examples)."""
  anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
  gt = np.asarray(gt, np.float64).reshape(-1, 4)
  if gt_mask is not None:
    gt = gt[np.asarray(gt_mask, bool)]
  n = len(anchors)
  h, w = image_hw
  b = border
  inside = np.where((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) &
                    (anchors[:, 2] < w + b) & (anchors[:, 3] < h + b))[0]
  if len(inside) == 0:
    inside = np.arange(n)
  ins = anchors[inside]
  if len(gt):
    ov = bbox_overlaps(ins, gt)
    arg = ov.argmax(1)
    best = ov[np.arange(len(ins)), arg]
  else:
    arg = np.zeros(len(ins), np.int64)
    best = np.zeros(len(ins), np.float64)
  lab = -np.ones(len(ins), np.int64)
  lab[best < neg_iou] = 0
  lab[best >= pos_iou] = 1

  scores = None if fg_scores is None else np.asarray(fg_scores, np.float64).reshape(-1)[inside]
  max_fg = int(fg_fraction * num_samples)
  fg = np.where(lab == 1)[0]
  if len(fg) > max_fg:
    if scores is not None and hard_positives:
      keep = fg[_rank(scores[fg], descending=False)[:max_fg]]
      lab[fg] = -1
      lab[keep] = 1
    else:
      if rng is None:
        raise ValueError("random positive subsampling needs rng")
      lab[rng.choice(fg, size=len(fg) - max_fg, replace=False)] = -1
  num_bg = num_samples - int((lab == 1).sum())
  bg = np.where(lab == 0)[0]
  if len(bg) > num_bg:
    if scores is None:
      if rng is None:
        raise ValueError("random negative subsampling needs rng")
      lab[rng.choice(bg, size=len(bg) - num_bg, replace=False)] = -1
    else:
      keep = bg[_rank(scores[bg], descending=True)[:num_bg]]
      lab[bg] = -1
      lab[keep] = 0

  targets = np.zeros((n, 4), np.float64)
  if len(gt):
    targets[inside] = bbox_transform(ins, gt[arg])
  labels = -np.ones(n, np.int64)
  labels[inside] = lab
  return labels, targets, int((labels >= 0).sum())


# ------------------------------------------------------------------------------ losses

def smooth_l1(x, sigma=3.0):
  """py-faster-rcnn SmoothL1: 0.5 (sigma x)^2 if |x| < 1 / sigma^2 else |x| - 0.5 / sigma^2."""
  x = np.asarray(x, np.float64)
  s2 = sigma * sigma
  ax = np.abs(x)
  return np.where(ax < 1.0 / s2, 0.5 * x * x * s2, ax - 0.5 / s2)


def log_softmax(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def module_loss(cls_logits, deltas, labels, bbox_targets, sigma=3.0):
  """One module's (SoftmaxWithLoss, SmoothL1Loss), both with loss_weight 1.

  - cls: -log(max(p_label, FLT_MIN)) summed over labels != -1, divided by
    max(1, #labels != -1) (normalize: true -> VALID).
  - reg: the inside weight 1 on positives multiplies (pred - target) before smooth L1, and the
    outside weight 1 / num_examples multiplies each sampled anchor's term. The sum is divided
    by the blob's num (1 image). This gives sum over positives and their 4 coordinates of
    smooth_l1(pred - target), divided by num_examples (= #labels >= 0, the same count).
  -> (cls_loss, reg_loss)."""
  labels = np.asarray(labels).reshape(-1)
  lsm = log_softmax(np.asarray(cls_logits, np.float64).reshape(-1, 2))
  valid = labels >= 0
  n_valid = int(valid.sum())
  picked = lsm[np.where(valid)[0], labels[valid].astype(np.int64)]
  cls = -np.maximum(picked, math.log(FLT_MIN)).sum() / max(1, n_valid)
  pos = labels == 1
  diff = (np.asarray(deltas, np.float64).reshape(-1, 4) -
          np.asarray(bbox_targets, np.float64).reshape(-1, 4))
  reg = smooth_l1(diff[pos], sigma).sum() / n_valid if n_valid else 0.0
  return float(cls), float(reg)


# ------------------------------------------------------------------------------ network

def relu(x):
  return np.maximum(x, 0.0)


def deconv2d(x, w, stride, pad, group):
  """Caffe Deconvolution (the adjoint of the grouped Convolution with the same blob), no bias.

  x [C, H, W]; w [C, O / group, k, k] (the blob layout: bottom channels, top channels per
  group). top[g*Og + o, i*s - p + u, j*s - p + v] += w[g*Cg + c, o, u, v] * x[g*Cg + c, i, j].
  Output side s (H - 1) + k - 2p."""
  c, h, wd = x.shape
  _, og, k, _ = w.shape
  cg = c // group
  full = np.zeros((group * og, stride * (h - 1) + k, stride * (wd - 1) + k), np.float64)
  xg = x.reshape(group, cg, h, wd)
  wg = w.reshape(group, cg, og, k, k)
  for u in range(k):
    for v in range(k):
      contrib = np.einsum("gchw,gco->gohw", xg, wg[:, :, :, u, v]).reshape(-1, h, wd)
      full[:, u: u + stride * (h - 1) + 1: stride, v: v + stride * (wd - 1) + 1: stride] += contrib
  return full[:, pad: full.shape[1] - pad, pad: full.shape[2] - pad]


def bilinear_kernel(k):
  """Caffe's bilinear filler: f = ceil(k / 2), c = (2f - 1 - f % 2) / (2f),
  w[y, x] = (1 - |x / f - c|) (1 - |y / f - c|)."""
  f = math.ceil(k / 2)
  c = (2 * f - 1 - f % 2) / (2.0 * f)
  t = 1 - np.abs(np.arange(k) / f - c)
  return np.outer(t, t)


def blob_shapes() -> dict:
  """Caffe layer name -> shapes of its blobs ([W, b], deconv [W]): 75 blobs."""
  out = {n: [(o, i, 3, 3), (o,)] for n, o, i in TRUNK}
  out["conv5_128"] = [(128, 512, 1, 1), (128,)]
  out["conv4_128"] = [(128, 512, 1, 1), (128,)]
  out["conv5_128_up"] = [(128, 1, 4, 4)]
  out["conv4_fuse_final"] = [(128, 128, 3, 3), (128,)]
  for m, (cin, x, y) in MODULE_WIDTHS.items():
    p = f"{m}@ssh_"
    out[p + "3x3"] = [(x, cin, 3, 3), (x,)]
    out[p + "dimred"] = [(y, cin, 3, 3), (y,)]
    for n in ("5x5", "7x7-1", "7x7"):
      out[p + n] = [(y, y, 3, 3), (y,)]
    out[p + "cls_score"] = [(4, x + 2 * y, 1, 1), (4,)]
    out[p + "bbox_pred"] = [(8, x + 2 * y, 1, 1), (8,)]
  return out


def arrange_outputs(cls, box):
  """cls [2A, H, W], box [4A, H, W] -> logits [H*W*A, 2] (bg, fg) and deltas [H*W*A, 4] in
  (h, w, a) order: anchor a's logits are channels (a, A + a), its deltas 4a .. 4a + 3."""
  a2, h, w = cls.shape
  a = a2 // 2
  logits = np.stack([cls[:a], cls[a:]], -1).transpose(1, 2, 0, 3).reshape(-1, 2)
  deltas = box.reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
  return logits, deltas


def forward(blobs: dict, image_chw) -> dict:
  """test_ssh.prototxt on one preprocessed image [3, H, W] (BGR minus PIXEL_MEANS), NCHW.

  Trunk: VGG16 conv1_1 .. conv5_3, each 3x3 / p1 with ReLU; 2x2 / s2 ceil max pools after
  conv1_2, 2_2, 3_3 and 4_3 only.
  M1 input:
    relu(conv4_fuse_final(
        crop(deconv(relu(conv5_128(conv5_3))))    # k4 s2 p1 group 128, no bias,
                                                   # top-left crop to conv4_128's H x W
        + relu(conv4_128(conv4_3))))
  M2 input: conv5_3. M3 input: pool6 = 2x2 / s2 ceil max pool of conv5_3 (no pad).
  Each module:
    c3 = 3x3(x);  d = relu(dimred(x));  c5 = 5x5(d);  c7 = 7x7(relu(7x7-1(d)))
    out = relu(concat[c3, c5, c7]);  cls_score = 1x1(out);  bbox_pred = 1x1(out)
  -> {module: (logits [H*W*A, 2], deltas [H*W*A, 4], (H, W))}."""
  def conv(name, x, pad):
    w, b = blobs[name][0], blobs[name][1]
    return conv2d(x, np.asarray(w, np.float64), np.asarray(b, np.float64), pad)

  x = np.asarray(image_chw, np.float64)
  taps = {}
  idx = 0
  for blk, n in enumerate([2, 2, 3, 3, 3]):
    if blk:
      x = max_pool(x, ceil=True)
    for _ in range(n):
      x = relu(conv(TRUNK[idx][0], x, 1))
      idx += 1
    taps[blk] = x
  conv4_3, conv5_3 = taps[3], taps[4]
  c5 = relu(conv("conv5_128", conv5_3, 0))
  up = deconv2d(c5, np.asarray(blobs["conv5_128_up"][0], np.float64), 2, 1, c5.shape[0])
  c4 = relu(conv("conv4_128", conv4_3, 0))
  fuse = up[:, :c4.shape[1], :c4.shape[2]] + c4
  inputs = {"m1": relu(conv("conv4_fuse_final", fuse, 1)), "m2": conv5_3,
            "m3": max_pool(conv5_3, ceil=True)}
  out = {}
  for m, x in inputs.items():
    p = f"{m}@ssh_"
    c3 = conv(p + "3x3", x, 1)
    d = relu(conv(p + "dimred", x, 1))
    c5x5 = conv(p + "5x5", d, 1)
    c7 = conv(p + "7x7", relu(conv(p + "7x7-1", d, 1)), 1)
    cat = relu(np.concatenate([c3, c5x5, c7], 0))
    logits, deltas = arrange_outputs(conv(p + "cls_score", cat, 0), conv(p + "bbox_pred", cat, 0))
    out[m] = (logits, deltas, tuple(x.shape[1:]))
  return out


# ------------------------------------------------------------------------------ test time

def softmax_fg(logits):
  return np.exp(log_softmax(logits)[:, 1])


def module_detections(forward_out, anchors, image_hw, *, top_per_module=1000, scale=1.0,
                      drop_m3=False):
  """ProposalLayer (TEST) per module, m1, m2, m3 in the test prototxt's concat order:
  - fg prob; decode; clip to the input; the min-size filter with ANCHOR_MIN_SIZE 0 keeps all;
  - the top `top_per_module` by prob (ties: lower anchor index first), no NMS;
  - boxes divided by the test scale (test.py forward_net).
  drop_m3 skips m3. -> (boxes [N, 4], scores [N]) concatenated in that order."""
  boxes, scores = [], []
  for m in ("m1", "m2", "m3"):
    if m not in forward_out or (drop_m3 and m == "m3"):
      continue
    logits, deltas, _ = forward_out[m]
    p = softmax_fg(logits)
    b = clip_boxes(bbox_transform_inv(anchors[m], deltas), image_hw)
    order = _rank(p, descending=True)
    if top_per_module > 0:
      order = order[:top_per_module]
    boxes.append(b[order] / scale)
    scores.append(p[order])
  return np.concatenate(boxes), np.concatenate(scores)


def merge(boxes, scores, *, score_threshold=0.05, nms_iou=0.3):
  """test.py detect: score > threshold, dets as float32, NMS with +1 IoU and suppression of
  IoU > nms_iou (gpu_nms = py_cpu_nms's semantics), output in score order (ties: lower
  pooled index first). -> [K, 5]."""
  keep = scores > score_threshold
  dets = np.hstack([boxes[keep], scores[keep, None]]).astype(np.float32)
  if not len(dets):
    return dets.reshape(0, 5)
  return dets[nms_ref.py_cpu_nms(dets, nms_iou, stable=True)]


def detect(forward_out, anchors, image_hw, *, top_per_module=1000, score_threshold=0.05,
           nms_iou=0.3, scale=1.0, drop_m3=False):
  """One test scale: module_detections then merge. -> [K, 5] float32, in original-image
  pixels (boxes / scale)."""
  b, s = module_detections(forward_out, anchors, image_hw, top_per_module=top_per_module,
                           scale=scale, drop_m3=drop_m3)
  return merge(b, s, score_threshold=score_threshold, nms_iou=nms_iou)


def detect_pyramid(per_scale, *, top_per_module=1000, score_threshold=0.05, nms_iou=0.3):
  """test.py pyramid: per_scale = [(forward_out, anchors, image_hw, scale)] in
  cfg.TEST.SCALES order. Every module's boxes / scale are pooled, except M3 at the last scale
  (`if i < len(scales) - 1 or j < len(probs) - 1`); then one threshold and one NMS."""
  boxes, scores = [], []
  for i, (fo, anchors, hw, scale) in enumerate(per_scale):
    b, s = module_detections(fo, anchors, hw, top_per_module=top_per_module, scale=scale,
                             drop_m3=i == len(per_scale) - 1)
    boxes.append(b)
    scores.append(s)
  return merge(np.concatenate(boxes), np.concatenate(scores), score_threshold=score_threshold,
               nms_iou=nms_iou)


def scaling_factor(h, w, target_size, max_size):
  """test_utils._compute_scaling_factor: target / short side, unless
  np.round(scale * long side) > max_size, then max_size / long side."""
  scale = float(target_size) / float(min(h, w))
  if np.round(scale * max(h, w)) > max_size:
    scale = float(max_size) / float(max(h, w))
  return scale


def single_scale(h, w):
  """default_config.yml TEST.SCALES [1200], MAX_SIZE 1600."""
  return scaling_factor(h, w, 1200, 1600)


def pyramid_scales(h, w, scales=(500, 800, 1200, 1600), base=(800, 1200)):
  """wider_pyramid.yml: base = scaling_factor(800, 1200); scales = s / 800 * base."""
  b = scaling_factor(h, w, base[0], base[1])
  return [float(s) / base[0] * b for s in scales]
