"""MTCNN's three networks (Zhang et al. 2016), as the released Caffe models det1..det3 define
them and facenet-pytorch / the PyPI `mtcnn` package ship them
(../shared/references/mtcnn_alignment.md 1a).

All convolutions are VALID with stride 1 and a bias, every activation is a per-channel PReLU,
max pools are Caffe's ceil mode:
  * P-Net (fully convolutional, 12 x 12 receptive field, stride 2): conv1 3x3 -> 10, pool 2/2,
    conv2 3x3 -> 16, conv3 3x3 -> 32, heads conv4_1 1x1 -> 2 (background, face logits) and
    conv4_2 1x1 -> 4 (box offsets); `pnet_landmarks` adds the training reimplementations'
    conv4_3 1x1 -> 10 (AITTSMD), which the released det1 has not;
  * R-Net (24 x 24 crops): conv1 3x3 -> 28, pool 3/2, conv2 3x3 -> 48, pool 3/2, conv3 2x2 ->
    64, dense4 576 -> 128, heads dense5_1 -> 2 and dense5_2 -> 4;
  * O-Net (48 x 48 crops): conv1 3x3 -> 32, pool 3/2, conv2 3x3 -> 64, pool 3/2, conv3 3x3 ->
    64, pool 2/2, conv4 2x2 -> 128, dense5 1152 -> 256 (dropout 0.25 at train time, det3's
    drop5), heads dense6_1 -> 2, dense6_2 -> 4, dense6_3 -> 10 (landmarks x1..x5, y1..y5 as
    fractions of the crop).
The dense layers read the last map flattened in (W, H, C) order: the released Caffe models
were trained on width/height-transposed images, and the ports that feed upright images
transpose the kernels and flatten this way (facenet-pytorch's `permute(0, 3, 2, 1)`).

Layer names are facenet-pytorch's module names, so its state dict maps one to one
(weights.py). Input: [B, H, W, 3] RGB normalised as (x - 127.5) / 128 (`normalise`).
Outputs are float32 logits (softmax them for the networks' probabilities).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinyfaces_jax.models import layers

NETS = ("pnet", "rnet", "onet")
CROP_SIZES = {"rnet": 24, "onet": 48}
PNET_CELL, PNET_STRIDE = 12, 2


@dataclasses.dataclass(frozen=True)
class MTCNNConfig:
  """Static configuration of the three networks.

  Attributes:
    pnet_landmarks: give P-Net the 1x1 -> 10 landmark head of the training
      reimplementations (not in the released weights).
    dropout: O-Net's drop5 rate at train time (det3.prototxt: 0.25).
    train_stage: the network `MTCNN.__call__` runs (the one a training stage fits on its
      crops): "pnet", "rnet" or "onet".
    dtype: compute dtype name (float32 / bfloat16); parameters stay float32.
  """
  pnet_landmarks: bool = False
  dropout: float = 0.25
  train_stage: str = "pnet"
  dtype: str = "float32"

  def __post_init__(self):
    if self.train_stage not in NETS:
      raise ValueError(f"train_stage must be one of {NETS}, got {self.train_stage!r}")


def normalise(images):
  """RGB 0..255 -> (x - 127.5) * 0.0078125, as every MTCNN implementation feeds its nets."""
  return (images.astype(jnp.float32) - 127.5) * 0.0078125


def max_pool_ceil(x, window: int, stride: int):
  """Caffe / PyTorch ceil-mode max pool of [B, H, W, C] (no padding): out = ceil((H - k) / s)
  + 1 rows, the last windows reaching past the map pooled over what they cover."""
  def pad(n):
    out = -(-(n - window) // stride) + 1
    return (0, (out - 1) * stride + window - n)
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=(pad(x.shape[1]), pad(x.shape[2])))


class PReLU(nn.Module):
  """Per-channel PReLU: max(0, x) + a * min(0, x), `weight` [C] initialised to 0.25."""

  @nn.compact
  def __call__(self, x):
    a = self.param("weight", nn.initializers.constant(0.25), (x.shape[-1],), jnp.float32)
    return jnp.where(x >= 0, x, a.astype(x.dtype) * x)


def _conv(features: int, kernel: int, name: str, dtype) -> nn.Module:
  return layers.Conv2D(features, kernel, padding=0, use_bias=True, dtype=dtype, name=name)


def _flatten_whc(x):
  """[B, H, W, C] -> [B, W * H * C] in (W, H, C) order (facenet's permute(0, 3, 2, 1))."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """[B, H, W, 3] normalised -> dict(logits [B, h, w, 2], reg [B, h, w, 4][, landmarks
  [B, h, w, 10]]), h = ceil((H - 2) / 2) - 4.

  `valid_hw` [B, 2] int32 (optional): each image's size inside a larger padded input; the
  conv1 outputs beyond it are excluded from the pool (as if the map ended there), so every
  output cell inside the image's own map equals P-Net run on the image alone."""
  config: MTCNNConfig

  @nn.compact
  def __call__(self, x, valid_hw: Optional[jnp.ndarray] = None):
    dt = jnp.dtype(self.config.dtype)
    x = PReLU(name="prelu1")(_conv(10, 3, "conv1", dt)(x))
    if valid_hw is not None:
      rows = jnp.arange(x.shape[1])[None, :, None] < (valid_hw[:, 0, None, None] - 2)
      cols = jnp.arange(x.shape[2])[None, None, :] < (valid_hw[:, 1, None, None] - 2)
      x = jnp.where((rows & cols)[..., None], x, -jnp.inf)
    x = max_pool_ceil(x, 2, 2)
    if valid_hw is not None:
      x = jnp.where(jnp.isfinite(x), x, 0.0)
    x = PReLU(name="prelu2")(_conv(16, 3, "conv2", dt)(x))
    x = PReLU(name="prelu3")(_conv(32, 3, "conv3", dt)(x))
    out = {"logits": _conv(2, 1, "conv4_1", dt)(x), "reg": _conv(4, 1, "conv4_2", dt)(x)}
    if self.config.pnet_landmarks:
      out["landmarks"] = _conv(10, 1, "conv4_3", dt)(x)
    return {k: v.astype(jnp.float32) for k, v in out.items()}


class RNet(nn.Module):
  """[N, 24, 24, 3] normalised -> dict(logits [N, 2], reg [N, 4])."""
  config: MTCNNConfig

  @nn.compact
  def __call__(self, x):
    dt = jnp.dtype(self.config.dtype)
    x = max_pool_ceil(PReLU(name="prelu1")(_conv(28, 3, "conv1", dt)(x)), 3, 2)
    x = max_pool_ceil(PReLU(name="prelu2")(_conv(48, 3, "conv2", dt)(x)), 3, 2)
    x = PReLU(name="prelu3")(_conv(64, 2, "conv3", dt)(x))
    x = PReLU(name="prelu4")(nn.Dense(128, dtype=dt, name="dense4")(_flatten_whc(x)))
    return {"logits": nn.Dense(2, dtype=dt, name="dense5_1")(x).astype(jnp.float32),
            "reg": nn.Dense(4, dtype=dt, name="dense5_2")(x).astype(jnp.float32)}


class ONet(nn.Module):
  """[N, 48, 48, 3] normalised -> dict(logits [N, 2], reg [N, 4], landmarks [N, 10])."""
  config: MTCNNConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = jnp.dtype(self.config.dtype)
    x = max_pool_ceil(PReLU(name="prelu1")(_conv(32, 3, "conv1", dt)(x)), 3, 2)
    x = max_pool_ceil(PReLU(name="prelu2")(_conv(64, 3, "conv2", dt)(x)), 3, 2)
    x = max_pool_ceil(PReLU(name="prelu3")(_conv(64, 3, "conv3", dt)(x)), 2, 2)
    x = PReLU(name="prelu4")(_conv(128, 2, "conv4", dt)(x))
    x = nn.Dense(256, dtype=dt, name="dense5")(_flatten_whc(x))
    x = nn.Dropout(self.config.dropout, deterministic=not train)(x)
    x = PReLU(name="prelu5")(x)
    return {"logits": nn.Dense(2, dtype=dt, name="dense6_1")(x).astype(jnp.float32),
            "reg": nn.Dense(4, dtype=dt, name="dense6_2")(x).astype(jnp.float32),
            "landmarks": nn.Dense(10, dtype=dt, name="dense6_3")(x).astype(jnp.float32)}


class MTCNN(nn.Module):
  """The three networks in one variables tree {pnet, rnet, onet}.

  `__call__(x, train=False)` runs the network of `config.train_stage` on x (P-Net on images
  or 12 x 12 crops, R-Net on 24 x 24, O-Net on 48 x 48: what a training stage fits); `init`
  builds all three from their native input sizes whatever x is. `pnet(x, valid_hw)`,
  `rnet(crops)` and `onet(crops, train)` run one network (`model.apply(variables, x,
  method="pnet")`), as the cascade does.
  """
  config: MTCNNConfig

  def setup(self):
    self.p = PNet(self.config, name="pnet")
    self.r = RNet(self.config, name="rnet")
    self.o = ONet(self.config, name="onet")

  def __call__(self, x, train: bool = False):
    if self.is_initializing():
      self.p(jnp.zeros((1, PNET_CELL, PNET_CELL, 3), jnp.float32))
      self.r(jnp.zeros((1, 24, 24, 3), jnp.float32))
      return self.o(jnp.zeros((1, 48, 48, 3), jnp.float32))
    stage = self.config.train_stage
    if stage == "pnet":
      return self.p(x)
    return self.r(x) if stage == "rnet" else self.o(x, train)

  def pnet(self, x, valid_hw=None):
    return self.p(x, valid_hw)

  def rnet(self, crops):
    return self.r(crops)

  def onet(self, crops, train: bool = False):
    return self.o(crops, train)


def pnet_output_size(n):
  """P-Net's map length for an input of length n (python int or int array)."""
  return -(-(n - 2) // 2) - 4


def softmax_face(logits):
  """[..., 2] logits -> [...] face probability (the networks' softmax, channel 1)."""
  return jax.nn.softmax(logits, axis=-1)[..., 1]
