"""Matchers (SSD/RetinaFace, S3FD, Tiny Faces templates) against the numpy loop references."""

import time

import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests.reference import matching as ref
from tinyfaces_jax.detection import matching as mt
from tinyfaces_jax.detectors.hr import template_matching as tm


def anchor_grid(size=64, strides=(8, 16), scale=2.0):
  """Small square-anchor grid, xyxy, continuous coordinates."""
  out = []
  for s in strides:
    c = (np.arange(size // s) + 0.5) * s
    cx, cy = np.meshgrid(c, c)
    half = scale * s / 2
    out.append(np.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def random_faces(rng, m, lo=2.0, hi=40.0, extent=64.0, degenerate=0.0):
  xy = rng.uniform(-4, extent, (m, 2))
  wh = rng.uniform(lo, hi, (m, 2))
  bad = rng.uniform(size=m) < degenerate
  wh[bad] = rng.uniform(-3, 0, (bad.sum(), 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def assert_match(got, want, check_iou=True):
  labels, matched, best = want
  np.testing.assert_array_equal(np.asarray(got.labels), labels)
  np.testing.assert_array_equal(np.asarray(got.matched_gt), matched)
  if check_iou:  # XLA may contract a*b+c into an FMA: IoUs can differ from numpy by an ulp.
    np.testing.assert_allclose(np.asarray(got.max_iou), best, rtol=1e-6, atol=1e-7)


def same(a, b):
  """Labels and matched_gt bitwise; max_iou to an ulp (compilations may contract to FMAs)."""
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  np.testing.assert_allclose(np.asarray(a[2]), np.asarray(b[2]), rtol=1e-6, atol=1e-7)


SETTINGS = [dict(pos_iou=0.5), dict(pos_iou=0.35, force_min_iou=0.2),
            dict(pos_iou=0.5, neg_iou=0.4), dict(pos_iou=0.35, force="none"),
            dict(pos_iou=0.5, pixel_offset=1.0)]


# ----------------------------------------------------------------------------- match_anchors
@pytest.mark.parametrize("kw", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_match_anchors_random(kw, seed):
  rng = np.random.default_rng(seed)
  anchors = anchor_grid()
  gt = random_faces(rng, 9, degenerate=0.15)
  mask = rng.uniform(size=9) < 0.8
  assert_match(mt.match_anchors(anchors, gt, mask, **kw), ref.match_anchors(anchors, gt, mask, **kw))


def test_no_faces():
  anchors = anchor_grid()
  gt = random_faces(np.random.default_rng(0), 4)
  for fn in (lambda g, m: mt.match_anchors(anchors, g, m, pos_iou=0.5),
             lambda g, m: mt.match_s3fd(anchors, g, m)):
    for g, m in ((gt, np.zeros(4, bool)), (np.zeros((0, 4)), np.zeros(0, bool))):
      r = fn(g, m)
      assert np.all(np.asarray(r.labels) == 0)
      assert np.all(np.asarray(r.max_iou) == -1)
      assert np.all(np.asarray(r.matched_gt) == 0)


def test_one_face():
  anchors = anchor_grid()
  gt = np.array([[10, 12, 40, 44]], np.float32)
  r = mt.match_anchors(anchors, gt, [True], pos_iou=0.35)
  assert_match(r, ref.match_anchors(anchors, gt, [True], 0.35))
  assert np.asarray(r.labels).sum() >= 1


@pytest.mark.parametrize("unroll", [1, 4])
def test_crowded_700_faces(unroll):
  rng = np.random.default_rng(3)
  anchors = anchor_grid(size=32, strides=(8,), scale=1.5)           # 16 anchors
  gt = random_faces(rng, 720, lo=1.0, hi=12.0, extent=32.0, degenerate=0.05)
  mask = rng.uniform(size=720) < 0.95
  for kw in (dict(pos_iou=0.35), dict(pos_iou=0.35, force_min_iou=0.2)):
    got = mt.match_anchors(anchors, gt, mask, unroll=unroll, **kw)
    assert_match(got, ref.match_anchors(anchors, gt, mask, **kw))
  assert_match(mt.match_s3fd(anchors, gt, mask, unroll=unroll),
               ref.match_s3fd(anchors, gt, mask))


def test_degenerate_faces_never_match():
  anchors = anchor_grid()
  gt = np.array([[10, 10, 10, 40], [20, 20, 50, 20], [30, 30, 20, 50], [0, 0, 16, 16]], np.float32)
  mask = np.ones(4, bool)
  for r in (mt.match_anchors(anchors, gt, mask, pos_iou=0.35),
            mt.match_s3fd(anchors, gt, mask)):
    pos = np.asarray(r.labels) == 1
    assert pos.any() and np.all(np.asarray(r.matched_gt)[pos] == 3)
  assert_match(mt.match_anchors(anchors, gt, mask, pos_iou=0.35),
               ref.match_anchors(anchors, gt, mask, 0.35))
  only_bad = mt.match_anchors(anchors, gt[:3], mask[:3], pos_iou=0.35)
  assert np.all(np.asarray(only_bad.labels) == 0) and np.all(np.asarray(only_bad.max_iou) == -1)


def test_faces_smaller_than_anchors():
  anchors = anchor_grid()                                           # anchors 16 and 32 px
  gt = np.array([[5, 5, 7, 7], [40, 41, 42, 42.5]], np.float32)
  r = mt.match_anchors(anchors, gt, [True, True], pos_iou=0.35)
  assert_match(r, ref.match_anchors(anchors, gt, [True, True], 0.35))
  assert np.asarray(r.labels).sum() == 2                            # forced only
  # RetinaFace: best IoU < 0.2 -> not forced; no face reaches 0.2 -> whole image negative.
  r = mt.match_anchors(anchors, gt, [True, True], pos_iou=0.35, force_min_iou=0.2)
  assert np.all(np.asarray(r.labels) == 0)
  assert_match(mt.match_s3fd(anchors, gt, [True, True]), ref.match_s3fd(anchors, gt, [True, True]))


def test_padded_slots_between_real_ones():
  rng = np.random.default_rng(5)
  anchors = anchor_grid()
  real = random_faces(rng, 4, lo=8, hi=30)
  junk = anchors[[3, 10, 40]] + 0.5                                 # would match strongly
  gt = np.stack([real[0], junk[0], real[1], junk[1], junk[2], real[2], real[3]])
  mask = np.array([1, 0, 1, 0, 0, 1, 1], bool)
  index = np.array([0, 2, 5, 6])
  for fn in (lambda g, m: mt.match_anchors(anchors, g, m, pos_iou=0.35),
             lambda g, m: mt.match_s3fd(anchors, g, m)):
    padded, compact = fn(gt, mask), fn(real, np.ones(4, bool))
    np.testing.assert_array_equal(np.asarray(padded.labels), np.asarray(compact.labels))
    np.testing.assert_array_equal(np.asarray(padded.max_iou), np.asarray(compact.max_iou))
    np.testing.assert_array_equal(np.asarray(padded.matched_gt), index[np.asarray(compact.matched_gt)])


def test_shared_best_anchor_later_face_wins():
  anchors = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
  gt = np.array([[0, 0, 6, 6], [4, 4, 10, 10], [0, 0, 3, 3]], np.float32)  # all best at anchor 0
  r = mt.match_anchors(anchors, gt, np.ones(3, bool), pos_iou=0.5)
  assert int(r.labels[0]) == 1 and int(r.matched_gt[0]) == 2
  assert_match(r, ref.match_anchors(anchors, gt, np.ones(3, bool), 0.5))
  r = mt.match_anchors(anchors, gt, np.array([1, 1, 0], bool), pos_iou=0.5)
  assert int(r.matched_gt[0]) == 1                                  # padded face 2 cannot win


def test_exact_threshold_iou():
  anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 10], [100, 100, 110, 110]], np.float32)
  gt = np.array([[0, 0, 10, 5]], np.float32)                        # IoU 0.5 and 0.25
  r = mt.match_anchors(anchors, gt, [True], pos_iou=0.5, force="none")
  np.testing.assert_array_equal(np.asarray(r.labels), [1, 0, 0])
  r = mt.match_anchors(anchors, gt, [True], pos_iou=0.5, neg_iou=0.25, force="none")
  np.testing.assert_array_equal(np.asarray(r.labels), [1, -1, 0])   # 0.25 is not < 0.25
  gt35 = np.array([[0, 0, 7, 10]], np.float32)                      # IoU 70/200 = 0.35
  r = mt.match_anchors(anchors[1:], gt35, [True], pos_iou=0.35, force="none")
  np.testing.assert_array_equal(np.asarray(r.labels), [1, 0])
  r = mt.match_anchors(anchors[1:], gt35, [True], pos_iou=0.36, force="none")
  np.testing.assert_array_equal(np.asarray(r.labels), [0, 0])
  r = mt.match_anchors(anchors[1:], gt35, [True], pos_iou=0.5, force_min_iou=0.35)
  np.testing.assert_array_equal(np.asarray(r.labels), [1, 0])      # forced: 0.35 >= 0.35


@pytest.mark.slow  # the default run's time budget
def test_unroll_invariance():
  rng = np.random.default_rng(7)
  anchors = anchor_grid(size=96)
  gt = random_faces(rng, 30, extent=96, degenerate=0.1)
  mask = rng.uniform(size=30) < 0.9
  base = mt.match_anchors(anchors, gt, mask, pos_iou=0.35)
  base_s3 = mt.match_s3fd(anchors, gt, mask)
  for c in (1, 7):
    same(mt.match_anchors(anchors, gt, mask, pos_iou=0.35, unroll=c), base)
    same(mt.match_s3fd(anchors, gt, mask, unroll=c), base_s3)


@pytest.mark.slow  # the default run's time budget
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), m=st.integers(1, 12), pos=st.sampled_from([0.35, 0.5]),
       fmin=st.sampled_from([0.0, 0.2]), unroll=st.sampled_from([1, 3]))
def test_hypothesis_vs_reference(seed, m, pos, fmin, unroll):
  rng = np.random.default_rng(seed)
  anchors = anchor_grid(size=32)
  gt = random_faces(rng, m, lo=1, hi=24, extent=32, degenerate=0.1)
  gt = np.round(gt) if seed % 2 else gt                             # integer boxes: many ties
  mask = rng.uniform(size=m) < 0.8
  assert_match(mt.match_anchors(anchors, gt, mask, pos_iou=pos, force_min_iou=fmin, unroll=unroll),
               ref.match_anchors(anchors, gt, mask, pos, force_min_iou=fmin))
  assert_match(mt.match_s3fd(anchors, gt, mask, force_min_iou=fmin, unroll=unroll),
               ref.match_s3fd(anchors, gt, mask, force_min_iou=fmin))


# ----------------------------------------------------------------------------- S3FD
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", [{}, dict(stage2_n=3), dict(neg_iou=0.2), dict(stage2="average"),
                                dict(stage2="average", force="best"),
                                dict(stage2="yxlijun", force="best"),
                                dict(stage2="yxlijun", force="bipartite")])
def test_s3fd_random(seed, kw):
  rng = np.random.default_rng(seed)
  anchors = anchor_grid(size=64, strides=(4, 8, 16))
  gt = random_faces(rng, 12, lo=3, hi=40, degenerate=0.1)
  mask = rng.uniform(size=12) < 0.9
  assert_match(mt.match_s3fd(anchors, gt, mask, **kw), ref.match_s3fd(anchors, gt, mask, **kw))


def test_s3fd_compensates_small_face_without_stealing():
  anchors = anchor_grid(size=64, strides=(4, 8, 16))
  gt = np.array([[8, 8, 40, 40], [44, 44, 52, 52], [20, 44, 30, 60]], np.float32)
  mask = np.ones(3, bool)
  s1 = mt.match_anchors(anchors, gt, mask, pos_iou=0.35, force="bipartite")
  s2 = mt.match_s3fd(anchors, gt, mask)
  l1, l2, g = np.asarray(s1.labels), np.asarray(s2.labels), np.asarray(s2.matched_gt)
  counts1 = np.bincount(g[l1 == 1], minlength=3)
  counts2 = np.bincount(g[l2 == 1], minlength=3)
  n = 6                                                             # the author's N
  assert counts1.min() < n
  assert np.all(l2[l1 == 1] == 1)                                   # stage one kept
  np.testing.assert_array_equal(g, np.asarray(s1.matched_gt))       # no re-pointing
  new = (l2 == 1) & (l1 != 1)
  assert new.any() and np.all(np.asarray(s2.max_iou)[new] > 0.1)
  for j in range(3):
    assert counts2[j] == counts1[j] if counts1[j] >= n else counts2[j] <= n
  assert_match(s2, ref.match_s3fd(anchors, gt, mask))


# ----------------------------------------------------------------------------- templates
def tiny_templates(shared_dir=None):
  if shared_dir is not None:
    import scipy.io
    return scipy.io.loadmat(str(shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"))["clusters"][:, :4]
  return np.array([[-12, -15, 12, 15], [-6, -7.5, 6, 7.5], [-20.5, -25, 20.5, 25]], np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_templates_random(seed):
  rng = np.random.default_rng(seed)
  t = tiny_templates()
  gt = random_faces(rng, 6, lo=4, hi=50, extent=90, degenerate=0.15) + 1
  mask = rng.uniform(size=6) < 0.85
  region = np.array([9, 5, 80, 88], np.float32)
  got = tm.label_templates(t, gt, mask, region, out_size=(12, 11))
  assert got.labels.shape == (12, 11, 3)
  assert_match(got, ref.label_templates(t, gt, mask, region, 12, 11))


def test_templates_refbox_and_unroll(shared_dir):
  t = tiny_templates(shared_dir)
  gt = np.array([[20, 20, 60.5, 72], [50, 10, 70, 36], [5, 40, 30.5, 70], [62, 50, 95, 88],
                 [40, 60, 52, 75.5]], np.float32)
  mask = np.array([1, 1, 0, 1, 1], bool)
  region = np.array([1, 1, 100, 90], np.float32)
  want = ref.label_templates(t, gt, mask, region, 13, 13)
  base = tm.label_templates(t, gt, mask, region, out_size=(13, 13))
  assert_match(base, want)
  assert (want[0] == 1).any() and (want[0] == -1).any() and (want[0] == 0).any()
  for c in (1, 3):
    same(tm.label_templates(t, gt, mask, region, out_size=(13, 13), unroll=c), base)


def test_templates_force_padding_and_empty():
  t = np.array([[-10, -10, 10, 10]], np.float32)                    # 21 x 21 px template
  # Face 8x8 at cell (2, 2) (centre 15, 15): IoU 64/441 < 0.3, no force; 14x14: 196/441 > 0.3.
  gt = np.array([[11.5, 11.5, 18.5, 18.5], [5.5, 5.5, 18.5, 18.5]], np.float32) + [0, 0, 0, 0]
  region = np.array([1, 1, 60, 60], np.float32)
  r = tm.label_templates(t, gt, [True, False], region, out_size=(6, 6))
  assert not (np.asarray(r.labels) == 1).any()
  r = tm.label_templates(t, gt, [False, True], region, out_size=(6, 6))
  assert int(r.labels[2, 2, 0]) == 1 and int((np.asarray(r.labels) == 1).sum()) == 1
  assert_match(r, ref.label_templates(t, gt, [False, True], region, 6, 6))
  # The same best box crossing the padding is ignored, not positive.
  r = tm.label_templates(t, gt, [False, True], np.array([6, 1, 60, 60], np.float32), out_size=(6, 6))
  assert int(r.labels[2, 2, 0]) == -1
  r = tm.label_templates(t, gt, [False, False], region, out_size=(6, 6))
  lab = np.asarray(r.labels)[..., 0]
  crossing = np.asarray(tm.crosses_padding(tm.template_grid(t, (6, 6))[..., 0, :], region))
  np.testing.assert_array_equal(lab, np.where(crossing, -1, 0))


# ----------------------------------------------------------------------------- batch / scale
@pytest.mark.slow  # the default run's time budget
def test_batch_jit_vmap_equals_per_image(shared_dir):
  rng = np.random.default_rng(11)
  anchors = anchor_grid()
  gt = np.stack([random_faces(rng, 8, degenerate=0.1) for _ in range(3)])
  mask = rng.uniform(size=(3, 8)) < 0.8
  mask[1] = False
  fa = jax.jit(lambda g, m: mt.match_anchors_batch(anchors, g, m, pos_iou=0.35, unroll=2))
  fs = jax.jit(lambda g, m: mt.match_s3fd_batch(anchors, g, m, unroll=2))
  ba, bs = fa(gt, mask), fs(gt, mask)
  t = tiny_templates(shared_dir)
  region = np.array([[1, 1, 64, 64], [5, 9, 60, 50], [1, 1, 30, 64]], np.float32)
  ft = jax.jit(lambda g, m, r: tm.label_templates_batch(t, g, m, r, out_size=(9, 9)))
  bt = ft(gt + 1, mask, region)
  for b in range(3):
    same([x[b] for x in ba], mt.match_anchors(anchors, gt[b], mask[b], pos_iou=0.35))
    same([x[b] for x in bs], mt.match_s3fd(anchors, gt[b], mask[b]))
    same([x[b] for x in bt], tm.label_templates(t, gt[b] + 1, mask[b], region[b], out_size=(9, 9)))


def test_s3fd_640_scale_b2_m1024():
  """S3FD at 640x640 (A = 34,125) with M = 1024 slots, B = 2: compiles, bounded memory."""
  anchors = []
  for s in (4, 8, 16, 32, 64, 128):
    c = (np.arange(640 // s) + 0.5) * s
    cx, cy = np.meshgrid(c, c)
    anchors.append(np.stack([cx - 2 * s, cy - 2 * s, cx + 2 * s, cy + 2 * s], -1).reshape(-1, 4))
  anchors = np.concatenate(anchors).astype(np.float32)
  assert anchors.shape[0] == 34125
  rng = np.random.default_rng(0)
  gt = np.stack([random_faces(rng, 1024, lo=4, hi=200, extent=640) for _ in range(2)])
  mask = np.ones((2, 1024), bool)
  mask[1, 600:] = False
  t0 = time.time()
  r = jax.jit(lambda g, m: mt.match_s3fd_batch(anchors, g, m))(gt, mask)
  jax.block_until_ready(r)
  assert r.labels.shape == (2, 34125) and (np.asarray(r.labels) == 1).sum() > 0
  assert time.time() - t0 < 60


# ----------------------------------------------------------------------------- bipartite
def test_bipartite_shared_best_anchor_goes_to_the_closer_face():
  anchors = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], np.float32)
  gt = np.array([[0, 0, 9, 10], [0, 0, 10, 10]], np.float32)        # both best at anchor 0
  r = mt.match_anchors(anchors, gt, [True, True], pos_iou=0.95, force="bipartite")
  # Face 1 (IoU 1 with anchor 0) takes it; face 0 moves to its next best free anchor (1).
  np.testing.assert_array_equal(np.asarray(r.labels), [1, 1, 0])
  np.testing.assert_array_equal(np.asarray(r.matched_gt)[:2], [1, 0])
  assert_match(r, ref.match_anchors(anchors, gt, [True, True], 0.95, force="bipartite"))
  # "best" instead: the later face wins anchor 0 and face 0 gets nothing forced.
  r = mt.match_anchors(anchors, gt, [True, True], pos_iou=0.95, force="best")
  np.testing.assert_array_equal(np.asarray(r.labels), [1, 0, 0])


def test_bipartite_cascade_is_the_greedy_order():
  """Face C's proposal (anchor Y) is unique in the first round, but the greedy gives Y to face
  A, which loses its best anchor X to face D and overlaps Y more than C does."""
  anchors = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [6, 0, 16, 10], [30, 30, 40, 40]],
                     np.float32)                                    # X, Y, Z, far
  gt = np.array([[0, 0, 10, 10],      # D: X 1.0
                 [0.8, 0, 10.8, 10],  # A: X .852, Y .786
                 [3.5, 0, 13.5, 10]], np.float32)                   # C: Y .739, Z .6
  mask = np.ones(3, bool)
  want = ref.match_anchors(anchors, gt, mask, 0.99, force="bipartite")
  np.testing.assert_array_equal(want[1][:3], [0, 1, 2])             # X-D, Y-A, Z-C
  np.testing.assert_array_equal(want[0], [1, 1, 1, 0])
  assert_match(mt.match_anchors(anchors, gt, mask, pos_iou=0.99, force="bipartite"), want)
  assert_match(jax.jit(lambda g: mt.match_anchors(anchors, g, mask, pos_iou=0.99,
                                                  force="bipartite", bipartite_k=3))(gt), want)


@pytest.mark.slow  # the default run's time budget
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), m=st.integers(1, 30), fmin=st.sampled_from([0.0, 0.2]))
def test_bipartite_crowded_vs_greedy_reference(seed, m, fmin):
  rng = np.random.default_rng(seed)
  anchors = anchor_grid(size=32, strides=(8,), scale=1.5)           # 16 anchors: many clashes
  gt = random_faces(rng, m, lo=2.0, hi=14.0, extent=32.0, degenerate=0.05)
  gt = np.round(gt) if seed % 2 else gt                             # integer boxes: many ties
  mask = rng.uniform(size=m) < 0.9
  want = ref.match_anchors(anchors, gt, mask, 0.35, force="bipartite", force_min_iou=fmin)
  assert_match(mt.match_anchors(anchors, gt, mask, pos_iou=0.35, force="bipartite",
                                force_min_iou=fmin, bipartite_k=16), want)
  assert_match(mt.match_s3fd(anchors, gt, mask, force_min_iou=fmin, bipartite_k=16),
               ref.match_s3fd(anchors, gt, mask, force_min_iou=fmin))


def test_bipartite_batch_equals_per_image():
  rng = np.random.default_rng(2)
  anchors = anchor_grid()
  gt = np.stack([random_faces(rng, 10, lo=3, hi=20, degenerate=0.1) for _ in range(3)])
  mask = rng.uniform(size=(3, 10)) < 0.85
  mask[2] = False
  f = jax.jit(lambda g, k: mt.match_anchors_batch(anchors, g, k, pos_iou=0.35, force="bipartite"))
  got = f(gt, mask)
  for b in range(3):
    assert_match(mt.Match(*[x[b] for x in got]),
                 ref.match_anchors(anchors, gt[b], mask[b], 0.35, force="bipartite"))
