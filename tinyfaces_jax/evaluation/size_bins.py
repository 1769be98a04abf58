"""WIDER FACE AP restricted to faces of one size: the data of a resolution-vs-size analysis.

Hu & Ramanan ("Finding Tiny Faces", CVPR 2017) show that templates applied at a different
image resolution (0.5x, 1x, 2x) suit different face sizes: plotting AP against face size, one
curve per resolution setting, tells which resolution works best for which face height. This
module gives that AP, per face-height bin, with the official WIDER protocol (evaluation/wider.py)
left unchanged: only the ground truth's `keep` masks (which faces count) are restricted.

Face height is the `h` of the ground-truth box (x, y, w, h) in original image pixels, as stored
in `wider_face_val.mat` (no +1). `DEFAULT_HEIGHT_BINS` are octaves from 10 px: [0, 10), [10, 20),
[20, 40), [40, 80), [80, 160), [160, 320), [320, inf). Faces of the official val hard setting
per bin: 3, 12029, 10186, 5965, 2439, 943, 393 (31958 in all; its `gt_list` leaves out nearly
every face under 10 px, so on it the first bin's AP is noise, while the embedded dataset, where
every face counts, has 8% of its faces under 8 px). Degenerate boxes with h < 0 fall in no bin.

Rows of `ap_by_height` are dicts `{"lo", "hi", "num_faces", "ap"}` (ap None for a bin without
faces); `to_json` / `from_json` convert them to and from the form stored under the
`"ap_by_height"` key of `eval/step_<k>/aps.json` (hi of the last bin: null for infinity, so the
file is strict JSON).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from tinyfaces_jax.evaluation import wider, wider_io

DEFAULT_HEIGHT_BINS = (0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, math.inf)


def check_edges(edges: Sequence[float]) -> tuple:
  """Validates bin edges -> tuple of floats (at least 2, strictly increasing, not NaN)."""
  out = tuple(float(e) for e in edges)
  if len(out) < 2:
    raise ValueError(f"height bin edges need at least 2 values, got {edges!r}")
  if any(math.isnan(e) for e in out) or any(b <= a for a, b in zip(out, out[1:])):
    raise ValueError(f"height bin edges must be strictly increasing numbers, got {edges!r}")
  return out


def restrict_to_heights(gt: wider_io.WiderGroundTruth, lo: float, hi: float,
                        setting: str = "hard") -> wider_io.WiderGroundTruth:
  """A copy of `gt` where only the faces of `setting` with lo <= h < hi count.

  For every setting (easy, medium, hard alike), `keep` becomes keep[setting] & (lo <= h < hi),
  h = boxes[:, 3]. Every other face stays in `boxes` with keep False: an "ignore" face. This is
  the official protocol's own treatment of faces outside a setting (`gt_list`): a prediction
  whose best match (IoU >= 0.5) is an ignore face is removed from the proposals, so finding a
  face of another size is neither a true nor a false positive of this bin, and the bin's AP
  does not depend on how many faces of other sizes an image holds. Deleting those faces
  instead would turn correct detections of them into false positives and penalise a detector
  for finding faces of other sizes. Predictions matching no face (background) stay false
  positives in every bin (they have no face size; COCO's area ranges would ignore them when
  their own size is outside the range, the WIDER protocol has no such rule).

  Args:
    gt: ground truth, boxes N arrays [G_i, 4] x y w h, keep setting -> N bool arrays [G_i].
    lo, hi: height range in pixels, lo < hi (hi may be inf).
    setting: the setting whose faces are restricted ("hard" counts the most faces).
  Returns:
    WiderGroundTruth with the same keys / boxes / version and new keep masks [G_i] per setting.
  """
  if setting not in gt.keep:
    raise ValueError(f"unknown setting {setting!r}; the ground truth has {sorted(gt.keep)}")
  lo, hi = float(lo), float(hi)
  if not lo < hi:
    raise ValueError(f"height range needs lo < hi, got [{lo}, {hi})")
  masks = []
  for key, b, k in zip(gt.keys, gt.boxes, gt.keep[setting]):
    b = np.asarray(b, np.float64).reshape(-1, 4)
    k = np.asarray(k, bool)
    if k.shape != (len(b),):
      raise ValueError(f"{key}: keep[{setting!r}] has shape {k.shape} for {len(b)} boxes")
    h = b[:, 3]
    masks.append(k & (h >= lo) & (h < hi))
  keep = {s: [m.copy() for m in masks] for s in gt.keep}
  return dataclasses.replace(gt, keys=list(gt.keys), boxes=list(gt.boxes), keep=keep)


def count_by_height(gt: wider_io.WiderGroundTruth, edges: Sequence[float] = DEFAULT_HEIGHT_BINS,
                    setting: str = "hard") -> np.ndarray:
  """Faces of `setting` per height bin -> [len(edges) - 1] int64 (bins [edges[i], edges[i+1]))."""
  edges = check_edges(edges)
  if setting not in gt.keep:
    raise ValueError(f"unknown setting {setting!r}; the ground truth has {sorted(gt.keep)}")
  h = [np.asarray(b, np.float64).reshape(-1, 4)[:, 3][np.asarray(k, bool)]
       for b, k in zip(gt.boxes, gt.keep[setting])]
  h = np.concatenate(h) if h else np.zeros(0)
  return np.array([int(((h >= a) & (h < b)).sum()) for a, b in zip(edges, edges[1:])], np.int64)


def ap_by_height(pred, gt, edges: Sequence[float] = DEFAULT_HEIGHT_BINS,
                 setting: str = "hard") -> list:
  """Official WIDER AP of `setting`, restricted to each face-height bin.

  One `wider.evaluate` per bin on `restrict_to_heights(gt, lo, hi, setting)`; the score
  normalisation (global min / max over all predictions) is the same in every bin.

  Args:
    pred: {"<event>/<stem>": [K, 5] x y w h score} or a submission-layout folder (read once).
    gt: a WiderGroundTruth, or a folder of the official .mat files (loaded once).
    edges: [B + 1] increasing bin edges in pixels (default DEFAULT_HEIGHT_BINS).
    setting: which faces are binned ("hard": every face of the hard setting).
  Returns:
    B dicts {"lo": float, "hi": float (inf for an open bin), "num_faces": int, "ap": float or
    None (bin without faces)}, in bin order.
  """
  edges = check_edges(edges)
  if isinstance(pred, (str, os.PathLike)):
    pred = wider_io.read_predictions(pred)
  if not isinstance(gt, wider_io.WiderGroundTruth):
    gt = wider_io.load_ground_truth(gt)
  rows = []
  for lo, hi in zip(edges, edges[1:]):
    sub = restrict_to_heights(gt, lo, hi, setting)
    n = sub.num_faces(setting)
    ap = None
    if n:
      ap = float(wider.evaluate(pred, sub, verbose=False).aps[setting])
    rows.append({"lo": lo, "hi": hi, "num_faces": int(n), "ap": ap})
  return rows


def to_json(rows: list) -> list:
  """ap_by_height rows -> strict-JSON rows (hi inf -> None, numbers as python floats/ints)."""
  out = []
  for r in rows:
    hi = float(r["hi"])
    out.append({"lo": float(r["lo"]), "hi": None if math.isinf(hi) else hi,
                "num_faces": int(r["num_faces"]),
                "ap": None if r["ap"] is None else float(r["ap"])})
  return out


def from_json(rows, where: str = "ap_by_height") -> list:
  """Rows read from aps.json -> ap_by_height rows (hi None / "inf" / Infinity -> inf).

  Raises ValueError naming `where` (e.g. the aps.json path) on a malformed row.
  """
  if not isinstance(rows, list):
    raise ValueError(f"{where}: expected a list of {{lo, hi, num_faces, ap}}, got "
                     f"{type(rows).__name__}")
  out = []
  for i, r in enumerate(rows):
    if not isinstance(r, dict) or not {"lo", "hi", "num_faces", "ap"} <= set(r):
      raise ValueError(f"{where}[{i}]: expected keys lo, hi, num_faces, ap, got {r!r}")
    try:
      hi = math.inf if r["hi"] is None else float(r["hi"])
      ap = None if r["ap"] is None else float(r["ap"])
      out.append({"lo": float(r["lo"]), "hi": hi, "num_faces": int(r["num_faces"]), "ap": ap})
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}[{i}]: malformed row {r!r} ({e})") from None
  return out


def bin_label(lo: float, hi: float) -> str:
  """Bin [lo, hi) -> a short label: "10-20", "<10" (lo <= 0), ">=320" (hi inf)."""
  def num(v):
    return str(int(v)) if float(v).is_integer() else f"{v:g}"
  if math.isinf(hi):
    return f">={num(lo)}"
  if lo <= 0:
    return f"<{num(hi)}"
  return f"{num(lo)}-{num(hi)}"


def bin_centre(lo: float, hi: float) -> float:
  """Geometric centre of [lo, hi) for a log axis; an open end (lo <= 0, hi inf) is taken as
  half an octave beyond the other edge."""
  if lo <= 0 and math.isinf(hi):
    return 1.0
  if lo <= 0:
    return hi / math.sqrt(2.0)
  if math.isinf(hi):
    return lo * math.sqrt(2.0)
  return math.sqrt(lo * hi)
