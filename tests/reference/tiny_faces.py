"""Plain-numpy statement of the Tiny Faces / HR training loss (peiyunh/tiny
`cnn_get_batch_hardmine.m` labels + `cnn_widerface.m` losses: logistic on the template scores,
Huber on the box regression of the positives), without the random hard-sample draws."""

from __future__ import annotations

import numpy as np

from . import matching


def release_loss(cls, reg, tpl, gt, mask, region, offset):
  """The release loss without random draws (all hard samples kept): per image the template
  labels of `matching.label_templates` (inclusive-pixel boxes), logistic loss over the labelled
  cells, Huber (Smooth L1) over the positives' (dx, dy, log dw, log dh) targets relative to
  the template's +1 size at centre (offset + 8x, offset + 8y); both summed per image, then
  averaged over the batch. cls [B, H, W, T], reg [B, H, W, 4T] (dx of every template, then dy,
  dw, dh), tpl [T, 4], gt [B, M, 4], mask [B, M], region [B, 4]. -> (cls loss, reg loss)."""
  b, h, w, t = cls.shape
  total_cls = total_reg = 0.0
  for i in range(b):
    incl = gt[i] - [0, 0, 1, 1]
    labels, best, _ = matching.label_templates(tpl, incl, mask[i], np.asarray(region[i]) -
                                          [0, 0, 1, 1], h, w, 8.0, offset)
    y = np.where(labels == 1, 1.0, -1.0)
    lmap = np.log1p(np.exp(-y * cls[i]))
    keep = labels >= 0
    total_cls += lmap[keep].sum()
    for yy, xx, k in zip(*np.nonzero(labels == 1)):
      g = incl[best[yy, xx, k]]
      cx, cy = offset + 8 * xx, offset + 8 * yy
      tw, th = tpl[k, 2] - tpl[k, 0] + 1, tpl[k, 3] - tpl[k, 1] + 1
      target = [((g[0] + g[2]) / 2 - cx) / tw, ((g[1] + g[3]) / 2 - cy) / th,
                np.log((g[2] - g[0] + 1) / tw), np.log((g[3] - g[1] + 1) / th)]
      pred = reg[i, yy, xx, [k, t + k, 2 * t + k, 3 * t + k]]
      d = np.abs(pred - target)
      total_reg += np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
  return total_cls / b, total_reg / b
