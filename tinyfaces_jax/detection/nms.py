"""Static-shape greedy non-maximum suppression for inference inside `jit`.

Semantics (the reference is RetinaFace `detect.py` + `utils/nms/py_cpu_nms.py`,
biubug6/Pytorch_Retinaface; torchvision `ops.nms` / facenet-pytorch differ only in the
area convention):
  1. candidates: `valid` (default all) and a non-NaN score, and, when `score_threshold` is
     given, `score > score_threshold` (strict, as RetinaFace's `np.where(scores > thr)`);
  2. candidates are ordered by score, descending; equal scores keep the lower index first
     (a stable sort; py_cpu_nms's `argsort()[::-1]` would put the higher index first);
  3. optional pre-selection of the first `pre_nms_top_k` of that order (RetinaFace
     `top_k=5000`);
  4. greedy suppression: walking the order, a box is kept unless its IoU with an already
     KEPT box is > `iou_threshold` (py_cpu_nms keeps IoU <= thr; torchvision discards
     IoU > thr). `pixel_offset=1.0` is py_cpu_nms's `(x2 - x1 + 1) * (y2 - y1 + 1)` area
     convention, 0.0 the continuous one of torchvision / facenet-pytorch; `overlap="min"`
     measures intersection over the smaller area instead of IoU (MTCNN's 'Min' NMS);
  5. the first K = `max_output` kept boxes in that order are returned (RetinaFace's
     `keep_top_k`), padded to K with `valid=False`, index -1, zero box and zero score.

Algorithm: sort once, then walk the sorted boxes tile by tile (`tile_size` boxes). A tile is
first suppressed by the boxes kept so far, held in a compact [K, 4] buffer that is scanned
in [tile, tile] chunks, only as far as it is filled (once K boxes are kept nothing later can
reach the output, so the buffer never needs more than K rows and the walk stops early).
Suppression inside the tile is then resolved by the fixed-point iteration
    keep <- alive & ~any_j(S[i, j] & keep[j]),   S[i, j] = (IoU(i, j) > thr) & (j < i),
started from keep = alive, until it stops changing. Because row i only reads rows j < i,
after n sweeps the first n rows equal the greedy answer (induction on i), so the iteration
stops after at most tile_size + 1 sweeps and its only fixed point is the exact greedy result.
Peak memory is a few [tile, tile] arrays; the [N, N] IoU matrix is never built.

Axis letters: B images, N input boxes, K kept detections (= max_output).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from tinyfaces_jax.detection.box_ops import pairwise_iou, pairwise_overlap_min

OVERLAPS = {"iou": pairwise_iou, "min": pairwise_overlap_min}

Array = jnp.ndarray

DEFAULT_TILE_SIZE = 256


class NMSResult(NamedTuple):
  """Output of `nms` / `select_top_k` (leading [B] in the batched versions).

  Attributes:
    indices: [K] int32 indices into the input boxes, in output order; -1 for padding.
    boxes: [K, 4] float32 xyxy boxes; zeros for padding.
    scores: [K] float32 scores; zeros for padding.
    valid: [K] bool, True for real detections (they always come first).
  """
  indices: Array
  boxes: Array
  scores: Array
  valid: Array


def candidate_mask(scores, score_threshold: Optional[float] = None, valid=None) -> Array:
  """[N] scores (+ optional [N] bool valid) -> [N] bool: valid, not NaN, score > threshold."""
  scores = jnp.asarray(scores, jnp.float32)
  mask = ~jnp.isnan(scores)
  if valid is not None:
    mask = mask & jnp.asarray(valid, bool)
  if score_threshold is not None:
    mask = mask & (scores > score_threshold)
  return mask


def sort_by_score(scores, mask) -> Array:
  """[N] scores, [N] bool mask -> [N] int32 permutation: masked-in entries first, by score
  descending, equal scores by lower index first; masked-out entries last, by index."""
  scores = jnp.asarray(scores, jnp.float32)
  n = scores.shape[0]
  iota = jnp.arange(n, dtype=jnp.int32)
  # + 0.0 folds -0.0 into +0.0 so that the two zeros tie (as in numpy).
  neg_score = jnp.where(mask, -scores, 0.0) + 0.0
  _, _, order = lax.sort(((~mask).astype(jnp.int32), neg_score, iota), num_keys=3)
  return order


def _gather_result(order_pos, order, boxes, scores) -> NMSResult:
  """Positions into `order` ([K] int32, -1 = padding) -> NMSResult with original indices."""
  valid = order_pos >= 0
  idx = jnp.where(valid, order[jnp.maximum(order_pos, 0)], -1).astype(jnp.int32)
  safe = jnp.maximum(idx, 0)
  out_boxes = jnp.where(valid[:, None], boxes[safe], 0.0)
  out_scores = jnp.where(valid, scores[safe], 0.0)
  return NMSResult(idx, out_boxes, out_scores, valid)


def select_top_k(scores, boxes, k: int, *, score_threshold: Optional[float] = None,
                 valid=None) -> NMSResult:
  """The k highest-scoring candidates of one image, without suppression.

  Args:
    scores: [N] scores.
    boxes: [N, 4] xyxy boxes.
    k: static output size K (may exceed N; the rest is padding).
    score_threshold, valid: candidate filter as in `candidate_mask`.

  Returns:
    NMSResult with [K] fields in score-descending order (ties: lower index first).
  """
  scores = jnp.asarray(scores, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  mask = candidate_mask(scores, score_threshold, valid)
  order = sort_by_score(scores, mask)
  n = scores.shape[0]
  pos = jnp.arange(k, dtype=jnp.int32)
  in_range = pos < n
  safe_pos = jnp.minimum(pos, n - 1)
  ok = in_range & mask[order[safe_pos]]
  return _gather_result(jnp.where(ok, pos, -1), order, boxes, scores)


def _suppress_within_tile(over, alive) -> Array:
  """Exact greedy keep of one tile. over: [T, T] bool (IoU > thr), alive: [T] bool -> [T]."""
  t = alive.shape[0]
  lower = jnp.arange(t)[None, :] < jnp.arange(t)[:, None]  # j < i
  s = (over & lower).astype(jnp.float32)

  def sweep(keep):
    hit = s @ keep.astype(jnp.float32)  # counts of kept higher-ranked overlaps, exact
    return alive & (hit < 0.5)

  def cond(carry):
    return carry[1]

  def body(carry):
    keep, _ = carry
    new = sweep(keep)
    return new, jnp.any(new != keep)

  keep, _ = lax.while_loop(cond, body, (alive, jnp.any(alive)))
  return keep


def _greedy_sorted(boxes, alive, iou_threshold, max_output: int, pixel_offset: float,
                   tile: int, overlap: str = "iou") -> Array:
  """Greedy NMS over boxes already in score order.

  boxes: [P, 4] (P a multiple of `tile`), alive: [P] bool, True on a prefix (the candidates)
  -> [K] int32 positions into the sorted order of the first K kept boxes, -1 padding.
  """
  p = boxes.shape[0]
  n_tiles = p // tile
  cap = max_output
  cap_pad = -(-cap // tile) * tile  # the kept buffer is scanned in chunks of `tile` rows
  thr = jnp.asarray(iou_threshold, jnp.float32)
  tile_iota = jnp.arange(tile, dtype=jnp.int32)
  pairwise = OVERLAPS[overlap]

  def cross_suppressed(tb, count, kept_boxes):
    """[T] bool: IoU > thr with one of the `count` kept boxes, scanning only filled chunks."""
    def cond(c):
      return c[0] * tile < count

    def body(c):
      chunk, hit = c
      kb = lax.dynamic_slice_in_dim(kept_boxes, chunk * tile, tile)
      filled = chunk * tile + tile_iota < count
      over = (pairwise(tb, kb, pixel_offset=pixel_offset) > thr) & filled[None, :]
      return chunk + 1, hit | jnp.any(over, axis=1)

    return lax.while_loop(cond, body, (jnp.int32(0), jnp.zeros((tile,), bool)))[1]

  # Candidates come first in the sorted order: tiles past the last one can keep nothing.
  n_alive = jnp.sum(alive, dtype=jnp.int32)

  def cond(state):
    t, count, _, _ = state
    return (t < n_tiles) & (count < cap) & (t * tile < n_alive)

  def body(state):
    t, count, kept_boxes, kept_pos = state
    start = t * tile
    tb = lax.dynamic_slice_in_dim(boxes, start, tile)
    ta = lax.dynamic_slice_in_dim(alive, start, tile)
    # 1. suppression by the boxes kept in earlier tiles ([T, T] per filled chunk).
    ta = ta & ~cross_suppressed(tb, count, kept_boxes)
    # 2. exact greedy inside the tile ([T, T]).
    over = pairwise(tb, tb, pixel_offset=pixel_offset) > thr
    keep = _suppress_within_tile(over, ta)
    # 3. append the kept boxes to the compact buffer (overflow beyond K is dropped).
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, cap_pad)
    slot = jnp.where(slot < cap, slot, cap_pad)
    kept_boxes = kept_boxes.at[slot].set(tb, mode="drop")
    kept_pos = kept_pos.at[slot].set(start + tile_iota, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), cap)
    return t + 1, count, kept_boxes, kept_pos

  init = (jnp.int32(0), jnp.int32(0), jnp.zeros((cap_pad, 4), jnp.float32),
          jnp.full((cap_pad,), -1, jnp.int32))
  _, _, _, kept_pos = lax.while_loop(cond, body, init)
  return kept_pos[:cap]


def nms(boxes, scores, *, iou_threshold, max_output: int,
        score_threshold: Optional[float] = None, pre_nms_top_k: Optional[int] = None,
        pixel_offset: float = 0.0, valid=None,
        tile_size: int = DEFAULT_TILE_SIZE, overlap: str = "iou") -> NMSResult:
  """Greedy NMS of one image (see the module docstring for the exact semantics).

  Args:
    boxes: [N, 4] xyxy boxes.
    scores: [N] scores.
    iou_threshold: a box is suppressed when IoU with a kept box is > this (may be traced).
    max_output: static K, the output size.
    score_threshold: optional static/traced float; only scores > it are candidates.
    pre_nms_top_k: optional static int; only the top-k candidates by score enter NMS.
    pixel_offset: 0.0 continuous areas, 1.0 the +1 (py_cpu_nms) convention. Static.
    valid: optional [N] bool mask of real boxes (padding is never kept).
    tile_size: static tile length of the blocked algorithm (speed only, not results).
    overlap: "iou", or "min" (intersection over the smaller area). Static.

  Returns:
    NMSResult with [K] fields: kept boxes in descending score order, then padding
    (indices -1, boxes/scores 0, valid False).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = scores.shape[0]
  if boxes.shape != (n, 4):
    raise ValueError(f"nms: boxes must be [N, 4] with N = {n}, got {boxes.shape}")
  if max_output < 1:
    raise ValueError(f"nms: max_output must be >= 1, got {max_output}")
  if overlap not in OVERLAPS:
    raise ValueError(f"nms: overlap must be one of {sorted(OVERLAPS)}, got {overlap!r}")
  mask = candidate_mask(scores, score_threshold, valid)
  order = sort_by_score(scores, mask)
  m = n if pre_nms_top_k is None else max(1, min(int(pre_nms_top_k), n))
  order_m = order[:m]
  alive = mask[order_m]
  sorted_boxes = boxes[order_m]
  tile = min(int(tile_size), m)
  pad = (-m) % tile
  if pad:
    sorted_boxes = jnp.concatenate([sorted_boxes, jnp.zeros((pad, 4), jnp.float32)])
    alive = jnp.concatenate([alive, jnp.zeros((pad,), bool)])
  kept_pos = _greedy_sorted(sorted_boxes, alive, iou_threshold, max_output, pixel_offset,
                            tile, overlap)
  return _gather_result(kept_pos, order_m, boxes, scores)


def batched_nms(boxes, scores, *, iou_threshold, max_output: int,
                score_threshold: Optional[float] = None,
                pre_nms_top_k: Optional[int] = None, pixel_offset: float = 0.0,
                valid=None, tile_size: int = DEFAULT_TILE_SIZE,
                overlap: str = "iou") -> NMSResult:
  """`nms` vmapped over images: boxes [B, N, 4], scores [B, N], valid [B, N] or None ->
  NMSResult with [B, K] fields. Thresholds are shared by all images."""
  fn = functools.partial(nms, iou_threshold=iou_threshold, max_output=max_output,
                         score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k,
                         pixel_offset=pixel_offset, tile_size=tile_size, overlap=overlap)
  if valid is None:
    return jax.vmap(lambda b, s: fn(b, s))(boxes, scores)
  return jax.vmap(lambda b, s, v: fn(b, s, valid=v))(boxes, scores, valid)


def batched_select_top_k(scores, boxes, k: int, *, score_threshold: Optional[float] = None,
                         valid=None) -> NMSResult:
  """`select_top_k` vmapped: scores [B, N], boxes [B, N, 4] -> NMSResult with [B, k]."""
  fn = functools.partial(select_top_k, k=k, score_threshold=score_threshold)
  if valid is None:
    return jax.vmap(lambda s, b: fn(s, b))(scores, boxes)
  return jax.vmap(lambda s, b, v: fn(s, b, valid=v))(scores, boxes, valid)
