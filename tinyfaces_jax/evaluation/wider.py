"""The WIDER FACE validation protocol (official MATLAB `eval_tools`), vectorised with numpy.

Semantics pinned from `wider_eval.m`, `read_pred.m`, `norm_score.m`, `evaluation.m`
(`image_evaluation`, `image_pr_info`, `dataset_pr_info`), `boxoverlap.m` and `VOCap.m`:
  * only files of ground-truth images are read; a missing file means no detections;
  * scores are min-max normalised with ONE global min/max over all val predictions, the
    running max/min starting at realmin('single') / realmax('single');
  * per prediction, the ground-truth face of highest IoU (first one on ties) is taken, even if
    already matched; IoU uses the +1 pixel convention (x2 = x + w, width = x2 - x1 + 1) and is 0
    when the intersection width or height is <= 0;
  * IoU >= 0.5 with a face outside the setting's `gt_list` ("ignore" face): the prediction is
    not a proposal; IoU >= 0.5 with a kept face: that face is recalled (once);
  * images without ground-truth boxes or without predictions add nothing but their kept faces
    still count in `count_face` (the recall denominator);
  * 1000 thresholds 1 - t/1000, t = 1..1000; at each, an image contributes the number of
    proposals and recalled faces among its predictions with normalised score >= threshold
    (the MATLAB tool sorts each image by score and takes the prefix up to the last such
    prediction, which is the same set);
  * precision = recalled / proposals (NaN for 0/0, as in MATLAB), recall = recalled/count_face;
  * AP = VOC envelope area (`VOCap`): sentinels (0, 0) and (1, 0), running max of precision
    from the right (NaN ignored, like MATLAB's max), sum of d(recall) * precision.

Because a prediction's match does not depend on the others, the per-threshold counts reduce
to: proposals(t) = #proposal predictions with score >= thr_t and recalled(t) = #kept faces
whose best-scoring recalling prediction has score >= thr_t, i.e. two sorted score arrays and a
searchsorted. Axis letters: K predictions, G ground-truth faces, T thresholds.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np

from tinyfaces_jax.evaluation import wider_io

IOU_THRESH = 0.5
THRESH_NUM = 1000
_REALMIN_SINGLE = float(np.finfo(np.float32).tiny)  # MATLAB realmin('single')
_REALMAX_SINGLE = float(np.finfo(np.float32).max)   # MATLAB realmax('single')
_CHUNK = 1 << 21  # max K * G IoU entries computed at once


def iou_plus1(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
  """`boxoverlap.m` IoU, +1 pixel convention: [K, 4], [G, 4] x y w h -> [K, G] float64.

  Entries whose intersection width or height is <= 0 are 0; degenerate boxes (w <= -1) can
  give inf/NaN elsewhere exactly as in MATLAB.
  """
  p = np.asarray(pred_xywh, np.float64)
  g = np.asarray(gt_xywh, np.float64)
  px1, py1 = p[:, 0:1], p[:, 1:2]
  px2, py2 = px1 + p[:, 2:3], py1 + p[:, 3:4]
  gx1, gy1 = g[:, 0], g[:, 1]
  gx2, gy2 = gx1 + g[:, 2], gy1 + g[:, 3]
  iw = np.minimum(gx2, px2) - np.maximum(gx1, px1) + 1
  ih = np.minimum(gy2, py2) - np.maximum(gy1, py1) + 1
  inter = iw * ih
  g_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
  p_area = (px2 - px1 + 1) * (py2 - py1 + 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    o = inter / (g_area + p_area - inter)
  o[(iw <= 0) | (ih <= 0)] = 0.0
  return o


def match_predictions(pred_xywh, gt_xywh, iou_thresh: float = IOU_THRESH):
  """Per prediction, the ground truth of highest IoU and whether that IoU >= iou_thresh.

  Args:
    pred_xywh: [K, 4]; gt_xywh: [G, 4] with G >= 1.
  Returns:
    best: [K] int64 index of the highest-IoU face (first on ties, NaN IoUs skipped).
    matched: [K] bool, max IoU >= iou_thresh.
  """
  k = len(pred_xywh)
  best = np.zeros(k, np.int64)
  matched = np.zeros(k, bool)
  step = max(1, _CHUNK // max(1, len(gt_xywh)))
  for s in range(0, k, step):
    o = iou_plus1(pred_xywh[s:s + step], gt_xywh)
    o[np.isnan(o)] = -np.inf
    idx = o.argmax(axis=1)
    best[s:s + step] = idx
    matched[s:s + step] = o[np.arange(len(idx)), idx] >= iou_thresh
  return best, matched


def score_thresholds(thresh_num: int = THRESH_NUM) -> np.ndarray:
  """[T] thresholds 1 - t / thresh_num, t = 1..T (float64, same rounding as MATLAB)."""
  return 1.0 - np.arange(1, thresh_num + 1) / thresh_num


def count_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """[N] scores, [T] thresholds -> [T] int64 number of scores >= each threshold."""
  s = np.sort(np.asarray(scores, np.float64))
  return len(s) - np.searchsorted(s, thresholds, side="left")


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """`VOCap.m`: [T] recall, [T] precision -> area under the precision envelope."""
  mrec = np.concatenate(([0.0], recall, [1.0]))
  mpre = np.concatenate(([0.0], precision, [0.0]))
  mpre = np.fmax.accumulate(mpre[::-1])[::-1]
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclasses.dataclass
class WiderResult:
  """Evaluation result.

  Attributes:
    aps: setting -> AP.
    pr_curves: setting -> [T, 2] (precision, recall), the official `pr_cruve` layout.
    counts: setting -> [T, 2] int64 (proposals, recalled faces) summed over images.
    num_faces: setting -> count_face.
    score_range: (min, max) used for the global score normalisation.
    missing: keys of ground-truth images without a prediction (treated as no detections).
    extra: keys of predictions for images not in the ground truth (not evaluated).
    num_detections: predictions evaluated (ground-truth images only).
    timings: stage -> seconds.
  """
  aps: dict
  pr_curves: dict
  counts: dict
  num_faces: dict
  score_range: tuple
  missing: list
  extra: list
  num_detections: int
  timings: dict


def _log(verbose, msg):
  if verbose:
    print(f"[wider_eval] {msg}", flush=True)


def evaluate(pred, gt_dir, version: str = "auto", iou_thresh: float = IOU_THRESH,
             thresh_num: int = THRESH_NUM, verbose: bool = True,
             log_every: int = 1000) -> WiderResult:
  """Evaluates predictions on WIDER FACE val (easy / medium / hard).

  Args:
    pred: {"<event>/<stem>": [K, 5] x y w h score} or a directory (path or URL) in the
      submission layout.
    gt_dir: folder (path or URL) of the official .mat ground truth, or a loaded `WiderGroundTruth`.
    version: ground-truth version check, see `wider_io.load_ground_truth`.
    iou_thresh, thresh_num: protocol constants (0.5, 1000 officially).
    verbose: print progress and a timing summary; log_every: images between progress lines.
  Returns:
    WiderResult with APs and [T, 2] (precision, recall) curves per setting.
  """
  t0 = time.perf_counter()
  gt = (gt_dir if isinstance(gt_dir, wider_io.WiderGroundTruth)
        else wider_io.load_ground_truth(gt_dir, version))
  t1 = time.perf_counter()
  if isinstance(pred, (str, os.PathLike)):
    pred = wider_io.read_predictions(pred)
  t2 = time.perf_counter()
  gt_keys = set(gt.keys)
  extra = sorted(k for k in pred if k not in gt_keys)
  if extra:
    warnings.warn(f"{len(extra)} prediction(s) for images not in the ground truth were not "
                  f"evaluated, e.g. {extra[:3]}", stacklevel=2)
  dets, missing = [], []
  for key in gt.keys:
    if key in pred:
      dets.append(wider_io.check_detections(key, pred[key]))
    else:
      missing.append(key)
      dets.append(np.zeros((0, 5), np.float64))
  if missing:
    _log(verbose, f"{len(missing)} ground-truth image(s) without predictions "
         f"(no detections), e.g. {missing[:3]}")

  # norm_score.m: one global min / max; running max/min start at realmin/realmax('single').
  all_scores = np.concatenate([d[:, 4] for d in dets])
  hi = max(_REALMIN_SINGLE, float(all_scores.max())) if all_scores.size else _REALMIN_SINGLE
  lo = min(_REALMAX_SINGLE, float(all_scores.min())) if all_scores.size else _REALMAX_SINGLE
  if all_scores.size and hi == lo:
    warnings.warn("all scores are equal: the official normalisation gives NaN scores, so no "
                  "prediction passes any threshold", stacklevel=2)

  # Matching, independent of the setting: per prediction its best face (global index) or -1.
  offsets = np.cumsum([0] + [len(b) for b in gt.boxes])
  scores, gids = [], []
  for i, (d, b) in enumerate(zip(dets, gt.boxes)):
    if len(d) == 0 or len(b) == 0:  # evaluation.m skips these images
      continue
    with np.errstate(divide="ignore", invalid="ignore"):
      s = (d[:, 4] - lo) / (hi - lo)
    best, matched = match_predictions(d[:, :4], b, iou_thresh)
    scores.append(s)
    gids.append(np.where(matched, best + offsets[i], -1))
    if log_every and (i + 1) % log_every == 0:
      _log(verbose, f"matched {i + 1}/{gt.num_images} images")
  scores = np.concatenate(scores) if scores else np.zeros(0)
  gids = np.concatenate(gids) if gids else np.zeros(0, np.int64)
  is_match = gids >= 0
  face_best = np.full(offsets[-1], -np.inf)  # best score among the predictions recalling it
  np.maximum.at(face_best, gids[is_match], scores[is_match])
  t3 = time.perf_counter()

  thr = score_thresholds(thresh_num)
  aps, curves, counts, num_faces = {}, {}, {}, {}
  for setting in wider_io.SETTINGS:
    keep = np.concatenate(gt.keep[setting]) if offsets[-1] else np.zeros(0, bool)
    count_face = int(keep.sum())
    proposal = ~(is_match & ~keep[np.maximum(gids, 0)])
    n_prop = count_at_least(scores[proposal], thr)
    n_rec = count_at_least(face_best[keep & np.isfinite(face_best)], thr)
    with np.errstate(divide="ignore", invalid="ignore"):
      precision = n_rec.astype(np.float64) / n_prop.astype(np.float64)
      recall = n_rec.astype(np.float64) / count_face
    curves[setting] = np.stack([precision, recall], axis=1)
    counts[setting] = np.stack([n_prop, n_rec], axis=1)
    num_faces[setting] = count_face
    aps[setting] = voc_ap(recall, precision)
  t4 = time.perf_counter()
  timings = {"load_gt": t1 - t0, "read_pred": t2 - t1, "match": t3 - t2, "curves": t4 - t3,
             "total": t4 - t0}
  _log(verbose, f"{gt.num_images} images, {len(scores)} detections evaluated, "
       f"{len(missing)} missing, {len(extra)} extra; "
       + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
  _log(verbose, "  ".join(f"{s} AP {aps[s]:.4f}" for s in wider_io.SETTINGS))
  return WiderResult(aps=aps, pr_curves=curves, counts=counts, num_faces=num_faces,
                     score_range=(lo, hi), missing=missing, extra=extra,
                     num_detections=int(len(scores)), timings=timings)
