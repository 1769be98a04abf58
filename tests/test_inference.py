"""The shared inference core (inference.py) with the public RetinaFace weights: the reference
post-processing exactly, bucket padding, flip and multi-scale test-time augmentation."""

import jax
import numpy as np
import pytest

from tinyfaces_jax import detectors, inference
from tinyfaces_jax.detection import box_ops


@pytest.fixture(scope="module")
def retinaface(shared_dir):
  det = detectors.build_detector("retinaface", {"preset": "mnet025"})
  variables = det.import_weights(shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth")
  ref = np.load(shared_dir / "reference/retinaface_mnet025_m2man.npz")
  return det, variables, ref


def predict_one(det, variables, image, **cfg):
  cfg = inference.InferenceConfig(**cfg)
  hw = inference.bucket_hw(*image.shape[:2], cfg.bucket)
  x = inference.pad_to(image.astype(np.float32), hw, det.pad_value)[None]
  return inference.to_original(jax.device_get(inference.make_predict_fn(det, cfg)(variables, x)),
                               0, 1.0)


def rows(d):
  return np.concatenate([d["boxes"], d["scores"][:, None], d["landmarks"].reshape(-1, 10)], 1)


def test_single_scale_is_the_reference_postprocessing(retinaface):
  det, variables, ref = retinaface
  got = rows(predict_one(det, variables, ref["t1_image_rgb"]))        # 480 x 640: no padding
  want = ref["t1_dets_all"]
  assert got.shape == want.shape == (18, 15)
  np.testing.assert_allclose(got[:, :4], want[:, :4], atol=1e-2)
  np.testing.assert_allclose(got[:, 4], want[:, 4], atol=1e-4)
  np.testing.assert_allclose(got[:, 5:], want[:, 5:], atol=1e-2)


def test_bucket_padding_keeps_the_confident_faces(retinaface):
  """630 x 1200 padded to 640 x 1216 with the mean colour: the faces scoring >= 0.5 in the
  reference run are found again, within 0.5 px (only border cells see the padding)."""
  det, variables, ref = retinaface
  got = predict_one(det, variables, ref["multiface_image_rgb"], bucket=32)
  want = ref["multiface_dets_all"]
  want = want[want[:, 4] >= 0.5]
  assert len(want) == 6
  iou = np.asarray(box_ops.pairwise_iou(want[:, :4], got["boxes"]))
  j = iou.argmax(1)
  np.testing.assert_allclose(got["boxes"][j], want[:, :4], atol=0.5)
  np.testing.assert_allclose(got["scores"][j], want[:, 4], atol=1e-3)


def test_flip_tta_is_mirror_symmetric(retinaface):
  """With flip on, the detections of the mirrored image are the mirror of the detections of
  the image: boxes x -> W - x and landmarks mirrored with left/right swapped back."""
  det, variables, ref = retinaface
  img = ref["t1_image_rgb"]
  a = predict_one(det, variables, img, flip=True)
  b = predict_one(det, variables, img[:, ::-1], flip=True)
  w = img.shape[1]
  ka, kb = a["scores"] >= 0.3, b["scores"] >= 0.3
  assert ka.sum() == kb.sum() >= 6
  mb = np.stack([w - b["boxes"][:, 2], b["boxes"][:, 1], w - b["boxes"][:, 0],
                 b["boxes"][:, 3]], 1)[kb]
  lb = b["landmarks"][kb][:, [1, 0, 2, 4, 3]]
  lb[..., 0] = w - lb[..., 0]
  order = [int(np.argmin(np.abs(mb - box).sum(1))) for box in a["boxes"][ka]]
  np.testing.assert_allclose(mb[order], a["boxes"][ka], atol=1e-2)
  np.testing.assert_allclose(lb[order], a["landmarks"][ka], atol=1e-2)
  np.testing.assert_allclose(b["scores"][kb][order], a["scores"][ka], atol=1e-5)
  # The flip branch changes the result: a left-eye/right-eye swap would be a 10+ px error.
  eyes = a["landmarks"][ka][:, 1, 0] - a["landmarks"][ka][:, 0, 0]
  assert (eyes > 3).all()


def test_multi_branch_path_equals_single(retinaface):
  """scales (1, 1): every candidate twice; NMS removes the copies -> the single-scale result."""
  det, variables, ref = retinaface
  img = ref["t1_image_rgb"]
  one = predict_one(det, variables, img)
  two = predict_one(det, variables, img, scales=(1.0, 1.0))
  np.testing.assert_array_equal(two["scores"], one["scores"])
  np.testing.assert_array_equal(two["boxes"], one["boxes"])


def test_multi_scale_pyramid_finds_the_faces(retinaface):
  det, variables, ref = retinaface
  got = predict_one(det, variables, ref["t1_image_rgb"], scales=(0.5, 1.0, 2.0), flip=True)
  want = ref["t1_boxes"]
  keep = got["scores"] >= 0.6
  iou = np.asarray(box_ops.pairwise_iou(want, got["boxes"][keep]))
  assert (iou.max(1) > 0.7).all() and keep.sum() == len(want) == 6


def test_base_scale_policies():
  import tensorflow as tf
  none = inference.InferenceConfig(max_size=1000)
  fit = inference.InferenceConfig(resize="fit", target_size=1600, max_size=2150)
  for h, w, want_none, want_fit in ((480, 640, 1.0, 1600 / 480), (600, 2000, 0.5, 2150 / 2000),
                                    (100, 100, 1.0, 16.0)):
    assert inference.base_scale(h, w, none) == pytest.approx(want_none)
    assert inference.base_scale(h, w, fit) == pytest.approx(want_fit)
    t = inference.base_scale(tf.constant(float(h)), tf.constant(float(w)), fit, tf.minimum)
    assert float(t) == pytest.approx(want_fit, rel=1e-6)
  assert inference.bucket_hw(630, 1200, 128) == (640, 1280)
  with pytest.raises(ValueError, match="resize must be one of"):
    inference.InferenceConfig(resize="fitt")


def test_scales_over_max_branch_size_are_skipped(retinaface):
  """The 2x branch of a 480 x 640 image (1280 px) is skipped under max_branch_size 1000: the
  result is the single-scale one (how the HR pyramid bounds memory on large images)."""
  det, variables, ref = retinaface
  img = ref["t1_image_rgb"]
  one = predict_one(det, variables, img)
  capped = predict_one(det, variables, img, scales=(1.0, 2.0), max_branch_size=1000)
  np.testing.assert_array_equal(capped["scores"], one["scores"])
  both = predict_one(det, variables, img, scales=(1.0, 2.0), max_branch_size=2000)
  assert len(both["scores"]) != len(one["scores"]) or not np.array_equal(both["scores"],
                                                                          one["scores"])
