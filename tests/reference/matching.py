"""Plain-numpy reference matchers, written with loops from the reference semantics.

These restate ssd.pytorch / Pytorch_Retinaface `match`, SSD Caffe's bipartite MatchBBox, S3FD's
two-stage matching (paper + author statements, and S3FD.pytorch's variant; see
tinyfaces_jax/detection/matching.py) and peiyunh/tiny
`cnn_get_batch_hardmine.m`, one face / one box at a time, without calling the jax code.
IoUs are computed in float32 with the same operation order as box_ops (so thresholds and ties
are decided on identical numbers); loops run over faces, vectorised over boxes only for speed.
Labels: 1 positive, 0 negative, -1 ignore.
"""

import numpy as np

F = np.float32


def valid_faces(gt, mask):
  """[M] bool: mask and x2 > x1 and y2 > y1 (float32 widths)."""
  gt = np.asarray(gt, F).reshape(-1, 4)
  out = np.zeros(len(gt), bool)
  for j, g in enumerate(gt):
    out[j] = bool(mask[j]) and (g[2] - g[0] > 0) and (g[3] - g[1] > 0)
  return out


def iou_column(boxes, g, off):
  """IoU of boxes [N, 4] with one face g [4], float32."""
  boxes = np.asarray(boxes, F)
  g = np.asarray(g, F)
  off = F(off)
  zero = F(0)
  iw = np.maximum(np.minimum(boxes[:, 2], g[2]) - np.maximum(boxes[:, 0], g[0]) + off, zero)
  ih = np.maximum(np.minimum(boxes[:, 3], g[3]) - np.maximum(boxes[:, 1], g[1]) + off, zero)
  inter = iw * ih
  area_b = (np.maximum(boxes[:, 2] - boxes[:, 0] + off, zero) *
            np.maximum(boxes[:, 3] - boxes[:, 1] + off, zero))
  area_g = max(g[2] - g[0] + off, zero) * max(g[3] - g[1] + off, zero)
  union = area_b + area_g - inter
  out = np.zeros(len(boxes), F)
  for i in range(len(boxes)):
    out[i] = inter[i] / union[i] if union[i] > 0 else F(0)
  return out


def overlaps(boxes, gt, valid, off):
  """[N, M] float32 IoU, invalid face columns = -1."""
  gt = np.asarray(gt, F).reshape(-1, 4)
  ov = np.full((len(boxes), len(gt)), -1.0, F)
  for j in range(len(gt)):
    if valid[j]:
      ov[:, j] = iou_column(boxes, gt[j], off)
  return ov


def _best_per_box(ov):
  n, m = ov.shape
  best = np.full(n, -1.0, F)
  arg = np.zeros(n, np.int64)
  for i in range(n):
    for j in range(m):
      if j == 0 or ov[i, j] > best[i]:
        best[i], arg[i] = ov[i, j], j
  return best, arg


def _best_per_face(ov):
  """Per face (column): its best box, first index on ties (the same loop on the transpose)."""
  return _best_per_box(ov.T)


def bipartite(ov, eligible):
  """SSD Caffe MatchBBox's bipartite step (weiliu89/caffe ssd src/caffe/util/bbox_util.cpp):
  while faces remain, scan anchors (outer) and remaining faces (inner) for the largest IoU
  (strictly greater replaces: lowest anchor, then lowest face, on ties), over pairs with IoU
  > 1e-6 whose anchor is untaken; give it, remove both. -> {anchor: face}."""
  n, m = ov.shape
  faces = [j for j in range(m) if eligible[j]]
  taken, out = set(), {}
  while faces:
    best, bi, bj = F(-1), -1, -1
    for i in range(n):
      if i in taken:
        continue
      for j in faces:
        if ov[i, j] > F(1e-6) and ov[i, j] > best:
          best, bi, bj = ov[i, j], i, j
    if bi < 0:
      break
    out[bi] = bj
    taken.add(bi)
    faces.remove(bj)
  return out


def match_anchors(anchors, gt, mask, pos_iou, neg_iou=None, force="best",
                  force_min_iou=0.0, pixel_offset=0.0):
  """SSD/RetinaFace `match` (force "best": each forced face re-points its best prior, loop in
  face order, so the later face wins a shared prior), SSD Caffe's bipartite forcing ("bipartite")
  or thresholds only ("none"). -> labels, matched, max_iou."""
  neg_iou = pos_iou if neg_iou is None else neg_iou
  valid = valid_faces(gt, mask)
  ov = overlaps(anchors, gt, valid, pixel_offset)
  best_truth_overlap, best_truth_idx = _best_per_box(ov)
  best_prior_overlap, best_prior_idx = _best_per_face(ov)
  forced = np.zeros(len(anchors), bool)
  eligible = [bool(valid[j] and best_prior_overlap[j] >= F(force_min_iou)
                   and best_prior_overlap[j] > 0) for j in range(ov.shape[1])]
  if force == "best":
    for j in range(ov.shape[1]):
      if eligible[j]:
        best_truth_idx[best_prior_idx[j]] = j
        forced[best_prior_idx[j]] = True
  elif force == "bipartite":
    for i, j in bipartite(ov, eligible).items():
      best_truth_idx[i] = j
      forced[i] = True
  labels = np.zeros(len(anchors), np.int64)
  for i in range(len(anchors)):
    if forced[i] or best_truth_overlap[i] >= F(pos_iou):
      labels[i] = 1
    elif best_truth_overlap[i] < F(neg_iou):
      labels[i] = 0
    else:
      labels[i] = -1
  return labels, best_truth_idx, best_truth_overlap


def match_s3fd(anchors, gt, mask, stage1_iou=0.35, stage2_iou=0.1, stage2="author", stage2_n=6,
               neg_iou=None, force="bipartite", force_min_iou=0.0, pixel_offset=0.0):
  """S3FD: stage one at 0.35. "author": faces with < 6 anchors take their best unmatched
  candidates (best face is this face, IoU > 0.1) until they have 6; "average": the same up to
  N = positives // valid faces; "yxlijun": S3FD.pytorch's image-global top-N (see below)."""
  labels, matched, best = match_anchors(anchors, gt, mask, stage1_iou, neg_iou,
                                        force, force_min_iou, pixel_offset)
  labels = labels.copy()
  valid = valid_faces(gt, mask)
  stage1_pos = labels == 1
  if stage2 == "yxlijun":
    return _yxlijun_stage2(anchors, gt, valid, labels, matched, best, stage1_iou, stage2_iou,
                           pixel_offset)
  counts = [0] * len(valid)
  for i in range(len(labels)):
    if labels[i] == 1:
      counts[matched[i]] += 1
  num_valid = int(valid.sum())
  if stage2 == "author":
    n = stage2_n
  else:
    n = sum(counts) // num_valid if num_valid else 0
  for j in range(len(valid)):
    if not valid[j] or counts[j] >= n:
      continue
    cands = [i for i in range(len(labels))
             if not stage1_pos[i] and matched[i] == j and best[i] > F(stage2_iou)]
    cands.sort(key=lambda i: (-best[i], i))
    for i in cands[:n - counts[j]]:
      labels[i] = 1
  return labels, matched, best


def _yxlijun_stage2(anchors, gt, valid, labels, matched, best, th2, th1, off):
  """yxlijun/S3FD.pytorch layers/bbox_utils.py `match`, lines after the forced best priors:
  N = (sum(best_prior_overlap > 0.35) + sum(best_prior_overlap > 0.5)) // 2 over the faces;
  the anchors with 0.1 < best_truth_overlap < 0.35 (forced ones carry 2 there) sorted by IoU
  descending (torch sort; ties: lower index first here); N = sum of the top N IoUs when that
  is < N, used as a slice bound (floor); those anchors += 1 (positive)."""
  ov = overlaps(anchors, gt, valid, off)
  best_prior_overlap, _ = _best_per_face(ov)
  n = 0
  for j in range(len(valid)):
    if valid[j]:
      n += int(best_prior_overlap[j] > F(th2)) + int(best_prior_overlap[j] > F(0.5))
  n //= 2
  cands = [i for i in range(len(labels)) if labels[i] != 1 and F(th1) < best[i] < F(th2)]
  cands.sort(key=lambda i: (-best[i], i))
  top = [best[i] for i in cands[:n]]
  total = float(np.sum(np.asarray(top, np.float32))) if top else 0.0
  if total < n:
    n = int(np.floor(total))
  for i in cands[:n]:
    labels[i] = 1
  return labels, matched, best


def label_templates(templates, gt, mask, region, h, w, stride=8.0, offset=-1.0,
                    pos_iou=0.7, neg_iou=0.3):
  """cnn_get_batch_hardmine.m labels (clsmap 1/-1/0 mapped to 1/0/-1), boxes in (y, x, t)
  row-major order. -> labels [H, W, T], best face [H, W, T], best IoU [H, W, T]."""
  templates = np.asarray(templates, F)[:, :4]
  t = len(templates)
  boxes = np.zeros((h, w, t, 4), F)
  for y in range(h):
    for x in range(w):
      cx = F(offset) + F(stride) * F(x)
      cy = F(offset) + F(stride) * F(y)
      for k in range(t):
        boxes[y, x, k] = [cx + templates[k, 0], cy + templates[k, 1],
                          cx + templates[k, 2], cy + templates[k, 3]]
  flat = boxes.reshape(-1, 4)
  valid = valid_faces(gt, mask)
  ov = overlaps(flat, gt, valid, 1.0)
  best_iou, best_face = _best_per_box(ov)
  face_iou, face_best = _best_per_face(ov)
  clsmap = -np.ones(len(flat), np.int64)                  # reference: -1 negative
  for j in range(len(valid)):
    if valid[j] and face_iou[j] > F(neg_iou):
      clsmap[face_best[j]] = 1
  for i in range(len(flat)):
    if best_iou[i] >= F(pos_iou):
      clsmap[i] = 1
    elif F(neg_iou) <= best_iou[i] < F(pos_iou):
      clsmap[i] = max(clsmap[i], 0)
  r = np.asarray(region, F)
  for i, b in enumerate(flat):
    if b[0] < r[0] or b[1] < r[1] or b[2] > r[2] or b[3] > r[3]:
      clsmap[i] = 0
  labels = np.where(clsmap == 1, 1, np.where(clsmap == -1, 0, -1))
  shape = (h, w, t)
  return labels.reshape(shape), best_face.reshape(shape), best_iou.reshape(shape)
