"""Plain-numpy statement of Pytorch_Retinaface's random crop (`data/data_augment.py` `_crop`).

The random draws are left out: the candidate rois are given, in draw order, and the first
one that `_crop` would accept is applied.
"""

from __future__ import annotations

import numpy as np


def retina_crop(boxes, rois, img_dim, min_face_px=0.0):
  """Numpy statement of Pytorch_Retinaface `_crop` over given candidate rois.

  boxes [N, 4] xyxy, rois [R, 4] square crops, img_dim the training size ->
  (roi or None, keep [N] bool, kept boxes in the roi's coordinates; without an accepted roi:
  (None, all True, boxes))."""
  for roi in rois:
    lt, rb = roi[:2], roi[2:]
    ilt, irb = np.maximum(boxes[:, :2], lt), np.minimum(boxes[:, 2:], rb)
    inter = np.prod(irb - ilt, 1) * np.all(ilt < irb, 1)
    iof = inter / np.maximum(np.prod(boxes[:, 2:] - boxes[:, :2], 1), 1)
    if not (iof >= 1).any():
      continue
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    mask_a = np.all((lt < c) & (c < rb), 1)
    bt = np.concatenate([np.maximum(boxes[:, :2], lt), np.minimum(boxes[:, 2:], rb)], 1) - \
        np.tile(lt, 2)
    side = rb[0] - lt[0]
    mask_b = np.minimum(bt[:, 2] - bt[:, 0] + 1, bt[:, 3] - bt[:, 1] + 1) / side * img_dim > \
        min_face_px
    keep = mask_a & mask_b
    if keep.any():
      return roi, keep, bt[keep]
  return None, np.ones(len(boxes), bool), boxes
