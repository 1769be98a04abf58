"""PyTorch peer of RetinaFace for `benchmarks/train_step.py` (CPU; imported only when torch is).

The same networks as `tinyfaces_jax.models` (written from their docstrings, Pytorch_Retinaface
`models/net.py` + `models/retinaface.py` layout), NCHW:
  * MobileNetV1-0.25: a full 3x3 conv_bn (8 ch, stride 2), then depthwise-separable blocks
    (3x3 depthwise conv_bn + 1x1 conv_bn), taps stage1 (stride 8, 64 ch), stage2 (16, 128),
    stage3 (32, 256); LeakyReLU(0.1) (or ReLU) after every conv_bn.
  * ResNet-50 (torchvision v1.5: stride on the 3x3 conv); taps layer2/3/4 (512/1024/2048 ch).
  * FPN: 1x1 conv_bn laterals, top-down nearest upsampling to the finer map's exact size, add,
    3x3 conv_bn merge (merge2, then merge1); activation in all of them.
  * SSH: 3x3 (out/2, no act) | 3x3 (out/4, act) -> 3x3 (out/4, no act) | the same first conv
    -> 3x3 (out/4, act) -> 3x3 (out/4, no act); concat + ReLU.
  * heads: per level 1x1 convs with bias, k * 2 class logits, k * 4 box deltas, k * 10 landmark
    deltas, flattened as permute(0, 2, 3, 1).view(B, -1, n) and concatenated over levels.
Every conv has no bias and padding k // 2; BatchNorm eps 1e-5, momentum 0.1 (ours 0.9).
`precomputed_multibox_loss` is the RetinaFace loss on targets matched beforehand (no matching,
no hard-negative mining inside the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MOBILENET_025_STAGES = {
    "stage1": ((8, 2), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)),
    "stage2": ((128, 2),) + ((128, 1),) * 5,
    "stage3": ((256, 2), (256, 1)),
}
RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _act(activation, slope):
  if activation is None:
    return []
  if activation == "relu":
    return [nn.ReLU(inplace=True)]
  return [nn.LeakyReLU(slope, inplace=True)]


def conv_bn(cin, cout, k=3, stride=1, groups=1, activation=None, slope=0.1) -> nn.Sequential:
  """conv (no bias, padding k // 2) + BatchNorm + optional activation."""
  return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                       nn.BatchNorm2d(cout), *_act(activation, slope))


class MobileNetV1(nn.Module):
  """[B, 3, H, W] -> [stage1 [B, 64, H/8, W/8], stage2 [B, 128, ..], stage3 [B, 256, ..]]."""

  def __init__(self, activation="leaky_relu", slope=0.1):
    super().__init__()
    kw = dict(activation=activation, slope=slope)
    self.stages = nn.ModuleList()
    cin = 3
    for name, layers in MOBILENET_025_STAGES.items():
      blocks = []
      for i, (cout, stride) in enumerate(layers):
        if name == "stage1" and i == 0:
          blocks.append(conv_bn(cin, cout, 3, stride, **kw))
        else:
          blocks.append(nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, **kw),
                                      conv_bn(cin, cout, 1, **kw)))
        cin = cout
      self.stages.append(nn.Sequential(*blocks))

  def forward(self, x):
    taps = []
    for stage in self.stages:
      x = stage(x)
      taps.append(x)
    return taps


class Bottleneck(nn.Module):
  """torchvision Bottleneck (expansion 4, stride on the 3x3 conv)."""

  def __init__(self, cin, planes, stride=1, downsample=False):
    super().__init__()
    self.conv1 = conv_bn(cin, planes, 1, activation="relu")
    self.conv2 = conv_bn(planes, planes, 3, stride, activation="relu")
    self.conv3 = conv_bn(planes, planes * 4, 1)
    self.downsample = conv_bn(cin, planes * 4, 1, stride) if downsample else None

  def forward(self, x):
    y = self.conv3(self.conv2(self.conv1(x)))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet50(nn.Module):
  """[B, 3, H, W] -> [C3 [B, 512, H/8, W/8], C4 [B, 1024, ..], C5 [B, 2048, ..]]."""

  def __init__(self):
    super().__init__()
    self.stem = conv_bn(3, 64, 7, 2, activation="relu")
    self.layers = nn.ModuleList()
    cin = 64
    for planes, blocks, stride in RESNET50_LAYERS:
      self.layers.append(nn.Sequential(*[
          Bottleneck(cin if j == 0 else planes * 4, planes, stride if j == 0 else 1, j == 0)
          for j in range(blocks)]))
      cin = planes * 4

  def forward(self, x):
    x = F.max_pool2d(self.stem(x), 3, 2, 1)
    taps = []
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i >= 1:
        taps.append(x)
    return taps


class FPN(nn.Module):
  """3 maps [B, C_l, h_l, w_l] (finest first) -> 3 maps [B, out, h_l, w_l]."""

  def __init__(self, in_channels, out, activation, slope):
    super().__init__()
    kw = dict(activation=activation, slope=slope)
    self.outputs = nn.ModuleList([conv_bn(c, out, 1, **kw) for c in in_channels])
    self.merge1 = conv_bn(out, out, 3, **kw)
    self.merge2 = conv_bn(out, out, 3, **kw)

  def forward(self, feats):
    o1, o2, o3 = (m(f) for m, f in zip(self.outputs, feats))
    o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
    o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
    return [o1, o2, o3]


class SSH(nn.Module):
  """[B, C, h, w] -> [B, out, h, w]."""

  def __init__(self, cin, out, activation, slope):
    super().__init__()
    q, kw = out // 4, dict(activation=activation, slope=slope)
    self.conv3X3 = conv_bn(cin, 2 * q)
    self.conv5X5_1 = conv_bn(cin, q, **kw)
    self.conv5X5_2 = conv_bn(q, q)
    self.conv7X7_2 = conv_bn(q, q, **kw)
    self.conv7x7_3 = conv_bn(q, q)

  def forward(self, x):
    c5_1 = self.conv5X5_1(x)
    c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
    return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class RetinaFaceTorch(nn.Module):
  """[B, 3, H, W] -> dict(loc [B, A, 4], conf [B, A, 2] logits, landm [B, A, 10])."""

  def __init__(self, backbone="mobilenet0.25", activation="leaky_relu", slope=0.1,
               in_channel=32, out_channel=64, anchors_per_cell=(2, 2, 2)):
    super().__init__()
    if backbone == "mobilenet0.25":
      self.body = MobileNetV1(activation, slope)
    elif backbone == "resnet50":
      self.body = ResNet50()
    else:
      raise ValueError(f"unknown backbone {backbone!r}")
    taps = (2 * in_channel, 4 * in_channel, 8 * in_channel)
    self.fpn = FPN(taps, out_channel, activation, slope)
    self.ssh = nn.ModuleList([SSH(out_channel, out_channel, activation, slope)
                              for _ in range(3)])
    self.heads = nn.ModuleDict({
        key: nn.ModuleList([nn.Conv2d(out_channel, k * n, 1) for k in anchors_per_cell])
        for key, n in (("conf", 2), ("loc", 4), ("landm", 10))})
    self.sizes = {"conf": 2, "loc": 4, "landm": 10}

  @classmethod
  def from_config(cls, cfg) -> "RetinaFaceTorch":
    """From a `tinyfaces_jax.detectors.retinaface.model.RetinaFaceConfig`."""
    return cls(cfg.backbone, cfg.activation, cfg.negative_slope, cfg.in_channel,
               cfg.out_channel, cfg.anchor_spec.anchors_per_cell())

  def forward(self, x):
    feats = [ssh(p) for ssh, p in zip(self.ssh, self.fpn(self.body(x)))]
    b = x.shape[0]
    return {key: torch.cat([h(p).permute(0, 2, 3, 1).reshape(b, -1, self.sizes[key])
                            for h, p in zip(heads, feats)], dim=1)
            for key, heads in self.heads.items()}


def precomputed_multibox_loss(out: dict, t: dict, loc_weight: float = 2.0,
                              landmark_weight: float = 1.0) -> torch.Tensor:
  """RetinaFace multibox loss on precomputed targets (ours: `tinyfaces_jax.detection.multibox_loss`).

  out: loc [B, A, 4], conf [B, A, 2] logits, landm [B, A, 10] (float32).
  t: pos, neg, has_landm [B, A] float 0/1 masks (neg = the hard negatives, fixed), loc
    [B, A, 4] and landm [B, A, 10] encoded targets.
  Returns loc_weight * SmoothL1(box) / N + CE(pos + neg) / N + w * SmoothL1(landm) / N_landm.
  """
  pos, neg, has = t["pos"], t["neg"], t["has_landm"]
  norm = pos.sum().clamp(min=1.0)
  box = (F.smooth_l1_loss(out["loc"], t["loc"], reduction="none").sum(-1) * pos).sum() / norm
  logp = F.log_softmax(out["conf"], dim=-1)
  ce = torch.where(pos > 0, -logp[..., 1], -logp[..., 0])
  cls = (ce * (pos + neg)).sum() / norm
  lm = F.smooth_l1_loss(out["landm"], t["landm"], reduction="none").sum(-1)
  lm = (lm * has).sum() / has.sum().clamp(min=1.0)
  return loc_weight * box + cls + landmark_weight * lm


def make_peer_step(model: nn.Module, targets: dict, *, lr=1e-3, momentum=0.9,
                   weight_decay=5e-4, bf16: bool = False):
  """-> step(images [B, 3, H, W]) -> loss float: forward + backward + SGD step (train mode)."""
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay)
  model.train()

  def step(images):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      out = model(images)
    loss = precomputed_multibox_loss({k: v.float() for k, v in out.items()}, targets)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step
