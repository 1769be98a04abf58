"""MTCNN (Zhang et al. 2016) behind the Detector interface: model.py is the three networks,
cascade.py the static-shape P-Net -> R-Net -> O-Net cascade (the family's `make_predict`),
weights.py imports facenet-pytorch's `.pt` and the PyPI `mtcnn` package's `.lz4` files.

Model section: MTCNNConfig fields (pnet_landmarks, dropout, dtype) and CascadeConfig fields
(min_face_size, thresholds, factor, nms, level_keep, rnet_max, onet_max); `config.eval`'s
max_output bounds the detections per image (its scales / flip / NMS do not apply: the cascade
has its own pyramid and NMS).

Preprocessing: RGB 0..255 -> (x - 127.5) / 128. `decode` turns P-Net's dense maps into one
box per cell (the cell's 12 x 12 window at stride 2, regressed with widths x2 - x1) scored by
its face probability: P-Net alone as a one-stage detector; the cascade is what evaluation,
detect and export run. Training (the three stages' sample mining and losses) is not built
yet: the loss raises a ConfigError saying so.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinyfaces_jax import settings
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.mtcnn import cascade, model as model_lib, weights

LANDMARK_FLIP = (1, 0, 2, 4, 3)


def build(model: dict, loss: dict) -> Detector:
  """MTCNN configured by the `model` section (module docstring); `loss` must be empty."""
  model = dict(model)
  net_keys = {f.name for f in dataclasses.fields(model_lib.MTCNNConfig)}
  settings.check_keys(model, net_keys | {f.name for f in dataclasses.fields(
      cascade.CascadeConfig)}, "config.model")
  net_cfg = settings.dataclass_from(model_lib.MTCNNConfig,
                                    {k: v for k, v in model.items() if k in net_keys},
                                    "config.model")
  cascade_cfg = settings.dataclass_from(cascade.CascadeConfig,
                                        {k: v for k, v in model.items() if k not in net_keys},
                                        "config.model")
  if settings.as_dict(loss):
    raise settings.ConfigError(f"config.loss: MTCNN takes no loss settings yet, got "
                               f"{sorted(settings.as_dict(loss))}")

  def loss_fn(outputs, batch, key=None):
    raise settings.ConfigError("MTCNN training (per-stage sample mining, OHEM losses) is not "
                               "built yet; the mtcnn family runs inference and evaluation "
                               "with imported weights")

  def decode(outputs, image_hw, scale=1.0):
    del image_hw, scale
    logits, reg = outputs["logits"], outputs["reg"]
    b, ch, cw = logits.shape[:3]
    cc = jnp.arange(cw, dtype=jnp.float32) * model_lib.PNET_STRIDE
    rr = jnp.arange(ch, dtype=jnp.float32) * model_lib.PNET_STRIDE
    cell = model_lib.PNET_CELL
    boxes = jnp.stack(jnp.broadcast_arrays(cc[None, :], rr[:, None], cc[None, :] + cell,
                                           rr[:, None] + cell), -1)
    boxes = cascade.regress(jnp.broadcast_to(boxes, (b, ch, cw, 4)), reg, plus_one=False)
    return {"boxes": boxes.reshape(b, -1, 4),
            "scores": jax.nn.softmax(logits, axis=-1)[..., 1].reshape(b, -1)}

  def make_predict(infer_cfg):
    return cascade.make_cascade_predict(det, cascade_cfg, infer_cfg)

  det = Detector(name="mtcnn", model=model_lib.MTCNN(net_cfg), preprocess=model_lib.normalise,
                 loss=loss_fn, decode=decode, pad_value=(127.5, 127.5, 127.5),
                 landmark_flip=LANDMARK_FLIP, import_weights=weights.load_mtcnn,
                 backbone_scope="pnet", make_predict=make_predict,
                 locate_weights=weights.locate, folder_weights=True)
  return det
