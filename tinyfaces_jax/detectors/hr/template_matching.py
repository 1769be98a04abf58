"""Tiny Faces (Hu & Ramanan, CVPR 2017) dense template labelling, as the official release.

Reference: peiyunh/tiny `cnn_get_batch_hardmine.m` (labels), `utils/compute_dense_overlap.cc`
(IoU), `tiny_face_detector.m` (geometry at test time). Axis letters: B images, H x W output map,
T templates, M ground-truth slots.

Geometry (all in the reference's 1-based, inclusive-pixel coordinates; the IoU uses the +1
convention, `int_w = xx2 - xx1 + 1`, zero unless int_w > 0 and int_h > 0):
  * output cell (y, x), 0-based, sits at input pixel (cx, cy) = (offset + stride * x,
    offset + stride * y): the hardmine getter's grid `meshgrid(ofx + (0:vsx-1)*stx, ...)` with
    (ofx, stx) the receptive-field offset/stride of `score_cls`; `tiny_face_detector.m` decodes
    with `cx = (fx-1)*8 - 1` (fx 1-based), i.e. stride 8 and offset -1, our defaults. For
    0-based pixel coordinates pass offset=-2.
  * template t there is the box (cx + t_x1, cy + t_y1, cx + t_x2, cy + t_y2); templates are the
    centred `clusters(:, 1:4)` rows of RefBox_N25*.mat.

Labels (clsmap of the reference, there 1 / -1 / 0; here 1 positive, 0 negative, -1 ignore):
  1. positive: max IoU over faces >= pos_iou (0.7), or (location, template) is some face's best
     over the whole map (incl. padding-crossing ones) with that IoU > neg_iou (0.3, strict:
     `clsmap(fbest_idx(iou_ > opts.negThresh)) = 1`);
  2. ignore: other boxes with neg_iou <= max IoU < pos_iou;
  3. negative: max IoU < neg_iou (also every box of an image with no valid face);
  4. ignore, overriding 1-3: the template box crosses the padding, i.e. x1 < vx1, y1 < vy1,
     x2 > vx2 or y2 > vy2 for the valid region (vx1, vy1, vx2, vy2) (`pad_viomasks`, built from
     `pasteBoxes` = the inclusive pixel box where the crop was pasted on the mean image).
  matched_gt is each box's best face (argmax), also for force-matched boxes: the reference
  regresses every box to `best_face_per_loc`, never to the face that forced it.
  Faces with x2 <= x1 or y2 <= y1 (the reference's `invalid_idx`) or mask False are dropped.

Deviations: the reference adds 1e-6 * rand noise to the IoUs to break ties at random, and
MATLAB's max scans column-major (y fastest, then x, then t); here ties go to the lowest
index of the flattened row-major (y, x, t) order and IoUs are exact. The flip of the padding
mask (`fliplr(pad_viomasks)`) is the caller's business: pass the valid region of the flipped
crop. Memory: O(H * W * T + M) per image, via `matching.face_loop_overlaps`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from tinyfaces_jax.detection import matching
from tinyfaces_jax.detection.matching import Match, NEGATIVE, IGNORE, POSITIVE

Array = jnp.ndarray


def template_grid(templates, out_size: Sequence[int], *, stride: float = 8.0,
                  offset: float = -1.0) -> Array:
  """templates [T, 4] centred xyxy -> [H, W, T, 4] xyxy boxes of every (cell, template)."""
  t = jnp.asarray(templates, jnp.float32)[:, :4]
  h, w = int(out_size[0]), int(out_size[1])
  cy = offset + stride * jnp.arange(h, dtype=jnp.float32)
  cx = offset + stride * jnp.arange(w, dtype=jnp.float32)
  centre = jnp.stack([jnp.broadcast_to(cx[None, :], (h, w)),
                      jnp.broadcast_to(cy[:, None], (h, w))], axis=-1)          # [H, W, 2]
  centre = jnp.concatenate([centre, centre], axis=-1)                             # [H, W, 4]
  return centre[:, :, None, :] + t[None, None, :, :]


def crosses_padding(boxes, valid_region) -> Array:
  """boxes [..., 4] xyxy, valid_region [4] xyxy (inclusive pixels) -> [...] bool."""
  r = jnp.asarray(valid_region, jnp.float32)
  return ((boxes[..., 0] < r[0]) | (boxes[..., 1] < r[1]) |
          (boxes[..., 2] > r[2]) | (boxes[..., 3] > r[3]))


def label_templates(templates, gt_boxes, gt_mask, valid_region, *, out_size: Sequence[int],
                    stride: float = 8.0, offset: float = -1.0, pos_iou: float = 0.7,
                    neg_iou: float = 0.3, unroll: int = 4) -> Match:
  """Tiny Faces training labels of one image (see the module docstring for the rules).

  Args:
    templates: [T, 4] centred xyxy template boxes (extra columns ignored).
    gt_boxes: [M, 4] xyxy faces, 1-based inclusive pixels in the (padded) input crop.
    gt_mask: [M] bool, False for padding slots.
    valid_region: [4] xyxy inclusive box of the crop holding real pixels.
    out_size: static (H, W) of the score map.
    stride, offset: cell (y, x) centre = (offset + stride * x, offset + stride * y).
    unroll: static unrolling of the loop over faces (results do not depend on it).

  Returns:
    Match with [H, W, T] labels / matched_gt / max_iou.
  """
  boxes = template_grid(templates, out_size, stride=stride, offset=offset)     # [H, W, T, 4]
  h, w, t = boxes.shape[:3]
  gt, valid = matching.prepare_gt(gt_boxes, gt_mask)
  flat = boxes.reshape(-1, 4)
  ov = matching.face_loop_overlaps(flat, gt, valid, pixel_offset=1.0, unroll=unroll)
  forced_face = valid & (ov.face_max > neg_iou)
  forced = jnp.zeros((flat.shape[0],), bool).at[ov.face_arg].max(forced_face)
  labels = jnp.where(ov.box_max < neg_iou, NEGATIVE, IGNORE)
  labels = jnp.where(forced | (ov.box_max >= pos_iou), POSITIVE, labels)
  labels = jnp.where(crosses_padding(flat, valid_region), IGNORE, labels).astype(jnp.int32)
  shape = (h, w, t)
  return Match(labels.reshape(shape), ov.box_arg.reshape(shape), ov.box_max.reshape(shape))


def label_templates_batch(templates, gt_boxes, gt_mask, valid_region, **kwargs) -> Match:
  """vmapped `label_templates`: gt_boxes [B, M, 4], gt_mask [B, M], valid_region [B, 4] ->
  Match with [B, H, W, T] fields (templates [T, 4] shared)."""
  fn = functools.partial(label_templates, **kwargs)
  return jax.vmap(fn, in_axes=(None, 0, 0, 0))(templates, gt_boxes, gt_mask, valid_region)
