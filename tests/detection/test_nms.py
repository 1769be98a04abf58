"""Tests of detection/nms.py against the loop-based numpy reference and RetinaFace outputs."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from hypothesis import given, settings, HealthCheck, strategies as st

from tinyfaces_jax.detection.nms import (NMSResult, batched_nms, batched_select_top_k, nms,
                                         select_top_k)
from tests.reference import retinaface as rf_ref
from tests.reference.nms import nms_ref, py_cpu_nms

STATIC = ("iou_threshold", "max_output", "score_threshold", "pre_nms_top_k", "pixel_offset",
          "tile_size", "overlap")
nms_jit = jax.jit(nms, static_argnames=STATIC)


def random_boxes(rng, n, extent=100.0, lo=5.0, hi=40.0):
  xy = rng.uniform(0, extent, (n, 2))
  wh = rng.uniform(lo, hi, (n, 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def kept(res: NMSResult):
  idx, val = np.asarray(res.indices), np.asarray(res.valid)
  n = int(val.sum())
  assert val[:n].all() and not val[n:].any(), "valid entries must come first"
  assert (idx[n:] == -1).all()
  assert (np.asarray(res.boxes)[n:] == 0).all() and (np.asarray(res.scores)[n:] == 0).all()
  return list(idx[:n])


def check(boxes, scores, **kw):
  res = nms_jit(jnp.asarray(boxes), jnp.asarray(scores), **kw)
  ref_kw = {k: v for k, v in kw.items() if k not in ("tile_size",)}
  ref = nms_ref(boxes, scores, **ref_kw)
  got = kept(res)
  assert got == ref
  k = len(ref)
  np.testing.assert_array_equal(np.asarray(res.boxes)[:k], np.asarray(boxes, np.float32)[ref])
  np.testing.assert_array_equal(np.asarray(res.scores)[:k], np.asarray(scores, np.float32)[ref])
  return got


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pixel_offset", [0.0, 1.0])
def test_random_overlapping_boxes(seed, pixel_offset):
  rng = np.random.default_rng(seed)
  n = 300  # not a multiple of the tile size 64
  boxes = random_boxes(rng, n)
  scores = rng.uniform(size=n).astype(np.float32)
  got = check(boxes, scores, iou_threshold=0.4, max_output=400, pixel_offset=pixel_offset,
              tile_size=64)
  assert 10 < len(got) < n


@pytest.mark.parametrize("pixel_offset", [0.0, 1.0])
def test_min_overlap_matches_reference(pixel_offset):
  """MTCNN's 'Min' NMS: intersection over the smaller area; nested boxes suppress each other
  even when their IoU is small."""
  rng = np.random.default_rng(11)
  boxes = random_boxes(rng, 200, lo=3.0, hi=60.0)
  outer = np.asarray([[10, 10, 90, 90]], np.float32)
  inner = np.asarray([[40, 40, 50, 50]], np.float32)            # IoU 0.016, Min overlap 1
  boxes = np.concatenate([outer, inner, boxes])
  scores = rng.uniform(size=len(boxes)).astype(np.float32)
  scores[:2] = (2.0, 1.9)                                     # ranked first
  got = check(boxes, scores, iou_threshold=0.7, max_output=300, pixel_offset=pixel_offset,
              tile_size=64, overlap="min")
  assert 0 in got and 1 not in got
  iou_kept = kept(nms_jit(boxes, scores, iou_threshold=0.7, max_output=300,
                          pixel_offset=pixel_offset, tile_size=64))
  assert 1 in iou_kept and len(got) < len(iou_kept)


def test_tiles_do_not_change_the_result():
  rng = np.random.default_rng(7)
  boxes, scores = random_boxes(rng, 300), rng.uniform(size=300).astype(np.float32)
  outs = [nms_jit(boxes, scores, iou_threshold=0.5, max_output=300, tile_size=t).indices
          for t in (1, 7, 64, 300, 512)]
  for o in outs[1:]:
    np.testing.assert_array_equal(np.asarray(o), np.asarray(outs[0]))


def test_identical_boxes_and_tied_scores():
  box = np.array([[10, 10, 50, 50]], np.float32)
  boxes = np.repeat(box, 9, 0)
  scores = np.full(9, 0.5, np.float32)
  assert check(boxes, scores, iou_threshold=0.5, max_output=5, tile_size=4) == [0]
  # Tied scores, disjoint boxes: output is index order.
  boxes = np.stack([np.array([20.0 * i, 0, 20.0 * i + 10, 10]) for i in range(9)])
  assert check(boxes.astype(np.float32), scores, iou_threshold=0.5, max_output=20,
               tile_size=4) == list(range(9))  # K > N: padded
  # IoU exactly equal to the threshold is kept (suppression needs IoU > thr).
  assert check(np.repeat(box, 3, 0), scores[:3], iou_threshold=1.0, max_output=3) == [0, 1, 2]


def test_ties_mixed_with_overlaps():
  rng = np.random.default_rng(3)
  boxes = np.round(random_boxes(rng, 200, extent=40.0) / 4) * 4
  scores = (rng.integers(0, 4, 200) / 4).astype(np.float32)
  check(boxes, scores, iou_threshold=0.3, max_output=200, tile_size=32)


def test_all_below_threshold_and_empty():
  rng = np.random.default_rng(1)
  boxes, scores = random_boxes(rng, 50), rng.uniform(0, 0.5, 50).astype(np.float32)
  res = nms_jit(boxes, scores, iou_threshold=0.5, max_output=10, score_threshold=0.5)
  assert kept(res) == [] and not np.asarray(res.valid).any()
  # N = 1 padding box (valid False): nothing is kept.
  res = nms(np.zeros((1, 4), np.float32), np.ones(1, np.float32), iou_threshold=0.5,
            max_output=3, valid=np.array([False]))
  assert kept(res) == []
  # Score threshold is strict (RetinaFace: scores > thr).
  res = nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.5], np.float32),
            iou_threshold=0.5, max_output=1, score_threshold=0.5)
  assert kept(res) == []


def test_more_kept_than_max_output_and_pre_top_k():
  rng = np.random.default_rng(2)
  boxes, scores = random_boxes(rng, 300, extent=400.0), rng.uniform(size=300).astype(np.float32)
  got = check(boxes, scores, iou_threshold=0.5, max_output=17, tile_size=64)
  assert len(got) == 17
  got = check(boxes, scores, iou_threshold=0.5, max_output=300, pre_nms_top_k=100,
              score_threshold=0.2, tile_size=64)
  assert len(got) <= 100


def test_valid_mask():
  rng = np.random.default_rng(4)
  boxes, scores = random_boxes(rng, 120), rng.uniform(size=120).astype(np.float32)
  valid = rng.uniform(size=120) < 0.6
  res = jax.jit(lambda b, s, v: nms(b, s, iou_threshold=0.45, max_output=120, valid=v,
                                    tile_size=32))(boxes, scores, valid)
  assert kept(res) == nms_ref(boxes, scores, 0.45, 120, valid=valid)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**31 - 1), thr=st.sampled_from([0.0, 0.3, 0.5, 0.9]),
       off=st.sampled_from([0.0, 1.0]))
def test_property_matches_reference(seed, thr, off):
  rng = np.random.default_rng(seed)
  n = 40  # one compiled shape for all examples
  boxes = np.round(random_boxes(rng, n, extent=30.0, lo=0.0, hi=20.0))  # ties, degenerates
  scores = (rng.integers(0, 6, n) / 5).astype(np.float32)
  valid = rng.uniform(size=n) < 0.9
  res = nms_jit(boxes, scores, iou_threshold=thr, max_output=12, pixel_offset=off,
                tile_size=16, score_threshold=0.1, valid=valid)
  assert kept(res) == nms_ref(boxes, scores, thr, 12, score_threshold=0.1, pixel_offset=off,
                              valid=valid)


def test_batched_equals_per_image_and_jit():
  rng = np.random.default_rng(5)
  b, n = 3, 200
  boxes = np.stack([random_boxes(rng, n) for _ in range(b)])
  scores = rng.uniform(size=(b, n)).astype(np.float32)
  valid = rng.uniform(size=(b, n)) < 0.8
  kw = dict(iou_threshold=0.4, max_output=50, score_threshold=0.1, pixel_offset=1.0,
            tile_size=64)
  out = jax.jit(lambda x, s, v: batched_nms(x, s, valid=v, **kw))(boxes, scores, valid)
  assert out.indices.shape == (b, 50) and out.boxes.shape == (b, 50, 4)
  for i in range(b):
    one = nms(boxes[i], scores[i], valid=valid[i], **kw)
    for field_b, field_1 in zip(out, one):
      np.testing.assert_array_equal(np.asarray(field_b[i]), np.asarray(field_1))
    assert kept(one) == nms_ref(boxes[i], scores[i], 0.4, 50, score_threshold=0.1,
                                pixel_offset=1.0, valid=valid[i])


def test_select_top_k():
  scores = np.array([0.1, 0.9, 0.5, 0.9, np.nan, 0.3], np.float32)
  boxes = np.arange(24, dtype=np.float32).reshape(6, 4)
  res = select_top_k(scores, boxes, 8, score_threshold=0.2)
  assert kept(res) == [1, 3, 2, 5]
  np.testing.assert_array_equal(np.asarray(res.boxes)[:4], boxes[[1, 3, 2, 5]])
  res_b = batched_select_top_k(scores[None], boxes[None], 3)
  assert kept(NMSResult(*(f[0] for f in res_b))) == [1, 3, 2]


@pytest.mark.parametrize("prefix,width,height", [("t1", 640, 480), ("multiface", 1200, 630)])
def test_retinaface_reference_detections(shared_dir, prefix, width, height):
  path = shared_dir / "reference" / "retinaface_mnet025_m2man.npz"
  if not path.exists():
    pytest.skip(f"{path} not found")
  d = np.load(path, allow_pickle=False)
  v = (np.float32(0.1), np.float32(0.2))
  boxes = (rf_ref.decode(d[f"{prefix}_loc"][0], d[f"{prefix}_priors"], v)
           * np.array([width, height, width, height], np.float32)).astype(np.float32)
  scores = d[f"{prefix}_conf"][0][:, 1]
  ref = d[f"{prefix}_dets_all"]
  res = jax.jit(lambda b, s: nms(b, s, iou_threshold=0.4, max_output=750,
                                 score_threshold=0.02, pre_nms_top_k=5000,
                                 pixel_offset=1.0))(boxes, scores)
  val = np.asarray(res.valid)
  got = np.concatenate([np.asarray(res.boxes)[val], np.asarray(res.scores)[val, None]], 1)
  # Robust part: every reference row scoring >= 0.1 is reproduced, in order.
  robust = ref[:, 4] >= 0.1
  assert robust.sum() >= 6
  np.testing.assert_allclose(got[:robust.sum()], ref[robust, :5], atol=1e-4, rtol=0)
  # Threshold-sensitive tail (scores 0.02-0.1): reproduced exactly on this data as well.
  assert got.shape == ref[:, :5].shape
  np.testing.assert_allclose(got, ref[:, :5], atol=1e-4, rtol=0)
  # The published py_cpu_nms on the same decoded boxes agrees with our numpy semantics.
  cand = np.where(scores > 0.02)[0]
  order = cand[np.argsort(-scores[cand], kind="stable")][:5000]
  dets = np.hstack([boxes[order], scores[order, None]]).astype(np.float32)
  np.testing.assert_array_equal(order[py_cpu_nms(dets, 0.4)][:750],
                                np.asarray(res.indices)[val])
