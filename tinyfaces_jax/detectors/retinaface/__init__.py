"""RetinaFace (Deng et al. 2020; Pytorch_Retinaface): MobileNet0.25 / ResNet trunks, FPN, SSH
context modules, 2 anchors per cell, boxes + 5 landmarks, multibox loss with IoU-0.35
matching and 7:1 OHEM. model.py: the network, presets, decoding; weights.py: the .pth and
ONNX importers.

Model section keys: `preset` (model.PRESETS) plus any RetinaFaceConfig field; loss section:
multibox_loss.MultiboxLossConfig fields.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from tinyfaces_jax import settings
from tinyfaces_jax.detection import anchors as anchors_lib, box_coder, multibox_loss
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.retinaface import model as model_lib, weights
from tinyfaces_jax.detectors.retinaface.model import (MEAN_BGR, PRESETS, RetinaFace,
                                                      RetinaFaceConfig)
from tinyfaces_jax.pretrained import backbones_pth


def build(model: dict, loss: dict) -> Detector:
  """RetinaFace configured by the `model` section (a preset name + RetinaFaceConfig fields)
  and the `loss` section (MultiboxLossConfig fields)."""
  model = dict(model)
  preset = model.pop("preset", "mnet025")
  if preset not in PRESETS:
    raise settings.ConfigError(f"config.model.preset: unknown RetinaFace preset {preset!r}; "
                               f"known: {sorted(PRESETS)}")
  base = dataclasses.asdict(PRESETS[preset])
  cfg = settings.dataclass_from(RetinaFaceConfig, {**base, **model}, "config.model")
  loss_cfg = settings.dataclass_from(multibox_loss.MultiboxLossConfig, loss, "config.loss")
  spec = cfg.anchor_spec
  mean_bgr = jnp.asarray(MEAN_BGR, jnp.float32)

  def preprocess(images):
    return images[..., ::-1].astype(jnp.float32) - mean_bgr

  def loss_fn(outputs, batch, key=None):
    del key
    anchors = jnp.asarray(anchors_lib.anchor_grid(spec, tuple(batch["image"].shape[1:3])))
    return multibox_loss.multibox_loss(outputs, batch, anchors, loss_cfg)

  def decode(outputs, image_hw, scale=1.0):
    del scale
    d = model_lib.decode(outputs, cfg, tuple(image_hw))
    b, a = d["scores"].shape
    return {"boxes": d["boxes"], "scores": d["scores"],
            "landmarks": d["landmarks"].reshape(b, a, 5, 2)}

  def import_weights(path):
    if str(path).endswith(".onnx"):
      return weights.load_retinaface_onnx(path, cfg)
    return weights.load_retinaface_pth(path, cfg)

  def import_backbone(path):
    return backbones_pth.load_backbone_pth(path, cfg.backbone, cfg.activation)

  return Detector(name="retinaface", model=RetinaFace(cfg), preprocess=preprocess,
                  loss=loss_fn, decode=decode, pad_value=tuple(float(v) for v in
                                                               MEAN_BGR[::-1]),
                  landmark_flip=box_coder.FIVE_POINT_MIRROR, import_weights=import_weights,
                  import_backbone=import_backbone, backbone_scope="body")
