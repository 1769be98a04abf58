"""MTCNN (Zhang et al. 2016) behind the Detector interface: model.py is the three networks,
cascade.py the static-shape P-Net -> R-Net -> O-Net cascade (the family's `make_predict`),
weights.py imports facenet-pytorch's `.pt` and the PyPI `mtcnn` package's `.lz4` files;
recipe.py makes a training stage's 12 / 24 / 48 px crops, from the samples mining.py mines
with the earlier stages for R- and O-Net (the family's `prepare_training`).

Model section: MTCNNConfig fields (pnet_landmarks, dropout, train_stage, dtype) and
CascadeConfig fields (min_face_size, thresholds, factor, nms, level_keep, rnet_max, onet_max,
chunks, resample, stages); `config.eval`'s
max_output bounds the detections per image (its scales / flip / NMS do not apply: the cascade
has its own pyramid and NMS).

Preprocessing: RGB 0..255 -> (x - 127.5) / 128. `decode` turns P-Net's dense maps into one
box per cell (the cell's 12 x 12 window at stride 2, regressed with widths x2 - x1) scored by
its face probability: P-Net alone as a one-stage detector; the cascade is what evaluation,
detect and export run (`stages=1` stops it after P-Net: how a P-Net being trained is scored).

Loss (AITTSMD/MTCNN-Tensorflow `train_models/mtcnn_model.py`; `MTCNNLossConfig`), on the
batches of recipe.py (labels 1 positive, 0 negative, -1 part face, -2 landmark sample) for the
network of `model.train_stage`:
  * classification: softmax cross-entropy -log(p_label + 1e-10) over the positives and
    negatives, online hard sample mining: only the int(0.7 n) largest of the n losses count,
    averaged over them (in XLA: a rank mask, static shapes);
  * box: squared error summed over the 4 offsets, averaged over positives and part faces;
  * landmarks (O-Net, and P-Net with `pnet_landmarks`): squared error summed over the 10
    coordinates, averaged over the landmark samples (R-Net's released net has no landmark
    head, so its term is absent);
  * total = cls_weight * cls + box_weight * box + landmark_weight * landmarks (1 / 0.5 / 0.5
    for P- and R-Net, 1 / 0.5 / 1 for O-Net; configs/mtcnn.py sets them per stage).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinyfaces_jax import settings
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.mtcnn import cascade, mining, model as model_lib, weights

LANDMARK_FLIP = (1, 0, 2, 4, 3)


@dataclasses.dataclass(frozen=True)
class MTCNNLossConfig:
  """The loss of one training stage (module docstring)."""
  cls_weight: float = 1.0
  box_weight: float = 0.5
  landmark_weight: float = 0.5
  keep_ratio: float = 0.7


def mtcnn_loss(outputs: dict, batch: dict, cfg: MTCNNLossConfig) -> tuple:
  """outputs of one network on the batch's crops (logits [b, (1, 1,) 2], reg [b, (1, 1,) 4],
  optional landmarks [b, (1, 1,) 10]) and batch {label [b], bbox [b, 4], landmarks [b, 10]}
  -> (scalar loss, metrics)."""
  b = batch["label"].shape[0]
  label = batch["label"].astype(jnp.int32)
  logits = outputs["logits"].reshape(b, 2).astype(jnp.float32)
  reg = outputs["reg"].reshape(b, 4).astype(jnp.float32)
  cls_valid = (label == 0) | (label == 1)
  prob = jax.nn.softmax(logits, axis=-1)
  ce = -jnp.log(jnp.take_along_axis(prob, jnp.clip(label, 0, 1)[:, None], 1)[:, 0] + 1e-10)
  n_valid = jnp.sum(cls_valid)
  keep = jnp.floor(cfg.keep_ratio * n_valid.astype(jnp.float32)).astype(jnp.int32)
  ranked = jnp.where(cls_valid, ce, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-ranked, stable=True), stable=True)   # 0 = the hardest
  kept = cls_valid & (rank < keep)
  cls_loss = jnp.sum(jnp.where(kept, ce, 0.0)) / jnp.maximum(keep, 1)
  box_valid = jnp.abs(label) == 1
  box_err = jnp.sum((reg - batch["bbox"].astype(jnp.float32)) ** 2, -1)
  box_loss = jnp.sum(jnp.where(box_valid, box_err, 0.0)) / jnp.maximum(jnp.sum(box_valid), 1)
  total = cfg.cls_weight * cls_loss + cfg.box_weight * box_loss
  metrics = {"loss_cls": cls_loss, "loss_box": box_loss}
  if "landmarks" in outputs:
    lm = outputs["landmarks"].reshape(b, 10).astype(jnp.float32)
    lm_valid = label == -2
    lm_err = jnp.sum((lm - batch["landmarks"].astype(jnp.float32)) ** 2, -1)
    lm_loss = jnp.sum(jnp.where(lm_valid, lm_err, 0.0)) / jnp.maximum(jnp.sum(lm_valid), 1)
    total = total + cfg.landmark_weight * lm_loss
    metrics["loss_landm"] = lm_loss
  correct = (jnp.argmax(logits, -1) == label) & cls_valid
  metrics.update(loss=total, num_pos=jnp.sum(label == 1).astype(jnp.float32),
                 accuracy=jnp.sum(correct) / jnp.maximum(n_valid, 1))
  return total, metrics


def build(model: dict, loss: dict) -> Detector:
  """MTCNN configured by the `model` section and the `loss` section (MTCNNLossConfig)."""
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
  loss_cfg = settings.dataclass_from(MTCNNLossConfig, loss, "config.loss")

  def loss_fn(outputs, batch, key=None):
    del key
    return mtcnn_loss(outputs, batch, loss_cfg)

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

  def prepare_training(variables, ctx):
    return mining.prepare(det, cascade_cfg, variables, ctx)

  def raw_exports(sizes):
    """P-Net on each image size; R-Net and O-Net on their crops."""
    return ([(f"pnet_{w}x{h}", "pnet", (h, w)) for h, w in sizes]
            + [(n, n, (s, s)) for n, s in model_lib.CROP_SIZES.items()])

  det = Detector(name="mtcnn", model=model_lib.MTCNN(net_cfg), preprocess=model_lib.normalise,
                 loss=loss_fn, decode=decode, pad_value=(127.5, 127.5, 127.5),
                 landmark_flip=LANDMARK_FLIP, import_weights=weights.load_mtcnn,
                 backbone_scope="pnet", make_predict=make_predict,
                 locate_weights=weights.locate, folder_weights=True,
                 prepare_training=prepare_training, raw_exports=raw_exports)
  return det
