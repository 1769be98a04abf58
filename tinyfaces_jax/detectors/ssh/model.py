"""SSH: Single Stage Headless face detector (Najibi et al., ICCV 2017), as the Caffe release
builds it (mahyarnajibi/SSH `SSH/models/test_ssh.prototxt`; ../shared/references/s3fd_ssh.md 2).

Network:
  * trunk: VGG16 conv1_1..conv5_3 (3x3 + ReLU, 2x2/s2 ceil max pools pool1..pool4, no fc), or
    MobileNetV1-0.25 (stride-8 / 16 taps) for CPU-sized experiments;
  * M1 (stride 8) on conv4_3 fused with conv5_3: conv5_128 (1x1 -> 128 + ReLU) upsampled 2x by a
    fixed bilinear deconvolution (kernel 4, stride 2, pad 1, one group per channel; not
    trained), cropped top-left to conv4_3's map, plus conv4_128 (1x1 -> 128 + ReLU) of conv4_3,
    then conv4_fuse_final (3x3 + ReLU); its detection module has X = 128, Y = 64;
  * M2 (stride 16) on conv5_3, M3 (stride 32) on pool6 = 2x2/s2 ceil max pool of conv5_3, both
    X = 256, Y = 128;
  * a detection module: 3x3 conv (X, no ReLU) beside a context module (dimred 3x3 -> Y + ReLU;
    "5x5" = 3x3 on it -> Y; "7x7" = 3x3 + ReLU then 3x3 -> Y), concatenated and ReLU'd: that is
    models.necks.ContextModule(4Y) with plain biased convs (layers.ConvBN(batch_norm=False)); then 1x1 cls_score (4 channels) and
    bbox_pred (8 channels), laid out as py-faster-rcnn's RPN: channel a is anchor a's background
    logit and channel A + a its face logit (A = 2 anchors per cell), bbox channels 4a + (dx, dy,
    dw, dh).
Outputs (float32): logits [B, A_all, 2] (background, face) and deltas [B, A_all, 4], modules in
the order M1, M2, M3, each in (row, column, anchor) order, A_all = sum of 2 h_m w_m.

Anchors (`anchors`): base 16, ratio 1, scales {1, 2} / {4, 8} / {16, 32} on strides 8 / 16 /
32: sides 16, 32 / 64, 128 / 256, 512, centres 7.5 + stride * i, +1 pixel widths
(anchors_lib.SSH). Box deltas decode as py-faster-rcnn's bbox_transform_inv (no variances, +1
widths: box_coder with variances (1, 1) and pixel_offset 1).

Input: [B, H, W, 3] BGR minus the py-faster-rcnn means (102.9801, 115.9465, 122.7717).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.detection import anchors as anchors_lib
from tinyfaces_jax.models import layers
from tinyfaces_jax.models.backbones import MobileNetV1, VGG16, max_pool_2x2
from tinyfaces_jax.models.necks import ContextModule

MEAN_BGR = (102.9801, 115.9465, 122.7717)
MODULES = ("m1", "m2", "m3")
STRIDES = anchors_lib.SSH.strides
ANCHORS_PER_CELL = 2
BACKBONES = ("vgg16", "mobilenet0.25")


@dataclasses.dataclass(frozen=True)
class SSHConfig:
  """Static configuration of an SSH model.

  Attributes:
    backbone: one of BACKBONES.
    fuse_channels: the M1 fusion width (conv5_128 / conv4_128 / conv4_fuse_final), 128.
    module_widths: (X, Y) of M1, M2, M3: ((128, 64), (256, 128), (256, 128)).
    activation: MobileNet's activation (its ImageNet weights were trained with leaky ReLU 0.1).
    dtype / conv_impl: models/layers.py.
  """
  backbone: str = "vgg16"
  fuse_channels: int = 128
  module_widths: tuple = ((128, 64), (256, 128), (256, 128))
  activation: str = "leaky_relu"
  dtype: str = "float32"
  conv_impl: str = "auto"

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"SSH backbone must be one of {BACKBONES}, got {self.backbone!r}")
    widths = tuple(tuple(int(v) for v in w) for w in self.module_widths)
    if len(widths) != 3 or any(len(w) != 2 or w[0] != 2 * w[1] for w in widths):
      raise ValueError(f"SSH module_widths must be three (X, Y) pairs with X = 2Y (the "
                       f"release's 128/64, 256/128), got {self.module_widths}")
    object.__setattr__(self, "module_widths", widths)


def _ceil_half(n: int) -> int:
  return (n + 1) // 2


def feature_sizes(image_hw) -> list[tuple[int, int]]:
  """(h, w) of M1, M2, M3 for an input of `image_hw`: ceil(H / 8), ceil(H / 16), ceil(H / 32)
  (Caffe's ceil pools; MobileNet's stride-2 3x3 convs with pad 1 round up the same way)."""
  out = []
  for n in image_hw:
    n8 = _ceil_half(_ceil_half(_ceil_half(int(n))))
    out.append((n8, _ceil_half(n8), _ceil_half(_ceil_half(n8))))
  return [(out[0][k], out[1][k]) for k in range(3)]


def anchors(image_hw) -> np.ndarray:
  """[A_all, 4] xyxy anchors (module docstring) for an input of `image_hw`."""
  return anchors_lib.anchor_grid(anchors_lib.SSH, tuple(image_hw), feature_sizes(image_hw))


def module_slices(image_hw) -> list[slice]:
  """The slice of the flat anchor axis of each module (M1, M2, M3)."""
  return anchors_lib.level_slices(anchors_lib.SSH, tuple(image_hw), feature_sizes(image_hw))


class DetectionModule(nn.Module):
  """SSH detection module: [B, h, w, C] -> (logits [B, h * w * 2, 2], deltas [B, h * w * 2, 4]);
  its 3x3 branch is X = 2 * y_channels wide (SSHConfig checks the widths)."""
  y_channels: int
  conv_act: functools.partial
  conv: functools.partial

  @nn.compact
  def __call__(self, x):
    h = ContextModule(4 * self.y_channels, activation="relu", conv_bn=self.conv_act,
                      name="context")(x)
    b, fh, fw, _ = h.shape
    a = ANCHORS_PER_CELL
    cls = self.conv(2 * a, 1, use_bias=True, name="cls_score")(h).astype(jnp.float32)
    box = self.conv(4 * a, 1, use_bias=True, name="bbox_pred")(h).astype(jnp.float32)
    # Channels (class, anchor) -> (anchor, class): py-faster-rcnn's (1, 2, A * H, W) reshape.
    logits = cls.reshape(b, fh, fw, 2, a).transpose(0, 1, 2, 4, 3).reshape(b, -1, 2)
    return logits, box.reshape(b, -1, 4)


class SSH(nn.Module):
  """The network of the module docstring: [B, H, W, 3] preprocessed -> dict(logits, deltas)."""
  config: SSHConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    conv, conv_bn = layers.layer_constructors(cfg.conv_impl, cfg.dtype)
    conv_act = functools.partial(conv_bn, batch_norm=False)     # biased conv + activation
    if cfg.backbone == "vgg16":
      taps = VGG16(conv=conv, last_block=5, name="vgg")(x, train)
    else:
      taps = MobileNetV1(cfg.activation, 0.1, conv_bn=conv_bn, name="body")(x, train)
    c4, c5 = taps["C3"], taps["C4"]          # strides 8 and 16 (VGG16: conv4_3, conv5_3)
    f = cfg.fuse_channels
    up = conv_act(f, 1, activation="relu", name="conv5_128")(c5)
    up = layers.bilinear_upsample_2x(up, c4.shape[1:3])
    fused = conv_act(f, 1, activation="relu", name="conv4_128")(c4) + up
    fused = conv_act(f, 3, activation="relu", name="conv4_fuse_final")(fused)
    pool6 = max_pool_2x2(c5, True)
    logits, deltas = [], []
    for name, src, (_, yc) in zip(MODULES, (fused, c5, pool6), cfg.module_widths):
      lg, dl = DetectionModule(yc, conv_act, conv, name=name)(src)
      logits.append(lg)
      deltas.append(dl)
    return {"logits": jnp.concatenate(logits, 1), "deltas": jnp.concatenate(deltas, 1)}
