"""FDDB evaluation: the official tool's (Jain & Learned-Miller, `evaluation/`) discrete and
continuous ROC curves, re-implemented in numpy.

Protocol of the official C++ tool, as implemented here:

1. Regions are drawn filled into 8-bit masks the size of the image (`Matching::
   computePairWiseScores`), so every region is clipped to the image, and the overlap of an
   annotation a and a detection d is |mask_a AND mask_d| / |mask_a OR mask_d| in pixel counts
   (`Region::setIntersect` / `setUnion`, `Matching::computeScore`).
   - rectangle (`RectangleR::display`): `cvRectangle(cvPointFrom32f((x, y)),
     cvPointFrom32f((x + w, y + h)), CV_FILLED)`: both corners rounded (float32 then cvRound,
     half to even), both ends inclusive -> pixels [rint(x), rint(x+w)] x [rint(y), rint(y+h)].
   - ellipse (`EllipsesSingleImage::read` + `EllipseR::display`): the angle t (radians) becomes
     180 - (pi - t) * 180 / pi = t in degrees, the centre is rounded to whole pixels, the half
     axes are truncated to int (`cvSize((int)ra, (int)rb)`), and `cvEllipse(..., CV_FILLED)`
     fills the polygon of `ellipse2Poly` (angle rounded to whole degrees, one vertex every 5
     degrees for axes >= 15 px, 18 / 30 / 90 degrees for smaller ones) by scanlines.
   We rasterise every region as one [x1, x2] pixel interval per row (regions are convex):
   rectangles directly, ellipses by a port of OpenCV's `EllipseEx` -> `FillConvexPoly` (XY_SHIFT
   = 16 fixed point, the two edge chains stepped per scanline, x rounded with (x + 0.5) >> 16)
   plus the 8-connected `Line2` outline it draws first. Not reproduced: `clipLine` of outline
   segments that cross the image border (sub-pixel, only for regions cut by the border) and the
   exact float values of OpenCV's `SinTable` (we use float32 sines of whole degrees).
2. For each image and each distinct detection score s (ascending; `getUniqueScores`), the
   detections with score >= s are valid; annotations (rows) and valid detections (columns) with
   all-zero overlap are dropped and a maximum-weight one-to-one assignment (`hungarian_solve`,
   HUNGARIAN_MAX) is computed on the overlap matrix; assigned pairs with overlap > 0 are the
   matches (`Matching::runHungarian`). No overlap threshold enters the matching itself.
3. Per image and threshold (`Results::Results`): N = #annotations, TPCont = sum of the matched
   overlaps, TPDisc = #matches with overlap > 0.5, FP = #valid detections - TPDisc (a matched
   detection with overlap <= 0.5 is a false positive). An image without detections gets one
   result at threshold DBL_MAX (0 TP, 0 FP).
4. `Results::merge` combines images: at every threshold t in the union of all images' scores
   each image contributes its result at its smallest own threshold >= t, or (N, 0, 0, 0) when
   all its scores are < t. `saveROC` writes, thresholds ascending, `TPDisc/N FP t` to
   DiscROC.txt and `TPCont/N FP` to ContROC.txt.

The masks start at pixel (0, 0), so clipping at the left / top border is exact even without the
image; the right / bottom border needs `image_sizes` (no FDDB images are available here; the
ground-truth centres and the fixture's MTCNN boxes never pass 450 px, and clipping every image to
(450, 450) brings us closer to the official curves). Measured against
the official DiscROC/ContROC of the MTCNN fixture: see tests/evaluation/test_fddb_eval.py.
"""

from __future__ import annotations

import io
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

from tinyfaces_jax import paths
from tinyfaces_jax.evaluation.fddb_io import (FddbFormatError, load_folds, read_detection_folds,
                                              read_detections, read_ellipse_list, read_image_list,
                                              read_roc_file, write_detections, write_roc_files)

DBL_MAX = np.finfo(np.float64).max
_EMPTY = (1, 0)  # an empty row interval: x1 > x2
XY_SHIFT = 16  # OpenCV drawing fixed point (imgproc/drawing.cpp)
XY_ONE = 1 << XY_SHIFT

__all__ = [
  "FddbFormatError", "ellipse_polygon", "ellipse_rows", "rect_rows", "region_rows",
  "overlap_matrix", "match_image", "image_results", "accumulate", "evaluate_fddb", "roc_at_fp",
  "plot_roc", "load_folds", "read_detection_folds", "read_detections", "read_ellipse_list",
  "read_image_list", "read_roc_file", "write_detections", "write_roc_files",
]


# ----------------------------------------------------------------------------- rasterisation

def _cv_round32(v: float) -> int:
  """cvRound(float(v)): float32 conversion (cvPoint2D32f), then round half to even."""
  return int(np.rint(np.float32(v)))


def ellipse_polygon(ra: float, rb: float, theta: float, cx: float, cy: float) -> np.ndarray:
  """The polygon OpenCV fills for an FDDB ellipse -> [P, 2] float64 (x, y) vertices.

  Args:
    ra, rb: half axes (major, minor) in pixels, truncated to int as the tool does.
    theta: orientation of the major axis in radians (FDDB convention).
    cx, cy: centre, rounded to whole pixels as the tool does.
  """
  a, b = abs(int(ra)), abs(int(rb))
  c_x, c_y = _cv_round32(cx), _cv_round32(cy)
  angle_deg = 180.0 - (math.pi - theta) * 180.0 / math.pi  # EllipsesSingleImage / EllipseR
  ang = int(np.rint(angle_deg)) % 360  # cv::ellipse rounds the angle to whole degrees
  m = max(a, b)
  delta = 90 if m < 3 else 30 if m < 10 else 18 if m < 15 else 5
  steps = np.minimum(np.arange(0, 360 + delta, delta), 360)
  # OpenCV's SinTable holds float32 sines of whole degrees
  sin_t = lambda d: np.float32(np.sin(np.deg2rad(d))).astype(np.float64)  # noqa: E731
  alpha, beta = sin_t(90 - ang), sin_t(ang)
  x = a * sin_t(90 - steps)
  y = b * sin_t(steps)
  px = c_x + x * alpha - y * beta
  py = c_y + x * beta + y * alpha
  return np.stack([px, py], axis=1)


def _cdiv(a: int, b: int) -> int:
  """C integer division (truncation toward zero)."""
  q = abs(a) // abs(b)
  return q if (a >= 0) == (b > 0) else -q


def _line2(p0, p1, put) -> None:
  """OpenCV's `Line2` (8-connected, fixed point XY_SHIFT) without the image clipping."""
  (x1, y1), (x2, y2) = p0, p1
  dx, dy = x2 - x1, y2 - y1
  j = -1 if dx < 0 else 0
  ax = (dx ^ j) - j
  i = -1 if dy < 0 else 0
  ay = (dy ^ i) - i
  if ax > ay:
    if j:
      x1, x2, y1, y2 = x2, x1, y2, y1
      dy = -dy
    x_step, y_step = XY_ONE, _cdiv(dy << XY_SHIFT, ax | 1)
    ecount = (x2 - x1) >> XY_SHIFT
  else:
    if i:
      x1, x2, y1, y2 = x2, x1, y2, y1
      dx = -dx
    x_step, y_step = _cdiv(dx << XY_SHIFT, ay | 1), XY_ONE
    ecount = (y2 - y1) >> XY_SHIFT
  x1 += XY_ONE >> 1
  y1 += XY_ONE >> 1
  put((x2 + (XY_ONE >> 1)) >> XY_SHIFT, (y2 + (XY_ONE >> 1)) >> XY_SHIFT)
  if ax > ay:
    x1 >>= XY_SHIFT
    while ecount >= 0:
      put(x1, y1 >> XY_SHIFT)
      x1 += 1
      y1 += y_step
      ecount -= 1
  else:
    y1 >>= XY_SHIFT
    while ecount >= 0:
      put(x1 >> XY_SHIFT, y1)
      x1 += x_step
      y1 += 1
      ecount -= 1


def fill_convex_poly_rows(v: list) -> dict:
  """OpenCV's `FillConvexPoly(shift=XY_SHIFT, 8-connected)`, outline included -> row intervals.

  Args:
    v: P polygon vertices (x, y), Python ints in XY_SHIFT fixed point.
  Returns:
    {row y: [xmin, xmax]}: the filled pixels of each row (the scanline fill between the two
    edge chains, stepped in fixed point exactly as OpenCV does, plus the `Line2` outline).
  """
  rows = {}

  def put(x, y):
    r = rows.get(y)
    if r is None:
      rows[y] = [x, x]
    else:
      if x < r[0]: r[0] = x
      if x > r[1]: r[1] = x

  npts = len(v)
  delta = XY_ONE >> 1
  p0 = v[-1]
  imin = 0
  ymin = ymax = v[0][1]
  for k in range(npts):
    p = v[k]
    if p[1] < ymin:
      ymin, imin = p[1], k
    ymax = max(ymax, p[1])
    _line2(p0, p, put)
    p0 = p
  ymin = (ymin + delta) >> XY_SHIFT
  ymax = (ymax + delta) >> XY_SHIFT
  if npts < 3:
    return rows
  e_idx = [imin, imin]
  e_di = [1, npts - 1]
  e_x = [-XY_ONE, -XY_ONE]
  e_dx = [0, 0]
  e_ye = [ymin, ymin]
  edges = npts
  y = ymin
  while True:
    for s in range(2):
      if y >= e_ye[s]:
        idx0, di = e_idx[s], e_di[s]
        idx = idx0 + di
        if idx >= npts:
          idx -= npts
        while True:
          edges -= 1
          if edges < 0:
            break
          ty = (v[idx][1] + delta) >> XY_SHIFT
          if ty > y:
            xs, xe = v[idx0][0], v[idx][0]
            e_ye[s] = ty
            e_dx[s] = _cdiv((xe - xs) * 2 + (ty - y), 2 * (ty - y))
            e_x[s] = xs
            e_idx[s] = idx
            break
          idx0 = idx
          idx += di
          if idx >= npts:
            idx -= npts
    if edges < 0:
      break
    left, right = (1, 0) if e_x[0] > e_x[1] else (0, 1)
    xx1 = (e_x[left] + delta) >> XY_SHIFT
    xx2 = (e_x[right] + delta) >> XY_SHIFT
    if xx1 <= xx2:
      put(xx1, y)
      put(xx2, y)
    e_x[0] += e_dx[0]
    e_x[1] += e_dx[1]
    y += 1
    if y > ymax:
      break
  return rows


def ellipse_rows(ra, rb, theta, cx, cy) -> tuple:
  """Row intervals of a filled FDDB ellipse -> (y0, x1 [R] int64, x2 [R] int64), rows y0.. .

  The polygon of `ellipse_polygon` in XY_SHIFT fixed point, filled as `cvEllipse(CV_FILLED)`
  does (`EllipseEx` -> `FillConvexPoly`), not clipped to any image.
  """
  poly = ellipse_polygon(ra, rb, theta, cx, cy)
  v = []
  for x, y in np.rint(poly * XY_ONE).astype(np.int64):
    if not v or v[-1] != (int(x), int(y)):  # EllipseEx drops repeated consecutive points
      v.append((int(x), int(y)))
  rows = fill_convex_poly_rows(v)
  y0, y1 = min(rows), max(rows)
  x1 = np.full(y1 - y0 + 1, _EMPTY[0], np.int64)
  x2 = np.full(y1 - y0 + 1, _EMPTY[1], np.int64)
  for y, (a, b) in rows.items():
    x1[y - y0], x2[y - y0] = a, b
  return y0, x1, x2


def rect_rows(left, top, width, height) -> tuple:
  """Row intervals of a filled FDDB rectangle -> (y0, x1 [R], x2 [R]); both ends inclusive."""
  xa, xb = _cv_round32(left), _cv_round32(left + width)
  ya, yb = _cv_round32(top), _cv_round32(top + height)
  xa, xb = min(xa, xb), max(xa, xb)
  ya, yb = min(ya, yb), max(ya, yb)
  r = yb - ya + 1
  return ya, np.full(r, xa, np.int64), np.full(r, xb, np.int64)


def region_rows(regions: np.ndarray, kind: str) -> list:
  """[n, >=4|5] region rows -> n (y0, x1, x2) row intervals; kind "rect" or "ellipse"."""
  regions = np.asarray(regions, np.float64)
  if kind == "rect":
    return [rect_rows(*r[:4]) for r in regions]
  if kind == "ellipse":
    return [ellipse_rows(*r[:5]) for r in regions]
  raise ValueError(f"kind must be 'rect' or 'ellipse', got {kind!r}")


def _stack_rows(rows: list, lo: int, hi: int, width: int | None) -> np.ndarray:
  """n row intervals -> [n, hi - lo + 1, 2] (x1, x2) on rows lo..hi, clipped to [0, width)."""
  out = np.empty((len(rows), hi - lo + 1, 2), np.int64)
  out[..., 0], out[..., 1] = _EMPTY
  for i, (y0, x1, x2) in enumerate(rows):
    a, b = max(y0, lo), min(y0 + len(x1) - 1, hi)
    if a <= b:
      out[i, a - lo:b - lo + 1, 0] = x1[a - y0:b - y0 + 1]
      out[i, a - lo:b - lo + 1, 1] = x2[a - y0:b - y0 + 1]
  out[..., 0] = np.maximum(out[..., 0], 0)
  if width is not None:
    out[..., 1] = np.minimum(out[..., 1], width - 1)
  return out


def overlap_matrix(annots: np.ndarray, dets: np.ndarray, det_kind: str = "rect",
                   image_size: tuple | None = None) -> np.ndarray:
  """Pixel-mask intersection over union of annotations vs detections -> [nA, nD] float64.

  Args:
    annots: [nA, 5] ellipses (ra, rb, angle, cx, cy).
    dets: [nD, 5] rectangles (left, top, width, height, score) or [nD, 6] ellipses.
    det_kind: "rect" or "ellipse".
    image_size: (H, W): masks are clipped to the image as the tool does; None: unclipped.
  An empty union (both regions outside the image) gives 0 (the tool would divide 0 by 0).
  """
  na, nd = len(annots), len(dets)
  if na == 0 or nd == 0:
    return np.zeros((na, nd), np.float64)
  ra = region_rows(annots, "ellipse")
  rd = region_rows(dets, det_kind)
  allr = ra + rd
  lo = min(r[0] for r in allr)
  hi = max(r[0] + len(r[1]) - 1 for r in allr)
  # the masks start at pixel (0, 0): left / top clipping is exact even without the image size
  width = None
  lo = max(lo, 0)
  if image_size is not None:
    h, width = int(image_size[0]), int(image_size[1])
    hi = min(hi, h - 1)
  if lo > hi:
    return np.zeros((na, nd), np.float64)
  ia = _stack_rows(ra, lo, hi, width)  # [nA, R, 2]
  idd = _stack_rows(rd, lo, hi, width)  # [nD, R, 2]
  area_a = np.maximum(ia[..., 1] - ia[..., 0] + 1, 0).sum(-1)
  area_d = np.maximum(idd[..., 1] - idd[..., 0] + 1, 0).sum(-1)
  x1 = np.maximum(ia[:, None, :, 0], idd[None, :, :, 0])
  x2 = np.minimum(ia[:, None, :, 1], idd[None, :, :, 1])
  inter = np.maximum(x2 - x1 + 1, 0).sum(-1)  # [nA, nD]
  union = area_a[:, None] + area_d[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  return iou.astype(np.float64)


# ----------------------------------------------------------------------------- matching

def match_image(overlaps: np.ndarray) -> np.ndarray:
  """Max-weight one-to-one matching on [nA, nD] overlaps -> [M] overlaps of the matched pairs.

  Rows / columns whose overlaps are all zero are dropped first and only pairs with overlap > 0
  are kept (`Matching::runHungarian`); the total matched overlap equals the tool's.
  """
  s = np.asarray(overlaps, np.float64)
  if s.size == 0:
    return np.zeros(0)
  s = s[s.sum(1) != 0][:, s.sum(0) != 0]
  if s.size == 0:
    return np.zeros(0)
  r, c = linear_sum_assignment(s, maximize=True)
  m = s[r, c]
  return m[m > 0]


def image_results(overlaps: np.ndarray, scores: np.ndarray) -> tuple:
  """Per-threshold results of one image -> (thresholds [k] ascending, stats [k, 3]).

  stats columns: (TPDisc, TPCont, FP) with the detections of score >= threshold valid.
  Without detections: ([DBL_MAX], [[0, 0, 0]]).
  """
  scores = np.asarray(scores, np.float64)
  if scores.size == 0:
    return np.array([DBL_MAX]), np.zeros((1, 3))
  thr = np.unique(scores)
  stats = np.zeros((len(thr), 3))
  for k, t in enumerate(thr):
    valid = scores >= t
    m = match_image(overlaps[:, valid])
    tp_disc = float((m > 0.5).sum())
    stats[k] = (tp_disc, float(m.sum()), float(valid.sum()) - tp_disc)
  return thr, stats


def accumulate(per_image: list, num_faces: int) -> tuple:
  """`Results::merge` over images -> (disc_roc [K, 3], cont_roc [K, 3]).

  Args:
    per_image: [(thresholds [k] ascending, stats [k, 3] (TPDisc, TPCont, FP))] per image.
    num_faces: N, the total number of annotated faces.
  Returns:
    disc_roc rows (TPDisc / N, FP, threshold), cont_roc rows (TPCont / N, FP, threshold),
    thresholds ascending over the union of all images' thresholds.
  """
  thr_all = np.unique(np.concatenate([t for t, _ in per_image])) if per_image else np.zeros(0)
  k = len(thr_all)
  diff = np.zeros((k + 1, 3))
  for thr, st in per_image:
    idx = np.searchsorted(thr_all, thr)
    diff[0] += st[0]
    if len(thr) > 1:
      np.add.at(diff, idx[:-1] + 1, st[1:] - st[:-1])
    diff[idx[-1] + 1] -= st[-1]
  tot = np.cumsum(diff, axis=0)[:k]
  n = float(num_faces)
  tpr_d = tot[:, 0] / n if n else np.zeros(k)
  tpr_c = tot[:, 1] / n if n else np.zeros(k)
  fp = np.rint(tot[:, 2]) if n else np.zeros(k)
  disc = np.stack([tpr_d, fp, thr_all], axis=1)
  cont = np.stack([tpr_c, fp, thr_all], axis=1)
  return disc, cont


def evaluate_fddb(gt: dict, dets: dict, image_sizes: dict | None = None, det_format: str = "rect",
                  image_names=None, allow_missing: bool = False) -> tuple:
  """The official FDDB evaluation -> (disc_roc [K, 3], cont_roc [K, 3]).

  Args:
    gt: {image name: [n, 5] ellipses (ra, rb, angle, cx, cy)} (`read_ellipse_list`).
    dets: {image name: [m, 5] (left, top, w, h, score)} or [m, 6] ellipses with det_format
      "ellipse" (`read_detections`).
    image_sizes: optional {image name: (H, W)}: regions are clipped to the image exactly as the
      tool's image-sized masks do; without it (no FDDB images here) they are not clipped.
    det_format: "rect" (tool `-f 0`) or "ellipse" (`-f 1`).
    image_names: the images to evaluate (the tool's `-l` list); default: all of `gt`.
    allow_missing: treat images absent from `dets` as having no detections (the tool would
      abort); otherwise a missing image raises ValueError.
  Returns:
    disc_roc rows (TPR, FP, threshold) and cont_roc rows (continuous TPR, FP, threshold), one per
    distinct score (plus DBL_MAX when an image has no detection), thresholds ascending: the rows
    of the tool's DiscROC.txt / ContROC.txt (`write_roc_files`).
  """
  names = list(gt) if image_names is None else list(image_names)
  score_col = 4 if det_format == "rect" else 5
  width = 5 if det_format == "rect" else 6
  per_image, n_faces = [], 0
  for name in names:
    if name not in gt:
      raise ValueError(f"image {name!r} has no ground truth")
    a = np.asarray(gt[name], np.float64).reshape(-1, 5)
    if name in dets:
      d = np.asarray(dets[name], np.float64).reshape(-1, width)
    elif allow_missing:
      d = np.zeros((0, width))
    else:
      raise ValueError(f"image {name!r} has no entry in the detections (the tool aborts)")
    size = None
    if image_sizes is not None:
      if name not in image_sizes:
        raise ValueError(f"image {name!r} has no size in image_sizes")
      size = image_sizes[name]
    n_faces += len(a)
    ov = overlap_matrix(a, d, det_format, size)
    per_image.append(image_results(ov, d[:, score_col]))
  return accumulate(per_image, n_faces)


FP_POINTS = (100, 500, 1000, 2000)  # false-positive counts the summaries report TPR at


def roc_at_fp(roc: np.ndarray, fps) -> np.ndarray:
  """TPR at given false-positive counts: the best TPR among rows with FP <= fp -> [len(fps)]."""
  roc = np.asarray(roc)
  out = []
  for f in np.atleast_1d(fps):
    ok = roc[:, 1] <= f
    out.append(roc[ok, 0].max() if ok.any() else 0.0)
  return np.asarray(out)


def plot_roc(path, curves: dict, max_fp: float = 2000, title: str = "FDDB discrete ROC") -> None:
  """Writes a PNG of ROC curves (true positive rate vs false positives), Agg backend.

  Args:
    path: output PNG path or URL (parent folders are created).
    curves: {legend name: [K, >=2] (TPR, FP, ...)} e.g. {"ours": disc_roc, "MTCNN": official}.
    max_fp: x-axis limit.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, roc in curves.items():
    roc = np.asarray(roc)
    order = np.argsort(roc[:, 1], kind="stable")
    tpr_at = roc_at_fp(roc, [max_fp])[0]
    ax.plot(roc[order, 1], roc[order, 0], label=f"{name} ({tpr_at:.4f}@{max_fp:g})")
  ax.set_xlim(0, max_fp)
  ax.set_ylim(0, 1)
  ax.set_xlabel("False positives")
  ax.set_ylabel("True positive rate")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right")
  path = paths.resolve(path)
  buf = io.BytesIO()
  fig.savefig(buf, format=path.suffix[1:].lower() or "png")  # as savefig(name) picks it
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())
