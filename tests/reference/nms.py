"""Plain-numpy, loop-based statement of the NMS semantics of `tinyfaces_jax.detection.nms`.

Written like py_cpu_nms (RetinaFace `utils/nms/py_cpu_nms.py`), in float32 with the same
arithmetic order, but with the documented tie rule (stable order: lower index first) and
the score threshold / pre-top-k / max_output steps of RetinaFace `detect.py`; the published
py_cpu_nms itself (and with stable ties, as benchmarks/retinaface_inference.py runs it); and the
pairwise IoU, one pair at a time, as py_cpu_nms / the WIDER tool state it.
"""

from __future__ import annotations

import numpy as np


def iou_one_to_many(box, others, pixel_offset=0.0):
  """box [4], others [M, 4] -> [M] float32 IoU, same formula as box_ops.pairwise_iou."""
  box = np.asarray(box, np.float32)
  others = np.asarray(others, np.float32)
  off = np.float32(pixel_offset)

  def area(b):
    w = np.maximum(b[..., 2] - b[..., 0] + off, np.float32(0))
    h = np.maximum(b[..., 3] - b[..., 1] + off, np.float32(0))
    return w * h

  xx1 = np.maximum(box[0], others[:, 0])
  yy1 = np.maximum(box[1], others[:, 1])
  xx2 = np.minimum(box[2], others[:, 2])
  yy2 = np.minimum(box[3], others[:, 3])
  w = np.maximum(xx2 - xx1 + off, np.float32(0))
  h = np.maximum(yy2 - yy1 + off, np.float32(0))
  inter = w * h
  union = area(box) + area(others) - inter
  out = np.zeros(len(others), np.float32)
  for m in range(len(others)):
    if union[m] > 0:
      out[m] = inter[m] / union[m]
  return out


def min_overlap_one_to_many(box, others, pixel_offset=0.0):
  """box [4], others [M, 4] -> [M] intersection over the smaller area, one pair at a time
  (facenet-pytorch's nms_numpy 'Min': inter / np.minimum(area[i], area[idx]))."""
  off = np.float32(pixel_offset)
  out = np.zeros(len(others), np.float32)
  for m, q in enumerate(np.asarray(others, np.float32)):
    iw = max(min(box[2], q[2]) - max(box[0], q[0]) + off, np.float32(0))
    ih = max(min(box[3], q[3]) - max(box[1], q[1]) + off, np.float32(0))
    a = max(box[2] - box[0] + off, np.float32(0)) * max(box[3] - box[1] + off, np.float32(0))
    b = max(q[2] - q[0] + off, np.float32(0)) * max(q[3] - q[1] + off, np.float32(0))
    smaller = min(a, b)
    out[m] = np.float32(iw * ih) / smaller if smaller > 0 else 0.0
  return out


def nms_ref(boxes, scores, iou_threshold, max_output, score_threshold=None,
            pre_nms_top_k=None, pixel_offset=0.0, valid=None, overlap="iou"):
  """Returns the list of kept indices (at most max_output), in output order; `overlap`
  "min" measures intersection over the smaller area instead of IoU."""
  overlap_fn = {"iou": iou_one_to_many, "min": min_overlap_one_to_many}[overlap]
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  n = len(scores)
  cand = []
  for i in range(n):
    if valid is not None and not valid[i]:
      continue
    if np.isnan(scores[i]):
      continue
    if score_threshold is not None and not scores[i] > np.float32(score_threshold):
      continue
    cand.append(i)
  # Stable descending sort: by (-score, index).
  cand.sort(key=lambda i: (-float(scores[i]), i))
  if pre_nms_top_k is not None:
    cand = cand[:pre_nms_top_k]
  keep = []
  order = list(cand)
  thr = np.float32(iou_threshold)
  while order and len(keep) < max_output:
    i = order[0]
    keep.append(i)
    rest = order[1:]
    if not rest:
      break
    ovr = overlap_fn(boxes[i], boxes[rest], pixel_offset)
    order = [j for j, o in zip(rest, ovr) if not o > thr]
  return keep


def pairwise_iou_loop(a, b, off=0.0):
  """IoU as py_cpu_nms / the WIDER tool state it, one pair at a time -> [len(a), len(b)]."""
  out = np.zeros((len(a), len(b)))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = min(p[2], q[2]) - max(p[0], q[0]) + off
      ih = min(p[3], q[3]) - max(p[1], q[1]) + off
      inter = max(iw, 0.0) * max(ih, 0.0)
      ap = max(p[2] - p[0] + off, 0) * max(p[3] - p[1] + off, 0)
      aq = max(q[2] - q[0] + off, 0) * max(q[3] - q[1] + off, 0)
      union = ap + aq - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def py_cpu_nms(dets, thresh, stable=False):
  """RetinaFace's py_cpu_nms (float32 dets [N, 5] x1 y1 x2 y2 score, +1 areas, keeps IoU <=
  thresh) -> kept row indices. stable=False: as published (`scores.argsort()[::-1]`, equal
  scores in whatever order that gives); stable=True: a stable descending sort (ties: lower
  index first, as the library)."""
  x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(-scores, kind="stable") if stable else scores.argsort()[::-1]
  keep = []
  while order.size > 0:
    i = order[0]
    keep.append(i)
    xx1 = np.maximum(x1[i], x1[order[1:]])
    yy1 = np.maximum(y1[i], y1[order[1:]])
    xx2 = np.minimum(x2[i], x2[order[1:]])
    yy2 = np.minimum(y2[i], y2[order[1:]])
    w = np.maximum(0.0, xx2 - xx1 + 1)
    h = np.maximum(0.0, yy2 - yy1 + 1)
    inter = w * h
    ovr = inter / (areas[i] + areas[order[1:]] - inter)
    inds = np.where(ovr <= thresh)[0]
    order = order[inds + 1]
  return keep
