"""Tiny Faces (HR) templates: load the released 25 templates, or cluster new ones.

A template is a centred box (x1, y1, x2, y2) = (-(w-1)/2, -(h-1)/2, (w-1)/2, (h-1)/2) in the
official release's +1 pixel convention (peiyunh/tiny `utils/cluster_rects.m`), i.e. a face of
w x h pixels. `RefBox_N25_scaled.mat` adds a 5th column: the resolution (sigma: 0.5, 1 or 2) at
which each template is applied.

Clustering follows `cluster_rects.m`: centre every training box, keep sizes within
[min_size, max_size], subsample to at most 1e5 boxes, K-medoids under the distance
1 - IoU(centred boxes), then order the medoids by area, largest first. This is a host-side
(numpy) tool run once per dataset; WIDER's integer box sizes repeat a lot, so the clustering
runs on the unique (w, h) shapes weighted by their counts, which gives the same objective
exactly and makes a 1e5-box run take seconds.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

from tinyfaces_jax import paths


@dataclasses.dataclass(frozen=True)
class Templates:
  """Template set. boxes: [T, 4] centred xyxy float32; sigma: [T] float32 resolutions."""
  boxes: np.ndarray
  sigma: np.ndarray

  @property
  def wh(self) -> np.ndarray:
    """[T, 2] template (w, h) in the +1 pixel convention."""
    return self.boxes[:, 2:] - self.boxes[:, :2] + 1.0

  def __len__(self) -> int:
    return int(self.boxes.shape[0])


def load_templates(path, key: str = "clusters") -> Templates:
  """Reads RefBox_N25(.mat / _scaled.mat), a path or URL. Without a 5th column, sigma is 1
  for every row."""
  p = paths.resolve(path)
  if not p.exists():
    raise FileNotFoundError(f"template file not found: {path}")
  import scipy.io  # local import: only the host tools need scipy
  raw = p.read_bytes()
  try:
    data = scipy.io.loadmat(io.BytesIO(raw))
  except Exception as e:  # scipy raises several types for non-.mat input
    raise ValueError(f"{path}: not a readable MATLAB v5 .mat file ({e})") from e
  if key not in data:
    keys = sorted(k for k in data if not k.startswith("__"))
    raise KeyError(f"{path}: no variable {key!r}; variables: {keys}")
  arr = np.asarray(data[key], np.float64)
  if arr.ndim != 2 or arr.shape[1] not in (4, 5):
    raise ValueError(f"{path}: {key!r} has shape {arr.shape}, expected [T, 4] or [T, 5]")
  sigma = arr[:, 4] if arr.shape[1] == 5 else np.ones(arr.shape[0])
  return Templates(arr[:, :4].astype(np.float32), sigma.astype(np.float32))


def centred_iou(wh_a: np.ndarray, wh_b: np.ndarray) -> np.ndarray:
  """IoU of boxes sharing a centre. wh_a [N, 2], wh_b [K, 2] -> [N, K] float64."""
  a = np.asarray(wh_a, np.float64)[:, None, :]
  b = np.asarray(wh_b, np.float64)[None, :, :]
  inter = np.prod(np.minimum(a, b), axis=-1)
  union = np.prod(a, axis=-1) + np.prod(b, axis=-1) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _weighted_cost(shapes, weights, medoids):
  """Sum over shapes of weight * min distance to the medoids; plus the assignment."""
  d = 1.0 - centred_iou(shapes, shapes[medoids])
  assign = np.argmin(d, axis=1)
  return float(np.sum(weights * d[np.arange(len(shapes)), assign])), assign


def kmedoids_iou(shapes: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator,
                 max_iter: int = 100) -> np.ndarray:
  """Weighted K-medoids under 1 - centred IoU (k-means++ seeding, alternating updates).

  Args:
    shapes: [U, 2] distinct (w, h).
    weights: [U] multiplicities.
    k: number of medoids (<= U).
  Returns:
    [k] int indices into `shapes` of the medoids.
  """
  u = len(shapes)
  if k > u:
    raise ValueError(f"kmedoids: asked for {k} templates but only {u} distinct box shapes")
  p = weights / weights.sum()
  medoids = [int(rng.choice(u, p=p))]
  dmin = 1.0 - centred_iou(shapes, shapes[medoids])[:, 0]
  for _ in range(1, k):
    w = weights * dmin ** 2
    nxt = int(rng.choice(u, p=w / w.sum())) if w.sum() > 0 else int(np.argmax(dmin))
    medoids.append(nxt)
    dmin = np.minimum(dmin, 1.0 - centred_iou(shapes, shapes[[nxt]])[:, 0])
  medoids = np.asarray(medoids)
  cost, assign = _weighted_cost(shapes, weights, medoids)
  for _ in range(max_iter):
    new = medoids.copy()
    for c in range(k):
      members = np.flatnonzero(assign == c)
      if members.size == 0:
        continue
      # The member minimising the weighted within-cluster distance (chunked over candidates).
      best, best_cost = new[c], np.inf
      for s in range(0, members.size, 2048):
        cand = members[s:s + 2048]
        d = 1.0 - centred_iou(shapes[cand], shapes[members])
        costs = d @ weights[members]
        j = int(np.argmin(costs))
        if costs[j] < best_cost:
          best, best_cost = cand[j], costs[j]
      new[c] = best
    new_cost, new_assign = _weighted_cost(shapes, weights, new)
    if new_cost >= cost - 1e-12:
      break
    medoids, cost, assign = new, new_cost, new_assign
  return medoids


def cluster_templates(boxes_xyxy: np.ndarray, num_templates: int = 25,
                      min_size: tuple[float, float] = (10, 10),
                      max_size: tuple[float, float] = (np.inf, np.inf),
                      max_boxes: int = 100_000, seed: int = 0,
                      max_iter: int = 100) -> Templates:
  """Clusters face boxes into centred templates as `cluster_rects.m` does.

  Args:
    boxes_xyxy: [N, 4] ground-truth boxes (x1, y1, x2, y2) in the +1 convention (a box of
      w pixels has x2 = x1 + w - 1; WIDER's `x y w h` gives x2 = x + w - 1).
    num_templates: T.
    min_size / max_size: (h, w) bounds, inclusive, as `cluster_rects(imdb, N, minsz, maxsz)`;
      the paper clusters faces >= 10x10.
    max_boxes: subsample size (the release uses 1e5).
    seed: subsampling and seeding are deterministic given it.
  Returns:
    Templates with boxes [T, 4] sorted by area (largest first) and sigma 1.
  """
  b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
  hs = b[:, 3] - b[:, 1] + 1
  ws = b[:, 2] - b[:, 0] + 1
  keep = (hs >= min_size[0]) & (ws >= min_size[1]) & (hs <= max_size[0]) & (ws <= max_size[1])
  wh = np.stack([ws[keep], hs[keep]], axis=1)
  if len(wh) < num_templates:
    raise ValueError(f"cluster_templates: {len(wh)} boxes within size bounds "
                     f"{min_size}..{max_size}, fewer than {num_templates} templates")
  rng = np.random.default_rng(seed)
  if len(wh) > max_boxes:
    wh = wh[rng.choice(len(wh), max_boxes, replace=False)]
  shapes, counts = np.unique(wh, axis=0, return_counts=True)
  medoids = kmedoids_iou(shapes, counts.astype(np.float64), num_templates, rng, max_iter)
  c = shapes[medoids]
  c = c[np.argsort(-(c[:, 0] * c[:, 1]), kind="stable")]
  half = (c - 1.0) / 2.0
  boxes = np.concatenate([-half, half], axis=1).astype(np.float32)
  return Templates(boxes, np.ones(num_templates, np.float32))
