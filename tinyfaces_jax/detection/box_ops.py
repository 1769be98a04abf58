"""Box geometry shared by every detector: format conversions, areas, IoU, clipping.

All functions are pure jnp, jit-able and broadcast over leading axes: a box array is
`[..., 4]`. Formats:
  * `xyxy`   (x1, y1, x2, y2), the project's canonical format;
  * `xywh`   (x1, y1, w, h), the WIDER FACE annotation format;
  * `cxcywh` (cx, cy, w, h), the SSD/RetinaFace prior format.

`pixel_offset` selects the area convention: 0.0 for continuous coordinates (w = x2 - x1),
1.0 for the inclusive-pixel convention of the WIDER evaluation tool and py_cpu_nms
(w = x2 - x1 + 1). Box math is done in float32 whatever the input dtype.

Axis letters used project-wide: B images, A anchors, M ground-truth slots, K kept detections,
L levels, T templates, N generic boxes.
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def _f32(boxes) -> Array:
  return jnp.asarray(boxes, jnp.float32)


def xyxy_to_xywh(boxes) -> Array:
  """[..., 4] (x1, y1, x2, y2) -> [..., 4] (x1, y1, w, h)."""
  b = _f32(boxes)
  return jnp.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def xywh_to_xyxy(boxes) -> Array:
  """[..., 4] (x1, y1, w, h) -> [..., 4] (x1, y1, x2, y2)."""
  b = _f32(boxes)
  return jnp.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_cxcywh(boxes) -> Array:
  """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
  b = _f32(boxes)
  wh = b[..., 2:] - b[..., :2]
  return jnp.concatenate([b[..., :2] + 0.5 * wh, wh], axis=-1)


def cxcywh_to_xyxy(boxes) -> Array:
  """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
  b = _f32(boxes)
  half = 0.5 * b[..., 2:]
  return jnp.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)


def box_wh(boxes, pixel_offset: float = 0.0) -> Array:
  """[..., 4] xyxy -> [..., 2] (w, h), NOT clamped (may be <= 0 for degenerate boxes)."""
  b = _f32(boxes)
  return b[..., 2:] - b[..., :2] + pixel_offset


def box_area(boxes, pixel_offset: float = 0.0) -> Array:
  """[..., 4] xyxy -> [...] area; a degenerate side (w or h <= 0) gives area 0."""
  wh = jnp.maximum(box_wh(boxes, pixel_offset), 0.0)
  return wh[..., 0] * wh[..., 1]


def valid_box_mask(boxes, mask=None, pixel_offset: float = 0.0) -> Array:
  """[..., 4] xyxy (+ optional [...] bool mask) -> [...] bool: w > 0 and h > 0 (and mask).

  WIDER FACE has ground-truth boxes with w <= 0; they stay in annotations for evaluation but
  must never become training targets, so every matcher ANDs its padding mask with this.
  """
  wh = box_wh(boxes, pixel_offset)
  valid = (wh[..., 0] > 0) & (wh[..., 1] > 0)
  if mask is not None:
    valid = valid & jnp.asarray(mask, bool)
  return valid


def pairwise_intersection(a, b, pixel_offset: float = 0.0) -> Array:
  """Intersection areas. a: [..., N, 4] xyxy, b: [..., M, 4] xyxy -> [..., N, M]."""
  a = _f32(a)[..., :, None, :]
  b = _f32(b)[..., None, :, :]
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt + pixel_offset, 0.0)
  return wh[..., 0] * wh[..., 1]


def pairwise_iou(a, b, b_mask=None, pixel_offset: float = 0.0,
                 masked_value: float = -1.0) -> Array:
  """Pairwise IoU. a: [..., N, 4] xyxy, b: [..., M, 4] xyxy -> [..., N, M] float32.

  Args:
    a: e.g. anchors.
    b: e.g. ground-truth slots, possibly padded.
    b_mask: optional [..., M] bool; columns where it is False are set to `masked_value`
      (default -1, below any real IoU, so padded ground truth never wins an argmax or passes
      any threshold >= 0).
    pixel_offset: 0.0 continuous, 1.0 inclusive-pixel (+1) convention.
    masked_value: value of masked columns.

  Degenerate boxes have area 0; where the union is 0 the IoU is 0 (no NaN).
  """
  inter = pairwise_intersection(a, b, pixel_offset)
  area_a = box_area(a, pixel_offset)[..., :, None]
  area_b = box_area(b, pixel_offset)[..., None, :]
  union = area_a + area_b - inter
  safe_union = jnp.where(union > 0, union, 1.0)
  iou = jnp.where(union > 0, inter / safe_union, 0.0)
  if b_mask is not None:
    iou = jnp.where(jnp.asarray(b_mask, bool)[..., None, :], iou, masked_value)
  return iou


def pairwise_overlap_min(a, b, pixel_offset: float = 0.0) -> Array:
  """Intersection over the smaller area (MTCNN's 'Min' NMS). a: [..., N, 4], b: [..., M, 4]
  -> [..., N, M] float32; 0 where both areas are 0."""
  inter = pairwise_intersection(a, b, pixel_offset)
  smaller = jnp.minimum(box_area(a, pixel_offset)[..., :, None],
                        box_area(b, pixel_offset)[..., None, :])
  return jnp.where(smaller > 0, inter / jnp.where(smaller > 0, smaller, 1.0), 0.0)


def elementwise_iou(a, b, pixel_offset: float = 0.0) -> Array:
  """IoU of matching rows. a, b: [..., 4] xyxy (broadcastable) -> [...]."""
  a = _f32(a)
  b = _f32(b)
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt + pixel_offset, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a, pixel_offset) + box_area(b, pixel_offset) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes, height, width) -> Array:
  """Clips [..., 4] xyxy boxes to the image [0, width] x [0, height].

  `height`/`width` may be Python numbers or arrays broadcastable to `boxes[..., 0]`
  (e.g. per-image sizes [B, 1] for boxes [B, N, 4]).
  """
  b = _f32(boxes)
  w = jnp.asarray(width, jnp.float32)
  h = jnp.asarray(height, jnp.float32)
  x1 = jnp.clip(b[..., 0], 0.0, w)
  y1 = jnp.clip(b[..., 1], 0.0, h)
  x2 = jnp.clip(b[..., 2], 0.0, w)
  y2 = jnp.clip(b[..., 3], 0.0, h)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def scale_boxes(boxes, scale_x, scale_y) -> Array:
  """Multiplies x coordinates of [..., 4] xyxy boxes by scale_x and y by scale_y."""
  b = _f32(boxes)
  s = jnp.stack([jnp.asarray(scale_x, jnp.float32), jnp.asarray(scale_y, jnp.float32)] * 2,
                axis=-1)
  return b * s
