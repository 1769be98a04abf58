"""Per-image numpy matching + OHEM: what the reference repos do in their data loaders/losses.

The same semantics as `tinyfaces_jax.detection.matching.match_s3fd` followed by
`sampling.hard_negative_mask`, written the way ssd.pytorch / S3FD.pytorch do it: a Python loop
over the images of the batch, vectorised numpy inside each image (one [M, A] IoU matrix of the
image's real faces, no padding). Used by `benchmarks/matching.py` as the speed peer and as a
cross-check of the jitted path (tests/reference/matching.py is the loop statement of the same
matching, tests/reference/sampling.py of the mining).
"""

from __future__ import annotations

import numpy as np


def iou_matrix(gt: np.ndarray, anchors: np.ndarray) -> np.ndarray:
  """gt [n, 4], anchors [A, 4] xyxy -> [n, A] float32 IoU (continuous convention)."""
  lt = np.maximum(gt[:, None, :2], anchors[None, :, :2])
  rb = np.minimum(gt[:, None, 2:], anchors[None, :, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area_g = np.prod(np.clip(gt[:, 2:] - gt[:, :2], 0, None), axis=1)
  area_a = np.prod(anchors[:, 2:] - anchors[:, :2], axis=1)
  union = area_g[:, None] + area_a[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def match_s3fd_image(anchors: np.ndarray, gt: np.ndarray, stage1_iou=0.35,
                     stage2_iou=0.1):
  """One image: anchors [A, 4], real faces gt [n, 4] -> (labels [A] int32, matched [A] int32)."""
  a = anchors.shape[0]
  wh = gt[:, 2:] - gt[:, :2]
  gt = gt[(wh[:, 0] > 0) & (wh[:, 1] > 0)]
  if len(gt) == 0:
    return np.zeros(a, np.int32), np.zeros(a, np.int32)
  ov = iou_matrix(gt, anchors)                          # [n, A]
  best_anchor = ov.argmax(1)
  best_anchor_iou = ov[np.arange(len(gt)), best_anchor]
  best_gt = ov.argmax(0)
  best_gt_iou = ov[best_gt, np.arange(a)]
  matched = best_gt.copy()
  forced = np.zeros(a, bool)
  for j in range(len(gt)):                              # later face wins, as the reference
    if best_anchor_iou[j] > 0:
      matched[best_anchor[j]] = j
      forced[best_anchor[j]] = True
  pos = forced | (best_gt_iou >= stage1_iou)
  # Stage two: N = floor(stage-one positives / faces); faces short of N take their best
  # unmatched anchors (best face = this face, IoU > 0.1) by IoU descending.
  counts = np.bincount(matched[pos], minlength=len(gt))
  n = pos.sum() // len(gt)
  cand = (~pos) & (best_gt_iou > stage2_iou)
  for j in np.flatnonzero(counts < n):
    idx = np.flatnonzero(cand & (best_gt == j))
    idx = idx[np.argsort(-best_gt_iou[idx], kind="stable")][:n - counts[j]]
    pos[idx] = True
  return pos.astype(np.int32), matched.astype(np.int32)


def hard_negatives_image(losses: np.ndarray, labels: np.ndarray, ratio: float) -> np.ndarray:
  """ssd.pytorch mining for one image: keep the ratio*num_pos highest-loss negatives."""
  neg = labels == 0
  num_neg = min(int(ratio * (labels == 1).sum()), len(labels) - 1, int(neg.sum()))
  order = np.argsort(-np.where(neg, losses, -np.inf), kind="stable")
  keep = np.zeros(len(labels), bool)
  keep[order[:num_neg]] = True
  return keep


def match_and_mine_batch(anchors, gt_list, losses, ratio=3.0):
  """The peer: Python loop over images. gt_list: B arrays [n_b, 4]; losses [B, A]."""
  labels, matched, neg = [], [], []
  for gt, loss in zip(gt_list, losses):
    lab, mat = match_s3fd_image(anchors, gt)
    labels.append(lab)
    matched.append(mat)
    neg.append(hard_negatives_image(loss, lab, ratio))
  return np.stack(labels), np.stack(matched), np.stack(neg)
