"""HR / Finding Tiny Faces (Hu & Ramanan, CVPR 2017) in Flax: the hybrid-resolution detector.

As the official MatConvNet release builds it (peiyunh/tiny
`init/cnn_add_loss_fcn8s_resnet101_simple.m`, `cnn_widerface_test_AB.m`):
  * a trunk without its last stage: ResNet-101 up to res4 (res4b22), or ResNet-50, VGG16
    (conv4_3 / conv5_3), or MobileNetV1-0.25 (stage1 / stage2) for CPU-sized experiments;
  * `score_res4`: 1x1 conv (with bias, zero-initialised) on the stride-16 tap, 5T channels;
  * `score4`: upsampled 2x by a fixed bilinear transposed conv, exactly MatConvNet's
    ConvTranspose(bilinear_u(4, 1, 5T), upsample 2, crop [1 2 1 2]): an h x w map becomes
    (2h - 1) x (2w - 1) (`models.layers.bilinear_upsample_2x`);
  * `score_res3`: 1x1 conv on the stride-8 tap, cropped (top-left) to the size of score4 and
    added (`fusex`). For inputs whose stride-8 map has an even size, that drops its last row or
    column, which is what the release's crop layer does at test time (the PyTorch port's
    off-by-one: it pads or mis-aligns instead);
  * the sum is split into score_cls [B, H, W, T] (template logits) and score_reg
    [B, H, W, 4T] laid out as the release's (tx for all T, then ty, tw, th).
Output cell (y, x) looks at input pixel (offset + 8 x, offset + 8 y) (see `cell_offset`).

Input: [B, H, W, 3] float32, RGB minus the training mean image (not scaled).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from tinyfaces_jax.models.backbones import MobileNetV1, ResNet, VGG16
from tinyfaces_jax.models.layers import bilinear_upsample_2x, layer_constructors

# peiyunh/tiny data/widerface/imageStats.mat averageImage (RGB).
TINY_RGB_MEAN = (119.29959869, 110.54627228, 101.83843231)
BACKBONES = ("resnet101", "resnet50", "vgg16", "mobilenet0.25")
STRIDE = 8
FUSIONS = ("res3+res4", "res3", "res4")


@dataclasses.dataclass(frozen=True)
class HRConfig:
  """Static configuration of an HR model.

  Attributes:
    backbone: one of BACKBONES.
    num_templates: T (25 in the release).
    activation: MobileNet's activation ('leaky_relu' as RetinaFace's, or 'relu').
    fusion: which taps score the templates: "res3+res4" (the release's hybrid), or one of
      "res3", "res4" alone (the receptive-field / context ablations of the paper; "res4" is
      still upsampled to the stride-8 grid).
    conv_impl / dtype: as in models/layers.py (how convs are computed; compute dtype:
      'bfloat16' computes the trunk and score convs in it, parameters and batch statistics
      stay float32 and the score maps are returned in float32).
  """
  backbone: str = "resnet101"
  num_templates: int = 25
  activation: str = "leaky_relu"
  fusion: str = "res3+res4"
  conv_impl: str = "auto"
  dtype: str = "float32"

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"unknown HR backbone {self.backbone!r}; known: {BACKBONES}")
    if self.fusion not in FUSIONS:
      raise ValueError(f"unknown HR fusion {self.fusion!r}; known: {FUSIONS}")


def output_size(height: int, width: int) -> tuple[int, int]:
  """The (H, W) of score_cls for an input of height x width (every backbone here rounds its
  stride-8 map to ceil(H / 8) and its stride-16 map to ceil(H / 16))."""
  def one(n):
    s16 = -(-n // 16)
    return min(-(-n // 8), 2 * s16 - 1)
  return one(int(height)), one(int(width))


class HybridResolution(nn.Module):
  """HR detector: [B, H, W, 3] -> dict(cls [B, Ho, Wo, T], reg [B, Ho, Wo, 4T]),
  (Ho, Wo) = `output_size(H, W)`. Sub-modules: body, score_res3, score_res4."""
  config: HRConfig = HRConfig()

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    conv, conv_bn = layer_constructors(cfg.conv_impl, cfg.dtype, param_dtype=jnp.float32)
    if cfg.backbone == "mobilenet0.25":
      taps = MobileNetV1(cfg.activation, conv_bn=conv_bn, name="body")(x, train)
    elif cfg.backbone == "vgg16":
      taps = VGG16(conv=conv, name="body")(x, train)
    else:
      taps = ResNet(depth=cfg.backbone, last_layer=3, conv_bn=conv_bn, name="body")(x, train)
    c3, c4 = taps["C3"], taps["C4"]  # strides 8 and 16 (every trunk names its taps so)
    n = 5 * cfg.num_templates
    score = functools.partial(conv, n, 1, use_bias=True,
                              kernel_init=nn.initializers.zeros)  # as released
    s4 = score(name="score_res4")(c4)
    s4 = bilinear_upsample_2x(s4, (2 * s4.shape[1] - 1, 2 * s4.shape[2] - 1))  # crop [1 2 1 2]
    s3 = score(name="score_res3")(c3)
    s3 = s3[:, :s4.shape[1], :s4.shape[2]]
    if s3.shape[1:3] != s4.shape[1:3]:
      raise ValueError(f"stride-8 map {s3.shape[1:3]} smaller than the upsampled stride-16 "
                       f"map {s4.shape[1:3]}")
    fused = {"res3+res4": s3 + s4, "res3": s3, "res4": s4}[cfg.fusion].astype(jnp.float32)
    t = cfg.num_templates
    return {"cls": fused[..., :t], "reg": fused[..., t:]}
