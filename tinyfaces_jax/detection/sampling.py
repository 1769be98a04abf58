"""Online hard example mining / sampling of training anchors, static shapes only.

Three published schemes, each as a per-image function plus a `jax.vmap`-ed batch wrapper:

* `hard_negative_mask`: SSD-style hard negative mining (ssd.pytorch
  `layers/modules/multibox_loss.py`, Pytorch_Retinaface `layers/modules/multibox_loss.py`;
  ratio 3 in SSD/S3FD, 7 in RetinaFace `train.py`). Per image: num_neg =
  clamp(ratio * num_pos, max=A - 1), the negatives ranked by classification loss descending
  (the reference zeroes the positives' loss and takes `argsort(argsort)` ranks) with
  rank < num_neg are kept. With no positive, no negative is kept (reference behaviour;
  `min_negatives` is the gluon-cv `min_hard_negatives` extension, default 0 = off).
* `tiny_faces_sample_mask`: Hu & Ramanan, "Finding Tiny Faces" (peiyunh/tiny
  `cnn_train_dag_hardmine.m`): every location whose classification loss map is < 0.03 becomes
  ignored (positives and negatives alike), then per image at most 128 positives and at most
  128 negatives are kept, a uniform random subset of each (`Shuffle`; sampleSize 256,
  posFraction 0.5).
* `top_fraction_mask` / `top_fraction_mean`: MTCNN online hard sample mining
  (AITTSMD/MTCNN-Tensorflow `train_models/mtcnn_model.py` `cls_ohem`): keep the
  keep_num = int32(num_valid * 0.7) (float32 product, truncated) largest losses of the valid
  samples and average them.

Labels follow the matcher: int32 per anchor, 1 positive, 0 negative, -1 ignore. Ranks are
exact and deterministic: stable sorts, equal losses rank the lower index first.

Axis letters: B images, A anchors, N generic samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def descending_rank(values, mask) -> Array:
  """[N] values, [N] bool mask -> [N] int32 rank of each entry when the masked-in entries are
  sorted by value descending (ties: lower index first); masked-out entries rank after all
  masked-in ones. The rank is the inverse permutation of the stable sort (argsort of
  argsort), so `rank < k` selects exactly the top k masked-in entries when k <= sum(mask)."""
  values = jnp.asarray(values, jnp.float32)
  mask = jnp.asarray(mask, bool)
  n = values.shape[0]
  iota = jnp.arange(n, dtype=jnp.int32)
  # + 0.0 makes -0.0 and +0.0 tie; NaN values are pushed behind every real value.
  nan = jnp.isnan(values)
  key = jnp.where(mask & ~nan, -values, jnp.inf) + 0.0
  _, _, _, order = lax.sort(((~mask).astype(jnp.int32), nan.astype(jnp.int32), key, iota),
                            num_keys=4)
  return jnp.zeros((n,), jnp.int32).at[order].set(iota)


def _ordered_bits(values) -> Array:
  """[N] float32 -> [N] uint32 keys with the same order (NaN lowest, -0.0 == +0.0)."""
  v = jnp.asarray(values, jnp.float32)
  v = jnp.where(v == 0, 0.0, v)
  bits = lax.bitcast_convert_type(v, jnp.int32)
  ordered = bits ^ ((bits >> 31) & jnp.int32(0x7FFFFFFF))          # monotone signed int32
  ukey = lax.bitcast_convert_type(ordered, jnp.uint32) ^ jnp.uint32(0x80000000)
  return jnp.where(jnp.isnan(v), jnp.uint32(0), ukey)


def top_k_mask(values, mask, k) -> Array:
  """The k largest masked-in values, exactly `mask & (descending_rank(values, mask) < k)`.

  values [N] float, mask [N] bool, k scalar int (may be traced, any value) -> [N] bool.
  A radix select instead of a sort: 32 bisection steps over the order-preserving uint32 image
  of the floats find the k-th largest key t (each step one compare + count over N), then all
  keys > t are kept and the keys == t by lowest index (a cumsum) until k are kept. O(32 N)
  vectorised work and no sort, several times faster than argsort-of-argsort on CPU.
  """
  mask = jnp.asarray(mask, bool)
  ukey = _ordered_bits(values)
  k = jnp.asarray(k, jnp.int32)
  t = jnp.uint32(0)
  for bit in range(31, -1, -1):                       # static 32 steps over the bits
    cand = t | jnp.uint32(1 << bit)
    t = jnp.where(jnp.sum(mask & (ukey >= cand), dtype=jnp.int32) >= k, cand, t)
  greater = mask & (ukey > t)
  equal = mask & (ukey == t)
  room = k - jnp.sum(greater, dtype=jnp.int32)
  return greater | (equal & (jnp.cumsum(equal, dtype=jnp.int32) <= room))


# ------------------------------------------------------------------ SSD hard negatives ---


def num_hard_negatives(labels, neg_pos_ratio, *, min_negatives: int = 0) -> Array:
  """[A] int32 labels -> scalar int32 number of negatives to keep for one image:
  min(max(floor(ratio * num_pos), min_negatives), A - 1, num_available_negatives)."""
  labels = jnp.asarray(labels, jnp.int32)
  a = labels.shape[0]
  num_pos = jnp.sum(labels == 1, dtype=jnp.int32)
  num_avail = jnp.sum(labels == 0, dtype=jnp.int32)
  wanted = jnp.floor(jnp.asarray(neg_pos_ratio, jnp.float32) * num_pos).astype(jnp.int32)
  wanted = jnp.maximum(wanted, jnp.int32(min_negatives))
  return jnp.minimum(jnp.minimum(wanted, a - 1), num_avail)


def hard_negative_mask(losses, labels, neg_pos_ratio, *, min_negatives: int = 0) -> Array:
  """SSD hard negative mining for one image.

  Args:
    losses: [A] per-anchor classification loss (e.g. softmax cross-entropy w.r.t. the
      background class, as the reference ranks `log_sum_exp(conf) - conf[label]`).
    labels: [A] int32, 1 positive, 0 negative, -1 ignore.
    neg_pos_ratio: negatives per positive (3 SSD/S3FD, 7 RetinaFace); may be traced.
    min_negatives: static lower bound on the number of negatives before the caps
      (0 reproduces the reference, which keeps no negative in an image without positives).

  Returns:
    [A] bool, True for the negatives to keep (never a positive or an ignored anchor).

  Deviation from the reference: there positives get loss 0 and are ranked with everything
  else, and there is no ignore class. Here only label-0 anchors are ranked, so positives and
  ignored anchors can neither be selected nor take a slot, and the count is also capped by
  the negatives available. Selections are identical whenever the reference has no ties at
  loss 0 between positives and negatives.
  """
  labels = jnp.asarray(labels, jnp.int32)
  neg = labels == 0
  k = num_hard_negatives(labels, neg_pos_ratio, min_negatives=min_negatives)
  return top_k_mask(losses, neg, k)


def batched_hard_negative_mask(losses, labels, neg_pos_ratio, *,
                               min_negatives: int = 0) -> Array:
  """`hard_negative_mask` per image: losses [B, A], labels [B, A] -> [B, A] bool.
  num_neg is computed per image, as in the reference (`pos.sum(1, keepdim=True)`)."""
  fn = functools.partial(hard_negative_mask, min_negatives=min_negatives)
  return jax.vmap(fn, in_axes=(0, 0, None))(losses, labels, neg_pos_ratio)


# ------------------------------------------------------------------ SSH OHEM ---


def ohem_sample_mask(fg_scores, labels, *, num_samples: int = 256, fg_fraction: float = 0.25,
                     hard_positives: bool = True, key=None) -> tuple[Array, Array]:
  """SSH's online hard example mining for one image and one module (mahyarnajibi/SSH
  `SSH/layers/anchor_target_layer.py` with its OHEM input).

  Args:
    fg_scores: [A] face probability of each anchor (a stop-gradient forward).
    labels: [A] int32, 1 positive, 0 negative, -1 ignore.
    num_samples / fg_fraction: 256 and 0.25: at most 64 positives, 256 - #kept positives
      negatives.
    hard_positives: keep the positives with the LOWEST scores when there are too many
      (the release's HARD_POSITIVE_MINING); False: a uniform subset (needs `key`).
    key: PRNG key for the random positive subset.
  Returns:
    (positives [A] bool, negatives [A] bool) sampled: negatives are the highest-scoring
    label-0 anchors. Ties: lower anchor index first (the release's unstable numpy argsort
    has no defined order).
  """
  labels = jnp.asarray(labels, jnp.int32)
  scores = jnp.asarray(fg_scores, jnp.float32)
  pos, neg = labels == 1, labels == 0
  max_pos = int(fg_fraction * num_samples)
  if hard_positives:
    keep_pos = top_k_mask(-scores, pos, max_pos)
  else:
    if key is None:
      raise ValueError("ohem_sample_mask: a random positive subset needs a PRNG key")
    keep_pos = random_subset_mask(key, pos, max_pos)
  n_neg = num_samples - jnp.sum(keep_pos, dtype=jnp.int32)
  return keep_pos, top_k_mask(scores, neg, n_neg)


# ------------------------------------------------------------------ Tiny Faces hardmine ---


def random_subset_mask(key, candidates, max_keep: int) -> Array:
  """[A] bool candidates -> [A] bool: min(max_keep, #candidates) of them, every subset of
  that size equally likely. Uses one uniform permutation and a running count of the
  candidates in permuted order; deterministic given `key`."""
  candidates = jnp.asarray(candidates, bool)
  a = candidates.shape[0]
  perm = jax.random.permutation(key, a)
  in_perm = candidates[perm]
  chosen = in_perm & (jnp.cumsum(in_perm, dtype=jnp.int32) <= max_keep)
  return jnp.zeros((a,), bool).at[perm].set(chosen)


def tiny_faces_sample_mask(key, losses, labels, *, easy_loss: float = 0.03,
                           max_pos: int = 128, max_neg: int = 128,
                           neg_select: str = "random") -> tuple[Array, Array]:
  """Tiny Faces hard mining for one image.

  Args:
    key: PRNG key.
    losses: [A] per-location classification (logistic) loss, the reference `loss_cls_map`.
    labels: [A] int32, 1 positive, 0 negative, -1 ignore.
    easy_loss: locations with loss < easy_loss are dropped, whatever their label
      (reference `label_cls(loss_cls_map < 0.03) = 0`).
    max_pos: at most this many positives are kept (reference
      sampleSize * posFraction = 256 * 0.5).
    max_neg: at most this many negatives are kept (reference
      pos_maxnum * (1 - posFraction) / posFraction = 128).
    neg_select: "random" (the reference: a uniform random subset of the hard negatives) or
      "hardest" (the max_neg hard negatives of largest loss, ties by lower index; SSD-style
      hard-negative mining, not the release's).

  Returns:
    (pos_keep [A] bool, neg_keep [A] bool): uniform random subsets of the hard positives and
    of the hard negatives (with "hardest", the negatives of largest loss). The two subsets are
    drawn independently from one permutation.
  """
  if neg_select not in ("random", "hardest"):
    raise ValueError(f"neg_select={neg_select!r}; known: 'random' (the release), 'hardest'")
  losses = jnp.asarray(losses, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  hard = ~(losses < easy_loss)
  pos_cand = hard & (labels == 1)
  neg_cand = hard & (labels == 0)
  key_pos, key_neg = jax.random.split(key)
  if neg_select == "hardest":
    neg = top_k_mask(losses, neg_cand, max_neg)
  else:
    neg = random_subset_mask(key_neg, neg_cand, max_neg)
  return random_subset_mask(key_pos, pos_cand, max_pos), neg


def batched_tiny_faces_sample_mask(key, losses, labels, *, easy_loss: float = 0.03,
                                   max_pos: int = 128, max_neg: int = 128,
                                   neg_select: str = "random") -> tuple[Array, Array]:
  """`tiny_faces_sample_mask` per image with keys `jax.random.split(key, B)`:
  losses [B, A], labels [B, A] -> ([B, A] bool, [B, A] bool)."""
  keys = jax.random.split(key, losses.shape[0])
  fn = functools.partial(tiny_faces_sample_mask, easy_loss=easy_loss, max_pos=max_pos,
                         max_neg=max_neg, neg_select=neg_select)
  return jax.vmap(fn)(keys, losses, labels)


# ------------------------------------------------------------------ MTCNN top fraction ---


def top_fraction_count(valid, fraction: float = 0.7) -> Array:
  """[N] bool -> scalar int32 keep_num = int32(float32(num_valid) * float32(fraction)),
  truncated as the reference's `tf.cast(num_valid * num_keep_radio, tf.int32)`."""
  num_valid = jnp.sum(jnp.asarray(valid, bool), dtype=jnp.int32)
  prod = num_valid.astype(jnp.float32) * jnp.float32(fraction)
  return jnp.floor(prod).astype(jnp.int32)


def top_fraction_mask(losses, valid, fraction: float = 0.7) -> Array:
  """MTCNN online hard sample mining over one mini-batch of N samples.

  Args:
    losses: [N] per-sample loss of one task.
    valid: [N] bool, samples that take part in this task (e.g. label >= 0 for
      classification).
    fraction: kept fraction of the valid samples (0.7 in the paper and in `cls_ohem`).

  Returns:
    [N] bool, the keep_num valid samples with the largest losses (ties: lower index).

  Note: AITTSMD's `bbox_ohem` and `landmark_ohem` keep ALL valid samples (the 0.7 line is
  commented out there); use fraction=1.0 to reproduce them.
  """
  valid = jnp.asarray(valid, bool)
  k = top_fraction_count(valid, fraction)
  return top_k_mask(losses, valid, k)


def top_fraction_mean(losses, valid, fraction: float = 0.7) -> Array:
  """Mean loss over `top_fraction_mask(losses, valid, fraction)`: [N] -> scalar float32.
  Returns 0 when nothing is kept (the reference's `reduce_mean` of an empty top_k is NaN).
  Gradients flow only to the kept samples."""
  losses = jnp.asarray(losses, jnp.float32)
  keep = top_fraction_mask(lax.stop_gradient(losses), valid, fraction)
  total = jnp.sum(jnp.where(keep, losses, 0.0))
  count = jnp.sum(keep, dtype=jnp.int32)
  return total / jnp.maximum(count, 1).astype(jnp.float32)


def batched_top_fraction_mask(losses, valid, fraction: float = 0.7) -> Array:
  """`top_fraction_mask` per row: losses [B, N], valid [B, N] -> [B, N] bool."""
  return jax.vmap(top_fraction_mask, in_axes=(0, 0, None))(losses, valid, fraction)
