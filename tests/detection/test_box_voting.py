"""Tests of detection/box_voting.py against the numpy statement of S3FD's `bbox_vote`."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from hypothesis import given, settings, HealthCheck, strategies as st

from tinyfaces_jax.detection.box_ops import pairwise_iou
from tinyfaces_jax.detection.box_voting import (VoteResult, batched_box_vote, box_vote,
                                                sort_ties_high_index_first)
from tests.reference.box_voting import bbox_vote, iou_plus_one

STATIC = ("max_output", "pixel_offset", "drop_singletons")
vote_jit = jax.jit(box_vote, static_argnames=STATIC)


def rows(res: VoteResult) -> np.ndarray:
  """VoteResult -> [n, 5] float64 (boxes, score) of the valid prefix; checks the padding."""
  val = np.asarray(res.valid)
  n = int(val.sum())
  assert val[:n].all() and not val[n:].any(), "valid rows must come first"
  b, s = np.asarray(res.boxes), np.asarray(res.scores)
  assert (b[n:] == 0).all() and (s[n:] == 0).all()
  return np.concatenate([b[:n], s[:n, None]], 1).astype(np.float64)


def check(boxes, scores, valid=None, iou=0.3, k=750, drop_singletons=True, pad_to=16):
  """Runs the jitted op and the reference (on the valid rows only); returns the rows.

  Inputs shorter than `pad_to` are padded to it with NaN boxes of high score and
  valid=False (one compiled shape for the small cases; padding must change nothing)."""
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  keep = np.ones(len(scores), bool) if valid is None else np.asarray(valid, bool)
  dets = np.concatenate([boxes[keep], scores[keep, None]], 1)
  pad = pad_to - len(scores)
  if pad > 0:
    boxes = np.concatenate([boxes, np.full((pad, 4), np.nan, np.float32)])
    scores = np.concatenate([scores, np.full((pad,), 3.0, np.float32)])
    valid = np.concatenate([keep, np.zeros((pad,), bool)])
  res = vote_jit(boxes, scores, valid, iou_threshold=iou, max_output=k,
                 drop_singletons=drop_singletons)
  assert res.boxes.shape == (k, 4) and res.scores.shape == (k,) and res.valid.shape == (k,)
  got = rows(res)
  ref = bbox_vote(dets, iou, k, drop_singletons=drop_singletons)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  np.testing.assert_allclose(got[:, :4], ref[:, :4], atol=1e-4, rtol=0)
  np.testing.assert_allclose(got[:, 4], ref[:, 4], atol=1e-6, rtol=0)
  return got


def clustered_boxes(rng, n, faces=12, extent=180.0):
  """n boxes around `faces` centres, on a quarter-pixel grid (so the float32 and float64
  IoUs are compared with the threshold identically), plus a few strays. Coordinates stay
  below 256, where the 1e-4 tolerance is >= 6 float32 ulps (the op is float32, the reference
  float64)."""
  centres = rng.uniform(20, extent, (faces, 2))
  sides = rng.uniform(6, 60, faces)
  face = rng.integers(0, faces, n)
  c = centres[face] + rng.normal(0, 0.15, (n, 2)) * sides[face, None]
  s = sides[face, None] * rng.uniform(0.7, 1.3, (n, 2))
  b = np.concatenate([c - s / 2, c + s / 2], 1)
  stray = rng.uniform(size=n) < 0.1
  b[stray] = np.concatenate([rng.uniform(0, extent, (stray.sum(), 2))] * 2, 1) + \
      np.concatenate([np.zeros((stray.sum(), 2)), rng.uniform(4, 30, (stray.sum(), 2))], 1)
  return (np.round(b * 4) / 4).astype(np.float32)


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), tied=st.booleans(),
       iou=st.sampled_from([0.3, 0.5]), k=st.sampled_from([8, 64]))
def test_property_matches_reference(seed, tied, iou, k):
  rng = np.random.default_rng(seed)
  n = 96  # one compiled shape per k
  boxes = clustered_boxes(rng, n)
  if tied:
    scores = (rng.integers(1, 6, n) / 5).astype(np.float32)
  else:
    scores = rng.uniform(0.05, 1.0, n).astype(np.float32)
  valid = rng.uniform(size=n) < 0.85
  boxes[~valid] = np.nan  # padding contents must never matter
  scores[~valid] = 2.0
  check(boxes, scores, valid, iou=iou, k=k)


@pytest.mark.parametrize("seed", range(2))
def test_random_sets_n_larger_than_k(seed):
  rng = np.random.default_rng(seed)
  boxes = clustered_boxes(rng, 400, faces=50)
  scores = rng.uniform(0.05, 1.0, 400).astype(np.float32)
  got_all = check(boxes, scores, k=750)
  assert 10 < len(got_all) < 400
  got = check(boxes, scores, k=16)
  assert len(got) == 16
  np.testing.assert_array_equal(got, got_all[:16])


def test_all_singletons_give_empty_output():
  boxes = np.array([[0, 0, 9, 9], [20, 0, 29, 9], [0, 20, 9, 29], [50, 50, 60, 60]],
                   np.float32)
  res = vote_jit(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), max_output=4)
  assert not np.asarray(res.valid).any()
  assert (np.asarray(res.boxes) == 0).all() and (np.asarray(res.scores) == 0).all()
  assert len(check(boxes, np.array([0.9, 0.8, 0.7, 0.6]), k=8)) == 0
  # no valid box at all, and no box at all
  res = vote_jit(boxes, np.ones(4, np.float32), np.zeros(4, bool), max_output=3)
  assert not np.asarray(res.valid).any()
  res = box_vote(np.zeros((0, 4)), np.zeros((0,)), max_output=2)
  assert res.boxes.shape == (2, 4) and not np.asarray(res.valid).any()


def test_singletons_kept_when_asked():
  boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [40, 40, 49, 49]], np.float32)
  scores = np.array([0.9, 0.5, 0.7], np.float32)
  got = check(boxes, scores, k=8, drop_singletons=False)
  assert len(got) == 2
  np.testing.assert_allclose(got[1], [40, 40, 49, 49, 0.7], atol=1e-6)
  assert len(check(boxes, scores, k=8)) == 1


def test_exact_score_ties_put_the_higher_index_first():
  # A (index 0) and B (index 1) tie, IoU(A, B) = 0.67; D overlaps B (0.43) but A only (0.25).
  # B first: one cluster {B, A, D}. A first: {A, B}, then D alone (dropped).
  a, b, d = [0, 0, 19, 9], [4, 0, 23, 9], [12, 0, 31, 9]
  assert iou_plus_one(a, b) >= 0.3 and iou_plus_one(b, d) >= 0.3 and iou_plus_one(a, d) < 0.3
  boxes = np.array([a, b, d], np.float32)
  scores = np.array([0.8, 0.8, 0.5], np.float32)
  got = check(boxes, scores, k=8)
  w = np.array([0.8, 0.8, 0.5])
  np.testing.assert_allclose(got, [list(w @ boxes[[0, 1, 2]] / w.sum()) + [0.8]], atol=1e-4)
  # swapped order: B-A still tie, higher index (now A) first: {A, B}, D dropped.
  got = check(boxes[[1, 0, 2]], scores, k=8)
  np.testing.assert_allclose(got, [[2, 0, 21, 9, 0.8]], atol=1e-4)
  # the permutation itself, with padding and negative zero
  s = jnp.array([0.5, 0.9, 0.5, 0.0, -0.0, 0.9, 0.7], jnp.float32)
  m = jnp.array([True, True, True, True, True, True, False])
  assert list(np.asarray(sort_ties_high_index_first(s, m))[:6]) == [5, 1, 2, 0, 4, 3]


def test_iou_exactly_at_threshold_joins_the_cluster():
  # +1 areas: A 20 x 10 = 200, B 6 x 10 = 60 inside A: IoU = 60 / 200 = 0.3 exactly.
  a, b, c = [0, 0, 19, 9], [14, 0, 19, 9], [15, 0, 19, 9]  # c: 50 / 200 = 0.25
  assert iou_plus_one(a, b) == 0.3
  iou32 = np.asarray(pairwise_iou(jnp.array([a], jnp.float32), jnp.array([b, c], jnp.float32),
                                  pixel_offset=1.0))[0]
  assert iou32[0] == np.float32(0.3) and iou32[1] < np.float32(0.3)
  scores = np.array([0.9, 0.6], np.float32)
  got = check(np.array([a, b], np.float32), scores, k=8)
  np.testing.assert_allclose(got, [[(0.6 * 14) / 1.5, 0, 19, 9, 0.9]], atol=1e-4)
  assert len(check(np.array([a, c], np.float32), scores, k=8)) == 0


def test_degenerate_and_zero_area_boxes():
  boxes = np.array([
      [5, 5, 5, 5], [5, 5, 5, 5],        # zero continuous area, +1 area 1: a 2-cluster
      [30, 30, 20, 40], [30, 30, 20, 40],  # x2 - x1 + 1 < 0: never merge (release would hang)
      [60, 60, 58, 58],                   # both sides + 1 < 0: positive unclamped +1 area
      [59, 59, 70, 70], [60, 60, 71, 71],  # a normal pair around it
      [0, 0, 0, 9], [0, 0, 0, 9],         # width + 1 = 1
  ], np.float32)
  for i in (2, 4):  # the release's self-IoU of such a box is -0 or NaN: it would never leave
    assert not iou_plus_one(boxes[i], boxes[i]) >= 0.3
  scores = np.array([0.9, 0.8, 0.99, 0.98, 0.97, 0.7, 0.6, 0.5, 0.4], np.float32)
  got = check(boxes, scores, k=8)
  np.testing.assert_allclose(got[:, 4], [0.9, 0.7, 0.5], atol=1e-6)
  np.testing.assert_allclose(got[0, :4], [5, 5, 5, 5], atol=1e-5)


def test_invalid_entries_never_contribute():
  rng = np.random.default_rng(3)
  boxes = clustered_boxes(rng, 64, faces=6)
  scores = rng.uniform(0.05, 1.0, 64).astype(np.float32)
  valid = rng.uniform(size=64) < 0.5
  base = check(boxes, scores, valid, k=32)
  # whatever sits in the padding rows: huge scores, copies of real boxes, inf, NaN
  for fill_box, fill_score in [(np.inf, 5.0), (np.nan, np.nan), (None, 10.0)]:
    b2, s2 = boxes.copy(), scores.copy()
    b2[~valid] = boxes[valid][:1] if fill_box is None else fill_box
    s2[~valid] = fill_score
    got = rows(vote_jit(b2, s2, valid, max_output=32))
    np.testing.assert_array_equal(got, base)


def test_more_clusters_than_max_output_truncates_in_production_order():
  n_pairs = 20
  x = np.arange(n_pairs, dtype=np.float32)[:, None] * 50
  pair = np.concatenate([np.hstack([x, x * 0, x + 9, x * 0 + 9]),
                         np.hstack([x + 1, x * 0, x + 10, x * 0 + 9])])
  scores = np.random.default_rng(0).permutation(2 * n_pairs).astype(np.float32) / 40 + 0.01
  full = check(pair, scores, k=64)
  assert len(full) == n_pairs
  assert (np.diff(full[:, 4]) < 0).all()  # production order = top scores descending
  got = check(pair, scores, k=5)
  np.testing.assert_array_equal(got, full[:5])


def test_jit_vmap_batch_equals_per_image():
  rng = np.random.default_rng(11)
  b, n = 3, 80
  boxes = np.stack([clustered_boxes(rng, n, faces=8) for _ in range(b)])
  scores = rng.uniform(0.05, 1.0, (b, n)).astype(np.float32)
  valid = rng.uniform(size=(b, n)) < np.array([[0.9], [0.4], [0.0]])
  out = jax.jit(lambda x, s, v: batched_box_vote(x, s, v, iou_threshold=0.3, max_output=40))(
      boxes, scores, valid)
  assert out.boxes.shape == (b, 40, 4) and out.valid.shape == (b, 40)
  for i in range(b):
    one = vote_jit(boxes[i], scores[i], valid[i], iou_threshold=0.3, max_output=40)
    np.testing.assert_array_equal(np.asarray(out.valid[i]), np.asarray(one.valid))
    np.testing.assert_allclose(np.asarray(out.boxes[i]), np.asarray(one.boxes), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.scores[i]), np.asarray(one.scores), atol=0)
    check(boxes[i], scores[i], valid[i], k=40)
  assert not np.asarray(out.valid[2]).any()
  # valid=None, not jitted
  out = batched_box_vote(boxes[:2, :8], scores[:2, :8], max_output=8)
  for i in range(2):
    np.testing.assert_allclose(rows(VoteResult(*(f[i] for f in out))),
                               check(boxes[i, :8], scores[i, :8], k=8, pad_to=8), atol=1e-5)
