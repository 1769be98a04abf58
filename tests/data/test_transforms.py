"""Training augmentations (data/transforms.py, detectors/{hr,retinaface}/recipe.py) vs numpy
statements."""

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import tensorflow as tf

from tests.reference import transforms as transforms_ref
from tinyfaces_jax import detectors
from tinyfaces_jax.detectors.hr import recipe as hr_recipe
from tinyfaces_jax.detectors.retinaface import recipe as retina_recipe
from tinyfaces_jax.data import transforms as T

TINY_PLAIN = dict(color_jitter=None)
RETINA_PLAIN = dict(distort=False, random_interpolation=False)


def make_example(h, w, boxes, trainable=None, landmarks=None, values=None):
  """Black uint8 image [h, w, 3] with one filled rectangle per face (value 255 or values[i])."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = len(boxes)
  img = np.zeros((h, w, 3), np.uint8)
  for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
    img[max(y1, 0):y2, max(x1, 0):x2] = 255 if values is None else values[i]
  present = np.zeros(n, bool) if landmarks is None else np.ones(n, bool)
  lms = -np.ones((n, 5, 2), np.float32) if landmarks is None else np.asarray(landmarks, np.float32)
  tr = np.ones(n, bool) if trainable is None else np.asarray(trainable)
  return {"image": tf.constant(img), "boxes": tf.constant(boxes), "trainable": tf.constant(tr),
          "landmarks": tf.constant(lms), "landmarks_present": tf.constant(present),
          "filename": tf.constant("x.jpg")}


def grid_faces(h, w, size, step):
  return [[x, y, x + size, y + size] for y in range(5, h - size, step)
          for x in range(5, w - size, step)]


def iou(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def blob_boxes(image, thresh=128):
  lab, _ = scipy.ndimage.label(image.mean(-1) > thresh)
  return [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in scipy.ndimage.find_objects(lab)]


def frontal_landmarks(box):
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  pts = [[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]]
  return [[x1 + px * w, y1 + py * h] for px, py in pts]


# ---------------------------------------------------------------------------------------------

def test_tiny_constants_match_image_stats(shared_dir):
  m = scipy.io.loadmat(shared_dir / "data/tinyfaces/imageStats.mat")
  np.testing.assert_allclose(hr_recipe.TINY_RGB_MEAN, m["rgbMean"].ravel(), rtol=1e-6)
  cov = m["rgbCovariance"].astype(np.float64)
  np.testing.assert_allclose(hr_recipe.TINY_RGB_COVARIANCE, cov, rtol=1e-6)
  d, v = np.linalg.eigh(cov)
  np.testing.assert_allclose(hr_recipe.TINY_EIGVALS, d, rtol=1e-6)
  vecs = np.asarray(hr_recipe.TINY_EIGVECS)
  np.testing.assert_allclose(np.abs(np.sum(vecs * v, 0)), 1.0, atol=1e-6)  # same up to sign
  np.testing.assert_allclose(vecs @ np.diag(d) @ vecs.T, cov, rtol=1e-5)
  # rgbVariance = 0.1 * sqrt(d) * v' (cnn_widerface.m)
  np.testing.assert_allclose(hr_recipe.tiny_rgb_variance(), 0.1 * np.diag(np.sqrt(d)) @ vecs.T)


@pytest.mark.parametrize("mode", ["release", "alexnet"])
def test_pca_lighting_statistics(mode):
  img = tf.fill([2, 2, 3], 100.0)
  fn = tf.function(lambda s: hr_recipe.pca_lighting(img, s, mode))
  shifts = []
  for i in range(1500):
    out, off = fn(tf.constant([i, 7]))
    if i < 5:
      np.testing.assert_allclose(out.numpy(), np.broadcast_to(100.0 - off.numpy(), (2, 2, 3)),
                                 atol=1e-4)
    shifts.append(off.numpy())
  cov = np.cov(np.asarray(shifts, np.float64).T)
  d, v = np.asarray(hr_recipe.TINY_EIGVALS), np.asarray(hr_recipe.TINY_EIGVECS)
  if mode == "release":  # sqrt(D) V^T z: independent per RGB channel, variance 0.01 d_k
    expected = 0.01 * np.diag(d)
  else:  # V sqrt(D) z: covariance 0.01 V D V^T = 0.01 rgbCovariance
    expected = 0.01 * v @ np.diag(d) @ v.T
  scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
  np.testing.assert_allclose(cov / scale, expected / scale, atol=0.12)
  # projection on the eigenvectors: variance along v_k
  proj_var = np.var(np.asarray(shifts) @ v, axis=0)
  want = np.diag(v.T @ expected @ v)
  np.testing.assert_allclose(proj_var, want, rtol=0.15)


def test_hflip_twice_is_identity_and_swaps_landmarks():
  box = [40.0, 30.0, 120.0, 130.0]
  ex = make_example(200, 300, [box, [200, 50, 260, 90]],
                    landmarks=[frontal_landmarks(box), -np.ones((5, 2))])
  ex = dict(ex, landmarks_present=tf.constant([True, False]),
            image=tf.cast(ex["image"], tf.float32) * tf.random.uniform([200, 300, 3]),
            valid_region=tf.constant([0.0, 10.0, 250.0, 200.0]))
  once = T.hflip(ex)
  twice = T.hflip(once)
  for k in ("image", "boxes", "landmarks", "valid_region"):
    np.testing.assert_allclose(twice[k].numpy(), ex[k].numpy(), atol=1e-4)
  lm = once["landmarks"].numpy()
  assert lm[0, 0, 0] < lm[0, 1, 0] and lm[0, 3, 0] < lm[0, 4, 0]  # still left < right
  np.testing.assert_allclose(lm[0, 2], [300 - 80.0, 30 + 0.55 * 100])  # nose mirrored
  np.testing.assert_allclose(lm[1], -1.0)  # absent stays absent
  np.testing.assert_allclose(once["boxes"].numpy()[0], [180, 30, 260, 130])
  np.testing.assert_allclose(once["valid_region"].numpy(), [50, 10, 300, 200])


@pytest.mark.parametrize("recipe", ["hr", "retinaface"])
def test_deterministic_static_shapes_in_dataset_map(recipe):
  opts = {"hr": {}, "retinaface": {"size": 320}}[recipe]
  size = {"hr": 500, "retinaface": 320}[recipe]
  exs = [make_example(300, 420, grid_faces(300, 420, 40, 60)),
         make_example(700, 520, grid_faces(700, 520, 50, 90))]
  spec = {k: tf.TensorSpec([None] * len(v.shape), v.dtype) for k, v in exs[0].items()}
  transform = detectors.make_transform(recipe, **opts)
  fn = tf.function(transform, input_signature=[spec, tf.TensorSpec([2], tf.int32)])
  out_spec = fn.get_concrete_function().structured_outputs
  assert out_spec["image"].shape.as_list() == [size, size, 3]
  assert out_spec["valid_region"].shape.as_list() == [4]

  def gen():
    for e in exs:
      yield {k: v.numpy() for k, v in e.items()}
  ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
  ds = ds.enumerate().map(lambda i, e: transform(e, tf.stack([tf.cast(i, tf.int32), 5])))
  assert ds.element_spec["image"].shape.as_list() == [size, size, 3]
  got = list(ds)
  for i, (e, o) in enumerate(zip(exs, got)):
    again = fn(e, tf.constant([i, 5]))
    for k in ("image", "boxes", "trainable", "landmarks", "valid_region"):
      np.testing.assert_array_equal(o[k].numpy(), again[k].numpy())
    assert o["image"].dtype == tf.float32 and o["filename"].numpy() == b"x.jpg"
  other = fn(exs[0], tf.constant([1, 5]))
  assert not np.array_equal(other["image"].numpy(), got[0]["image"].numpy())


@pytest.mark.parametrize("recipe", ["hr", "retinaface"])
def test_boxes_follow_image_content(recipe):
  opts = {"hr": TINY_PLAIN, "retinaface": dict(RETINA_PLAIN, size=480)}[recipe]
  ex = make_example(460, 700, grid_faces(460, 700, 48, 80))
  n_kept = 0
  for i in range(12):
    out = detectors.make_transform(recipe, **opts)(ex, tf.constant([i, 1]))
    blobs = blob_boxes(out["image"].numpy())
    for b in out["boxes"].numpy():
      if min(b[2] - b[0], b[3] - b[1]) < 6:
        continue  # slivers: rounding dominates
      best = max(iou(b, bb) for bb in blobs)
      assert best > 0.9, (i, b, best)
      n_kept += 1
  assert n_kept > 30


def test_tiny_visibility_rule_matches_numpy():
  boxes = grid_faces(900, 1100, 60, 70)
  ex = make_example(900, 1100, boxes)
  for i in range(10):
    seed = tf.constant([i, 3])
    out = hr_recipe.transform(ex, seed, flip_prob=0.0, color_jitter=None)
    g = {k: v.numpy() for k, v in hr_recipe.tiny_sample_geometry(
        tf.constant([900, 1100]), T.split_seed(seed, 3)[0]).items()}
    f, (cy, cx), (ch, cw), (py, px) = g["factor"], g["crop_yx"], g["crop_hw"], g["paste_yx"]
    b = np.asarray(boxes, np.float64) * f
    clip = np.stack([np.maximum(b[:, 0], cx), np.maximum(b[:, 1], cy),
                     np.minimum(b[:, 2], cx + cw), np.minimum(b[:, 3], cy + ch)], 1)
    inter = np.clip(clip[:, 2] - clip[:, 0], 0, None) * np.clip(clip[:, 3] - clip[:, 1], 0, None)
    frac = inter / ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    keep = frac >= 0.3
    want = clip[keep] + [px - cx, py - cy, px - cx, py - cy]
    np.testing.assert_allclose(out["boxes"].numpy(), want, atol=1e-3)
    np.testing.assert_allclose(out["valid_region"].numpy(), [px, py, px + cw, py + ch])
    assert f in (0.5, 1.0, 2.0)


def test_tiny_scale_distribution():
  fn = tf.function(lambda s: hr_recipe.tiny_sample_geometry(tf.constant([400, 600]), s)["factor"])
  f = np.array([fn(tf.constant([i, 11])).numpy() for i in range(300)])
  counts = [np.sum(f == v) for v in (0.5, 1.0, 2.0)]
  assert sum(counts) == 300 and min(counts) > 70, counts


@pytest.mark.parametrize("mode,min_px", [("pre_scales", 0.0), ("uniform", 16.0)])
def test_retina_centre_rule_matches_numpy(mode, min_px):
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 560, (25, 2))
  wh = rng.uniform(8, 120, (25, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [640, 480])], 1).astype(np.float32)
  ex = make_example(480, 640, boxes)
  for i in range(8):
    seed = tf.constant([i, 9])
    out = retina_recipe.transform(ex, seed, size=320, flip_prob=0.0, scale_mode=mode,
                                 min_face_px=min_px, **RETINA_PLAIN)
    rois, _, _ = retina_recipe.crop_candidates(tf.constant(boxes), tf.constant([480, 640]),
                                          T.split_seed(seed, 5)[0], img_dim=320,
                                          scale_mode=mode)
    rois = rois.numpy()
    side_frac = (rois[:, 2] - rois[:, 0]) / 480
    if mode == "pre_scales":
      assert np.all(np.min(np.abs(side_frac[:, None] - np.array(retina_recipe.PRE_SCALES)), 1) < 0.01)
    roi, _, want = transforms_ref.retina_crop(boxes.astype(np.float64), rois, 320, min_px)
    side = (roi[2] - roi[0]) if roi is not None else 640
    np.testing.assert_allclose(out["boxes"].numpy(), want * 320 / side, atol=1e-3)


def test_retina_fallback_pads_with_mean_and_valid_region():
  # the face is wider than the short side, so no square crop can hold it: pad to square
  ex = make_example(200, 400, [[50, 10, 350, 190]], values=[(200, 40, 10)])
  ex["image"] = tf.constant(np.full((200, 400, 3), (200, 40, 10), np.uint8))
  for i in range(6):
    out = retina_recipe.transform(ex, tf.constant([i, 2]), size=320, distort=False)
    img, v = out["image"].numpy(), out["valid_region"].numpy()
    assert v[3] == pytest.approx(160) and v[2] - v[0] == pytest.approx(320)
    np.testing.assert_allclose(img[170:], np.broadcast_to(retina_recipe.RGB_MEAN, img[170:].shape),
                               atol=1e-3)
    np.testing.assert_allclose(img[:150], 200 * 0 + np.broadcast_to((200, 40, 10),
                                                                    img[:150].shape), atol=1e-3)
    np.testing.assert_allclose(out["boxes"].numpy()[0], [40, 8, 280, 152], atol=1e-3)


@pytest.mark.parametrize("jitter", [None, "release"])
def test_tiny_valid_region_holds_image_rest_is_mean(jitter):
  colour = np.array([200.0, 40.0, 10.0])
  ex = make_example(260, 330, [[10, 10, 60, 60]])
  ex["image"] = tf.constant(np.full((260, 330, 3), colour, np.uint8))
  for i in range(8):
    out = hr_recipe.transform(ex, tf.constant([i, 4]), color_jitter=jitter)
    img = out["image"].numpy().astype(np.float64)
    x1, y1, x2, y2 = out["valid_region"].numpy().astype(int)
    inside = np.zeros(img.shape[:2], bool)
    inside[y1:y2, x1:x2] = True
    if inside.all():  # factor 2: the crop fills the canvas
      shift = img[0, 0] - colour  # = -pca offset (0 without jitter)
    else:
      shift = img[~inside][0] - np.asarray(hr_recipe.TINY_RGB_MEAN)
    if jitter is None:
      np.testing.assert_allclose(shift, 0.0, atol=1e-3)
    np.testing.assert_allclose(img[~inside], np.broadcast_to(np.asarray(hr_recipe.TINY_RGB_MEAN) + shift,
                                                             img[~inside].shape), atol=1e-3)
    np.testing.assert_allclose(img[inside], np.broadcast_to(colour + shift, img[inside].shape),
                               atol=1e-2)
    assert (x2 - x1, y2 - y1) in [(165, 130), (330, 260), (500, 500)]


@pytest.mark.parametrize("recipe", ["hr", "retinaface"])
def test_untrainable_stays_untrainable_and_absent_landmarks_stay_absent(recipe):
  boxes = grid_faces(400, 500, 50, 80)
  n = len(boxes)
  trainable = np.arange(n) % 3 != 0
  values = [255 if t else 100 for t in trainable]
  present = np.arange(n) % 2 == 0
  lms = np.array([frontal_landmarks(b) for b in boxes], np.float32)
  lms[~present] = -1
  boxes = boxes + [[30, 30, 30, 30]]  # a zero-size box (w = h = 0), never trainable
  ex = make_example(400, 500, boxes, trainable=np.r_[trainable, False],
                    landmarks=np.r_[lms, -np.ones((1, 5, 2))], values=values + [0])
  ex["landmarks_present"] = tf.constant(np.r_[present, False])
  opts = {"hr": TINY_PLAIN, "retinaface": dict(RETINA_PLAIN, size=400)}[recipe]
  for i in range(10):
    out = detectors.make_transform(recipe, **opts)(ex, tf.constant([i, 6]))
    img = out["image"].numpy()
    b, tr = out["boxes"].numpy(), out["trainable"].numpy()
    for bb, t, lm, p in zip(b, tr, out["landmarks"].numpy(), out["landmarks_present"].numpy()):
      if t:
        x1, y1, x2, y2 = np.round(bb).astype(int)
        core = img[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
        assert bb[2] > bb[0] and bb[3] > bb[1]
        assert core.size == 0 or core.mean() > 180  # white (trainable) faces only
      if not p:
        np.testing.assert_array_equal(lm, -1.0)
      else:
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]


def test_photometric_distort_range_and_determinism():
  img = tf.random.stateless_uniform([32, 48, 3], [1, 2], 0, 255)
  outs = [T.photometric_distort(img, tf.constant([i, 0])).numpy() for i in range(16)]
  again = T.photometric_distort(img, tf.constant([0, 0])).numpy()
  np.testing.assert_array_equal(outs[0], again)
  assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
  changed = [np.abs(o - img.numpy()).max() > 1 for o in outs]
  assert any(changed)
