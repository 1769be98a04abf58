"""5-point landmark accuracy of a detector: normalised mean error (NME) and failure rate.

Per image, the ground-truth faces with landmarks (`present`) are matched to the detections
greedily in descending detection score: a detection takes the unmatched face it overlaps most,
when that IoU is >= `iou` (0.5); unmatched faces count in `matched` only. For a matched face
with points g [P, 2] and predicted p [P, 2]:
  error = mean_k || p_k - g_k ||_2 / norm,
  norm  = the inter-ocular distance || g_0 - g_1 || (the two eye points; 5-point sets here
          mark the eye centres, so this is the inter-pupil distance of the MTCNN / RetinaFace
          papers), or the box size sqrt(w h) of the ground-truth box;
a face is a failure when its inter-ocular error exceeds `failure_threshold` (0.1, MTCNN's
AFLW protocol). Faces whose eyes coincide (norm 0) are skipped and counted. The cumulative
error distribution (fraction of faces with error <= e) is what `plots` draw.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LandmarkResult:
  """errors_interocular / errors_box: [F] per matched face; num_faces: ground-truth faces
  with landmarks; num_matched; num_degenerate (norm 0, skipped)."""
  errors_interocular: np.ndarray
  errors_box: np.ndarray
  num_faces: int
  num_matched: int
  num_degenerate: int
  failure_threshold: float

  def summary(self) -> dict:
    e, b = self.errors_interocular, self.errors_box
    n = len(e)
    return {"num_faces": self.num_faces, "num_matched": self.num_matched,
            "num_degenerate": self.num_degenerate,
            "nme_interocular": float(e.mean()) if n else None,
            "nme_box": float(b.mean()) if n else None,
            "failure_rate": float((e > self.failure_threshold).mean()) if n else None,
            "matched": self.num_matched / self.num_faces if self.num_faces else None}


def iou_to_boxes(box, boxes) -> np.ndarray:
  """[4] vs [N, 4] xyxy (continuous areas) -> [N]."""
  lt = np.maximum(box[:2], boxes[:, :2])
  rb = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  union = area(box) + area(boxes) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(det_boxes, det_scores, gt_boxes, iou: float = 0.5) -> np.ndarray:
  """-> [G] index of the detection matched to each ground-truth face, -1 if none."""
  out = np.full(len(gt_boxes), -1, np.int64)
  if not len(gt_boxes) or not len(det_boxes):
    return out
  for d in np.argsort(-np.asarray(det_scores), kind="stable"):
    free = out < 0
    if not free.any():
      break
    ov = np.where(free, iou_to_boxes(np.asarray(det_boxes[d], np.float64), gt_boxes), -1.0)
    g = int(np.argmax(ov))
    if ov[g] >= iou:
      out[g] = d
  return out


def evaluate(dets: dict, truth: dict, iou: float = 0.5,
             failure_threshold: float = 0.1) -> LandmarkResult:
  """dets {key: dict(boxes [N, 4], scores [N], landmarks [N, P, 2])}, truth {key: dict(boxes
  [G, 4] xyxy, landmarks [G, P, 2], present [G] bool)} -> LandmarkResult (images missing
  from `dets` have no detections)."""
  eo, eb = [], []
  faces = matched = degenerate = 0
  for key, t in truth.items():
    present = np.asarray(t["present"], bool)
    gt_boxes = np.asarray(t["boxes"], np.float64).reshape(-1, 4)[present]
    gt_pts = np.asarray(t["landmarks"], np.float64)[present]
    faces += len(gt_boxes)
    d = dets.get(key)
    if d is None or not len(gt_boxes) or "landmarks" not in d:
      continue
    hit = match(np.asarray(d["boxes"], np.float64).reshape(-1, 4), d["scores"], gt_boxes, iou)
    for g in np.nonzero(hit >= 0)[0]:
      matched += 1
      p, q = np.asarray(d["landmarks"][hit[g]], np.float64), gt_pts[g]
      dist = np.linalg.norm(p - q, axis=1).mean()
      inter = np.linalg.norm(q[0] - q[1])
      if inter <= 0:
        degenerate += 1
        continue
      w, h = gt_boxes[g, 2:] - gt_boxes[g, :2]
      eo.append(dist / inter)
      eb.append(dist / np.sqrt(max(w * h, 1e-12)))
  return LandmarkResult(np.asarray(eo), np.asarray(eb), faces, matched, degenerate,
                        failure_threshold)


def cumulative_error(errors, limit: float = 0.3, steps: int = 301) -> tuple:
  """(thresholds [S], fraction of faces with error <= threshold [S]): the CED curve."""
  t = np.linspace(0.0, limit, steps)
  e = np.sort(np.asarray(errors))
  return t, (np.searchsorted(e, t, side="right") / max(len(e), 1))
