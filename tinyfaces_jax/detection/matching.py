"""Anchor <-> ground-truth matching for the anchor detectors (SSD, RetinaFace, S3FD).

Per-image functions take anchors [A, 4] xyxy, ground truth [M, 4] xyxy and a padding mask [M];
`*_batch` wrappers vmap them over B images that share one anchor set. Axis letters: B images,
A anchors, M ground-truth slots.

Ground truth that is padding (mask False) or degenerate (x2 <= x1 or y2 <= y1, as
`box_ops.valid_box_mask`; WIDER FACE has such boxes) never matches anything: its IoU column is -1.

Memory: the [A, M] IoU matrix is never built. `face_loop_overlaps` loops over the M faces
(`lax.fori_loop`), keeping per-anchor running max/argmax and per-face max/argmax, so an image
holds O(A + M) values and a vmapped batch O(B * A) whatever M is (M = 1024 slots against the
34,125 S3FD anchors included). Results do not depend on the loop unrolling.

Ties: every argmax takes the LOWEST index (jnp.argmax semantics): an anchor equally close to two
faces regresses to the lower face index; a face equally close to two anchors is force-matched
to the lower anchor index.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from tinyfaces_jax.detection import box_ops

Array = jnp.ndarray

POSITIVE, NEGATIVE, IGNORE = 1, 0, -1


class Match(NamedTuple):
  """Matching result of one image ([A] fields; [B, A] from the batch wrappers).

  labels: int32, 1 positive, 0 negative, -1 ignore.
  matched_gt: int32 index into M of the face the anchor regresses to. Meaningful where
    labels == 1; elsewhere it holds the anchor's best face (argmax over valid faces, lowest
    index on ties; 0 when the image has no valid face). Always in [0, M).
  max_iou: float32 best IoU of the anchor over valid faces, -1 when there is none (the real IoU,
    also for force-matched anchors).
  """
  labels: Array
  matched_gt: Array
  max_iou: Array


class Overlaps(NamedTuple):
  """Reductions of IoU(boxes [N], faces [M]) (see `face_loop_overlaps`)."""
  box_max: Array    # [N] float32, max over faces (-1: no valid face)
  box_arg: Array    # [N] int32, argmax over faces
  face_max: Array   # [M] float32, max over boxes (-1 for invalid faces)
  face_arg: Array   # [M] int32, argmax over boxes (lowest index on ties)


def face_loop_overlaps(boxes, gt_boxes, valid, *, pixel_offset: float = 0.0,
                       unroll: int = 4) -> Overlaps:
  """IoU reductions over boxes [N, 4] x faces [M, 4] (valid [M] bool), one face at a time.

  A `lax.fori_loop` over the M faces computes the [N] IoU column of one face, folds it into the
  per-box running max/argmax (elementwise, strictly-greater update: lowest face index wins ties)
  and reduces it to the face's max/argmax over boxes (lowest box index on ties). Memory is
  O(N + M) per image whatever M is; under `vmap` every step is a dense [B, N] elementwise op,
  which XLA vectorises far better than [N, M] blocks with row and column argmaxes (3x faster on
  CPU, `benchmarks/matching.py`). `unroll` (static) unrolls the loop body.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  n, m = boxes.shape[0], gt_boxes.shape[0]
  area = box_ops.box_area(boxes, pixel_offset)
  box_ids = jnp.arange(n, dtype=jnp.int32)

  def body(j, carry):
    box_max, box_arg, face_max, face_arg = carry
    g = gt_boxes[j]
    iw = jnp.minimum(boxes[:, 2], g[2]) - jnp.maximum(boxes[:, 0], g[0]) + pixel_offset
    ih = jnp.minimum(boxes[:, 3], g[3]) - jnp.maximum(boxes[:, 1], g[1]) + pixel_offset
    inter = jnp.maximum(iw, 0.0) * jnp.maximum(ih, 0.0)
    union = area + box_ops.box_area(g, pixel_offset) - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    iou = jnp.where(valid[j], iou, -1.0)                                        # [N]
    better = iou > box_max
    box_max = jnp.where(better, iou, box_max)
    box_arg = jnp.where(better, j, box_arg)
    top = jnp.max(iou)
    face_max = face_max.at[j].set(top)
    # argmax as min index attaining the max: two plain reductions vectorise much better on CPU
    # than XLA's variadic (value, index) argmax reduction.
    face_arg = face_arg.at[j].set(jnp.min(jnp.where(iou == top, box_ids, n)))
    return box_max, box_arg, face_max, face_arg

  init = (jnp.full((n,), -2.0, jnp.float32), jnp.zeros((n,), jnp.int32),
          jnp.full((m,), -1.0, jnp.float32), jnp.zeros((m,), jnp.int32))
  return Overlaps(*lax.fori_loop(0, m, body, init, unroll=max(1, min(unroll, m))))


def prepare_gt(gt_boxes, gt_mask):
  """-> (gt [M', 4] float32, valid [M'] bool); M' = max(M, 1) (an empty M gets a dummy slot)."""
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32).reshape(-1, 4)
  gt_mask = jnp.asarray(gt_mask, bool).reshape(-1)
  if gt_boxes.shape[0] == 0:
    gt_boxes, gt_mask = jnp.zeros((1, 4), jnp.float32), jnp.zeros((1,), bool)
  return gt_boxes, box_ops.valid_box_mask(gt_boxes, gt_mask)


def match_anchors(anchors, gt_boxes, gt_mask, *, pos_iou: float, neg_iou: Optional[float] = None,
                  force_match: bool = True, force_min_iou: float = 0.0,
                  pixel_offset: float = 0.0, unroll: int = 4) -> Match:
  """Threshold + best-anchor matcher of SSD / RetinaFace / S3FD stage one, one image.

  anchors [A, 4] xyxy; gt_boxes [M, 4] xyxy; gt_mask [M] bool -> Match with [A] fields.

  * positive: max IoU over valid faces >= pos_iou (SSD 0.5, RetinaFace and S3FD 0.35);
  * negative: max IoU < neg_iou (default neg_iou = pos_iou: no ignore zone, the SSD/RetinaFace
    case); ignore (-1) in between;
  * force match (`force_match`): every valid face whose best IoU over anchors is
    >= force_min_iou AND > 0 makes its best anchor (lowest index on ties) positive and that anchor
    regresses to the face whatever its own argmax. When several faces share one best anchor the
    LATER face index wins, as the reference loop `for j: best_truth_idx[best_prior_idx[j]] = j`
    (ssd.pytorch / Pytorch_Retinaface `layers/box_utils.py match`); here one scatter-max.
    RetinaFace: force_min_iou=0.2 (its `valid_gt_idx = best_prior_overlap >= 0.2`). If no face
    reaches 0.2 no anchor is forced and, as every IoU is then < 0.2 <= pos_iou, the image is all
    negative, as RetinaFace's early return (for neg_iou <= 0.2 the non-forced anchors follow the
    thresholds instead).

  Deliberate deviations from reference quirks:
  * ssd.pytorch force-matches a face with zero IoU to anchor 0 (its argmax); here a face needs
    best IoU > 0 (and >= force_min_iou) to be forced.
  * Pytorch_Retinaface's re-pointing loop runs over ALL faces, so a face below 0.2 still steals
    the `best_truth_idx` of its best anchor (which, if positive through another face, then
    regresses to the wrong face). Here only forced faces re-point anchors.
  * max_iou reports the real IoU of force-matched anchors (the references overwrite it with 2).
  """
  anchors = jnp.asarray(anchors, jnp.float32)
  gt, valid = prepare_gt(gt_boxes, gt_mask)
  m = gt.shape[0]
  neg_iou = pos_iou if neg_iou is None else neg_iou
  ov = face_loop_overlaps(anchors, gt, valid, pixel_offset=pixel_offset, unroll=unroll)
  forced_face = valid & (ov.face_max >= force_min_iou) & (ov.face_max > 0.0) & bool(force_match)
  face_ids = jnp.where(forced_face, jnp.arange(m, dtype=jnp.int32), -1)
  owner = jnp.full((anchors.shape[0],), -1, jnp.int32).at[ov.face_arg].max(face_ids)
  forced = owner >= 0
  matched = jnp.where(forced, owner, ov.box_arg)
  labels = jnp.where(ov.box_max < neg_iou, NEGATIVE, IGNORE)
  labels = jnp.where(forced | (ov.box_max >= pos_iou), POSITIVE, labels).astype(jnp.int32)
  return Match(labels, matched, ov.box_max)


def s3fd_compensate(stage1: Match, num_faces_slots: int, valid, *, stage2_iou: float = 0.1,
                    max_stage2_per_face: Optional[int] = None) -> Match:
  """S3FD stage two on a stage-one Match ([A] fields); valid [M] bool. See `match_s3fd`."""
  a = stage1.labels.shape[0]
  m = num_faces_slots
  is_pos = stage1.labels == POSITIVE
  counts = jnp.zeros((m,), jnp.int32).at[stage1.matched_gt].add(is_pos.astype(jnp.int32))
  counts = jnp.where(valid, counts, 0)
  num_valid = jnp.sum(valid.astype(jnp.int32))
  n = jnp.where(num_valid > 0, jnp.sum(counts) // jnp.maximum(num_valid, 1), 0)
  if max_stage2_per_face is not None:
    n = jnp.minimum(n, max_stage2_per_face)
  need = jnp.where(valid & (counts < n), n - counts, 0)                               # [M]
  # Candidates of face j: not positive after stage one, best face j, IoU(j) > stage2_iou.
  cand = (~is_pos) & (stage1.max_iou > stage2_iou) & valid[stage1.matched_gt]
  face_key = jnp.where(cand, stage1.matched_gt, m)                   # m: sentinel, sorts last
  order = jnp.arange(a, dtype=jnp.int32)
  # Sort by (face, IoU descending); stable, so equal IoUs keep the lower anchor index first.
  s_face, _, s_idx = lax.sort((face_key, -stage1.max_iou, order), num_keys=2, is_stable=True)
  seg_start = jnp.searchsorted(s_face, jnp.arange(m + 1, dtype=jnp.int32), side="left")
  rank = order - seg_start[s_face]
  take_sorted = (s_face < m) & (rank < need[jnp.minimum(s_face, m - 1)])
  take = jnp.zeros((a,), bool).at[s_idx].set(take_sorted)
  labels = jnp.where(take, POSITIVE, stage1.labels).astype(jnp.int32)
  return Match(labels, stage1.matched_gt, stage1.max_iou)


def match_s3fd(anchors, gt_boxes, gt_mask, *, stage1_iou: float = 0.35, stage2_iou: float = 0.1,
               neg_iou: Optional[float] = None, max_stage2_per_face: Optional[int] = None,
               force_match: bool = True, force_min_iou: float = 0.0, pixel_offset: float = 0.0,
               unroll: int = 4) -> Match:
  """S3FD scale compensation anchor matching (Zhang et al., ICCV 2017, Sec. 3.2), one image.

  anchors [A, 4] xyxy; gt_boxes [M, 4] xyxy; gt_mask [M] bool -> Match with [A] fields.

  Stage one: `match_anchors` with pos_iou = stage1_iou (0.35) and force match.
  Stage two: N = floor(#stage-one positives / #valid faces) of THIS image (per image; the
  average number of anchors per face, integer division). Every valid face with fewer than N
  stage-one anchors gets its best remaining candidates until it has N: candidates are anchors
  that are not positive after stage one, whose best face (argmax, the "variable that records the
  best match gt for each anchor") is this face, and whose IoU with it is > stage2_iou (0.1),
  taken by IoU descending (lowest anchor index first on ties). New positives regress to that
  face; stage two never steals a stage-one anchor and two faces never compete for one anchor.

  Sources: the paper (top-N of the anchors with IoU > 0.1, N = stage-one average); the author,
  sfzhang15/SFD issues #46 (stage two only takes anchors unmatched at stage one; a per-anchor
  best-gt variable resolves faces competing for an anchor) and #12/#32 (only faces with fewer
  than N anchors are compensated; in their Caffe code N was effectively 6). The open ports
  differ: yxlijun/S3FD.pytorch `layers/bbox_utils.py match` uses N = (#faces with best IoU
  > 0.35 + #faces > 0.5) // 2 and adds the top-N unmatched anchors of the whole image by IoU
  regardless of face (no per-face count); a gluon/mobula port (`compensate_kernel`) uses a fixed
  top-6 per face among anchors whose best gt it is. We follow the paper + author statements.

  Deviation: N comes from the image itself (stage-one average), not a fixed 6; pass
  `max_stage2_per_face` to clamp N (e.g. 6). The sort is over A (O(A log A), [A] memory),
  so there is no per-face top-k cap. `neg_iou` (default stage1_iou) is stage one's ignore
  threshold; stage-two anchors become positive whatever their stage-one label was.
  """
  gt, valid = prepare_gt(gt_boxes, gt_mask)
  stage1 = match_anchors(anchors, gt, valid, pos_iou=stage1_iou, neg_iou=neg_iou,
                         force_match=force_match, force_min_iou=force_min_iou,
                         pixel_offset=pixel_offset, unroll=unroll)
  return s3fd_compensate(stage1, gt.shape[0], valid, stage2_iou=stage2_iou,
                         max_stage2_per_face=max_stage2_per_face)


def match_anchors_batch(anchors, gt_boxes, gt_mask, **kwargs) -> Match:
  """vmapped `match_anchors`: anchors [A, 4], gt_boxes [B, M, 4], gt_mask [B, M] -> [B, A]."""
  return jax.vmap(functools.partial(match_anchors, **kwargs), in_axes=(None, 0, 0))(
      anchors, gt_boxes, gt_mask)


def match_s3fd_batch(anchors, gt_boxes, gt_mask, **kwargs) -> Match:
  """vmapped `match_s3fd`: anchors [A, 4], gt_boxes [B, M, 4], gt_mask [B, M] -> [B, A]."""
  return jax.vmap(functools.partial(match_s3fd, **kwargs), in_axes=(None, 0, 0))(
      anchors, gt_boxes, gt_mask)
