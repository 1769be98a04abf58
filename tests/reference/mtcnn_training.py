"""Plain-numpy statements of AITTSMD/MTCNN-Tensorflow's training semantics (no jax, no tf),
written per sample with loops from ../shared/references/mtcnn_alignment.md 1f:

- `losses`: train_models/mtcnn_model.py `cls_ohem` (-log(p_label + 1e-10) over labels 0 / 1,
  the top int(0.7 n_valid) by value, their mean), `bbox_ohem` (sum of squares over 4 for
  |label| == 1, mean over them), `landmark_ohem` (sum of squares over 10 for label == -2, mean);
  an empty set averages to 0;
- `hard_examples`: prepare_data/gen_hard_example.py `save_hard_example` on one image:
  convert_to_square, np.round, the 20 px / border filter, IoU with +1 areas, < 0.3 negative
  while fewer than 60 are kept, else offsets from the face of largest IoU, >= 0.65 positive,
  >= 0.4 part; squares returned with exclusive x2 / y2 (x_right + 1);
- `linear_crop`: cv2.resize(INTER_LINEAR) of the square's pixels [x1, x2) x [y1, y2) to
  size x size (half-pixel centres, edge pixels replicated), in float64; pixels outside the
  image read as the nearest edge pixel (a crop inside the image never needs them).
"""

from __future__ import annotations

import numpy as np


def losses(logits, reg, lmk, label, bbox, landmarks, keep_ratio=0.7):
  """[n, 2] logits, [n, 4] reg, [n, 10] lmk or None, [n] labels, targets -> (cls, box, lmk)."""
  n = len(label)
  ce = []
  for i in range(n):
    if label[i] in (0, 1):
      z = logits[i] - np.max(logits[i])
      p = np.exp(z) / np.exp(z).sum()
      ce.append(-np.log(p[int(label[i])] + 1e-10))
  k = int(keep_ratio * len(ce))
  cls = float(np.mean(sorted(ce, reverse=True)[:k])) if k else 0.0
  box_terms = [np.sum((reg[i] - bbox[i]) ** 2) for i in range(n) if abs(label[i]) == 1]
  box = float(np.mean(box_terms)) if box_terms else 0.0
  lm = 0.0
  if lmk is not None:
    terms = [np.sum((lmk[i] - landmarks[i]) ** 2) for i in range(n) if label[i] == -2]
    lm = float(np.mean(terms)) if terms else 0.0
  return cls, box, lm


def _iou(box, boxes):
  box_area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
  out = []
  for b in boxes:
    area = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    w = max(0.0, min(box[2], b[2]) - max(box[0], b[0]) + 1)
    h = max(0.0, min(box[3], b[3]) - max(box[1], b[1]) + 1)
    out.append(w * h / (box_area + area - w * h))
  return np.asarray(out)


def hard_examples(dets, gts, height, width, max_negatives=60):
  """dets [N, 4] (score order), gts [G, 4] xyxy -> list of (square x1 y1 x2+1 y2+1, label,
  offsets)."""
  out, neg_num = [], 0
  for d in dets:
    w0, h0 = d[2] - d[0] + 1, d[3] - d[1] + 1
    side = max(w0, h0)
    x1 = d[0] + w0 * 0.5 - side * 0.5
    y1 = d[1] + h0 * 0.5 - side * 0.5
    sq = np.round([x1, y1, x1 + side - 1, y1 + side - 1])
    x_left, y_top, x_right, y_bottom = sq
    width_b = x_right - x_left + 1
    height_b = y_bottom - y_top + 1
    if (width_b < 20 or x_left < 0 or y_top < 0 or x_right > width - 1
        or y_bottom > height - 1):
      continue
    iou = _iou(sq, gts) if len(gts) else np.zeros(1)
    square = [x_left, y_top, x_right + 1, y_bottom + 1]
    if np.max(iou) < 0.3:
      if neg_num < max_negatives:
        out.append((square, 0, [0.0, 0.0, 0.0, 0.0]))
        neg_num += 1
      continue
    x1, y1, x2, y2 = gts[int(np.argmax(iou))]
    offsets = [(x1 - x_left) / width_b, (y1 - y_top) / height_b,
               (x2 - x_right) / width_b, (y2 - y_bottom) / height_b]
    if np.max(iou) >= 0.65:
      out.append((square, 1, offsets))
    elif np.max(iou) >= 0.4:
      out.append((square, -1, offsets))
  return out


def linear_crop(image, square, size):
  """image [H, W, C], box (x1, y1, x2, y2) -> [size, size, C] float64."""
  x1, y1, x2, y2 = (float(v) for v in square)
  sw, sh = x2 - x1, y2 - y1
  h, w = image.shape[:2]
  out = np.zeros((size, size, image.shape[2]))
  for i in range(size):
    for j in range(size):
      sy = y1 + (i + 0.5) * sh / size - 0.5
      sx = x1 + (j + 0.5) * sw / size - 0.5
      y0, x0 = int(np.floor(sy)), int(np.floor(sx))
      fy, fx = sy - y0, sx - x0
      at = lambda yy, xx: image[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]
      out[i, j] = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                   + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
  return out
