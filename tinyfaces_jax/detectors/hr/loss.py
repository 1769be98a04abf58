"""The HR / Tiny Faces training loss (peiyunh/tiny): template labels, hard mining, logistic +
Huber -> (loss, metrics), all inside the jitted step (XLA, static shapes)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinyfaces_jax.detection import box_coder, matching, multibox_loss, sampling
from tinyfaces_jax.detectors.hr import template_matching

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class TinyFacesLossConfig:
  """Static settings of `tiny_faces_loss` (the release's defaults).

  pos_iou / neg_iou: template labelling thresholds (0.7 / 0.3).
  offset: pixel of output cell 0's centre (cell (y, x) sits at offset + 8 (x, y)).
  easy_loss, max_pos, max_neg: hard mining (drop loss < 0.03; <= 128 positives and 128
    negatives drawn at random per image).
  neg_select: "random" (the release) or "hardest": the max_neg hard negatives of largest loss
    (`sampling.tiny_faces_sample_mask`).
  reg_weight: weight of the Huber box loss.
  """
  pos_iou: float = 0.7
  neg_iou: float = 0.3
  offset: float = 0.0
  easy_loss: float = 0.03
  max_pos: int = 128
  max_neg: int = 128
  neg_select: str = "random"
  reg_weight: float = 1.0


def huber(x: Array) -> Array:
  """MatConvNet's HuberLoss (sigma 1): 0.5 x^2 if |x| < 1 else |x| - 0.5."""
  return multibox_loss.smooth_l1(x, 1.0)


def tiny_faces_loss(outputs: dict, batch: dict, templates: Array, key: jax.Array,
                    cfg: TinyFacesLossConfig = TinyFacesLossConfig()) -> tuple[Array, dict]:
  """HR / Tiny Faces loss of a batch (peiyunh/tiny cnn_get_batch_hardmine.m labels,
  cnn_train_dag_hardmine.m mining, logistic + Huber losses).

  Per image: every (cell, template) is labelled by `template_matching.label_templates`
  (positive / negative / ignore, padding-crossing boxes ignored); the logistic loss
  log(1 + exp(-y s)) (y = +-1) is computed everywhere, locations with loss < easy_loss are
  dropped, then at most max_pos positives and max_neg negatives are drawn at random; the
  classification loss sums over the drawn ones, the Huber loss over the 4 offsets of the
  drawn positives, regressing each to its best-overlap face (Tiny Faces coder: tx = (gcx -
  cx) / w_t, tw = log(g_w / w_t), +1 pixel sizes). Both sums are divided by the batch size,
  as MatConvNet's SGD divides the summed gradient by it.

  Args:
    outputs: cls [B, H, W, T] logits, reg [B, H, W, 4T] (tx for all T, then ty, tw, th).
    batch: boxes [B, M, 4] xyxy (x2 = x1 + w), box_mask [B, M], valid_region [B, 4] xyxy of
      the pasted crop (x2 = x1 + w).
    templates: [T, 4] centred template boxes (+1 convention, as RefBox_N25*.mat).
    key: PRNG key of the random draws.
  Returns:
    (scalar loss, metrics).
  """
  cls = outputs["cls"].astype(jnp.float32)
  b, h, w, t = cls.shape
  reg = outputs["reg"].astype(jnp.float32).reshape(b, h, w, 4, t)
  reg = jnp.moveaxis(reg, 3, -1)                                        # [B, H, W, T, 4]
  # Our boxes end at x1 + w; the release's inclusive pixels end at x1 + w - 1.
  inclusive = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)
  gt = batch["boxes"].astype(jnp.float32) - inclusive
  region = batch["valid_region"].astype(jnp.float32) - inclusive
  m = template_matching.label_templates_batch(
      templates, gt, batch["box_mask"], region, out_size=(h, w), stride=8.0,
      offset=cfg.offset, pos_iou=cfg.pos_iou, neg_iou=cfg.neg_iou)
  labels = m.labels.reshape(b, -1)
  y = jnp.where(labels == matching.POSITIVE, 1.0, -1.0)
  loss_map = jax.nn.softplus(-y * cls.reshape(b, -1))                    # [B, A]
  pos, neg = sampling.batched_tiny_faces_sample_mask(
      key, jax.lax.stop_gradient(loss_map), labels, easy_loss=cfg.easy_loss,
      max_pos=cfg.max_pos, max_neg=cfg.max_neg, neg_select=cfg.neg_select)
  loss_cls = jnp.sum(jnp.where(pos | neg, loss_map, 0.0)) / b
  grid = template_matching.template_grid(templates, (h, w), stride=8.0, offset=cfg.offset)
  gather = jax.vmap(lambda x, i: x[i])
  matched = gather(gt, m.matched_gt.reshape(b, -1))                      # [B, A, 4]
  target = box_coder.encode_boxes(matched, grid.reshape(1, -1, 4), (1.0, 1.0),
                                  pixel_offset=1.0)
  per = jnp.sum(huber(reg.reshape(b, -1, 4) - target), axis=-1)
  loss_reg = jnp.sum(jnp.where(pos, per, 0.0)) / b
  loss = loss_cls + cfg.reg_weight * loss_reg
  metrics = {"loss": loss, "loss_cls": loss_cls, "loss_reg": loss_reg,
             "num_pos": jnp.sum(pos.astype(jnp.float32)),
             "num_neg": jnp.sum(neg.astype(jnp.float32)),
             "num_pos_labelled": jnp.sum((labels == matching.POSITIVE).astype(jnp.float32))}
  return loss, metrics
