"""RetinaFace (Deng et al. 2020) in Flax, layer for layer as Pytorch_Retinaface.

Network: backbone taps (strides 8/16/32) -> FPN -> one SSH per level -> per level three 1x1
conv heads with bias: ClassHead (k * 2 logits), BboxHead (k * 4 encoded box offsets) and
LandmarkHead (k * 10 encoded landmark offsets), k = anchors per cell. Each head output
[B, h, w, k * n] is flattened to [B, h * w * k, n] and the levels are concatenated, which
is the reference's `permute(0, 2, 3, 1).view(N, -1, n)` order (level, row, column, anchor)
and equals `detection.anchors.anchor_grid(spec, (H, W))`.

Input: [B, H, W, 3] float32, BGR minus (104, 117, 123), not scaled (the reference's
`detect.py` preprocessing, NHWC). Any H, W: the level-l maps are ceil(H / s_l) x ceil(W / s_l).
Outputs (axis letters: B images, A anchors):
  loc [B, A, 4] (dx, dy, dw, dh for variances 0.1 / 0.2), conf [B, A, 2] logits (column 1 =
  face; the reference's test phase applies softmax), landm [B, A, 10] (x1, y1, ..., x5, y5).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.detection import anchors as anchors_lib
from tinyfaces_jax.detection import box_coder, nms as nms_lib
from tinyfaces_jax.models.backbones import BACKBONE_TAPS, make_backbone
from tinyfaces_jax.models.layers import layer_constructors
from tinyfaces_jax.models.necks import FPN, ContextModule

MEAN_BGR = (104.0, 117.0, 123.0)


@dataclasses.dataclass(frozen=True)
class RetinaFaceConfig:
  """Static configuration of a RetinaFace model.

  Attributes:
    backbone: 'mobilenet0.25', 'resnet50', 'resnet101' or 'resnet152'.
    activation: 'leaky_relu' or 'relu', used in the MobileNet backbone, FPN and SSH inner
      convs (the SSH output is always ReLU; ResNet-50 is always ReLU).
    negative_slope: LeakyReLU slope.
    in_channel: Pytorch_Retinaface `in_channel`; the backbone taps have 2x, 4x, 8x of it.
    out_channel: FPN / SSH / head input channels.
    anchors: name of the `detection.anchors` preset ('retinaface', 'retinaface_1mb').
    conv_impl: how convs are computed ('auto', 'conv', 'fast'; models/layers.py).
    dtype: compute dtype ('float32' or 'bfloat16'): every conv / dot, activation, FPN / SSH
      and head computes in it (models/layers.py); parameters and batch statistics stay
      float32 and the heads' outputs are returned in float32 (`detectors.Detector.with_dtype`
      swaps it on a built detector: same variables).
  """
  backbone: str = "mobilenet0.25"
  activation: str = "leaky_relu"
  negative_slope: float = 0.1
  in_channel: int = 32
  out_channel: int = 64
  anchors: str = "retinaface"
  conv_impl: str = "auto"
  dtype: str = "float32"

  @property
  def anchor_spec(self) -> anchors_lib.AnchorSpec:
    return anchors_lib.get_spec(self.anchors)

  @property
  def tap_channels(self) -> tuple[int, int, int]:
    return (2 * self.in_channel, 4 * self.in_channel, 8 * self.in_channel)


PRESETS = {
    # m2man / biubug6 Pytorch_Retinaface cfg_mnet: LeakyReLU(0.1).
    "mnet025": RetinaFaceConfig(),
    # biubug6/Face-Detector-1MB-with-landmark: ReLU, smaller anchors.
    "mnet025_1mb": RetinaFaceConfig(activation="relu", anchors="retinaface_1mb"),
    # Pytorch_Retinaface cfg_re50 (out_channel 256 > 64 makes FPN/SSH LeakyReLU(0) = ReLU).
    "resnet50": RetinaFaceConfig(backbone="resnet50", activation="relu", in_channel=256,
                                 out_channel=256),
    # The same heads on a deeper trunk (insightface's RetinaFace-R152 layout of taps).
    "resnet152": RetinaFaceConfig(backbone="resnet152", activation="relu", in_channel=256,
                                  out_channel=256),
}


class RetinaFace(nn.Module):
  """RetinaFace detector: [B, H, W, 3] -> dict(loc [B, A, 4], conf [B, A, 2], landm [B, A, 10]).

  Sub-modules carry the PyTorch names: body, fpn, ssh1..3, ClassHead_l / BboxHead_l /
  LandmarkHead_l (l = 0, 1, 2).
  """
  config: RetinaFaceConfig = RetinaFaceConfig()

  @nn.compact
  def __call__(self, x, train: bool = False):
    cfg = self.config
    conv, conv_bn = layer_constructors(cfg.conv_impl, cfg.dtype, param_dtype=jnp.float32)
    taps = make_backbone(cfg.backbone, cfg.activation, cfg.negative_slope, conv_bn=conv_bn,
                         conv=conv)(x, train)
    feats = [taps[k] for k in BACKBONE_TAPS[cfg.backbone]]
    for f, c in zip(feats, cfg.tap_channels):
      if f.shape[-1] != c:
        raise ValueError(f"backbone tap has {f.shape[-1]} channels, config expects {c}")
    kw = dict(activation=cfg.activation, negative_slope=cfg.negative_slope, conv_bn=conv_bn)
    pyramid = FPN(cfg.out_channel, name="fpn", **kw)(feats, train)
    per_cell = cfg.anchor_spec.anchors_per_cell()
    if len(per_cell) != 3:
      raise ValueError(f"RetinaFace needs a 3-level anchor spec, got {cfg.anchors!r}")
    outs = {"loc": [], "conf": [], "landm": []}
    for lvl, (p, k) in enumerate(zip(pyramid, per_cell)):
      p = ContextModule(cfg.out_channel, name=f"ssh{lvl + 1}", **kw)(p, train)
      b = p.shape[0]
      for key, head, n in (("conf", "ClassHead", 2), ("loc", "BboxHead", 4),
                           ("landm", "LandmarkHead", 10)):
        y = conv(k * n, 1, use_bias=True, name=f"{head}_{lvl}")(p)
        outs[key].append(y.reshape(b, -1, n).astype(jnp.float32))
    return {key: jnp.concatenate(v, axis=1) for key, v in outs.items()}


def preprocess_bgr(image_bgr) -> jnp.ndarray:
  """uint8/float [..., H, W, 3] BGR image -> float32 network input (BGR minus the mean)."""
  return jnp.asarray(image_bgr, jnp.float32) - jnp.asarray(MEAN_BGR, jnp.float32)


def init_variables(config: RetinaFaceConfig, rng=None, image_hw=(64, 64)) -> dict:
  """Random-init variables {'params', 'batch_stats'} for `config`."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  x = jnp.zeros((1,) + tuple(image_hw) + (3,), jnp.float32)
  return RetinaFace(config).init(rng, x)


def decode(outputs: dict, config: RetinaFaceConfig, image_hw: tuple[int, int]) -> dict:
  """Decodes raw outputs in input pixels.

  Returns dict(boxes [B, A, 4] xyxy, scores [B, A] (softmax face prob), landmarks [B, A, 10]).
  """
  anchors = jnp.asarray(anchors_lib.anchor_grid(config.anchor_spec, tuple(image_hw)))
  if anchors.shape[0] != outputs["loc"].shape[1]:
    raise ValueError(f"{outputs['loc'].shape[1]} predictions for {anchors.shape[0]} anchors")
  return {"boxes": box_coder.decode_boxes(outputs["loc"], anchors),
          "scores": jax.nn.softmax(outputs["conf"], axis=-1)[..., 1],
          "landmarks": box_coder.decode_landmarks(outputs["landm"], anchors)}


def detect(outputs: dict, config: RetinaFaceConfig, image_hw: tuple[int, int], *,
           score_threshold: float = 0.02, pre_nms_top_k: Optional[int] = 5000,
           iou_threshold: float = 0.4, max_output: int = 750) -> dict:
  """The reference `detect.py` post-processing (defaults = its argparse defaults).

  Returns dict(boxes [B, K, 4], scores [B, K], landmarks [B, K, 10], valid [B, K]) in
  descending score order, padded (valid False) up to K = max_output.
  """
  d = decode(outputs, config, image_hw)
  res = nms_lib.batched_nms(d["boxes"], d["scores"], iou_threshold=iou_threshold,
                            max_output=max_output, score_threshold=score_threshold,
                            pre_nms_top_k=pre_nms_top_k, pixel_offset=1.0)
  idx = jnp.maximum(res.indices, 0)
  lm = jnp.take_along_axis(d["landmarks"], idx[..., None], axis=1)
  lm = jnp.where(res.valid[..., None], lm, 0.0)
  return {"boxes": res.boxes, "scores": res.scores, "landmarks": lm, "valid": res.valid}


def dets_array(det: dict, index: int = 0) -> np.ndarray:
  """One image of `detect` as the reference's [N, 15] dets (x1 y1 x2 y2 score, 5 x (x, y))."""
  v = np.asarray(det["valid"][index])
  return np.concatenate([np.asarray(det["boxes"][index])[v],
                         np.asarray(det["scores"][index])[v][:, None],
                         np.asarray(det["landmarks"][index])[v]], axis=1)
