"""Box/landmark coders against the reference decode (numpy statement + real model outputs)."""

import numpy as np
import jax
import pytest
from hypothesis import given, settings, strategies as st

from tests.reference import retinaface as rf_ref
from tinyfaces_jax.detection import anchors, box_coder


def to_cxcywh(a):
  return np.concatenate([(a[:, :2] + a[:, 2:]) / 2, a[:, 2:] - a[:, :2]], 1)


@pytest.mark.parametrize("flavour", ["m2man", "1mb"])
def test_decode_matches_reference_outputs(shared_dir, flavour):
  ref = np.load(shared_dir / "reference" / f"retinaface_mnet025_{flavour}.npz")
  spec = anchors.RETINAFACE if flavour == "m2man" else anchors.RETINAFACE_1MB
  h, w = ref["t1_image_rgb"].shape[:2]
  an = anchors.anchor_grid(spec, (h, w))
  loc, landm = ref["t1_loc"][0], ref["t1_landms"][0]
  boxes = np.asarray(jax.jit(box_coder.decode_boxes)(loc, an))
  scale = np.array([w, h, w, h])
  np.testing.assert_allclose(boxes, rf_ref.decode(loc, ref["t1_priors"], (0.1, 0.2))
                             * scale, atol=2e-3)
  pts = np.asarray(box_coder.decode_landmarks(landm, an))
  np.testing.assert_allclose(pts, rf_ref.decode_landm(landm, ref["t1_priors"], (0.1, 0.2))
                             * np.tile([w, h], 5), atol=2e-3)
  # The reference's top detection (row 0 of dets_all) is the best-scoring anchor decoded.
  best = int(np.argmax(ref["t1_conf"][0, :, 1]))
  np.testing.assert_allclose(boxes[best], ref["t1_dets_all"][0, :4], atol=1e-3)
  np.testing.assert_allclose(pts[best], ref["t1_dets_all"][0, 5:], atol=1e-3)


def test_encode_matches_numpy_and_roundtrips():
  rng = np.random.default_rng(0)
  an = anchors.anchor_grid(anchors.RETINAFACE, (64, 96))
  gt = an + rng.uniform(-4, 4, an.shape).astype(np.float32)
  gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
  enc = np.asarray(box_coder.encode_boxes(gt, an))
  np.testing.assert_allclose(enc, rf_ref.encode(gt, to_cxcywh(an), (0.1, 0.2)),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(box_coder.decode_boxes(enc, an)), gt, atol=1e-3)
  for off in (0.0, 1.0):
    e = box_coder.encode_boxes(gt, an, box_coder.TINY_VARIANCES, pixel_offset=off)
    np.testing.assert_allclose(
        np.asarray(box_coder.decode_boxes(e, an, box_coder.TINY_VARIANCES, pixel_offset=off)),
        gt, atol=1e-3)
  pts = rng.uniform(0, 90, (len(an), 10)).astype(np.float32)
  np.testing.assert_allclose(
      np.asarray(box_coder.decode_landmarks(box_coder.encode_landmarks(pts, an), an)), pts,
      atol=1e-3)


def test_tiny_faces_offsets_definition():
  """HR regresses (dcx/w, dcy/h, log w ratio, log h ratio); +1 widths in the release."""
  tmpl = np.array([[-9.5, -11.5, 9.5, 11.5]], np.float32)  # a 20 x 24 template (+1 widths)
  face = np.array([[-4.5, 0.5, 25.5, 30.5]], np.float32)  # 31 x 31, centre (10.5, 15.5)
  t = np.asarray(box_coder.encode_boxes(face, tmpl, box_coder.TINY_VARIANCES, 1.0))[0]
  np.testing.assert_allclose(t, [10.5 / 20, 15.5 / 24, np.log(31 / 20), np.log(31 / 24)],
                             rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(-50, 50))
def test_never_inf_or_nan(dw, dh, size):
  """Degenerate targets encode finitely; huge log-size deltas are clipped on decode."""
  an = np.array([[0, 0, 16, 16]], np.float32)
  bad = np.array([[5, 5, 5 + size, 5 - abs(size)]], np.float32)
  assert np.all(np.isfinite(np.asarray(box_coder.encode_boxes(bad, an))))
  dec = np.asarray(box_coder.decode_boxes(np.array([[0, 0, dw, dh]], np.float32), an))
  assert np.all(np.isfinite(dec))
  assert dec[0, 2] - dec[0, 0] <= 16 * 1000 / 16 * 1.0001
