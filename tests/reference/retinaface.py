"""Plain-numpy statement of Pytorch_Retinaface's box coding and detection post-processing.

`decode` / `encode` / `decode_landm` restate `utils/box_utils.py` (priors (cx, cy, w, h),
boxes xyxy, variances (0.1, 0.2)); `detect` restates the post-processing of `detect.py` (decode,
score threshold, top-k, py_cpu_nms, keep top-k), with the stable descending sort the library
documents (ties: lower index first).
"""

from __future__ import annotations

import numpy as np

from . import nms

VARIANCES = (0.1, 0.2)


def decode(loc, priors, var=VARIANCES):
  """box_utils.py decode: loc [A, 4] offsets, priors [A, 4] (cx, cy, w, h) -> [A, 4] xyxy."""
  boxes = np.concatenate([priors[:, :2] + loc[:, :2] * var[0] * priors[:, 2:],
                          priors[:, 2:] * np.exp(loc[:, 2:] * var[1])], 1)
  boxes[:, :2] -= boxes[:, 2:] / 2
  boxes[:, 2:] += boxes[:, :2]
  return boxes


def encode(matched, priors, var=VARIANCES):
  """box_utils.py encode: matched [A, 4] xyxy vs (cx, cy, w, h) priors -> [A, 4] offsets."""
  g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
  g_cxcy /= var[0] * priors[:, 2:]
  g_wh = np.log((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]) / var[1]
  return np.concatenate([g_cxcy, g_wh], 1)


def decode_landm(pre, priors, var=VARIANCES):
  """box_utils.py decode_landm: pre [A, 10] offsets -> [A, 10] (x, y) x 5."""
  return np.concatenate([priors[:, :2] + pre[:, 2 * k:2 * k + 2] * var[0] * priors[:, 2:]
                         for k in range(5)], 1)


def detect(loc, conf, landms, priors, hw, score_threshold, pre_nms_top_k, iou_threshold,
           max_output):
  """detect.py post-processing of one image.

  loc [A, 4], conf [A, 2] (softmaxed), landms [A, 10], priors [A, 4] normalised cxcywh, hw the
  image (height, width) -> dets [N, 15] (x1 y1 x2 y2 score, 5 x (x, y)) in pixels,
  score-descending.
  """
  h, w = hw
  boxes = decode(loc, priors)
  boxes *= np.asarray([w, h, w, h], np.float32)
  lm = decode_landm(landms, priors) * np.tile(np.asarray([w, h], np.float32), 5)
  scores = conf[:, 1]
  inds = np.where(scores > score_threshold)[0]
  boxes, lm, scores = boxes[inds], lm[inds], scores[inds]
  order = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
  boxes, lm, scores = boxes[order], lm[order], scores[order]
  dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
  keep = nms.py_cpu_nms(dets, iou_threshold, stable=True)[:max_output]
  return np.concatenate([dets[keep], lm[keep]], axis=1)
