"""The multibox loss -> (loss, metrics); matching and OHEM run inside (XLA, static shapes).

`multibox_loss` is the SSD-family loss of RetinaFace / S3FD / SSH (Pytorch_Retinaface
`layers/modules/multibox_loss.py`, ssd.pytorch): per image, anchors are matched to the faces,
positives regress (Smooth L1) to their face's encoded box and, where the face has landmarks,
to its encoded landmarks; the 2-way softmax cross-entropy is summed over the positives and the
hard negatives (ratio negatives per positive, ranked by their background loss). Sums are
normalised by max(#positives in the batch, 1) (landmarks: by max(#positives with landmarks, 1));
total = loc_weight * box + cls + landmark_weight * landmarks (RetinaFace: loc_weight 2).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from tinyfaces_jax.detection import box_coder, matching, sampling

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class MultiboxLossConfig:
  """Static settings of `multibox_loss` (RetinaFace defaults).

  matcher: "argmax" (SSD/RetinaFace) or "s3fd" (two-stage).
  pos_iou / neg_iou: matching thresholds (neg_iou None = pos_iou, no ignore zone).
  force: forced anchors of stage one, matching.FORCE_MODES: "best" (each face's best anchor,
    ssd.pytorch / RetinaFace), "bipartite" (SSD Caffe's greedy bipartite, the S3FD release),
    "none"; bipartite_k: the anchors each face walks in the bipartite matching.
  force_min_iou: faces whose best anchor IoU is below it are not force-matched (RetinaFace 0.2).
  stage2 / stage2_n: S3FD's stage two (matching.STAGE2_MODES: "author" tops faces up to
    stage2_n = 6 anchors, "average" to the image's stage-one average, "yxlijun" the
    S3FD.pytorch image-global variant); only for matcher "s3fd".
  neg_pos_ratio: hard negatives per positive (RetinaFace 7, SSD/S3FD 3).
  variances: box coder variances.
  """
  matcher: str = "argmax"
  pos_iou: float = 0.35
  neg_iou: Optional[float] = None
  force: str = "best"
  bipartite_k: int = 16
  force_min_iou: float = 0.2
  stage2: str = "author"
  stage2_n: int = 6
  neg_pos_ratio: float = 7.0
  variances: tuple[float, float] = box_coder.SSD_VARIANCES
  loc_weight: float = 2.0
  landmark_weight: float = 1.0

  def __post_init__(self):
    if self.matcher not in ("argmax", "s3fd"):
      raise ValueError(f"MultiboxLossConfig.matcher must be 'argmax' or 's3fd', got "
                       f"{self.matcher!r}")
    if self.force not in matching.FORCE_MODES:
      raise ValueError(f"MultiboxLossConfig.force must be one of {matching.FORCE_MODES}, got "
                       f"{self.force!r}")
    if self.stage2 not in matching.STAGE2_MODES:
      raise ValueError(f"MultiboxLossConfig.stage2 must be one of {matching.STAGE2_MODES}, "
                       f"got {self.stage2!r}")


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
  """Elementwise Smooth L1 (Huber with slope 1): 0.5 x^2 / beta if |x| < beta else |x| - beta/2."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def match_batch(anchors: Array, boxes: Array, box_mask: Array,
                cfg: MultiboxLossConfig) -> matching.Match:
  """anchors [A, 4], boxes [B, M, 4], box_mask [B, M] -> Match with [B, A] fields."""
  kw = dict(neg_iou=cfg.neg_iou, force=cfg.force, force_min_iou=cfg.force_min_iou,
            bipartite_k=cfg.bipartite_k)
  if cfg.matcher == "s3fd":
    return matching.match_s3fd_batch(anchors, boxes, box_mask, stage1_iou=cfg.pos_iou,
                                     stage2=cfg.stage2, stage2_n=cfg.stage2_n, **kw)
  return matching.match_anchors_batch(anchors, boxes, box_mask, pos_iou=cfg.pos_iou, **kw)


def multibox_loss(outputs: dict, batch: dict, anchors: Array,
                  cfg: MultiboxLossConfig = MultiboxLossConfig()) -> tuple[Array, dict]:
  """SSD-family detection loss for a batch.

  Args:
    outputs: loc [B, A, 4] box deltas, conf [B, A, 2] logits (column 1 = face), optional
      landm [B, A, 10] landmark deltas.
    batch: boxes [B, M, 4] xyxy, box_mask [B, M] bool, and with landmarks:
      landmarks [B, M, 5, 2], landmarks_present [B, M] bool.
    anchors: [A, 4] xyxy.
  Returns:
    (scalar loss, metrics dict of scalars).
  """
  m = match_batch(anchors, batch["boxes"], batch["box_mask"], cfg)
  pos = m.labels == matching.POSITIVE                                         # [B, A]
  posf = pos.astype(jnp.float32)
  num_pos = jnp.sum(posf)
  norm = jnp.maximum(num_pos, 1.0)

  gather = jax.vmap(lambda x, i: x[i])
  matched = gather(batch["boxes"].astype(jnp.float32), m.matched_gt)            # [B, A, 4]
  loc_t = box_coder.encode_boxes(matched, anchors, cfg.variances)
  loc = outputs["loc"].astype(jnp.float32)
  loss_box = jnp.sum(smooth_l1(loc - loc_t) * posf[..., None]) / norm

  logits = outputs["conf"].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce_bg = -logp[..., 0]                                  # loss of calling an anchor background
  neg = sampling.batched_hard_negative_mask(jnp.where(pos, 0.0, ce_bg), m.labels,
                                            cfg.neg_pos_ratio)
  ce = jnp.where(pos, -logp[..., 1], ce_bg)
  loss_cls = jnp.sum(ce * (pos | neg).astype(jnp.float32)) / norm

  metrics = {"num_pos": num_pos, "num_neg": jnp.sum(neg.astype(jnp.float32)),
             "loss_box": loss_box, "loss_cls": loss_cls}
  loss = cfg.loc_weight * loss_box + loss_cls
  if "landm" in outputs and "landmarks" in batch:
    b, mm = batch["landmarks"].shape[:2]
    lm = batch["landmarks"].astype(jnp.float32).reshape(b, mm, 10)
    lm_t = box_coder.encode_landmarks(gather(lm, m.matched_gt), anchors, cfg.variances)
    has = pos & gather(batch["landmarks_present"], m.matched_gt)
    hasf = has.astype(jnp.float32)
    per = jnp.sum(smooth_l1(outputs["landm"].astype(jnp.float32) - lm_t), axis=-1)
    loss_lm = jnp.sum(per * hasf) / jnp.maximum(jnp.sum(hasf), 1.0)
    metrics["loss_landm"] = loss_lm
    loss = loss + cfg.landmark_weight * loss_lm
  metrics["loss"] = loss
  return loss, metrics
