"""PyTorch peer of HR / Finding Tiny Faces for `benchmarks/hr.py` (imported only when torch is).

The network of `tinyfaces_jax.detectors.hr.model.HybridResolution` on a ResNet trunk, NCHW, written from
its docstring (peiyunh/tiny `cnn_add_loss_fcn8s_resnet101_simple.m`):
  * trunk: torchvision ResNet-101 (or -50) up to layer3 (res4), Bottleneck v1.5 (stride on the
    3x3 conv), the blocks of benchmarks/torch_retinaface_peer.py; taps layer2 (stride 8, 512 ch)
    and layer3 (stride 16, 1024 ch);
  * score_res3 / score_res4: 1x1 convs with bias, 5T = 125 channels;
  * score4: the fixed (not trained) bilinear ConvTranspose2d(k 4, stride 2, per channel) with
    MatConvNet's crop [1 2 1 2]: h x w -> (2h - 1) x (2w - 1);
  * score_res3 cropped top-left to score4's size, added; split into cls [B, T, H, W] and
    reg [B, 4T, H, W] (tx for all T, then ty, tw, th).
`precomputed_tiny_faces_loss` has the shape of ours (`detectors.hr.loss.tiny_faces_loss`: logistic loss
on the drawn cells + Huber on the drawn positives, both / B) on a FIXED cell subset and fixed
random targets: the peer does no template labelling and no hard mining in its step.
`load_flax_variables` copies our {'params', 'batch_stats'} into the module (HWIO -> OIHW).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch_retinaface_peer import Bottleneck, conv_bn

RESNET_BLOCKS = {"resnet50": (3, 4, 6), "resnet101": (3, 4, 23)}
BILINEAR_TAPS = (0.25, 0.75, 0.75, 0.25)   # MatConvNet bilinear_u(4, 1, C)


class ResNetTrunk(nn.Module):
  """torchvision ResNet up to layer3: [B, 3, H, W] -> (C3 [B, 512, H/8, W/8], C4 [B, 1024,
  H/16, W/16]), sizes rounded up (padding k // 2, max pool 3 / 2 / 1)."""

  def __init__(self, depth: str = "resnet101"):
    super().__init__()
    self.stem = conv_bn(3, 64, 7, 2, activation="relu")
    self.layers = nn.ModuleList()
    cin = 64
    for planes, blocks, stride in zip((64, 128, 256), RESNET_BLOCKS[depth], (1, 2, 2)):
      self.layers.append(nn.Sequential(*[
          Bottleneck(cin if j == 0 else planes * 4, planes, stride if j == 0 else 1, j == 0)
          for j in range(blocks)]))
      cin = planes * 4

  def forward(self, x):
    x = self.layers[0](F.max_pool2d(self.stem(x), 3, 2, 1))
    c3 = self.layers[1](x)
    return c3, self.layers[2](c3)


def bilinear_kernel(channels: int) -> torch.Tensor:
  """[C, 1, 4, 4] weights of the per-channel (groups = C) 2x bilinear transposed conv."""
  f = torch.tensor(BILINEAR_TAPS, dtype=torch.float32)
  return (f[:, None] * f[None, :]).expand(channels, 1, 4, 4).contiguous()


class HRTorch(nn.Module):
  """[B, 3, H, W] (RGB minus the mean) -> dict(cls [B, T, Ho, Wo], reg [B, 4T, Ho, Wo])."""

  def __init__(self, backbone: str = "resnet101", num_templates: int = 25):
    super().__init__()
    n = 5 * num_templates
    self.t = num_templates
    self.body = ResNetTrunk(backbone)
    self.score_res3 = nn.Conv2d(512, n, 1)
    self.score_res4 = nn.Conv2d(1024, n, 1)
    self.register_buffer("upsample", bilinear_kernel(n), persistent=False)

  def forward(self, x):
    c3, c4 = self.body(x)
    s4 = F.conv_transpose2d(self.score_res4(c4), self.upsample, stride=2,
                            groups=self.upsample.shape[0])[:, :, 1:-2, 1:-2]   # 2h + 2 -> 2h - 1
    s3 = self.score_res3(c3)[:, :, :s4.shape[2], :s4.shape[3]]
    fused = s3 + s4
    return {"cls": fused[:, :self.t], "reg": fused[:, self.t:]}


def count_parameters(model: nn.Module) -> tuple[int, int]:
  """-> (trainable parameter elements, BatchNorm running mean + var elements)."""
  params = sum(p.numel() for p in model.parameters() if p.requires_grad)
  stats = sum(b.numel() for name, b in model.named_buffers()
              if name.endswith(("running_mean", "running_var")))
  return params, stats


def _copy_conv_bn(seq: nn.Sequential, params: dict, stats: dict):
  """ConvBN {'conv': {'kernel' HWIO}, 'bn': {'scale', 'bias'}} (+ {'bn': {'mean', 'var'}})."""
  conv, bn = seq[0], seq[1]
  conv.weight.copy_(torch.from_numpy(np.array(params["conv"]["kernel"]).transpose(3, 2, 0, 1)))
  bn.weight.copy_(torch.from_numpy(np.array(params["bn"]["scale"])))
  bn.bias.copy_(torch.from_numpy(np.array(params["bn"]["bias"])))
  bn.running_mean.copy_(torch.from_numpy(np.array(stats["bn"]["mean"])))
  bn.running_var.copy_(torch.from_numpy(np.array(stats["bn"]["var"])))


@torch.no_grad()
def load_flax_variables(model: HRTorch, variables: dict) -> int:
  """Copies our HybridResolution variables (ResNet trunk, host numpy or jax arrays) into
  `model`; returns the number of elements copied (params + BatchNorm statistics)."""
  p, s = variables["params"], variables["batch_stats"]
  body_p, body_s = p["body"], s["body"]
  _copy_conv_bn(model.body.stem, body_p["stem"], body_s["stem"])
  for k, layer in enumerate(model.body.layers, start=1):
    for j, block in enumerate(layer):
      bp, bs = body_p[f"layer{k}_{j}"], body_s[f"layer{k}_{j}"]
      for name in ("conv1", "conv2", "conv3", "downsample"):
        if name in bp:
          _copy_conv_bn(getattr(block, name), bp[name], bs[name])
  for name in ("score_res3", "score_res4"):
    conv = getattr(model, name)
    conv.weight.copy_(torch.from_numpy(np.array(p[name]["kernel"]).transpose(3, 2, 0, 1)))
    conv.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
  return sum(int(np.size(x)) for tree in (p, s) for x in _leaves(tree))


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def fixed_targets(batch: int, out_hw: tuple[int, int], num_templates: int, seed: int = 0,
                  num_cells: int = 256, num_pos: int = 128) -> dict:
  """The peer's fixed labels, A = Ho * Wo * T cells per image, drawn once:
  sel [B, A] float 0/1 (num_cells random cells), y [B, A] (+1 on the first num_pos of them,
  -1 elsewhere), pos [B, A] float 0/1, target [B, A, 4] random offsets N(0, 0.5)."""
  rng = np.random.default_rng(seed)
  a = out_hw[0] * out_hw[1] * num_templates
  sel = np.zeros((batch, a), np.float32)
  pos = np.zeros((batch, a), np.float32)
  for i in range(batch):
    cells = rng.choice(a, num_cells, replace=False)
    sel[i, cells] = 1.0
    pos[i, cells[:num_pos]] = 1.0
  target = rng.normal(0.0, 0.5, (batch, a, 4)).astype(np.float32)
  return {k: torch.from_numpy(v) for k, v in
          {"sel": sel, "y": 2.0 * pos - 1.0, "pos": pos, "target": target}.items()}


def precomputed_tiny_faces_loss(out: dict, t: dict) -> torch.Tensor:
  """out: cls [B, T, H, W], reg [B, 4T, H, W]; t: `fixed_targets`. -> scalar
  sum(softplus(-y s) over sel) / B + sum(Huber(reg - target) over pos) / B (cells ordered
  (y, x, template) as ours)."""
  cls, reg = out["cls"], out["reg"]
  b, nt, h, w = cls.shape
  logits = cls.permute(0, 2, 3, 1).reshape(b, -1)
  deltas = reg.permute(0, 2, 3, 1).reshape(b, h, w, 4, nt).movedim(3, -1).reshape(b, -1, 4)
  loss_cls = (F.softplus(-t["y"] * logits) * t["sel"]).sum() / b
  hub = F.smooth_l1_loss(deltas, t["target"], reduction="none", beta=1.0).sum(-1)
  return loss_cls + (hub * t["pos"]).sum() / b


def make_peer_step(model: nn.Module, targets: dict, mean_rgb, *, lr=1e-4, momentum=0.9,
                   weight_decay=5e-4):
  """-> step(images [B, 3, H, W] RGB 0..255) -> loss float: mean subtraction, forward
  (train mode), backward, torch.optim.SGD step (weight decay on every parameter, as ours)."""
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                        weight_decay=weight_decay)
  mean = torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
  model.train()

  def step(images):
    opt.zero_grad(set_to_none=True)
    loss = precomputed_tiny_faces_loss(model(images - mean), targets)
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step


def resize(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
  """[1, 3, H, W] -> [1, 3, h, w]: bilinear, align_corners=False, antialiased when shrinking
  (what ours' `jax.image.resize(..., "linear")` computes)."""
  if tuple(image.shape[2:]) == tuple(hw):
    return image
  down = hw[0] < image.shape[2] or hw[1] < image.shape[3]
  return F.interpolate(image, size=hw, mode="bilinear", align_corners=False, antialias=down)


@torch.inference_mode()
def pyramid(model: HRTorch, image: torch.Tensor, mean_rgb, scales, active: dict,
            threshold: float) -> list:
  """The peer's pyramid: per scale s, resize to (round(H s), round(W s)), mean subtraction,
  forward, sigmoid of cls, the templates `active[s]` ([T] bool) kept, numpy threshold.
  image [1, 3, H, W] RGB 0..255 -> [(scale, (h, w), cells [N, 3] (y, x, t) > threshold,
  their scores [N], raw outputs {cls [1, h', w', T], reg [1, h', w', 4T]} numpy NHWC)]."""
  mean = torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
  h, w = image.shape[2:]
  res = []
  for s in scales:
    hw = (max(1, round(h * s)), max(1, round(w * s)))
    out = model(resize(image, hw) - mean)
    prob = torch.sigmoid(out["cls"][0]).permute(1, 2, 0).numpy()           # [h', w', T]
    prob = np.where(np.asarray(active[s])[None, None], prob, 0.0)
    cells = np.argwhere(prob > threshold)
    raw = {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}
    res.append((s, hw, cells, prob[prob > threshold], raw))
  return res
