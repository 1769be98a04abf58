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
  face_top_iou: Optional[Array] = None   # [M, k] float32, each face's k best IoUs, descending
  face_top_arg: Optional[Array] = None   # [M, k] int32, their boxes (lower index first on ties)


def face_loop_overlaps(boxes, gt_boxes, valid, *, pixel_offset: float = 0.0,
                       unroll: int = 4, top_k: int = 0) -> Overlaps:
  """IoU reductions over boxes [N, 4] x faces [M, 4] (valid [M] bool), one face at a time.

  A `lax.fori_loop` over the M faces computes the [N] IoU column of one face, folds it into the
  per-box running max/argmax (elementwise, strictly-greater update: lowest face index wins ties)
  and reduces it to the face's max/argmax over boxes (lowest box index on ties). Memory is
  O(N + M) per image whatever M is; under `vmap` every step is a dense [B, N] elementwise op,
  which XLA vectorises far better than [N, M] blocks with row and column argmaxes (3x faster on
  CPU, `benchmarks/matching.py`). `unroll` (static) unrolls the loop body. `top_k` > 0 also
  keeps each face's k best boxes (`lax.top_k` of the column: O(M k) more memory), which the
  bipartite matcher walks.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  n, m = boxes.shape[0], gt_boxes.shape[0]
  k = min(int(top_k), n)
  area = box_ops.box_area(boxes, pixel_offset)
  box_ids = jnp.arange(n, dtype=jnp.int32)

  def body(j, carry):
    box_max, box_arg, face_max, face_arg, top_iou, top_arg = carry
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
    if k:
      v, i = lax.top_k(iou, k)
      top_iou, top_arg = top_iou.at[j].set(v), top_arg.at[j].set(i.astype(jnp.int32))
    return box_max, box_arg, face_max, face_arg, top_iou, top_arg

  init = (jnp.full((n,), -2.0, jnp.float32), jnp.zeros((n,), jnp.int32),
          jnp.full((m,), -1.0, jnp.float32), jnp.zeros((m,), jnp.int32),
          jnp.full((m, k), -1.0, jnp.float32), jnp.zeros((m, k), jnp.int32))
  out = lax.fori_loop(0, m, body, init, unroll=max(1, min(unroll, m)))
  return Overlaps(*out[:4], *((out[4], out[5]) if k else (None, None)))


def prepare_gt(gt_boxes, gt_mask):
  """-> (gt [M', 4] float32, valid [M'] bool); M' = max(M, 1) (an empty M gets a dummy slot)."""
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32).reshape(-1, 4)
  gt_mask = jnp.asarray(gt_mask, bool).reshape(-1)
  if gt_boxes.shape[0] == 0:
    gt_boxes, gt_mask = jnp.zeros((1, 4), jnp.float32), jnp.zeros((1,), bool)
  return gt_boxes, box_ops.valid_box_mask(gt_boxes, gt_mask)


FORCE_MODES = ("best", "bipartite", "none")
BIPARTITE_MIN_IOU = 1e-6     # SSD MatchBBox only considers pairs with overlap > kEpsilon


def bipartite_owner(ov: Overlaps, num_anchors: int, eligible) -> Array:
  """SSD's greedy bipartite matching (`MatchBBox`, weiliu89/caffe ssd
  src/caffe/util/bbox_util.cpp): repeatedly take the globally largest IoU among the faces not
  yet matched and the anchors not yet taken (IoU > 1e-6; ties: lowest anchor index, then lowest
  face index), give that anchor to that face and remove both. -> owner [A] int32 (the face an
  anchor was given to, -1 for none). `eligible` [M] bool: the faces that take part.

  Static shapes: each face walks its k best anchors (`ov.face_top_iou` / `face_top_arg`,
  descending). A `lax.while_loop` round computes every unmatched face's proposal (its best
  anchor not yet taken); when proposals collide on an anchor, the best colliding proposal p*
  (the greedy's next choice among them) and every proposal ranking above p* (the greedy would
  take them first and they touch nobody else's anchor) are assigned in the round; without
  collisions all proposals are. The result is the greedy's exactly, in as many rounds as there
  are collisions to resolve (one when no two faces want the same anchor). The one
  deviation: a face whose k candidates were all taken by other faces ends unmatched (the
  greedy would give it its (k+1)-th anchor); it needs k other faces overlapping it more than it
  overlaps its own next anchor.
  """
  top_iou, top_arg = ov.face_top_iou, ov.face_top_arg                  # [M, k]
  m, k = top_iou.shape
  face_ids = jnp.arange(m, dtype=jnp.int32)
  big = jnp.int32(2 ** 30)

  def proposals(used, done):
    avail = (top_iou > BIPARTITE_MIN_IOU) & ~used[top_arg]              # [M, k]
    pos = jnp.argmax(avail, axis=1)
    has = jnp.any(avail, axis=1) & ~done
    return has, top_arg[face_ids, pos], top_iou[face_ids, pos]

  def cond(state):
    used, done, owner = state
    return jnp.any(proposals(used, done)[0])

  def body(state):
    used, done, owner = state
    has, a, v = proposals(used, done)
    wanted = jnp.zeros((num_anchors,), jnp.int32).at[a].add(has.astype(jnp.int32))
    clash = has & (wanted[a] > 1)
    # p*: the best colliding proposal by (IoU desc, anchor asc, face asc).
    v_star = jnp.max(jnp.where(clash, v, -jnp.inf))
    a_star = jnp.min(jnp.where(clash & (v == v_star), a, big))
    f_star = jnp.min(jnp.where(clash & (v == v_star) & (a == a_star), face_ids, big))
    any_clash = jnp.any(clash)
    ahead = (v > v_star) | ((v == v_star) & (a < a_star))
    take = has & ((~clash & (ahead | ~any_clash)) | (face_ids == f_star))
    used = used.at[jnp.where(take, a, num_anchors)].set(True, mode="drop")
    owner = owner.at[jnp.where(take, a, num_anchors)].set(face_ids, mode="drop")
    # Faces that got an anchor, and faces with nothing left to propose, are done.
    done = done | take | ~has
    return used, done, owner

  init = (jnp.zeros((num_anchors,), bool), ~eligible,
          jnp.full((num_anchors,), -1, jnp.int32))
  return lax.while_loop(cond, body, init)[2]


def match_anchors(anchors, gt_boxes, gt_mask, *, pos_iou: float, neg_iou: Optional[float] = None,
                  force: str = "best", force_min_iou: float = 0.0, bipartite_k: int = 16,
                  pixel_offset: float = 0.0, unroll: int = 4) -> Match:
  """Threshold + forced-anchor matcher of SSD / RetinaFace / S3FD stage one, one image.

  anchors [A, 4] xyxy; gt_boxes [M, 4] xyxy; gt_mask [M] bool -> Match with [A] fields.

  * positive: max IoU over valid faces >= pos_iou (SSD 0.5, RetinaFace and S3FD 0.35);
  * negative: max IoU < neg_iou (default neg_iou = pos_iou: no ignore zone, the SSD/RetinaFace
    case); ignore (-1) in between;
  * forced anchors (`force`), positive whatever their IoU and regressing to their face:
    "best": every valid face whose best IoU over anchors is >= force_min_iou AND > 0 makes its
      best anchor (lowest index on ties) positive. When several faces share one best anchor
      the LATER face index wins, as the reference loop `for j: best_truth_idx[best_prior_idx[j]]
      = j` (ssd.pytorch / Pytorch_Retinaface / S3FD.pytorch `match`); here one scatter-max.
      RetinaFace: force_min_iou=0.2 (its `valid_gt_idx = best_prior_overlap >= 0.2`). If no face
      reaches 0.2 no anchor is forced and, as every IoU is then < 0.2 <= pos_iou, the image is
      all negative, as RetinaFace's early return (for neg_iou <= 0.2 the non-forced anchors
      follow the thresholds instead).
    "bipartite": SSD Caffe's greedy bipartite matching (`bipartite_owner`: one anchor per face,
      a shared best anchor goes to the face overlapping it most and the other face takes its
      next best free anchor), over the faces whose best IoU is >= force_min_iou; each face
      walks its `bipartite_k` best anchors.
    "none": thresholds only.

  Deliberate deviations from reference quirks:
  * ssd.pytorch force-matches a face with zero IoU to anchor 0 (its argmax); here a face needs
    best IoU > 0 (and >= force_min_iou) to be forced.
  * Pytorch_Retinaface's re-pointing loop runs over ALL faces, so a face below 0.2 still steals
    the `best_truth_idx` of its best anchor (which, if positive through another face, then
    regresses to the wrong face). Here only forced faces re-point anchors.
  * max_iou reports the real IoU of force-matched anchors (the references overwrite it with 2).
  """
  return _stage_one(anchors, gt_boxes, gt_mask, pos_iou, neg_iou, force, force_min_iou,
                    bipartite_k, pixel_offset, unroll)[0]


def _stage_one(anchors, gt_boxes, gt_mask, pos_iou, neg_iou, force, force_min_iou, bipartite_k,
               pixel_offset, unroll) -> tuple[Match, Overlaps]:
  """`match_anchors`, also returning its Overlaps (S3FD.pytorch's stage two reads face_max)."""
  if force not in FORCE_MODES:
    raise ValueError(f"force must be one of {FORCE_MODES}, got {force!r}")
  anchors = jnp.asarray(anchors, jnp.float32)
  gt, valid = prepare_gt(gt_boxes, gt_mask)
  m, a = gt.shape[0], anchors.shape[0]
  neg_iou = pos_iou if neg_iou is None else neg_iou
  ov = face_loop_overlaps(anchors, gt, valid, pixel_offset=pixel_offset, unroll=unroll,
                          top_k=bipartite_k if force == "bipartite" else 0)
  forced_face = valid & (ov.face_max >= force_min_iou) & (ov.face_max > 0.0)
  if force == "best":
    face_ids = jnp.where(forced_face, jnp.arange(m, dtype=jnp.int32), -1)
    owner = jnp.full((a,), -1, jnp.int32).at[ov.face_arg].max(face_ids)
  elif force == "bipartite":
    owner = bipartite_owner(ov, a, forced_face)
  else:
    owner = jnp.full((a,), -1, jnp.int32)
  forced = owner >= 0
  matched = jnp.where(forced, owner, ov.box_arg)
  labels = jnp.where(ov.box_max < neg_iou, NEGATIVE, IGNORE)
  labels = jnp.where(forced | (ov.box_max >= pos_iou), POSITIVE, labels).astype(jnp.int32)
  return Match(labels, matched, ov.box_max), ov


STAGE2_MODES = ("author", "average", "yxlijun")


def _per_face_compensation(stage1: Match, valid, n, stage2_iou: float) -> Array:
  """The new positives [A] bool of the per-face stage two: every valid face with fewer than
  n (scalar) stage-one anchors takes its best candidates until it has n (see `match_s3fd`)."""
  a = stage1.labels.shape[0]
  m = valid.shape[0]
  is_pos = stage1.labels == POSITIVE
  counts = jnp.zeros((m,), jnp.int32).at[stage1.matched_gt].add(is_pos.astype(jnp.int32))
  counts = jnp.where(valid, counts, 0)
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
  return jnp.zeros((a,), bool).at[s_idx].set(take_sorted)


def _yxlijun_compensation(stage1: Match, face_max, valid, stage1_iou: float,
                          stage2_iou: float, stage2_high_iou: float) -> Array:
  """The new positives [A] bool of S3FD.pytorch's image-global stage two (see `match_s3fd`)."""
  a = stage1.labels.shape[0]
  n = (jnp.sum(valid & (face_max > stage1_iou)) + jnp.sum(valid & (face_max > stage2_high_iou))
       ) // 2
  is_pos = stage1.labels == POSITIVE
  cand = (~is_pos) & (stage1.max_iou > stage2_iou) & (stage1.max_iou < stage1_iou)
  key = jnp.where(cand, stage1.max_iou, 0.0)
  order = jnp.arange(a, dtype=jnp.int32)
  s_key, s_idx = lax.sort((-key, order), num_keys=1, is_stable=True)
  rank = order
  top_sum = jnp.sum(jnp.where(rank < n, -s_key, 0.0))
  n_eff = jnp.where(top_sum < n, jnp.floor(top_sum).astype(n.dtype), n)
  take_sorted = (rank < n_eff) & (-s_key > 0)
  return jnp.zeros((a,), bool).at[s_idx].set(take_sorted)


def match_s3fd(anchors, gt_boxes, gt_mask, *, stage1_iou: float = 0.35, stage2_iou: float = 0.1,
               stage2: str = "author", stage2_n: int = 6, stage2_high_iou: float = 0.5,
               neg_iou: Optional[float] = None, force: str = "bipartite",
               force_min_iou: float = 0.0, bipartite_k: int = 16, pixel_offset: float = 0.0,
               unroll: int = 4) -> Match:
  """S3FD scale compensation anchor matching (Zhang et al., ICCV 2017, Sec. 3.2), one image.

  anchors [A, 4] xyxy; gt_boxes [M, 4] xyxy; gt_mask [M] bool -> Match with [A] fields.

  Stage one: `match_anchors` with pos_iou = stage1_iou (0.35) and the forced anchors of
  `force` ("bipartite": the Caffe release's SSD MatchBBox, bipartite then per-prediction).
  Stage two (`stage2`):
    "author" (default): every valid face with fewer than N = `stage2_n` (6) stage-one anchors
      gets its best remaining candidates until it has N: candidates are anchors not positive
      after stage one, whose best face (argmax, the "variable that records the best match gt
      for each anchor") is this face, and whose IoU with it is > stage2_iou (0.1), taken by IoU
      descending (lowest anchor index first on ties). New positives regress to that face;
      stage two never steals a stage-one anchor and two faces never compete for one anchor.
      Sources: the paper (top-N of the anchors with IoU > 0.1), the author in sfzhang15/SFD
      #12/#32 ("for each gt whose number of matched anchors is less than 6 ... its top6
      anchor") and #46 (only anchors unmatched at stage one; a per-anchor best-gt variable).
    "average": the same with N = floor(#stage-one positives / #valid faces) of this image
      (the paper's "N = average number from stage one", per image).
    "yxlijun": S3FD.pytorch `layers/bbox_utils.py match` (use it with force="best", as that
      release): N = (#faces with best IoU > stage1_iou + #faces with best IoU >
      stage2_high_iou (0.5)) // 2 (it counts faces, not anchors); the candidates are the
      anchors of the whole image with stage2_iou < IoU < stage1_iou, sorted by IoU (stable,
      lowest index first); when the sum of the N best candidates' IoUs is below N (always,
      every IoU being < 0.35) that release slices its sorted list with that float sum, i.e.
      it takes the floor(sum) best candidates; they become positive, each regressing to its
      own best face, with no per-face count.
  `neg_iou` (default stage1_iou) is stage one's ignore threshold; stage-two anchors become
  positive whatever their stage-one label was.
  """
  if stage2 not in STAGE2_MODES:
    raise ValueError(f"stage2 must be one of {STAGE2_MODES}, got {stage2!r}")
  gt, valid = prepare_gt(gt_boxes, gt_mask)
  stage1, ov = _stage_one(anchors, gt, valid, stage1_iou, neg_iou, force, force_min_iou,
                          bipartite_k, pixel_offset, unroll)
  if stage2 == "yxlijun":
    take = _yxlijun_compensation(stage1, ov.face_max, valid, stage1_iou, stage2_iou,
                                 stage2_high_iou)
  else:
    if stage2 == "author":
      n = jnp.int32(stage2_n)
    else:
      counts = jnp.sum((stage1.labels == POSITIVE).astype(jnp.int32))
      num_valid = jnp.sum(valid.astype(jnp.int32))
      n = jnp.where(num_valid > 0, counts // jnp.maximum(num_valid, 1), 0)
    take = _per_face_compensation(stage1, valid, n, stage2_iou)
  labels = jnp.where(take, POSITIVE, stage1.labels).astype(jnp.int32)
  return Match(labels, stage1.matched_gt, stage1.max_iou)


def match_anchors_batch(anchors, gt_boxes, gt_mask, **kwargs) -> Match:
  """vmapped `match_anchors`: anchors [A, 4], gt_boxes [B, M, 4], gt_mask [B, M] -> [B, A]."""
  return jax.vmap(functools.partial(match_anchors, **kwargs), in_axes=(None, 0, 0))(
      anchors, gt_boxes, gt_mask)


def match_s3fd_batch(anchors, gt_boxes, gt_mask, **kwargs) -> Match:
  """vmapped `match_s3fd`: anchors [A, 4], gt_boxes [B, M, 4], gt_mask [B, M] -> [B, A]."""
  return jax.vmap(functools.partial(match_s3fd, **kwargs), in_axes=(None, 0, 0))(
      anchors, gt_boxes, gt_mask)
