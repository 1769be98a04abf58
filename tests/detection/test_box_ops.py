"""box_ops against plain-numpy loops (the reference semantics, written independently)."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tests.reference import nms as nms_ref
from tinyfaces_jax.detection import box_ops


def random_boxes(rng, n, scale=100.0, degenerate_frac=0.0):
  xy = rng.uniform(0, scale, (n, 2))
  wh = rng.uniform(0.5, scale / 3, (n, 2))
  bad = rng.uniform(size=n) < degenerate_frac
  wh[bad] = rng.uniform(-5, 0, (bad.sum(), 2))
  return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("off", [0.0, 1.0])
def test_pairwise_iou_matches_loop(off):
  rng = np.random.default_rng(0)
  a = random_boxes(rng, 37, degenerate_frac=0.1)
  b = random_boxes(rng, 23, degenerate_frac=0.2)
  got = np.asarray(jax.jit(lambda x, y: box_ops.pairwise_iou(x, y, pixel_offset=off))(a, b))
  np.testing.assert_allclose(got, nms_ref.pairwise_iou_loop(a, b, off), atol=1e-6)


def test_pairwise_iou_mask_and_batch():
  rng = np.random.default_rng(1)
  a = random_boxes(rng, 10)
  b = np.stack([random_boxes(rng, 6), random_boxes(rng, 6)])
  mask = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0]], bool)
  got = np.asarray(box_ops.pairwise_iou(jnp.broadcast_to(a, (2, 10, 4)), b, mask))
  for k in range(2):
    ref = nms_ref.pairwise_iou_loop(a, b[k])
    ref[:, ~mask[k]] = -1.0
    np.testing.assert_allclose(got[k], ref, atol=1e-6)


def test_identical_and_disjoint_and_degenerate():
  a = np.array([[0, 0, 10, 10], [5, 5, 5, 9], [0, 0, -3, 4]], np.float32)
  b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 9]], np.float32)
  got = np.asarray(box_ops.pairwise_iou(a, b))
  assert got[0, 0] == 1.0 and got[0, 1] == 0.0
  assert np.all(np.isfinite(got)) and got[1, 2] == 0.0  # zero-area vs itself: union 0 -> 0
  assert np.all(got[2] == 0.0)
  np.testing.assert_array_equal(np.asarray(box_ops.valid_box_mask(a)), [True, False, False])


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, (5, 4), elements=st.floats(-50, 50, width=32)),
       hnp.arrays(np.float32, (4, 4), elements=st.floats(-50, 50, width=32)))
def test_iou_property_matches_loop_and_is_bounded(a, b):
  got = np.asarray(box_ops.pairwise_iou(a, b))
  assert np.all((got >= 0) & (got <= 1 + 1e-6))
  np.testing.assert_allclose(got, nms_ref.pairwise_iou_loop(a, b), atol=1e-5)
  np.testing.assert_allclose(np.asarray(box_ops.elementwise_iou(a[:4], b)),
                             np.diag(nms_ref.pairwise_iou_loop(a[:4], b)), atol=1e-5)


def test_conversions_roundtrip():
  rng = np.random.default_rng(2)
  b = random_boxes(rng, 50)
  for fwd, inv in [(box_ops.xyxy_to_xywh, box_ops.xywh_to_xyxy),
                   (box_ops.xyxy_to_cxcywh, box_ops.cxcywh_to_xyxy)]:
    np.testing.assert_allclose(np.asarray(inv(fwd(b))), b, atol=1e-4)
  xywh = np.asarray(box_ops.xyxy_to_xywh(b))
  np.testing.assert_allclose(xywh[:, 2:], b[:, 2:] - b[:, :2], atol=1e-5)
  c = np.asarray(box_ops.xyxy_to_cxcywh(b))
  np.testing.assert_allclose(c[:, :2], (b[:, :2] + b[:, 2:]) / 2, atol=1e-5)


def test_area_and_clip():
  b = np.array([[0, 0, 9, 9], [3, 3, 2, 8], [-5, -5, 700, 500]], np.float32)
  np.testing.assert_allclose(np.asarray(box_ops.box_area(b)), [81, 0, 705 * 505])
  np.testing.assert_allclose(np.asarray(box_ops.box_area(b, 1.0)), [100, 0, 706 * 506])
  clipped = np.asarray(box_ops.clip_boxes(b, 480, 640))
  np.testing.assert_allclose(clipped[2], [0, 0, 640, 480])
  per_image = np.asarray(box_ops.clip_boxes(np.stack([b, b]), np.array([[100], [480]]),
                                            np.array([[100], [640]])))
  np.testing.assert_allclose(per_image[0, 2], [0, 0, 100, 100])
  np.testing.assert_allclose(np.asarray(box_ops.scale_boxes(b[:1], 2.0, 0.5)), [[0, 0, 18, 4.5]])
