"""RetinaFace necks in Flax (NHWC): FPN and the SSH-style ContextModule.

As in Pytorch_Retinaface `models/net.py`:
  * `FPN`: per level a 1x1 ConvBN lateral ("output1..3", with activation); top-down, the
    coarser map is nearest-upsampled to the exact size of the finer one, added, and passed
    through a 3x3 ConvBN ("merge2" then "merge1", with activation). Output: 3 maps of
    `out_channels`, finest first.
  * `ContextModule` (Pytorch_Retinaface's `SSH`, named apart from the SSH detector): branches
    3x3 (out/2 channels, no activation), "5x5" = two 3x3 (out/4), "7x7" = three 3x3 sharing
    the first 5x5 conv (out/4); concatenated and passed through ReLU. The inner convs
    ("conv5X5_1", "conv7X7_2") use the configured activation.
The original picks LeakyReLU(0.1) in FPN/SSH when out_channels <= 64, else LeakyReLU(0) (=
ReLU); the 1MB retrain uses ReLU everywhere. Here the activation is given explicitly.
Both build their layers with `conv_bn` (a ConvBN constructor with the conv impl and compute
dtype bound: `layers.layer_constructors`; default the plain float32 ConvBN).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.models.layers import ConvBN


def resize_nearest(x, size: tuple[int, int]):
  """PyTorch `F.interpolate(x, size, mode='nearest')` for NHWC.

  [B, h, w, C] -> [B, H, W, C] with source index floor(i * h / H) (clipped to h - 1), computed
  exactly in integers on the host (static shapes).
  """
  h, w = x.shape[1:3]
  out_h, out_w = size
  iy = np.minimum(np.arange(out_h) * h // out_h, h - 1)
  ix = np.minimum(np.arange(out_w) * w // out_w, w - 1)
  return jnp.take(jnp.take(x, jnp.asarray(iy), axis=1), jnp.asarray(ix), axis=2)


class FPN(nn.Module):
  """Feature pyramid: 3 maps [B, h_l, w_l, C_l] (finest first) -> 3 maps [B, h_l, w_l, out]."""
  out_channels: int = 64
  activation: str = "leaky_relu"
  negative_slope: float = 0.1
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, feats: Sequence, train: bool = False):
    if len(feats) != 3:
      raise ValueError(f"FPN expects 3 feature maps, got {len(feats)}")
    conv_bn = functools.partial(self.conv_bn, activation=self.activation,
                                negative_slope=self.negative_slope)
    o1, o2, o3 = (conv_bn(self.out_channels, 1, name=f"output{i + 1}")(f, train)
                  for i, f in enumerate(feats))
    o2 = o2 + resize_nearest(o3, o2.shape[1:3])
    o2 = conv_bn(self.out_channels, 3, name="merge2")(o2, train)
    o1 = o1 + resize_nearest(o2, o1.shape[1:3])
    o1 = conv_bn(self.out_channels, 3, name="merge1")(o1, train)
    return [o1, o2, o3]


class ContextModule(nn.Module):
  """The SSH context module: [B, h, w, C] -> [B, h, w, out_channels] (out_channels % 4 == 0)."""
  out_channels: int = 64
  activation: str = "leaky_relu"
  negative_slope: float = 0.1
  conv_bn: Callable = ConvBN

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.out_channels % 4:
      raise ValueError(f"ContextModule out_channels must be a multiple of 4, got "
                       f"{self.out_channels}")
    q = self.out_channels // 4
    lin = self.conv_bn
    act = functools.partial(lin, activation=self.activation, negative_slope=self.negative_slope)
    c3 = lin(2 * q, 3, name="conv3X3")(x, train)
    c5_1 = act(q, 3, name="conv5X5_1")(x, train)
    c5 = lin(q, 3, name="conv5X5_2")(c5_1, train)
    c7_2 = act(q, 3, name="conv7X7_2")(c5_1, train)
    c7 = lin(q, 3, name="conv7x7_3")(c7_2, train)
    return jax.nn.relu(jnp.concatenate([c3, c5, c7], axis=-1))
