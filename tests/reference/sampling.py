"""Plain-numpy, loop-based statement of the deterministic sampling semantics of
`tinyfaces_jax.detection.sampling` (labels: 1 positive, 0 negative, -1 ignore)."""

from __future__ import annotations

import math

import numpy as np


def _top_indices(losses, members, k):
  """Indices of the k members with the largest loss; equal losses: lower index first."""
  ranked = sorted(members, key=lambda i: (-float(losses[i]), i))
  return ranked[:k]


def hard_negative_mask_ref(losses, labels, neg_pos_ratio, min_negatives=0):
  """SSD hard negative mining of one image, written after ssd.pytorch MultiBoxLoss."""
  losses = np.asarray(losses, np.float32)
  a = len(labels)
  num_pos = sum(1 for v in labels if v == 1)
  negatives = [i for i in range(a) if labels[i] == 0]
  num_neg = max(int(math.floor(np.float32(neg_pos_ratio) * np.float32(num_pos))),
                min_negatives)
  num_neg = min(num_neg, a - 1, len(negatives))
  out = np.zeros(a, bool)
  for i in _top_indices(losses, negatives, num_neg):
    out[i] = True
  return out


def top_fraction_mask_ref(losses, valid, fraction=0.7):
  """MTCNN cls_ohem selection: keep_num = int(float32(num_valid) * float32(fraction))."""
  losses = np.asarray(losses, np.float32)
  members = [i for i in range(len(losses)) if valid[i]]
  keep_num = int(np.float32(len(members)) * np.float32(fraction))
  out = np.zeros(len(losses), bool)
  for i in _top_indices(losses, members, keep_num):
    out[i] = True
  return out


def top_fraction_mean_ref(losses, valid, fraction=0.7):
  mask = top_fraction_mask_ref(losses, valid, fraction)
  if not mask.any():
    return 0.0
  return float(np.mean(np.asarray(losses, np.float64)[mask]))


def tiny_faces_candidates_ref(losses, labels, easy_loss=0.03):
  """The deterministic part of Tiny Faces hardmine: (hard positives, hard negatives)."""
  pos = np.zeros(len(labels), bool)
  neg = np.zeros(len(labels), bool)
  for i in range(len(labels)):
    if losses[i] < np.float32(easy_loss):
      continue  # label_cls(loss_cls_map < 0.03) = 0
    if labels[i] == 1:
      pos[i] = True
    elif labels[i] == 0:
      neg[i] = True
  return pos, neg
