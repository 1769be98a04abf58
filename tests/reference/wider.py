"""Plain-loop reference of the WIDER FACE protocol, a literal reading of the MATLAB eval_tools.

Written from `read_pred.m` (per-image stable sort by score, descending), `norm_score.m` (global
min/max, running max/min starting at realmin/realmax('single')), `evaluation.m`
(`image_evaluation`, `image_pr_info`, `dataset_pr_info`), `boxoverlap.m` and `VOCap.m`.
Scalar Python loops only, no vectorisation: slow, for small synthetic cases in the tests.
"""

from __future__ import annotations

import math

import numpy as np

REALMIN_SINGLE = float(np.finfo(np.float32).tiny)
REALMAX_SINGLE = float(np.finfo(np.float32).max)


def box_overlap(gt_xyxy, p):
  """boxoverlap(a, b): list of [x1, y1, x2, y2] faces, one box -> list of IoUs."""
  out = []
  for a in gt_xyxy:
    x1, y1 = max(a[0], p[0]), max(a[1], p[1])
    x2, y2 = min(a[2], p[2]), min(a[3], p[3])
    w, h = x2 - x1 + 1, y2 - y1 + 1
    inter = w * h
    aarea = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    barea = (p[2] - p[0] + 1) * (p[3] - p[1] + 1)
    den = aarea + barea - inter
    if den == 0:
      o = math.nan if inter == 0 else math.copysign(math.inf, inter)
    else:
      o = inter / den
    if w <= 0 or h <= 0:
      o = 0.0
    out.append(o)
  return out


def matlab_max(values):
  """[m, i] = max(v): NaNs skipped, first index on ties; all NaN -> (NaN, 0)."""
  best, idx = math.nan, 0
  for i, v in enumerate(values):
    if math.isnan(v):
      continue
    if math.isnan(best) or v > best:
      best, idx = v, i
  return best, idx


def image_evaluation(pred, gt, keep, iou_thresh):
  """pred [K, 5] sorted, gt [G, 4] xywh, keep [G] bool -> pred_recall [K], proposal [K]."""
  pred_recall = [0] * len(pred)
  recall_list = [0] * len(gt)
  proposal = [1] * len(pred)
  gt_xyxy = [[g[0], g[1], g[0] + g[2], g[1] + g[3]] for g in gt]
  for h, p in enumerate(pred):
    box = [p[0], p[1], p[0] + p[2], p[1] + p[3]]
    max_overlap, idx = matlab_max(box_overlap(gt_xyxy, box))
    if max_overlap >= iou_thresh:
      if not keep[idx]:
        recall_list[idx] = -1
        proposal[h] = -1
      elif recall_list[idx] == 0:
        recall_list[idx] = 1
    pred_recall[h] = sum(1 for r in recall_list if r == 1)
  return pred_recall, proposal


def image_pr_info(thresh_num, pred, proposal, pred_recall):
  """-> [T, 2] (proposals, recalled) per threshold 1 - t / T."""
  info = np.zeros((thresh_num, 2))
  for t in range(1, thresh_num + 1):
    thresh = 1 - t / thresh_num
    r_index = -1
    for k in range(len(pred)):
      if pred[k][4] >= thresh:
        r_index = k
    if r_index >= 0:
      info[t - 1, 0] = sum(1 for q in proposal[:r_index + 1] if q == 1)
      info[t - 1, 1] = pred_recall[r_index]
  return info


def voc_ap(rec, prec):
  """VOCap.m with MATLAB's NaN-skipping max."""
  mrec = [0.0] + list(rec) + [1.0]
  mpre = [0.0] + list(prec) + [0.0]
  for i in range(len(mpre) - 2, -1, -1):
    a, b = mpre[i], mpre[i + 1]
    mpre[i] = b if math.isnan(a) else (a if math.isnan(b) else max(a, b))
  ap = 0.0
  for i in range(1, len(mrec)):
    if mrec[i] != mrec[i - 1]:
      ap += (mrec[i] - mrec[i - 1]) * mpre[i]
  return ap


def evaluate_reference(gt_boxes, keep_by_setting, preds, iou_thresh=0.5, thresh_num=1000):
  """Reference evaluation.

  Args:
    gt_boxes: N arrays [G_i, 4] xywh; keep_by_setting: setting -> N bool arrays [G_i];
    preds: N arrays [K_i, 5] (file order) or None for a missing file.
  Returns:
    (aps {setting: float}, curves {setting: [T, 2] (precision, recall)}).
  """
  # read_pred.m: stable sort by score, descending ([~, s] = sort(x, 'descend')).
  sorted_preds = []
  for p in preds:
    if p is None or len(p) == 0:
      sorted_preds.append(None)
      continue
    rows = [list(map(float, r)) for r in p]
    order = sorted(range(len(rows)), key=lambda k: -rows[k][4])
    sorted_preds.append([rows[k] for k in order])
  # norm_score.m
  max_score, min_score = REALMIN_SINGLE, REALMAX_SINGLE
  for p in sorted_preds:
    if p:
      max_score = max(max_score, max(r[4] for r in p))
      min_score = min(min_score, min(r[4] for r in p))
  for p in sorted_preds:
    for r in p or []:
      r[4] = (r[4] - min_score) / (max_score - min_score)
  aps, curves = {}, {}
  for setting, keeps in keep_by_setting.items():
    org = np.zeros((thresh_num, 2))
    count_face = 0
    for gt, keep, p in zip(gt_boxes, keeps, sorted_preds):
      count_face += int(np.sum(keep))
      if len(gt) == 0 or not p:
        continue
      gt = [list(map(float, g)) for g in gt]
      pred_recall, proposal = image_evaluation(p, gt, list(keep), iou_thresh)
      org += image_pr_info(thresh_num, p, proposal, pred_recall)
    curve = np.zeros((thresh_num, 2))
    for i in range(thresh_num):
      curve[i, 0] = org[i, 1] / org[i, 0] if org[i, 0] else math.nan
      curve[i, 1] = org[i, 1] / count_face if count_face else math.nan
    curves[setting] = curve
    aps[setting] = voc_ap(curve[:, 1], curve[:, 0])
  return aps, curves
