"""Backbones in Flax (NHWC): MobileNetV1-0.25, ResNet-50/101/152 and VGG16.

  * `MobileNetV1`: Pytorch_Retinaface `models/net.py` MobileNetV1 (width 0.25: channels
    8..256). Taps {"C3" (stage1): stride 8, 64 ch; "C4" (stage2): stride 16, 128 ch;
    "C5" (stage3): stride 32, 256 ch}. Every conv is conv (no bias) + BatchNorm + activation;
    the activation is LeakyReLU(0.1) in the original repo and ReLU in the "1MB" retrain.
  * `ResNet` (depth resnet50 / resnet101 / resnet152): torchvision layout (conv1/bn1/maxpool,
    layer1-4 of Bottleneck v1.5 with the stride on the 3x3 conv). Taps {"C3": layer2,
    stride 8, 512 ch; "C4": layer3, 1024 ch; "C5": layer4, 2048 ch}. Always ReLU.

Every k x k conv pads k // 2 on each side as in PyTorch, so a stride-2 conv maps H to
ceil(H / 2) and the taps of stride s have exactly ceil(H / s) x ceil(W / s) cells (the
feature sizes of `detection.anchors.feature_sizes`).
BatchNorm: epsilon 1e-5 and momentum 0.9 (PyTorch's 0.1); running statistics in
`batch_stats`, used when `train=False`.
How the layers compute (conv impl, compute dtype, float32 parameters) is bound by the caller:
every module takes `conv_bn` (a ConvBN constructor; VGG16: `conv`, a Conv2D one) from
`layers.layer_constructors`; the defaults are the plain classes (float32).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import flax.linen as nn
import jax

from tinyfaces_jax.models.layers import Conv2D, ConvBN


class DepthwiseSeparable(nn.Module):
  """Pytorch_Retinaface `conv_dw`: 3x3 depthwise ConvBN ("dw") + 1x1 ConvBN ("pw"), both
  built by `conv_bn` (its activation bound by the caller)."""
  features: int
  stride: int = 1
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    x = self.conv_bn(c, 3, self.stride, groups=c, name="dw")(x, train)
    return self.conv_bn(self.features, 1, name="pw")(x, train)


# (features, stride) per layer; the first layer of stage1 is a full 3x3 ConvBN.
MOBILENET_025_STAGES = {
    "stage1": ((8, 2), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)),
    "stage2": ((128, 2),) + ((128, 1),) * 5,
    "stage3": ((256, 2), (256, 1)),
}


# Every trunk names its taps by stride: C3 (8), C4 (16), C5 (32).
MOBILENET_TAPS = {"stage1": "C3", "stage2": "C4", "stage3": "C5"}


class MobileNetV1(nn.Module):
  """MobileNetV1-0.25 feature extractor (no classifier).

  Input [B, H, W, 3] -> {"C2": [B, H/4, W/4, 32] (stage1 layer 3), "C3": [B, H/8, W/8, 64]
  (stage1), "C4": [B, H/16, W/16, 128] (stage2), "C5": [B, H/32, W/32, 256] (stage3)} (sizes
  rounded up). Layer i of stage s is named
  f"{s}_{i}" (PyTorch `stage{s}.{i}`).
  """
  activation: str = "leaky_relu"
  negative_slope: float = 0.1
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, x, train: bool = False):
    taps = {}
    conv_bn = functools.partial(self.conv_bn, activation=self.activation,
                                negative_slope=self.negative_slope)
    for stage, layers in MOBILENET_025_STAGES.items():
      for i, (features, stride) in enumerate(layers):
        name = f"{stage}_{i}"
        if stage == "stage1" and i == 0:
          x = conv_bn(features, 3, stride, name=name)(x, train)
        else:
          x = DepthwiseSeparable(features, stride, conv_bn=conv_bn, name=name)(x, train)
        if stage == "stage1" and i == 3:
          taps["C2"] = x
      taps[MOBILENET_TAPS[stage]] = x
    return taps


class Bottleneck(nn.Module):
  """torchvision Bottleneck (expansion 4, stride on conv2). Sub-modules conv1..conv3 and
  downsample are ConvBN (PyTorch conv{k}/bn{k} and downsample.0/.1)."""
  planes: int
  stride: int = 1
  downsample: bool = False
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv_bn = self.conv_bn
    y = conv_bn(self.planes, 1, activation="relu", name="conv1")(x, train)
    y = conv_bn(self.planes, 3, self.stride, activation="relu", name="conv2")(y, train)
    y = conv_bn(self.planes * 4, 1, name="conv3")(y, train)
    if self.downsample:
      x = conv_bn(self.planes * 4, 1, self.stride, name="downsample")(x, train)
    return jax.nn.relu(y + x)


RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3),
                 "resnet152": (3, 8, 36, 3)}
RESNET_TAPS = {"layer2": "C3", "layer3": "C4", "layer4": "C5"}


def resnet_layers(name: str) -> tuple:
  """((layer name, planes, blocks, stride), ...) of a torchvision ResNet ('resnet50', ...)."""
  if name not in RESNET_BLOCKS:
    raise ValueError(f"unknown ResNet {name!r}; known: {sorted(RESNET_BLOCKS)}")
  return tuple((f"layer{i + 1}", 64 * 2 ** i, n, 1 if i == 0 else 2)
               for i, n in enumerate(RESNET_BLOCKS[name]))


class ResNet(nn.Module):
  """torchvision ResNet-50/101/152 feature extractor: [B, H, W, 3] -> {"C3": [B, H/8, W/8,
  512], "C4": [B, H/16, W/16, 1024], "C5": [B, H/32, W/32, 2048]} (sizes rounded up), up to
  layer `last_layer` (e.g. 3: no res5, as HR/Tiny Faces).

  The stem ConvBN is named "stem" (PyTorch conv1/bn1); block j of layer k is f"layer{k}_{j}".
  """
  depth: str = "resnet50"
  last_layer: int = 4
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.conv_bn(64, 7, 2, activation="relu", name="stem")(x, train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    taps = {}
    for name, planes, blocks, stride in resnet_layers(self.depth)[:self.last_layer]:
      for j in range(blocks):
        x = Bottleneck(planes, stride if j == 0 else 1, downsample=(j == 0),
                       conv_bn=self.conv_bn, name=f"{name}_{j}")(x, train)
      if name in RESNET_TAPS:
        taps[RESNET_TAPS[name]] = x
    return taps


VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(nn.Module):
  """VGG16 convolutions (3x3 + bias + ReLU, 2x2 max pools between blocks; no BatchNorm, no
  classifier), torchvision `vgg16().features` layout. Taps {"C2": conv3_3, stride 4, 256 ch;
  "C3": conv4_3, stride 8, 512 ch; "C4": conv5_3, stride 16, 512 ch}; blocks up to
  `last_block` (1-5). `ceil_pools[k]` is the rounding of the pool before block k + 2 (Caffe's
  ceil mode by default: a tap of stride s then has ceil(H / s) x ceil(W / s) cells; False:
  PyTorch's default floor). Conv j of block b is named f"conv{b}_{j}".
  """
  last_block: int = 5
  conv: Callable = Conv2D
  ceil_pools: tuple = (True, True, True, True)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    taps = {}
    for b, (features, n) in enumerate(VGG16_BLOCKS[:self.last_block], start=1):
      if b > 1:
        x = max_pool_2x2(x, self.ceil_pools[b - 2])
      for j in range(1, n + 1):
        x = jax.nn.relu(self.conv(features, 3, use_bias=True, name=f"conv{b}_{j}")(x))
      if b >= 3:
        taps[f"C{b - 1}"] = x
    return taps


def max_pool_2x2(x, ceil: bool = True):
  """2x2 / stride-2 max pool of [B, H, W, C]: ceil(H / 2) rows when `ceil` (Caffe; the odd
  last row pooled alone), else floor(H / 2) (PyTorch's default)."""
  h, w = x.shape[1:3]
  pad = ((0, h % 2), (0, w % 2)) if ceil else ((0, 0), (0, 0))
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding=pad)


BACKBONE_TAPS = {"mobilenet0.25": ("C3", "C4", "C5"),
                 **{name: ("C3", "C4", "C5") for name in RESNET_BLOCKS},
                 "vgg16": ("C3", "C4")}


def make_backbone(name: str, activation: str = "leaky_relu", negative_slope: float = 0.1,
                  module_name: Optional[str] = "body", conv_bn: Callable = ConvBN,
                  conv: Callable = Conv2D) -> nn.Module:
  """Backbone by name ('mobilenet0.25', 'resnet50', 'resnet101', 'resnet152', 'vgg16');
  ResNets ignore the activation. `conv_bn` / `conv`: the layer constructors with the conv
  impl and compute dtype bound (`layers.layer_constructors`)."""
  if name == "mobilenet0.25":
    return MobileNetV1(activation, negative_slope, conv_bn=conv_bn, name=module_name)
  if name in RESNET_BLOCKS:
    return ResNet(depth=name, conv_bn=conv_bn, name=module_name)
  if name == "vgg16":
    return VGG16(conv=conv, name=module_name)
  raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONE_TAPS)}")
