"""S3FD's test-time box voting as a static-shape op for inference inside `jit`.

Reference: `bbox_vote` of the S3FD release's WIDER FACE test script (sfzhang15/SFD
`sfd_test_code/WIDER_FACE/wider_test.py` @ 43103c2, lines 84-117; the same function is in
yxlijun/S3FD.pytorch `tools/wider_test.py`). That script pools the detections of all its test
scales and of the flipped image, then votes. Semantics, for one image:
  1. candidates: `valid` (default all) and a non-NaN score; they are ordered by score,
     descending. Equal scores put the HIGHER original index first: that is what the release's
     `scores.argsort()[::-1]` gives when the sort is stable (numpy's default sort kind is not
     guaranteed stable, so the release's own tie order is implementation-defined; this module
     fixes this rule);
  2. while candidates remain: the first remaining one (the "top", which has the highest
     remaining score) and every remaining candidate whose IoU with it is >= `iou_threshold`
     (0.3 in the release) form a cluster and leave the pool. `pixel_offset=1.0` is the
     release's (x2 - x1 + 1) * (y2 - y1 + 1) area convention. The top always joins its own
     cluster (the release relies on its self-IoU being 1; for a box with x2 - x1 + 1 <= 0 or
     y2 - y1 + 1 <= 0 that IoU is 0 or NaN and the release never terminates; here such a box
     forms a one-box cluster);
  3. a cluster of one box is dropped (`drop_singletons=True`, the release) or output as is;
     otherwise one output row: the score-weighted mean of the cluster's boxes,
     sum(s * box) / sum(s) (a cluster whose scores sum to 0 gives NaN, as in the release),
     and the cluster's maximum score;
  4. the first K = `max_output` rows in production order are returned (the release keeps
     750), padded to K with `valid=False`, zero box and zero score.
No output row at all (e.g. only singletons): the release fails (its output is never bound);
here every row is padding (`valid` all False).

Algorithm: sort once; then a `lax.while_loop` whose iteration takes the first alive box,
computes its IoU with all N sorted boxes (one [N] vector), removes the cluster and writes one
output row, until no box is alive or K rows are written. Memory O(N + K); time O(N) per
cluster, i.e. O(N * number of clusters, singletons included).

Axis letters: B images, N input boxes, K output rows (= max_output).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tinyfaces_jax.detection.box_ops import pairwise_iou
from tinyfaces_jax.detection.nms import candidate_mask, sort_by_score

Array = jnp.ndarray


class VoteResult(NamedTuple):
  """Output of `box_vote` (leading [B] in `batched_box_vote`).

  Attributes:
    boxes: [K, 4] float32 voted xyxy boxes, in production order; zeros for padding.
    scores: [K] float32 cluster maximum scores; zeros for padding.
    valid: [K] bool, True for real rows (they always come first).
  """
  boxes: Array
  scores: Array
  valid: Array


def sort_ties_high_index_first(scores, mask) -> Array:
  """[N] scores, [N] bool mask -> [N] int32 permutation: masked-in entries first, by score
  descending, equal scores by HIGHER index first (a stable sort's `argsort()[::-1]`);
  masked-out entries last."""
  scores = jnp.asarray(scores, jnp.float32)
  mask = jnp.asarray(mask, bool)
  n = scores.shape[0]
  # sort_by_score breaks ties by lower index first; on the reversed arrays that is the higher
  # original index first.
  return (n - 1 - sort_by_score(scores[::-1], mask[::-1])).astype(jnp.int32)


def box_vote(boxes, scores, valid=None, *, iou_threshold=0.3, max_output: int = 750,
             pixel_offset: float = 1.0, drop_singletons: bool = True) -> VoteResult:
  """Box voting of one image (see the module docstring for the exact semantics).

  Args:
    boxes: [N, 4] xyxy boxes.
    scores: [N] scores.
    valid: optional [N] bool mask of real boxes (padding never joins a cluster).
    iou_threshold: a box joins the top's cluster when IoU >= this (may be traced).
    max_output: static K, the output size.
    pixel_offset: 1.0 the release's +1 area convention, 0.0 continuous. Static.
    drop_singletons: static; True (the release) drops one-box clusters.

  Returns:
    VoteResult with [K] fields: voted rows in production order, then padding.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = scores.shape[0]
  k = int(max_output)
  if boxes.shape != (n, 4):
    raise ValueError(f"box_vote: boxes must be [N, 4] with N = {n}, got {boxes.shape}")
  if k < 1:
    raise ValueError(f"box_vote: max_output must be >= 1, got {max_output}")
  out_boxes = jnp.zeros((k, 4), jnp.float32)
  out_scores = jnp.zeros((k,), jnp.float32)
  if n == 0:
    return VoteResult(out_boxes, out_scores, jnp.zeros((k,), bool))

  mask = candidate_mask(scores, None, valid)
  order = sort_ties_high_index_first(scores, mask)
  sboxes = boxes[order]
  sscores = scores[order]
  thr = jnp.asarray(iou_threshold, jnp.float32)
  pos = jnp.arange(n, dtype=jnp.int32)

  def cond(state):
    alive, count, _, _ = state
    return jnp.any(alive) & (count < k)

  def body(state):
    alive, count, out_b, out_s = state
    top = jnp.argmax(alive).astype(jnp.int32)  # first alive position = highest score
    iou = pairwise_iou(sboxes[top][None], sboxes, pixel_offset=pixel_offset)[0]  # [N]
    member = alive & ((iou >= thr) | (pos == top))
    weighted = jnp.where(member[:, None], sscores[:, None] * sboxes, 0.0)
    total = jnp.sum(jnp.where(member, sscores, 0.0))
    voted = jnp.sum(weighted, axis=0) / total
    best = jnp.max(jnp.where(member, sscores, -jnp.inf))
    if drop_singletons:
      emit = jnp.sum(member, dtype=jnp.int32) > 1
    else:
      emit = jnp.bool_(True)
    slot = jnp.where(emit, count, k)  # k is out of range: the write is dropped
    out_b = out_b.at[slot].set(voted, mode="drop")
    out_s = out_s.at[slot].set(best, mode="drop")
    return alive & ~member, count + emit.astype(jnp.int32), out_b, out_s

  init = (mask[order], jnp.int32(0), out_boxes, out_scores)
  _, count, out_boxes, out_scores = lax.while_loop(cond, body, init)
  return VoteResult(out_boxes, out_scores, jnp.arange(k, dtype=jnp.int32) < count)


def batched_box_vote(boxes, scores, valid=None, *, iou_threshold=0.3,
                     max_output: int = 750, pixel_offset: float = 1.0,
                     drop_singletons: bool = True) -> VoteResult:
  """`box_vote` vmapped over images: boxes [B, N, 4], scores [B, N], valid [B, N] or None ->
  VoteResult with [B, K] fields. Thresholds are shared by all images."""
  fn = functools.partial(box_vote, iou_threshold=iou_threshold, max_output=max_output,
                         pixel_offset=pixel_offset, drop_singletons=drop_singletons)
  if valid is None:
    return jax.vmap(lambda b, s: fn(b, s))(boxes, scores)
  return jax.vmap(lambda b, s, v: fn(b, s, v))(boxes, scores, valid)
