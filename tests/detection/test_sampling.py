"""Tests of detection/sampling.py: exact agreement with numpy references for the deterministic
parts, statistics for the random parts, determinism, jit and vmap."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from hypothesis import given, settings, HealthCheck, strategies as st

from tinyfaces_jax.detection import sampling
from tinyfaces_jax.detection.sampling import (
    batched_hard_negative_mask, batched_tiny_faces_sample_mask, batched_top_fraction_mask,
    descending_rank, hard_negative_mask, num_hard_negatives, tiny_faces_sample_mask,
    top_fraction_count, top_fraction_mask, top_fraction_mean)
from tests.reference.sampling import (hard_negative_mask_ref, tiny_faces_candidates_ref,
                                      top_fraction_mask_ref, top_fraction_mean_ref)

PROP = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
hnm_jit = jax.jit(hard_negative_mask, static_argnames=("min_negatives",))
tfm_jit = jax.jit(top_fraction_mask, static_argnames=("fraction",))


def random_labels(rng, a, p_pos=0.05, p_ign=0.1):
  u = rng.uniform(size=a)
  return np.where(u < p_pos, 1, np.where(u < p_pos + p_ign, -1, 0)).astype(np.int32)


# ------------------------------------------------------------------ hard negatives ---


def test_descending_rank_is_stable_inverse_permutation():
  v = np.array([0.5, 2.0, 0.5, -0.0, 0.0, 7.0, 2.0], np.float32)
  m = np.array([1, 1, 1, 1, 1, 0, 1], bool)
  np.testing.assert_array_equal(np.asarray(descending_rank(v, m)), [2, 0, 3, 4, 5, 6, 1])


@PROP
@given(seed=st.integers(0, 2**31 - 1), ratio=st.sampled_from([1, 3, 7]),
       min_neg=st.sampled_from([0, 5]))
def test_hard_negative_mask_matches_reference(seed, ratio, min_neg):
  rng = np.random.default_rng(seed)
  a = 64
  labels = random_labels(rng, a, p_pos=rng.uniform(0, 0.2), p_ign=0.2)
  losses = (rng.integers(0, 8, a) / 4).astype(np.float32)  # many ties
  got = np.asarray(hnm_jit(losses, labels, ratio, min_negatives=min_neg))
  np.testing.assert_array_equal(got, hard_negative_mask_ref(losses, labels, ratio, min_neg))


def test_hard_negative_mask_matches_ssd_pytorch_procedure():
  """Without ignore labels and ties, equal to ssd.pytorch's literal steps: zero the
  positives' loss, rank = argsort(argsort(-loss)), neg = rank < clamp(3 * num_pos, A - 1)."""
  rng = np.random.default_rng(0)
  a = 500
  for _ in range(5):
    labels = np.where(rng.uniform(size=a) < 0.03, 1, 0).astype(np.int32)
    loss = rng.uniform(0.01, 5.0, a).astype(np.float32)
    loss_c = np.where(labels == 1, 0.0, loss)
    rank = np.argsort(np.argsort(-loss_c, kind="stable"), kind="stable")
    num_neg = min(3 * int(labels.sum()), a - 1)
    ref = (rank < num_neg) & (labels == 0)
    np.testing.assert_array_equal(np.asarray(hnm_jit(loss, labels, 3)), ref)


def test_hard_negative_edge_cases():
  a = 10
  losses = np.arange(a, dtype=np.float32)
  # No positive: no negative (reference), unless min_negatives asks for some.
  zeros = np.zeros(a, np.int32)
  assert not np.asarray(hard_negative_mask(losses, zeros, 3)).any()
  got = np.asarray(hard_negative_mask(losses, zeros, 3, min_negatives=4))
  np.testing.assert_array_equal(np.nonzero(got)[0], [6, 7, 8, 9])
  # Cap at A - 1 (reference clamp) even when all A anchors are negatives.
  assert int(num_hard_negatives(zeros, 3, min_negatives=100)) == a - 1
  # Cap at available negatives; positives / ignored never selected even with huge loss.
  labels = np.array([1, 1, -1, 0, 0, 1, -1, 0, 1, 1], np.int32)
  losses = np.array([9, 9, 9, 1, 2, 9, 9, 3, 9, 9], np.float32)
  got = np.asarray(hard_negative_mask(losses, labels, 7))
  np.testing.assert_array_equal(got, labels == 0)
  got = np.asarray(hard_negative_mask(losses, labels, 0.4))  # floor(0.4 * 5) = 2
  np.testing.assert_array_equal(np.nonzero(got)[0], [4, 7])


def test_batched_hard_negative_mask_per_image():
  rng = np.random.default_rng(1)
  b, a = 4, 300
  labels = np.stack([random_labels(rng, a, p_pos=0.01 * i) for i in range(b)])
  losses = rng.uniform(size=(b, a)).astype(np.float32)
  got = np.asarray(jax.jit(batched_hard_negative_mask, static_argnames=("min_negatives",))(
      losses, labels, 7))
  for i in range(b):
    np.testing.assert_array_equal(got[i], hard_negative_mask_ref(losses[i], labels[i], 7))
  assert not got[0].any()  # image 0 has no positive


# ------------------------------------------------------------------ Tiny Faces ---


def test_tiny_faces_deterministic_part_and_counts():
  rng = np.random.default_rng(2)
  a = 2000
  labels = random_labels(rng, a, p_pos=0.15, p_ign=0.1)
  losses = rng.uniform(0.0, 0.2, a).astype(np.float32)
  fn = jax.jit(tiny_faces_sample_mask)
  pos, neg = (np.asarray(x) for x in fn(jax.random.key(0), losses, labels))
  hard_pos, hard_neg = tiny_faces_candidates_ref(losses, labels)
  assert hard_pos.sum() > 128 and hard_neg.sum() > 128
  assert pos.sum() == 128 and neg.sum() == 128
  assert not (pos & ~hard_pos).any() and not (neg & ~hard_neg).any()
  # The 0.03 rule applies to positives too: an easy positive is never kept.
  assert (losses[pos] >= np.float32(0.03)).all()
  # Fewer candidates than the cap: all are kept.
  few = np.where(np.arange(a) < 50, labels, -1).astype(np.int32)
  pos2, neg2 = (np.asarray(x) for x in fn(jax.random.key(1), losses, few))
  hp, hn = tiny_faces_candidates_ref(losses, few)
  np.testing.assert_array_equal(pos2, hp)
  np.testing.assert_array_equal(neg2, hn)
  # Deterministic given the key; another key gives another subset.
  again = fn(jax.random.key(0), losses, labels)
  np.testing.assert_array_equal(np.asarray(again[0]), pos)
  other = fn(jax.random.key(5), losses, labels)
  assert not np.array_equal(np.asarray(other[1]), neg)


def test_tiny_faces_uniform_selection():
  a, trials = 60, 4000
  labels = np.array([0] * 24 + [1] * 12 + [-1] * 24, np.int32)
  losses = np.full(a, 1.0, np.float32)
  losses[::6] = 0.01  # easy: 4 negatives, 2 positives excluded
  keys = jax.random.split(jax.random.key(42), trials)
  fn = jax.jit(jax.vmap(lambda k: tiny_faces_sample_mask(k, losses, labels, max_pos=4,
                                                         max_neg=5)))
  pos, neg = (np.asarray(x) for x in fn(keys))
  hard_pos, hard_neg = tiny_faces_candidates_ref(losses, labels)
  assert (pos.sum(1) == 4).all() and (neg.sum(1) == 5).all()
  freq_pos, freq_neg = pos.mean(0), neg.mean(0)
  assert (freq_pos[~hard_pos] == 0).all() and (freq_neg[~hard_neg] == 0).all()
  # Each of the 10 hard positives: 4/10; each of the 20 hard negatives: 5/20 (sd ~0.008).
  np.testing.assert_allclose(freq_pos[hard_pos], 0.4, atol=0.04)
  np.testing.assert_allclose(freq_neg[hard_neg], 0.25, atol=0.04)
  # Pairs are uniform too (all C(20, 5) subsets equally likely => P(both) = 5*4/(20*19)).
  both = (neg[:, hard_neg][:, :, None] & neg[:, hard_neg][:, None, :]).mean(0)
  off_diag = both[~np.eye(20, dtype=bool)]
  np.testing.assert_allclose(off_diag, 20 / 380, atol=0.03)


def test_tiny_faces_hardest_negatives():
  """neg_select="hardest": the max_neg hard negatives of largest loss (numpy sort, ties by
  lower index); the positives are the same random draw as with "random"."""
  rng = np.random.default_rng(4)
  a = 3000
  labels = random_labels(rng, a, p_pos=0.1, p_ign=0.1)
  losses = rng.uniform(0.0, 0.3, a).astype(np.float32)
  losses[rng.choice(a, 40, replace=False)] = np.float32(0.25)       # ties
  fn = jax.jit(functools.partial(tiny_faces_sample_mask, neg_select="hardest"))
  pos, neg = (np.asarray(x) for x in fn(jax.random.key(0), losses, labels))
  _, hard_neg = tiny_faces_candidates_ref(losses, labels)
  idx = np.flatnonzero(hard_neg)
  order = idx[np.lexsort((idx, -losses[idx]))][:128]
  want = np.zeros(a, bool)
  want[order] = True
  np.testing.assert_array_equal(neg, want)
  rand_pos, _ = tiny_faces_sample_mask(jax.random.key(0), losses, labels)
  np.testing.assert_array_equal(pos, np.asarray(rand_pos))
  # Fewer hard negatives than max_neg: all of them.
  few = np.where(np.arange(a) < 60, labels, -1).astype(np.int32)
  _, neg2 = fn(jax.random.key(1), losses, few)
  np.testing.assert_array_equal(np.asarray(neg2), tiny_faces_candidates_ref(losses, few)[1])
  with pytest.raises(ValueError, match="neg_select"):
    tiny_faces_sample_mask(jax.random.key(0), losses, labels, neg_select="top")


def test_batched_tiny_faces_matches_per_image_keys():
  rng = np.random.default_rng(3)
  b, a = 3, 500
  labels = np.stack([random_labels(rng, a, p_pos=0.3) for _ in range(b)])
  losses = rng.uniform(0, 0.1, (b, a)).astype(np.float32)
  key = jax.random.key(9)
  pos, neg = jax.jit(batched_tiny_faces_sample_mask)(key, losses, labels)
  keys = jax.random.split(key, b)
  for i in range(b):
    p1, n1 = tiny_faces_sample_mask(keys[i], losses[i], labels[i])
    np.testing.assert_array_equal(np.asarray(pos[i]), np.asarray(p1))
    np.testing.assert_array_equal(np.asarray(neg[i]), np.asarray(n1))


# ------------------------------------------------------------------ MTCNN ---


@pytest.mark.parametrize("num_valid,expected", [(0, 0), (1, 0), (2, 1), (3, 2), (10, 7),
                                                (100, 70), (384, 268), (1000, 700)])
def test_top_fraction_count_truncates_like_tf_cast(num_valid, expected):
  valid = np.arange(1000) < num_valid
  assert int(top_fraction_count(valid, 0.7)) == expected
  assert expected == int(np.float32(num_valid) * np.float32(0.7))


@PROP
@given(seed=st.integers(0, 2**31 - 1), frac=st.sampled_from([0.7, 0.5, 1.0]))
def test_top_fraction_matches_reference(seed, frac):
  rng = np.random.default_rng(seed)
  n = 48
  losses = (rng.integers(0, 10, n) / 3).astype(np.float32)
  valid = rng.uniform(size=n) < rng.uniform(0, 1)
  np.testing.assert_array_equal(np.asarray(tfm_jit(losses, valid, fraction=frac)),
                                top_fraction_mask_ref(losses, valid, frac))
  mean = float(jax.jit(top_fraction_mean, static_argnames=("fraction",))(
      losses, valid, fraction=frac))
  assert mean == pytest.approx(top_fraction_mean_ref(losses, valid, frac), rel=1e-6, abs=1e-7)


def test_top_fraction_mean_empty_and_gradient():
  losses = jnp.array([1.0, 5.0, 3.0, 2.0])
  assert float(top_fraction_mean(losses, jnp.array([True, False, False, False]))) == 0.0
  valid = jnp.array([True, True, True, False])  # keep_num = int(3 * 0.7) = 2
  assert float(top_fraction_mean(losses, valid)) == pytest.approx(4.0)
  g = jax.grad(lambda x: top_fraction_mean(x, valid))(losses)
  np.testing.assert_allclose(np.asarray(g), [0.0, 0.5, 0.5, 0.0])
  g0 = jax.grad(lambda x: top_fraction_mean(x, jnp.zeros(4, bool)))(losses)
  assert np.isfinite(np.asarray(g0)).all() and not np.asarray(g0).any()


def test_batched_top_fraction_mask():
  rng = np.random.default_rng(4)
  losses = rng.uniform(size=(3, 30)).astype(np.float32)
  valid = rng.uniform(size=(3, 30)) < 0.7
  got = np.asarray(jax.jit(batched_top_fraction_mask)(losses, valid))
  for i in range(3):
    np.testing.assert_array_equal(got[i], top_fraction_mask_ref(losses[i], valid[i]))


def test_top_k_mask_equals_rank_mask_with_ties_nan_and_signed_zero():
  """n real entries (1..300) in a fixed 300-slot array, the rest masked out (one compile;
  masked-out slots neither rank nor get selected, whatever their values)."""
  rng = np.random.default_rng(11)
  top_k, rank = jax.jit(sampling.top_k_mask), jax.jit(sampling.descending_rank)
  for trial in range(20):
    n = int(rng.integers(1, 300))
    v = rng.choice(np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan, 3e-39, -3e-39]),
                   300).astype(np.float32) if trial % 2 else rng.normal(size=300).astype(np.float32)
    mask = (rng.uniform(size=300) < 0.7) & (np.arange(300) < n)
    for k in [0, 1, int(rng.integers(0, n + 1)), n, n + 5]:
      want = mask & (np.asarray(rank(v, mask)) < k)
      got = np.asarray(top_k(v, mask, k))
      np.testing.assert_array_equal(got, want, err_msg=f"trial {trial} k {k}")
      assert got.sum() == min(k, mask.sum())
