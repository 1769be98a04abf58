"""PyTorch peers of S3FD and SSH for `benchmarks/s3fd_ssh.py` (CPU; imported only when torch is).

The networks of `tinyfaces_jax.detectors.s3fd.model.S3FD` and `tinyfaces_jax.detectors.ssh.model.SSH`,
NCHW, written from their docstrings; every conv has a bias, 3x3 convs pad 1, 1x1 pad 0:
  * VGG16 trunk: conv1_1..conv5_3 (3x3 + ReLU), 2x2/s2 max pools between the blocks with
    `ceil_mode` per pool (Caffe's ceil: the odd last row pooled alone); taps conv3_3 / conv4_3 /
    conv5_3.
  * S3FD (`S3FDTorch.from_config(S3FDConfig)`; the caffe variant by default): pool5 (2x2/s2,
    ceil), fc6 3x3 1024 (pad 1; face_alignment pad 3, yxlijun pad 6 dilation 6), fc7 1x1 1024,
    conv6_1 1x1 256 -> conv6_2 3x3/s2 512, conv7_1 1x1 128 -> conv7_2 3x3/s2 256 (ReLU after
    each); L2Norm (x / sqrt(sum_c x^2 + 1e-10) * scale, scales 10 / 8 / 5; eps after the sqrt
    for the other variants) on conv3_3 / conv4_3 / conv5_3; six 3x3 heads (loc 4, conf 2; conf
    4 on conv3_3, whose first three channels are max-outed into the background one), flattened
    permute(0, 2, 3, 1).reshape(B, -1, n) and concatenated in source order.
  * SSH (`SSHTorch.from_config(SSHConfig)`): VGG16 conv1..5_3 with ceil pool1..pool4 (or
    MobileNetV1-0.25's stage1 / stage2, benchmarks/torch_retinaface_peer.py, leaky ReLU 0.1,
    BatchNorm); conv5_128 (1x1 + ReLU) -> ConvTranspose2d(f, f, 4, 2, 1, groups=f, bias=False)
    with the fixed bilinear kernel (not trained) -> cropped top-left to conv4_3's map, plus
    conv4_128 (1x1 + ReLU) -> conv4_fuse_final (3x3 + ReLU) = M1's input; M2 on conv5_3; M3 on
    a 2x2/s2 ceil max pool of conv5_3. Detection module (X, Y = 128 / 64 for M1, 256 / 128 for
    M2 / M3): conv3X3 3x3 X | conv5X5_1 3x3 Y + ReLU (dimred) -> conv5X5_2 3x3 Y | conv5X5_1 ->
    conv7X7_2 3x3 Y + ReLU -> conv7x7_3 3x3 Y; concat + ReLU; cls_score 1x1 (4: channel a the
    background of anchor a, 2 + a its face) and bbox_pred 1x1 (8: 4a + (dx, dy, dw, dh)),
    arranged (row, column, anchor) as ours -> logits [B, A, 2], deltas [B, A, 4], M1, M2, M3.
`load_flax_variables_s3fd` / `load_flax_variables_ssh` copy our variables (HWIO -> OIHW) in, so a
test can check that both compute the same forward.
Losses on targets PRECOMPUTED once (by benchmarks/s3fd_ssh.py with our matchers): the peer
EXCLUDES in-step matching, hard-negative mining / OHEM and target encoding.
`s3fd_postprocess` / `ssh_postprocess` + `nms_numpy`: the test-time decode (softmax; SSD
variances 0.1 / 0.2 for S3FD; bbox_transform_inv, +1 x2/y2, clip, top 1000 per module for
SSH), score threshold, top-k, greedy +1-pixel NMS and keep-top-K in numpy (no torchvision).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_retinaface_peer import MobileNetV1

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
BILINEAR_TAPS = (0.25, 0.75, 0.75, 0.25)   # Caffe's bilinear filler for kernel 4, stride 2
S3FD_SOURCES = ("conv3_3", "conv4_3", "conv5_3", "fc7", "conv6_2", "conv7_2")
S3FD_SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)
S3FD_L2_SCALES = (10.0, 8.0, 5.0)
MAX_LOG_SCALE = math.log(1000.0 / 16.0)    # box_coder.MAX_LOG_SCALE


class VGG16Trunk(nn.Module):
  """[B, 3, H, W] -> {conv3_3, conv4_3, conv5_3} (blocks up to `last_block`); ceil_pools[k]: the
  rounding of the pool before block k + 2."""

  def __init__(self, ceil_pools=(True, True, True, True), last_block: int = 5):
    super().__init__()
    self.ceil_pools = tuple(ceil_pools)
    self.convs = nn.ModuleDict()
    cin = 3
    for b, (cout, n) in enumerate(VGG16_BLOCKS[:last_block], start=1):
      for j in range(1, n + 1):
        self.convs[f"conv{b}_{j}"] = nn.Conv2d(cin, cout, 3, 1, 1)
        cin = cout
    self.blocks = [(b, n) for b, (_, n) in enumerate(VGG16_BLOCKS[:last_block], start=1)]

  def forward(self, x):
    taps = {}
    for b, n in self.blocks:
      if b > 1:
        x = F.max_pool2d(x, 2, 2, ceil_mode=self.ceil_pools[b - 2])
      for j in range(1, n + 1):
        x = F.relu(self.convs[f"conv{b}_{j}"](x), inplace=True)
      if b >= 3:
        taps[f"conv{b}_3"] = x
    return taps


class L2Norm(nn.Module):
  """SSD Normalize: x / sqrt(sum_c x^2 + 1e-10) * scale_c (eps_inside_sqrt), else / (sqrt + 1e-10)."""

  def __init__(self, channels: int, scale: float, eps_inside_sqrt: bool = True):
    super().__init__()
    self.weight = nn.Parameter(torch.full((channels,), float(scale)))
    self.eps_inside_sqrt = eps_inside_sqrt

  def forward(self, x):
    sq = x.pow(2).sum(dim=1, keepdim=True)
    norm = (sq + 1e-10).sqrt() if self.eps_inside_sqrt else sq.sqrt() + 1e-10
    return x / norm * self.weight.view(1, -1, 1, 1)


def _flatten(x: torch.Tensor, n: int) -> torch.Tensor:
  return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, n)


class S3FDTorch(nn.Module):
  """[B, 3, H, W] (BGR minus the mean) -> dict(loc [B, A, 4], conf [B, A, 2] logits)."""

  def __init__(self, fc6_padding=1, fc6_dilation=1, ceil_pools=(True,) * 5,
               eps_inside_sqrt=True):
    super().__init__()
    self.ceil5 = bool(ceil_pools[4])
    self.vgg = VGG16Trunk(ceil_pools[:4])
    self.fc6 = nn.Conv2d(512, 1024, 3, 1, fc6_padding, dilation=fc6_dilation)
    self.fc7 = nn.Conv2d(1024, 1024, 1)
    self.conv6_1 = nn.Conv2d(1024, 256, 1)
    self.conv6_2 = nn.Conv2d(256, 512, 3, 2, 1)
    self.conv7_1 = nn.Conv2d(512, 128, 1)
    self.conv7_2 = nn.Conv2d(128, 256, 3, 2, 1)
    self.norms = nn.ModuleDict({
        f"{n}_norm": L2Norm(c, s, eps_inside_sqrt)
        for n, c, s in zip(S3FD_SOURCES[:3], S3FD_SOURCE_CHANNELS, S3FD_L2_SCALES)})
    self.heads = nn.ModuleDict()
    for k, (name, c) in enumerate(zip(S3FD_SOURCES, S3FD_SOURCE_CHANNELS)):
      head = f"{name}_norm" if k < 3 else name
      self.heads[f"{head}_mbox_loc"] = nn.Conv2d(c, 4, 3, 1, 1)
      self.heads[f"{head}_mbox_conf"] = nn.Conv2d(c, 4 if k == 0 else 2, 3, 1, 1)

  @classmethod
  def from_config(cls, cfg) -> "S3FDTorch":
    """From a `tinyfaces_jax.detectors.s3fd.model.S3FDConfig` (its variant's geometry)."""
    return cls(cfg.fc6_padding, cfg.fc6_dilation, cfg.ceil_pools, cfg.eps_inside_sqrt)

  def forward(self, x):
    taps = self.vgg(x)
    h = F.max_pool2d(taps["conv5_3"], 2, 2, ceil_mode=self.ceil5)
    h = F.relu(self.fc6(h), inplace=True)
    fc7 = F.relu(self.fc7(h), inplace=True)
    c6 = F.relu(self.conv6_2(F.relu(self.conv6_1(fc7), inplace=True)), inplace=True)
    c7 = F.relu(self.conv7_2(F.relu(self.conv7_1(c6), inplace=True)), inplace=True)
    sources = [self.norms[f"{n}_norm"](taps[n]) for n in S3FD_SOURCES[:3]] + [fc7, c6, c7]
    locs, confs = [], []
    for k, (name, src) in enumerate(zip(S3FD_SOURCES, sources)):
      head = f"{name}_norm" if k < 3 else name
      locs.append(_flatten(self.heads[f"{head}_mbox_loc"](src), 4))
      conf = self.heads[f"{head}_mbox_conf"](src)
      if k == 0:   # max-out background
        conf = torch.cat([conf[:, :3].amax(dim=1, keepdim=True), conf[:, 3:]], dim=1)
      confs.append(_flatten(conf, 2))
    return {"loc": torch.cat(locs, 1), "conf": torch.cat(confs, 1)}


def bilinear_kernel(channels: int) -> torch.Tensor:
  """[C, 1, 4, 4]: the per-channel (groups = C) 2x bilinear transposed-conv weights."""
  f = torch.tensor(BILINEAR_TAPS, dtype=torch.float32)
  return (f[:, None] * f[None, :]).expand(channels, 1, 4, 4).contiguous()


class DetectionModule(nn.Module):
  """SSH detection module: [B, C, h, w] -> (logits [B, 2 h w, 2], deltas [B, 2 h w, 4])."""

  def __init__(self, cin: int, x: int, y: int, anchors_per_cell: int = 2):
    super().__init__()
    self.a = anchors_per_cell
    self.conv3X3 = nn.Conv2d(cin, x, 3, 1, 1)
    self.conv5X5_1 = nn.Conv2d(cin, y, 3, 1, 1)
    self.conv5X5_2 = nn.Conv2d(y, y, 3, 1, 1)
    self.conv7X7_2 = nn.Conv2d(y, y, 3, 1, 1)
    self.conv7x7_3 = nn.Conv2d(y, y, 3, 1, 1)
    self.cls_score = nn.Conv2d(x + 2 * y, 2 * anchors_per_cell, 1)
    self.bbox_pred = nn.Conv2d(x + 2 * y, 4 * anchors_per_cell, 1)

  def forward(self, x):
    dimred = F.relu(self.conv5X5_1(x))
    c7 = self.conv7x7_3(F.relu(self.conv7X7_2(dimred), inplace=True))
    h = F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(dimred), c7], dim=1), inplace=True)
    b, _, fh, fw = h.shape
    cls = self.cls_score(h).permute(0, 2, 3, 1)                      # [B, h, w, (class, a)]
    logits = cls.reshape(b, fh, fw, 2, self.a).transpose(3, 4).reshape(b, -1, 2)
    return logits, _flatten(self.bbox_pred(h), 4)


class SSHTorch(nn.Module):
  """[B, 3, H, W] (BGR minus the mean) -> dict(logits [B, A, 2], deltas [B, A, 4])."""

  def __init__(self, backbone="vgg16", fuse_channels=128,
               module_widths=((128, 64), (256, 128), (256, 128)), activation="leaky_relu"):
    super().__init__()
    self.backbone = backbone
    if backbone == "vgg16":
      self.vgg = VGG16Trunk((True,) * 4, last_block=5)
      c4, c5 = 512, 512
    elif backbone == "mobilenet0.25":
      self.body = MobileNetV1(activation, 0.1)
      c4, c5 = 64, 128
    else:
      raise ValueError(f"unknown SSH backbone {backbone!r}")
    f = fuse_channels
    self.conv5_128 = nn.Conv2d(c5, f, 1)
    self.conv4_128 = nn.Conv2d(c4, f, 1)
    self.conv5_128_up = nn.ConvTranspose2d(f, f, 4, 2, 1, groups=f, bias=False)
    with torch.no_grad():
      self.conv5_128_up.weight.copy_(bilinear_kernel(f))
    self.conv5_128_up.weight.requires_grad_(False)          # fixed, not trained
    self.conv4_fuse_final = nn.Conv2d(f, f, 3, 1, 1)
    self.modules_ = nn.ModuleDict({
        name: DetectionModule(cin, x, y)
        for name, cin, (x, y) in zip(("m1", "m2", "m3"), (f, c5, c5), module_widths)})

  @classmethod
  def from_config(cls, cfg) -> "SSHTorch":
    """From a `tinyfaces_jax.detectors.ssh.model.SSHConfig`."""
    return cls(cfg.backbone, cfg.fuse_channels, cfg.module_widths, cfg.activation)

  def trunk(self, x):
    if self.backbone == "vgg16":
      taps = self.vgg(x)
      return taps["conv4_3"], taps["conv5_3"]
    c4 = self.body.stages[0](x)        # stage3 feeds nothing in SSH: not computed
    return c4, self.body.stages[1](c4)

  def forward(self, x):
    c4, c5 = self.trunk(x)
    up = self.conv5_128_up(F.relu(self.conv5_128(c5), inplace=True))
    up = up[:, :, :c4.shape[2], :c4.shape[3]]
    fused = F.relu(self.conv4_128(c4), inplace=True) + up
    fused = F.relu(self.conv4_fuse_final(fused), inplace=True)
    pool6 = F.max_pool2d(c5, 2, 2, ceil_mode=True)
    outs = [m(src) for m, src in zip(self.modules_.values(), (fused, c5, pool6))]
    return {"logits": torch.cat([o[0] for o in outs], 1),
            "deltas": torch.cat([o[1] for o in outs], 1)}

  def freeze(self, prefixes=("conv1_", "conv2_")):
    """requires_grad False on the VGG convs named with `prefixes` (the SSH recipe's
    optim.frozen r"^vgg/conv[12]_"); -> the number of tensors frozen."""
    n = 0
    if self.backbone == "vgg16":
      for name, conv in self.vgg.convs.items():
        if name.startswith(tuple(prefixes)):
          for p in conv.parameters():
            p.requires_grad_(False)
            n += 1
    return n


# --- weights from our flax variables -----------------------------------------------------------

def _t(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32))


def _copy_conv(conv: nn.Conv2d, p: dict) -> int:
  """{'kernel' HWIO, 'bias'?} -> conv (OIHW); -> elements copied."""
  conv.weight.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))
  n = conv.weight.numel()
  if "bias" in p:
    conv.bias.copy_(_t(p["bias"]))
    n += conv.bias.numel()
  return n


def _copy_conv_bn(seq: nn.Sequential, p: dict, s: dict) -> int:
  conv, bn = seq[0], seq[1]
  n = _copy_conv(conv, p["conv"])
  bn.weight.copy_(_t(p["bn"]["scale"]))
  bn.bias.copy_(_t(p["bn"]["bias"]))
  bn.running_mean.copy_(_t(s["bn"]["mean"]))
  bn.running_var.copy_(_t(s["bn"]["var"]))
  return n + 4 * bn.weight.numel()


def _copy_vgg(trunk: VGG16Trunk, p: dict) -> int:
  return sum(_copy_conv(conv, p[name]) for name, conv in trunk.convs.items())


@torch.no_grad()
def load_flax_variables_s3fd(model: S3FDTorch, variables: dict) -> int:
  """Copies our S3FD variables ({'params'}, host numpy or jax arrays) into `model`; returns the
  number of elements copied."""
  p = variables["params"]
  n = _copy_vgg(model.vgg, p["vgg"])
  for name in ("fc6", "fc7", "conv6_1", "conv6_2", "conv7_1", "conv7_2"):
    n += _copy_conv(getattr(model, name), p[name])
  for name, norm in model.norms.items():
    norm.weight.copy_(_t(p[name]["scale"]))
    n += norm.weight.numel()
  for name, conv in model.heads.items():
    n += _copy_conv(conv, p[name])
  return n


@torch.no_grad()
def load_flax_variables_ssh(model: SSHTorch, variables: dict) -> int:
  """Copies our SSH variables ({'params'} (+ {'batch_stats'} for MobileNet)) into `model`;
  returns the number of elements copied (params + BatchNorm statistics; the unused MobileNet
  stage3 is left out)."""
  p = variables["params"]
  if model.backbone == "vgg16":
    n = _copy_vgg(model.vgg, p["vgg"])
  else:
    bp, bs = p["body"], variables["batch_stats"]["body"]
    n = 0
    for k, stage in enumerate(model.body.stages[:2], start=1):
      for i, block in enumerate(stage):
        name = f"stage{k}_{i}"
        if k == 1 and i == 0:
          n += _copy_conv_bn(block, bp[name], bs[name])
        else:
          n += _copy_conv_bn(block[0], bp[name]["dw"], bs[name]["dw"])
          n += _copy_conv_bn(block[1], bp[name]["pw"], bs[name]["pw"])
  for name in ("conv5_128", "conv4_128", "conv4_fuse_final"):
    n += _copy_conv(getattr(model, name), p[name]["conv"])
  for name, module in model.modules_.items():
    mp = p[name]
    for conv in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3"):
      n += _copy_conv(getattr(module, conv), mp["context"][conv]["conv"])
    n += _copy_conv(module.cls_score, mp["cls_score"])
    n += _copy_conv(module.bbox_pred, mp["bbox_pred"])
  return n


def count_parameters(model: nn.Module) -> int:
  """Trainable + frozen parameter elements (no buffers, no fixed deconvolution)."""
  return sum(p.numel() for name, p in model.named_parameters() if "conv5_128_up" not in name)


# --- losses on precomputed targets ---------------------------------------------------------------

def precomputed_s3fd_loss(out: dict, t: dict, loc_weight: float = 1.0) -> torch.Tensor:
  """S3FD multibox loss (ours: detection/multibox_loss.multibox_loss with S3FD's defaults) on
  targets matched and mined beforehand. t: pos, neg [B, A] float 0/1 masks (neg: the hard
  negatives, fixed), loc [B, A, 4] encoded targets (variances 0.1 / 0.2).
  -> loc_weight * SmoothL1(loc) / N + CE(pos + neg) / N, N = max(#pos, 1)."""
  pos, neg = t["pos"], t["neg"]
  norm = pos.sum().clamp(min=1.0)
  box = (F.smooth_l1_loss(out["loc"], t["loc"], reduction="none").sum(-1) * pos).sum() / norm
  logp = F.log_softmax(out["conf"], dim=-1)
  ce = torch.where(pos > 0, -logp[..., 1], -logp[..., 0])
  return loc_weight * box + (ce * (pos + neg)).sum() / norm


def precomputed_ssh_loss(out: dict, t: dict, sigma: float = 3.0) -> torch.Tensor:
  """SSH loss (ours: detectors/ssh.ssh_loss) on targets labelled and OHEM-sampled beforehand.
  t: pos [B, A] 0/1, cls_w [B, A] (1 / the image's sampled count of that module on the
  sampled anchors, else 0), reg_w [B, A] (the same on the positives), target [B, A, 4]
  (bbox_transform, +1 widths). -> mean over images of the modules' summed
  CE(sampled) / count + SmoothL1_sigma(deltas of the positives) / count."""
  logp = F.log_softmax(out["logits"], dim=-1)
  ce = torch.where(t["pos"] > 0, -logp[..., 1], -logp[..., 0])
  reg = F.smooth_l1_loss(out["deltas"], t["target"], reduction="none",
                         beta=1.0 / sigma ** 2).sum(-1)
  b = ce.shape[0]
  return ((ce * t["cls_w"]).sum() + (reg * t["reg_w"]).sum()) / b


def make_peer_step(model: nn.Module, loss_fn, targets: dict, *, lr=1e-3, momentum=0.9,
                   weight_decay=5e-4, bf16: bool = False):
  """-> step(images [B, 3, H, W]) -> loss float: forward (train mode) + loss_fn(out, targets)
  + backward + torch.optim.SGD step over the parameters that require grad."""
  opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                        momentum=momentum, weight_decay=weight_decay)
  model.train()

  def step(images):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      out = model(images)
    loss = loss_fn({k: v.float() for k, v in out.items()}, targets)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


# --- test-time decoding and NMS in numpy -------------------------------------------------------

def _softmax_fg(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e[..., 1] / e.sum(-1)


def decode_boxes_numpy(deltas, anchors, variances, pixel_offset: float) -> np.ndarray:
  """box_coder.decode_boxes in numpy: [A, 4] deltas on [A, 4] xyxy anchors -> [A, 4] xyxy."""
  d = deltas.astype(np.float32)
  ac = 0.5 * (anchors[:, :2] + anchors[:, 2:])
  asz = anchors[:, 2:] - anchors[:, :2] + pixel_offset
  c = ac + d[:, :2] * variances[0] * asz
  s = asz * np.exp(np.minimum(d[:, 2:] * variances[1], MAX_LOG_SCALE))
  x1y1 = c - 0.5 * (s - pixel_offset)
  return np.concatenate([x1y1, x1y1 + s - pixel_offset], axis=-1)


def nms_numpy(boxes, scores, *, iou_threshold, max_output, score_threshold, pre_nms_top_k,
              pixel_offset=1.0) -> np.ndarray:
  """Candidates with score > score_threshold, the pre_nms_top_k best (stable: ties to the
  lower index), greedy NMS (suppress IoU > iou_threshold; areas + pixel_offset, py_cpu_nms),
  the first max_output kept -> kept indices into boxes, descending score."""
  cand = np.flatnonzero(scores > score_threshold)
  cand = cand[np.argsort(-scores[cand], kind="stable")][:pre_nms_top_k]
  x1, y1, x2, y2 = (boxes[cand, k] for k in range(4))
  areas = (x2 - x1 + pixel_offset) * (y2 - y1 + pixel_offset)
  order = np.arange(len(cand))
  keep = []
  while order.size and len(keep) < max_output:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + pixel_offset)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + pixel_offset)
    inter = w * h
    iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
    order = rest[iou <= iou_threshold]
  return cand[np.asarray(keep, np.int64)]


def s3fd_postprocess(out: dict, anchors: np.ndarray, **nms_kw) -> dict:
  """One image's S3FD outputs (torch, batch 1) -> dict(boxes [K, 4], scores [K]): softmax face
  probability, SSD decode (variances 0.1 / 0.2), then `nms_numpy`."""
  scores = _softmax_fg(out["conf"][0].float().numpy())
  boxes = decode_boxes_numpy(out["loc"][0].float().numpy(), anchors, (0.1, 0.2), 0.0)
  keep = nms_numpy(boxes, scores, **nms_kw)
  return {"boxes": boxes[keep], "scores": scores[keep]}


def ssh_postprocess(out: dict, anchors: np.ndarray, slices, image_hw, top_per_module=1000,
                    **nms_kw) -> dict:
  """One image's SSH outputs (torch, batch 1) -> dict(boxes, scores): softmax face probability,
  bbox_transform_inv (+1 widths, x2 / y2 one pixel beyond), clipped to the input, each
  module's top `top_per_module` kept (the rest scored 0), then `nms_numpy`."""
  scores = _softmax_fg(out["logits"][0].float().numpy())
  boxes = decode_boxes_numpy(out["deltas"][0].float().numpy(), anchors, (1.0, 1.0), 1.0)
  boxes = boxes + np.asarray([0.0, 0.0, 1.0, 1.0], np.float32)
  h, w = image_hw
  boxes = np.clip(boxes, 0.0, np.asarray([w - 1, h - 1, w - 1, h - 1], np.float32))
  for sl in slices:
    s = scores[sl]
    if top_per_module and s.shape[0] > top_per_module:
      drop = np.argsort(-s, kind="stable")[top_per_module:]
      s[drop] = 0.0
  keep = nms_numpy(boxes, scores, **nms_kw)
  return {"boxes": boxes[keep], "scores": scores[keep]}
