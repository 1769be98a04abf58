"""Plain-loop statements of the FDDB evaluation tool (Jain & Learned-Miller, `evaluation/` C++).

Pixel by pixel and by brute force, for small synthetic cases in the tests: the tool's filled
rectangle (cvRectangle), its ellipse geometry, the IoU of two region masks, the best one-to-one
matching, the per-image results at each score threshold and `Results::merge`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

DBL_MAX = float(np.finfo(np.float64).max)  # the tool's threshold of an image without detections


def rect_mask(left, top, width, height, h, w):
  """The tool's filled cvRectangle, by a pixel loop: corners rounded, both ends inclusive."""
  xa, xb = sorted((round(left), round(left + width)))
  ya, yb = sorted((round(top), round(top + height)))
  m = np.zeros((h, w), bool)
  for y in range(h):
    for x in range(w):
      m[y, x] = xa <= x <= xb and ya <= y <= yb
  return m


def ellipse_radius(ra, rb, theta, cx, cy, h, w):
  """Normalised radius of every pixel centre for the tool's ellipse geometry (int half axes,
  rounded centre, angle rounded to degrees, rotation of +angle in image coordinates).
  -> ([h, w] radius, the smaller half axis)."""
  a, b = int(ra), int(rb)
  ang = math.radians(round(math.degrees(theta)))
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  dx, dy = xs - round(cx), ys - round(cy)
  u = dx * math.cos(ang) + dy * math.sin(ang)
  v = -dx * math.sin(ang) + dy * math.cos(ang)
  return np.sqrt((u / a) ** 2 + (v / b) ** 2), min(a, b)


def mask_iou(m1, m2):
  """IoU of two bool masks (0 when both are empty)."""
  union = (m1 | m2).sum()
  return (m1 & m2).sum() / union if union else 0.0


def brute_force_match(s):
  """Max total overlap over all one-to-one partial matchings (tiny matrices only)."""
  na, nd = s.shape
  best = 0.0
  for k in range(min(na, nd) + 1):
    for rows in itertools.combinations(range(na), k):
      for cols in itertools.permutations(range(nd), k):
        best = max(best, sum(s[r, c] for r, c in zip(rows, cols)))
  return best


def image_results(s, scores):
  """Loop reference of the tool's per-image results at each distinct score (ascending):
  s [annotations, detections] overlaps -> [(threshold, (TP discrete, TP continuous, FP))]."""
  if len(scores) == 0:
    return [(DBL_MAX, (0.0, 0.0, 0.0))]
  out = []
  for t in sorted(set(scores)):
    valid = [j for j in range(len(scores)) if scores[j] >= t]
    sub = s[:, valid]
    best, best_pairs = -1.0, None
    na, nd = sub.shape
    for k in range(min(na, nd) + 1):
      for rows in itertools.combinations(range(na), k):
        for cols in itertools.permutations(range(nd), k):
          tot = sum(sub[r, c] for r, c in zip(rows, cols))
          if tot > best + 1e-12:
            best, best_pairs = tot, [sub[r, c] for r, c in zip(rows, cols)]
    pairs = [p for p in best_pairs if p > 0]
    tp_d = sum(1 for p in pairs if p > 0.5)
    out.append((t, (float(tp_d), float(sum(pairs)), float(len(valid) - tp_d))))
  return out


def merge(rv1, rv2):
  """A literal port of `Results::merge` on lists of (threshold, N, TPDisc, TPCont, FP)."""
  merged = []
  n1, n2 = len(rv1), len(rv2)
  if n1:
    nann1 = rv1[0][1]
    nann2 = rv2[0][1] if n2 else 0
    i1 = i2 = 0
    while i1 < n1:
      r1 = rv1[i1]
      if i2 < n2:
        r2 = rv2[i2]
        merged.append((min(r1[0], r2[0]), r1[1] + r2[1], r1[2] + r2[2], r1[3] + r2[3],
                       r1[4] + r2[4]))
        if r1[0] < r2[0]:
          i1 += 1
        elif r1[0] == r2[0]:
          i1, i2 = i1 + 1, i2 + 1
        else:
          i2 += 1
      else:
        while i1 < n1:
          r1 = rv1[i1]
          merged.append((r1[0], r1[1] + nann2, r1[2], r1[3], r1[4]))
          i1 += 1
    while i2 < n2:
      r2 = rv2[i2]
      merged.append((r2[0], r2[1] + nann1, r2[2], r2[3], r2[4]))
      i2 += 1
  else:
    merged = list(rv2)
  return merged
