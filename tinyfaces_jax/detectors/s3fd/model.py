"""S3FD (Zhang et al. 2017): VGG16 + fc6/fc7 convs + two extra blocks, six L2-normalised or
plain sources with one square anchor per cell (16..512 px on strides 4..128), max-out
background on conv3_3.

Network (../shared/references/s3fd_ssh.md 1.1): conv1_1..conv5_3 (3x3, ReLU; 2x2/s2 max pools,
pool5 2x2/s2 too), fc6 3x3 (1024) and fc7 1x1 (1024) as convs, conv6_1 1x1 256 -> conv6_2 3x3/s2
512, conv7_1 1x1 128 -> conv7_2 3x3/s2 256 (ReLU after each). Sources conv3_3 / conv4_3 /
conv5_3 (each through an L2Norm: x / sqrt(sum_c x^2 + eps) * scale_c, scales initialised 10 / 8
/ 5), fc7, conv6_2, conv7_2; every head is a 3x3/p1 conv: loc 4 outputs, conf 2 (4 on conv3_3,
whose first three channels are max-outed into the background channel, at train and test time).

Variants (`VARIANTS`; the releases differ in geometry and colour, the weight files tell which):
  caffe           the paper's prototxt: fc6 pad 1, no dilation, ceil pools, BGR input, Caffe
                  eps (sqrt(sum + 1e-10))
  face_alignment  face-alignment / clcarwin `s3fd-*.pth` (the released caffemodel's deploy):
                  fc6 pad 3, no dilation (fc7 maps of 24 at 640), floor pools, BGR, eps added
                  after the sqrt
  yxlijun         S3FD.pytorch `sfd_face.pth`: fc6 pad 6 dilation 6, ceil on pool3 only, RGB
                  input, eps after the sqrt
With `backbone="mobilenet0.25"` (a CPU-sized S3FD from the ImageNet MobileNetV1-0.25): the
sources are its stride-4 / 8 / 16 taps (L2-normalised), its stride-32 stage3 in fc7's place
(no fc6 / fc7) and the two extra blocks at a quarter width (64 / 128 and 32 / 64 channels);
anchors and heads as above.

Outputs (float32): loc [B, A, 4] (SSD offsets, variances 0.1 / 0.2), conf [B, A, 2] logits
(background, face) after max-out; A = sum over the six maps of h_l * w_l, in source order,
rows then columns (the releases' permute-and-flatten order).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tinyfaces_jax.detection import anchors as anchors_lib
from tinyfaces_jax.models import layers
from tinyfaces_jax.models.backbones import MobileNetV1, VGG16, max_pool_2x2

MEAN_BGR = (104.0, 117.0, 123.0)
STRIDES = (4, 8, 16, 32, 64, 128)
ANCHOR_SPEC = anchors_lib.AnchorSpec(strides=STRIDES, sizes=tuple((4.0 * s,) for s in STRIDES))
L2_SCALES = (10.0, 8.0, 5.0)
SOURCES = ("conv3_3", "conv4_3", "conv5_3", "fc7", "conv6_2", "conv7_2")
SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)
MNET_SOURCE_CHANNELS = (32, 64, 128, 256, 128, 64)
BACKBONES = ("vgg16", "mobilenet0.25")


@dataclasses.dataclass(frozen=True)
class S3FDConfig:
  """variant: a `VARIANTS` name; the other fields are that variant's (override only to
  experiment). backbone: BACKBONES (the trunk; mobilenet0.25 ignores the VGG geometry fields
  and uses `activation`). dtype / conv_impl: models/layers.py."""
  variant: str = "caffe"
  backbone: str = "vgg16"
  activation: str = "leaky_relu"
  fc6_padding: int = 1
  fc6_dilation: int = 1
  ceil_pools: tuple = (True, True, True, True, True)   # pool1..pool5
  eps_inside_sqrt: bool = True
  rgb_input: bool = False
  dtype: str = "float32"
  conv_impl: str = "auto"

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"S3FD backbone must be one of {BACKBONES}, got {self.backbone!r}")


VARIANTS = {
    "caffe": S3FDConfig(),
    "face_alignment": S3FDConfig(variant="face_alignment", fc6_padding=3,
                                 ceil_pools=(False,) * 5, eps_inside_sqrt=False),
    "yxlijun": S3FDConfig(variant="yxlijun", fc6_padding=6, fc6_dilation=6,
                          ceil_pools=(False, False, True, False, False),
                          eps_inside_sqrt=False, rgb_input=True),
}


def _pooled(n: int, ceil: bool) -> int:
  return (n + 1) // 2 if ceil else n // 2


def _strided(n: int) -> int:
  """A 3x3 / stride-2 / pad-1 conv's output length."""
  return (n - 1) // 2 + 1


def feature_sizes(cfg: S3FDConfig, image_hw) -> list[tuple[int, int]]:
  """The six source maps' (h, w) for an input of `image_hw` (the network's arithmetic, so
  anchors follow the maps the heads really produce: 160/80/40/20/10/5 at 640 for caffe and
  yxlijun, 160/80/40/24/12/6 for face_alignment's pad-3 fc6; ceil(H / stride) with the
  MobileNet trunk, whose stride-2 convs round up)."""
  if cfg.backbone == "mobilenet0.25":
    sizes = [tuple(int(n) for n in image_hw)]
    for _ in range(7):
      sizes.append(tuple((n + 1) // 2 for n in sizes[-1]))
    return sizes[2:]
  out = []
  for axis in (0, 1):
    n = int(image_hw[axis])
    sizes = []
    for k in range(4):                      # pool1..pool4 -> conv3_3 (after 2), 4_3, 5_3
      n = _pooled(n, cfg.ceil_pools[k])
      if k >= 1:
        sizes.append(n)
    n = _pooled(n, cfg.ceil_pools[4])       # pool5
    n = n + 2 * cfg.fc6_padding - 2 * cfg.fc6_dilation   # fc6 3x3 (fc7 1x1 keeps it)
    sizes.append(n)
    n = _strided(n)
    sizes.append(n)
    sizes.append(_strided(n))
    out.append(sizes)
  return list(zip(out[0], out[1]))


def anchors(cfg: S3FDConfig, image_hw) -> jnp.ndarray:
  """[A, 4] xyxy anchors in input pixels (square, 4 x stride, centres (j + 0.5) * stride)."""
  return anchors_lib.anchor_grid(ANCHOR_SPEC, tuple(image_hw), feature_sizes(cfg, image_hw))


class L2Norm(nn.Module):
  """Channel L2 normalisation with a learned per-channel scale (SSD Normalize)."""
  channels: int
  init_scale: float
  eps_inside_sqrt: bool = True

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.constant(self.init_scale), (self.channels,),
                       jnp.float32)
    x32 = x.astype(jnp.float32)
    sq = jnp.sum(x32 * x32, axis=-1, keepdims=True)
    norm = jnp.sqrt(sq + 1e-10) if self.eps_inside_sqrt else jnp.sqrt(sq) + 1e-10
    return (x32 / norm * scale).astype(x.dtype)


class S3FD(nn.Module):
  """The network of the module docstring: [B, H, W, 3] preprocessed -> dict(loc, conf)."""
  config: S3FDConfig

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    conv, _ = layers.layer_constructors(cfg.conv_impl, cfg.dtype)
    relu = jax.nn.relu
    if cfg.backbone == "vgg16":
      channels = SOURCE_CHANNELS
      taps = VGG16(conv=conv, ceil_pools=cfg.ceil_pools[:4], name="vgg")(x, train)
      h = max_pool_2x2(taps["C4"], cfg.ceil_pools[4])
      h = relu(conv(1024, 3, padding=cfg.fc6_padding, dilation=cfg.fc6_dilation,
                    use_bias=True, name="fc6")(h))
      fc7 = relu(conv(1024, 1, use_bias=True, name="fc7")(h))
    else:
      channels = MNET_SOURCE_CHANNELS
      _, conv_bn = layers.layer_constructors(cfg.conv_impl, cfg.dtype)
      taps = MobileNetV1(cfg.activation, 0.1, conv_bn=conv_bn, name="body")(x, train)
      fc7 = taps["C5"]
    e6, e7 = channels[4], channels[5]
    h = relu(conv(e6 // 2, 1, use_bias=True, name="conv6_1")(fc7))
    c6 = relu(conv(e6, 3, stride=2, use_bias=True, name="conv6_2")(h))
    h = relu(conv(e7 // 2, 1, use_bias=True, name="conv7_1")(c6))
    c7 = relu(conv(e7, 3, stride=2, use_bias=True, name="conv7_2")(h))
    sources = [L2Norm(c, s, cfg.eps_inside_sqrt, name=f"{n}_norm")(taps[t])
               for c, s, n, t in zip(channels, L2_SCALES, SOURCES, ("C2", "C3", "C4"))]
    sources += [fc7, c6, c7]
    locs, confs = [], []
    for k, (name, src) in enumerate(zip(SOURCES, sources)):
      head = f"{name}_norm" if k < 3 else name
      b = src.shape[0]
      loc = conv(4, 3, use_bias=True, name=f"{head}_mbox_loc")(src).astype(jnp.float32)
      conf = conv(4 if k == 0 else 2, 3, use_bias=True,
                  name=f"{head}_mbox_conf")(src).astype(jnp.float32)
      if k == 0:   # max-out background: max of 3 background channels, then the face one
        conf = jnp.concatenate([jnp.max(conf[..., :3], -1, keepdims=True), conf[..., 3:]], -1)
      locs.append(loc.reshape(b, -1, 4))
      confs.append(conf.reshape(b, -1, 2))
    return {"loc": jnp.concatenate(locs, 1), "conf": jnp.concatenate(confs, 1)}
