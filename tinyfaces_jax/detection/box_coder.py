"""Box and landmark coders: SSD-style offsets with variances, and Tiny Faces offsets.

One centre/size parameterisation serves every detector:
  t_x = (gx - ax) / (v0 * aw),  t_y = (gy - ay) / (v0 * ah),
  t_w = log(gw / aw) / v1,      t_h = log(gh / ah) / v1,
with (ax, ay, aw, ah) the anchor/template centre and size and (gx, gy, gw, gh) the target's.
  * SSD / S3FD / RetinaFace / SSH: variances (0.1, 0.2), continuous widths (pixel_offset 0);
    Pytorch_Retinaface `utils/box_utils.py encode/decode`.
  * Tiny Faces (HR): variances (1, 1) ("dcx/w, dcy/h, log w ratio, log h ratio"); the official
    MatConvNet code measures template sizes with the +1 pixel convention (pixel_offset 1).
Landmarks (RetinaFace, 5 points as [..., 10] = x1, y1, ..., x5, y5): t = (p - a_xy) / (v0 * a_wh).

Everything is float32, broadcasts over leading axes ([..., 4] boxes with [..., 4] anchors), and
never produces inf/NaN: sizes are floored at `MIN_SIZE` before the log (degenerate or padded
targets stay finite so masked losses have finite gradients) and decoded log-sizes are clipped
at `MAX_LOG_SCALE` (= log(1000 / 16), the Detectron/torchvision bound).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

SSD_VARIANCES = (0.1, 0.2)
TINY_VARIANCES = (1.0, 1.0)
MAX_LOG_SCALE = math.log(1000.0 / 16.0)
MIN_SIZE = 1e-3
# The 5-point landmark order (RetinaFace / WIDER / MTCNN): left eye, right eye, nose, left
# mouth corner, right mouth corner; after a horizontal flip point i is point FIVE_POINT_MIRROR[i].
FIVE_POINT_MIRROR = (1, 0, 2, 4, 3)

Array = jnp.ndarray


def _centre_size(boxes, pixel_offset: float) -> tuple[Array, Array]:
  """[..., 4] xyxy -> centre [..., 2], size [..., 2] (size = x2 - x1 + pixel_offset)."""
  b = jnp.asarray(boxes, jnp.float32)
  return 0.5 * (b[..., :2] + b[..., 2:]), b[..., 2:] - b[..., :2] + pixel_offset


def encode_boxes(boxes, anchors, variances=SSD_VARIANCES, pixel_offset: float = 0.0) -> Array:
  """Regression targets of `boxes` w.r.t. `anchors`.

  Args:
    boxes: [..., 4] xyxy targets (e.g. the matched ground truth per anchor, [A, 4]).
    anchors: [..., 4] xyxy anchors/templates, broadcastable to `boxes`.
    variances: (v0 centre, v1 size).
    pixel_offset: 0 continuous widths, 1 the +1 pixel convention.
  Returns:
    [..., 4] float32 (t_x, t_y, t_w, t_h), always finite.
  """
  gc, gs = _centre_size(boxes, pixel_offset)
  ac, asz = _centre_size(anchors, pixel_offset)
  asz = jnp.maximum(asz, MIN_SIZE)
  gs = jnp.maximum(gs, MIN_SIZE)
  t_c = (gc - ac) / (variances[0] * asz)
  t_s = jnp.log(gs / asz) / variances[1]
  return jnp.concatenate([t_c, t_s], axis=-1)


def decode_boxes(deltas, anchors, variances=SSD_VARIANCES, pixel_offset: float = 0.0,
                 max_log_scale: float = MAX_LOG_SCALE) -> Array:
  """Inverse of `encode_boxes`: [..., 4] deltas + [..., 4] xyxy anchors -> [..., 4] xyxy.

  Log-size deltas (after the variance) are clipped at `max_log_scale` so exp never
  overflows; within that range the result equals the reference decode exactly.
  """
  d = jnp.asarray(deltas, jnp.float32)
  ac, asz = _centre_size(anchors, pixel_offset)
  c = ac + d[..., :2] * variances[0] * asz
  s = asz * jnp.exp(jnp.minimum(d[..., 2:] * variances[1], max_log_scale))
  # Back to corners: x2 - x1 + pixel_offset = s.
  x1y1 = c - 0.5 * (s - pixel_offset)
  return jnp.concatenate([x1y1, x1y1 + s - pixel_offset], axis=-1)


def encode_landmarks(points, anchors, variances=SSD_VARIANCES) -> Array:
  """Landmark targets. points: [..., 2P] (x1, y1, ..., xP, yP); anchors [..., 4] xyxy.

  Returns [..., 2P] float32: (p - anchor centre) / (v0 * anchor size), per coordinate.
  """
  p = jnp.asarray(points, jnp.float32)
  ac, asz = _centre_size(anchors, 0.0)
  n = p.shape[-1] // 2
  pts = p.reshape(p.shape[:-1] + (n, 2))
  t = (pts - ac[..., None, :]) / (variances[0] * jnp.maximum(asz, MIN_SIZE)[..., None, :])
  return t.reshape(p.shape)


def decode_landmarks(deltas, anchors, variances=SSD_VARIANCES) -> Array:
  """Inverse of `encode_landmarks`: [..., 2P] deltas + [..., 4] anchors -> [..., 2P] pixels."""
  d = jnp.asarray(deltas, jnp.float32)
  ac, asz = _centre_size(anchors, 0.0)
  n = d.shape[-1] // 2
  pts = ac[..., None, :] + d.reshape(d.shape[:-1] + (n, 2)) * variances[0] * asz[..., None, :]
  return pts.reshape(d.shape)
