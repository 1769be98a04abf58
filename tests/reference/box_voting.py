"""Plain-numpy, loop-based statement of S3FD's test-time box voting (float64).

Read from `bbox_vote` in the S3FD release's WIDER FACE test script, sfzhang15/SFD
`sfd_test_code/WIDER_FACE/wider_test.py` @ 43103c28fe24ff056b779e633705ef6db2c19bbe
(lines 84-117); yxlijun/S3FD.pytorch `tools/wider_test.py` @ 111610d6 holds the same function.
What it does, restated:
  * the rows [x1, y1, x2, y2, score] are put in descending score order (the release reverses
    an ascending `argsort` of the scores);
  * while rows remain: the IoU of the first row with every remaining row (itself included) is
    taken in the +1 pixel convention, areas (x2 - x1 + 1) * (y2 - y1 + 1) NOT clamped,
    intersection max(0, xx2 - xx1 + 1) * max(0, yy2 - yy1 + 1), IoU = inter / (area_top +
    area - inter); the rows with IoU >= 0.3 form the cluster and are removed;
  * a cluster of one row is dropped; otherwise one output row: the score-weighted mean of the
    cluster's coordinates, sum(s * c) / sum(s), and the cluster's maximum score;
  * the output rows keep the order they were produced in, cut to the first 750.

Where this statement has to choose:
  * ties: a stable ascending sort, reversed, i.e. equal scores put the HIGHER original index
    first. The release's default-kind `argsort` is not stable (numpy 2 on x86 already reorders
    ties for 10 elements), so its own tie order is implementation-defined;
  * the first row always joins its own cluster. The release relies on its self-IoU being 1;
    for a row with x2 - x1 + 1 <= 0 or y2 - y1 + 1 <= 0 that IoU is 0 or NaN, nothing is
    removed and the release loops forever;
  * no output row: the release fails (`dets` is never bound); this returns a [0, 5] array;
  * `drop_singletons=False` (not in the release) also outputs one-row clusters.
"""

from __future__ import annotations

import numpy as np


def iou_plus_one(a, b) -> np.float64:
  """IoU of two rows [>= 4] as the release computes it (+1 areas, unclamped); 0/0 -> NaN."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1.0)
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1.0)
  inter = np.float64(iw * ih)
  area_a = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0)
  area_b = (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return inter / np.float64(area_a + area_b - inter)


def bbox_vote(dets: np.ndarray, iou: float = 0.3, keep: int = 750,
              drop_singletons: bool = True) -> np.ndarray:
  """dets [N, 5] (x1, y1, x2, y2, score) -> [K, 5] voted rows in production order, K <= keep."""
  dets = np.asarray(dets, np.float64).reshape(-1, 5)
  pool = [int(i) for i in np.argsort(dets[:, 4], kind="stable")[::-1]]
  out = []
  while pool:
    top = pool[0]
    cluster, rest = [], []
    for j in pool:
      # `not (x < iou)` would let NaN in; the release's `o >= 0.3` does not.
      if j == top or iou_plus_one(dets[top], dets[j]) >= iou:
        cluster.append(j)
      else:
        rest.append(j)
    pool = rest
    if drop_singletons and len(cluster) < 2:
      continue
    rows = dets[cluster]
    weights = rows[:, 4]
    total = weights.sum()
    coords = [sum(rows[m, c] * weights[m] for m in range(len(cluster))) / total
              for c in range(4)]
    out.append(coords + [weights.max()])
  return np.array(out[:keep], np.float64).reshape(-1, 5)
