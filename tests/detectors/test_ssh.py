"""SSH against the numpy statement of the release (tests/reference/ssh.py): anchors, the
network on imported synthetic SSH.caffemodel weights, anchor targets + OHEM + loss, and the
test pipeline (proposal layer, threshold, NMS, pyramid without M3 at the largest scale)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference import ssh as ref
from tests.support.caffe_files import SSH_CAFFE_SHAPES, write_caffemodel
from tinyfaces_jax import detectors, inference
from tinyfaces_jax.detection import sampling
from tinyfaces_jax.detectors import ssh as ssh_family
from tinyfaces_jax.detectors.base import load_initial_weights
from tinyfaces_jax.detectors.ssh import model as ssh_model, weights as ssh_weights

HW = (36, 52)        # conv4_3 5 x 7, conv5_3 3 x 4, pool6 2 x 2: odd maps, ceil pools, crop


def random_blobs(seed=0, upsample=None, head_scale=1.0):
  """Caffe-named random SSH weights (He-scaled so activations stay O(1)); the fixed bilinear
  deconvolution unless `upsample` is given; the cls / bbox heads scaled by `head_scale`."""
  rng = np.random.default_rng(seed)
  out = []
  for name, shapes in SSH_CAFFE_SHAPES.items():
    if name == "conv5_128_up":
      w = np.broadcast_to(ssh_weights.bilinear_filter(4), (128, 1, 4, 4)).copy()
      out.append((name, "Deconvolution", [w if upsample is None else upsample]))
      continue
    o, i, k, _ = shapes[0]
    w = rng.normal(0, np.sqrt(2.0 / (i * k * k)), shapes[0]).astype(np.float32)
    b = rng.normal(0, 0.1, shapes[1]).astype(np.float32)
    if name.endswith(("cls_score", "bbox_pred")):
      w, b = w * head_scale, b * head_scale
    out.append((name, "Convolution", [w, b]))
  return out


@pytest.fixture(scope="module")
def caffemodel(tmp_path_factory):
  layers = random_blobs()
  path = tmp_path_factory.mktemp("ssh") / "SSH.caffemodel"
  write_caffemodel(path, layers[::-1])         # reversed: the importer must not rely on order
  return path, {n: a for n, _, a in layers}


def test_anchors_and_map_sizes_are_the_releases():
  for hw in (HW, (64, 64), (1200, 1600), (37, 101)):
    sizes = ssh_model.feature_sizes(hw)
    want = ref.module_anchors(dict(zip(("m1", "m2", "m3"), sizes)))
    got = np.asarray(ssh_model.anchors(hw))
    np.testing.assert_array_equal(got, np.concatenate([want[m] for m in ("m1", "m2", "m3")]))
  assert ssh_model.feature_sizes(HW) == [(5, 7), (3, 4), (2, 2)]


def test_forward_on_imported_caffemodel_equals_the_numpy_release(caffemodel):
  path, blobs = caffemodel
  det = detectors.build_detector("ssh", {}, {})
  abstract = jax.eval_shape(lambda: det.init_variables(HW))
  variables, what = load_initial_weights(det, abstract, checkpoint=str(path))
  assert "whole model" in what
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 255, (1, *HW, 3)).astype(np.float32)
  out = jax.jit(lambda v, x: det.model.apply(v, det.preprocess(x)))(variables,
                                                                   jnp.asarray(image))
  x = (image[0] - np.asarray(ssh_model.MEAN_BGR[::-1]))[..., ::-1].transpose(2, 0, 1)
  want = ref.forward(blobs, x)
  sl = ssh_model.module_slices(HW)
  for m, s in zip(("m1", "m2", "m3"), sl):
    logits, deltas, hw = want[m]
    scale = np.abs(logits).max()
    np.testing.assert_allclose(np.asarray(out["logits"][0, s]), logits, atol=2e-4 * scale)
    np.testing.assert_allclose(np.asarray(out["deltas"][0, s]), deltas,
                               atol=2e-4 * np.abs(deltas).max())


def test_importer_refuses_wrong_files(tmp_path):
  det = detectors.build_detector("ssh", {}, {})
  bad = random_blobs(upsample=np.ones((128, 1, 4, 4), np.float32))
  write_caffemodel(tmp_path / "trained_up.caffemodel", bad)
  with pytest.raises(ValueError, match="conv5_128_up is not the fixed bilinear"):
    det.import_weights(str(tmp_path / "trained_up.caffemodel"))
  missing = [entry for entry in random_blobs() if entry[0] != "m2@ssh_dimred"]
  write_caffemodel(tmp_path / "missing.caffemodel", missing)
  with pytest.raises(ValueError, match="m2@ssh_dimred"):
    det.import_weights(str(tmp_path / "missing.caffemodel"))
  write_caffemodel(tmp_path / "s3fd.caffemodel", [("conv1_1", "Convolution", [
      np.zeros((64, 3, 3, 3), np.float32), np.zeros(64, np.float32)])])
  with pytest.raises(ValueError, match="not an SSH caffemodel"):
    det.import_weights(str(tmp_path / "s3fd.caffemodel"))
  mnet = detectors.build_detector("ssh", {"backbone": "mobilenet0.25"}, {})
  with pytest.raises(ValueError, match="VGG16 network"):
    mnet.import_weights(str(tmp_path / "missing.caffemodel"))


def _targets_case(seed, hw=(96, 128), m=6):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(-10, [hw[1] - 10, hw[0] - 10], (m, 2))
  wh = np.exp(rng.uniform(np.log(8), np.log(90), (m, 2)))
  gt = np.round(np.concatenate([xy, xy + wh], 1)).astype(np.float32)
  mask = rng.uniform(size=m) < 0.85
  a = ssh_model.anchors(hw)
  # Coarse scores (many ties) so that the tie rule is exercised.
  scores = np.round(rng.uniform(size=len(a)), 1).astype(np.float32)
  return hw, gt, mask, a, scores


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_targets_and_ohem_equal_the_release(seed):
  hw, gt, mask, a, scores = _targets_case(seed)
  region = jnp.asarray([0.0, 0.0, hw[1], hw[0]])
  cfg = ssh_family.SSHLossConfig(num_samples=32)          # small: the caps bind
  slices = ssh_model.module_slices(hw)
  match = ssh_family.module_targets(jnp.asarray(a), gt, mask, region, cfg, slices)
  for k, sl in enumerate(slices):
    want, _, _ = ref.anchor_targets(a[sl], gt, hw, border=ssh_family.BORDERS[k],
                                    fg_scores=scores[sl], num_samples=32, gt_mask=mask)
    pos, neg = sampling.ohem_sample_mask(scores[sl], match.labels[sl], num_samples=32)
    got = np.where(np.asarray(pos), 1, np.where(np.asarray(neg), 0, -1))
    np.testing.assert_array_equal(got, want)


def test_no_anchor_inside_uses_all_and_no_faces():
  hw = (12, 12)                                  # every M1 / M2 anchor crosses the border
  a = ssh_model.anchors(hw)
  slices = ssh_model.module_slices(hw)
  cfg = ssh_family.SSHLossConfig()
  match = ssh_family.module_targets(jnp.asarray(a), np.zeros((2, 4), np.float32),
                                    np.zeros(2, bool), jnp.asarray([0.0, 0, 12, 12]), cfg, slices)
  for k, sl in enumerate(slices):
    want, _, _ = ref.anchor_targets(a[sl], np.zeros((0, 4)), hw, border=ssh_family.BORDERS[k],
                                    fg_scores=np.zeros(sl.stop - sl.start), num_samples=256)
    np.testing.assert_array_equal(np.asarray(match.labels[sl]) >= 0, want >= 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_the_release_per_module_sum(seed):
  hw, gt, mask, a, _ = _targets_case(seed)
  rng = np.random.default_rng(10 + seed)
  n = len(a)
  logits = rng.normal(0, 2, (2, n, 2)).astype(np.float32)
  deltas = rng.normal(0, 0.3, (2, n, 4)).astype(np.float32)
  region = np.asarray([[0, 0, hw[1], hw[0]], [0, 0, hw[1] - 30, hw[0] - 20]], np.float32)
  gts = np.stack([gt, gt + 3])
  masks = np.stack([mask, mask])
  cfg = ssh_family.SSHLossConfig()
  batch = dict(image=jnp.zeros((2, *hw, 3)), boxes=jnp.asarray(gts), box_mask=jnp.asarray(masks),
               valid_region=jnp.asarray(region))
  loss, metrics = jax.jit(lambda o, b: ssh_family.ssh_loss(
      o, b, a, ssh_model.module_slices(hw), cfg))({"logits": logits, "deltas": deltas}, batch)
  total = 0.0
  for b in range(2):
    image_hw = (region[b, 3], region[b, 2])
    fg = ref.softmax_fg(logits[b])
    for k, sl in enumerate(ssh_model.module_slices(hw)):
      labels, targets, _ = ref.anchor_targets(a[sl], gts[b], image_hw,
                                              border=ssh_family.BORDERS[k], fg_scores=fg[sl],
                                              gt_mask=masks[b])
      c, r = ref.module_loss(logits[b, sl], deltas[b, sl], labels, targets)
      total += c + r
  np.testing.assert_allclose(float(loss), total / 2, rtol=2e-5)
  assert float(metrics["num_pos"]) > 0


def test_detect_pipeline_and_pyramid_equal_the_release(tmp_path):
  layers = random_blobs(seed=3, head_scale=0.01)     # scores spread over (0, 1), boxes near
  path = tmp_path / "SSH.caffemodel"                  # their anchors: no ties to break
  write_caffemodel(path, layers)
  blobs = {n: a for n, _, a in layers}
  for opts, scales in (({}, (1.0,)), ({"drop_m3_from_scale": 1.5}, (1.0, 1.5))):
    det = detectors.build_detector("ssh", opts, {})
    variables = det.import_weights(str(path))
    cfg = inference.InferenceConfig(scales=scales, score_threshold=0.05, iou_threshold=0.3,
                                    pre_nms_top_k=100000, max_output=2000, pixel_offset=1.0,
                                    bucket=4)
    predict = inference.make_predict_fn(det, cfg)
    image = np.random.default_rng(2).uniform(0, 255, (1, *HW, 3)).astype(np.float32)
    got = predict(variables, jnp.asarray(image))
    per_scale = []
    for s in scales:
      hs, ws = round(HW[0] * s), round(HW[1] * s)
      x = np.asarray(jax.image.resize(jnp.asarray(image), (1, hs, ws, 3), "linear"))[0] \
          if s != 1 else image[0]
      x = (x - np.asarray(ssh_model.MEAN_BGR[::-1]))[..., ::-1].transpose(2, 0, 1)
      fo = ref.forward(blobs, x)
      anchors = ref.module_anchors({m: fo[m][2] for m in fo})
      per_scale.append((fo, anchors, (hs, ws), s))
    want = ref.detect_pyramid(per_scale) if len(scales) > 1 else ref.detect(*per_scale[0][:3])
    v = np.asarray(got["valid"][0])
    assert v.sum() == len(want) >= 5 and np.ptp(want[:, 4]) > 0.05
    np.testing.assert_allclose(np.asarray(got["scores"][0])[v], want[:, 4], atol=2e-4)
    np.testing.assert_allclose(np.asarray(got["boxes"][0])[v], want[:, :4], atol=0.05)


def test_recipe_scales_short_side_caps_long_side_and_flips():
  import tensorflow as tf
  from tinyfaces_jax.detectors.ssh import recipe
  image = np.zeros((300, 500, 3), np.uint8)
  image[:, :, 0] = np.arange(500)[None, :] // 2                   # a horizontal ramp
  ex = dict(image=tf.constant(image), boxes=tf.constant([[50.0, 30.0, 150.0, 130.0]]),
            landmarks=-tf.ones([1, 5, 2]), landmarks_present=tf.constant([False]),
            trainable=tf.constant([True]), invalid=tf.constant([False]))
  for short, size, want_scale in ((270, 400, 0.8), (120, 400, 0.4)):   # capped / by short
    out = recipe.transform(dict(ex), tf.constant([0, 0]), size=size, short=short, flip_prob=0.0)
    assert out["image"].shape == (size, size, 3)
    np.testing.assert_allclose(out["valid_region"].numpy(),
                               [0, 0, round(500 * want_scale), round(300 * want_scale)])
    np.testing.assert_allclose(out["boxes"].numpy()[0], np.array([50, 30, 150, 130]) * want_scale,
                               rtol=1e-5)
    h = round(300 * want_scale)
    # Padding is the mean colour (zero after preprocessing).
    np.testing.assert_allclose(out["image"].numpy()[h + 1:, 0], np.broadcast_to(
        np.asarray(ssh_model.MEAN_BGR[::-1], np.float32), (size - h - 1, 3)), atol=1e-4)
  out = recipe.transform(dict(ex), tf.constant([0, 0]), size=400, short=270, flip_prob=1.0)
  np.testing.assert_allclose(out["valid_region"].numpy(), [0, 0, 400, 240])
  np.testing.assert_allclose(out["boxes"].numpy()[0], [400 - 120, 24, 400 - 40, 104], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["test", "backbone=mnet025,test"])
def test_ssh_trains_and_evaluates_through_the_loop(tmp_path, arg):
  """configs/ssh_vgg16.py:test through the training system on 8 devices: the recipe, the
  OHEM loss, finite losses, a WIDER evaluation with predictions written."""
  from configs import ssh_vgg16
  from tinyfaces_jax.training import train
  c = ssh_vgg16.get_config(arg)
  c.data.data_dir = str(tmp_path / "tfds")
  c.init.require = False
  r = train.train_and_evaluate(c, str(tmp_path / "wd"))
  assert r["step"] == 4 and not r["preempted"]
  (final,) = r["evals"]
  assert final["num_images"] == 8 and 0.0 <= final["scalars"]["wider/ap_hard"] <= 1.0
  assert len(list((tmp_path / "wd/eval/step_4/wider/predictions").rglob("*.txt"))) == 8
