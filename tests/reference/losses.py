"""Plain-numpy statement of Pytorch_Retinaface's MultiBoxLoss (`layers/modules/multibox_loss.py`).

Per image: `match` (tests/reference/matching.py), `encode` / `encode_landm` targets, Smooth L1
sums over the positives, cross-entropy over the positives and the hard negatives of
ssd.pytorch mining (tests/reference/sampling.py); batch normalisation by the positives.
"""

from __future__ import annotations

import numpy as np

from . import matching, sampling


def smooth_l1(x):
  ax = np.abs(x)
  return np.where(ax < 1, 0.5 * x * x, ax - 0.5)


def multibox_loss(loc, conf, landm, boxes, mask, lms, lm_ok, anchors, ratio=7.0):
  """Per image: match (numpy ref), encode as Pytorch_Retinaface `encode`/`encode_landm`,
  Smooth L1 sums over positives, CE over positives + hard negatives; batch normalisation.
  -> (loc_weight 2 * loc + conf + landmark loss, number of positives)."""
  tot_l = tot_c = tot_lm = 0.0
  n_pos = n_lm = 0
  ac = (anchors[:, :2] + anchors[:, 2:]) / 2
  awh = anchors[:, 2:] - anchors[:, :2]
  for b in range(len(loc)):
    labels, matched, _ = matching.match_anchors(anchors, boxes[b], mask[b], 0.35,
                                                force_min_iou=0.2)
    pos = labels == 1
    g = boxes[b][matched]
    t = np.concatenate([((g[:, :2] + g[:, 2:]) / 2 - ac) / (0.1 * awh),
                        np.log(np.maximum(g[:, 2:] - g[:, :2], 1e-3) / awh) / 0.2], 1)
    tot_l += smooth_l1(loc[b] - t)[pos].sum()
    z = conf[b] - conf[b].max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    bg = -logp[:, 0]
    neg = sampling.hard_negative_mask_ref(np.where(pos, 0, bg), labels, ratio)
    tot_c += (-logp[pos, 1]).sum() + bg[neg].sum()
    n_pos += pos.sum()
    lm = lms[b].reshape(len(boxes[b]), 5, 2)[matched]
    lt = ((lm - ac[:, None]) / (0.1 * awh[:, None])).reshape(-1, 10)
    has = pos & lm_ok[b][matched]
    tot_lm += smooth_l1(landm[b] - lt)[has].sum()
    n_lm += has.sum()
  n = max(n_pos, 1)
  return 2 * tot_l / n + tot_c / n + tot_lm / max(n_lm, 1), n_pos
