"""HR / Tiny Faces: architecture (shapes and strides for odd and even inputs, the fixed
bilinear upsampling, receptive-field centres of the res3 / res4 taps), template geometry
against the .mat file, the loss and the decoding against numpy statements of the release."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from tests.reference import tiny_faces as tiny_faces_ref
from tinyfaces_jax import detectors, inference
from tinyfaces_jax.detectors.hr import loss as hr_loss
from tinyfaces_jax.detectors import hr as hr_detector
from tinyfaces_jax.detectors.hr import model as hr
from tinyfaces_jax.models import layers
from tinyfaces_jax.models import backbones


def matconvnet_conv_transpose(x, filt, upsample, crop):
  """numpy MatConvNet vl_nnconvt for one channel: x [h, w], filt [k, k], crop (top, bottom,
  left, right) -> [(h - 1) u + k - top - bottom, (w - 1) u + k - left - right]."""
  h, w = x.shape
  k = filt.shape[0]
  full = np.zeros(((h - 1) * upsample + k, (w - 1) * upsample + k))
  for i in range(h):
    for j in range(w):
      full[i * upsample:i * upsample + k, j * upsample:j * upsample + k] += x[i, j] * filt
  t, b, l, r = crop
  return full[t:full.shape[0] - b, l:full.shape[1] - r]


def bilinear_u(k):
  """peiyunh/tiny toolbox/bilinear_u.m (FCN's bilinear kernel), [k, k]."""
  f = np.ceil(k / 2)
  c = (2 * f - 1 - f % 2) / (2 * f)
  taps = 1 - np.abs(np.arange(k) / f - c)
  return np.outer(taps, taps)


@pytest.mark.parametrize("hw", [(4, 4), (5, 7), (1, 3)])
def test_bilinear_upsample_is_matconvnet_conv_transpose(hw):
  x = np.random.default_rng(0).normal(size=(1, *hw, 3)).astype(np.float32)
  got = np.asarray(layers.bilinear_upsample_2x(jnp.asarray(x), (2 * hw[0] - 1, 2 * hw[1] - 1)))
  for c in range(3):
    want = matconvnet_conv_transpose(x[0, :, :, c].astype(np.float64), bilinear_u(4), 2,
                                     (1, 2, 1, 2))
    assert got.shape[1:3] == want.shape == (2 * hw[0] - 1, 2 * hw[1] - 1)
    np.testing.assert_allclose(got[0, :, :, c], want, atol=1e-6)


@pytest.mark.parametrize("backbone", hr.BACKBONES)
@pytest.mark.parametrize("hw", [(71, 96), (80, 120), (500, 500), (33, 17)])
def test_output_shapes_odd_and_even(backbone, hw):
  """Score maps are min(ceil(H/8), 2 ceil(H/16) - 1): the stride-8 map cropped to the
  upsampled stride-16 map (its last row dropped when its size is even)."""
  model = hr.HybridResolution(hr.HRConfig(backbone=backbone))
  x = jnp.zeros((2, *hw, 3))
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, v, x)
  want = tuple(min(-(-n // 8), 2 * -(-n // 16) - 1) for n in hw)
  assert out["cls"].shape == (2, *want, 25) and out["reg"].shape == (2, *want, 100)
  assert hr.output_size(*hw) == want
  if hw == (500, 500):
    assert want == (63, 63)                       # the release's 500 x 500 training map


@pytest.mark.parametrize("backbone", [
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("mobilenet0.25", marks=pytest.mark.slow),
    pytest.param("vgg16", marks=pytest.mark.slow)])
def test_receptive_field_centres_of_the_taps(backbone):
  """With positive weights, identity BatchNorm and a positive random input every unit is
  linear, so |d tap[y, x] / d input| is centred on the cell's receptive field (max pools
  route to a random argmax, unbiased on average). res3 cells sit at offset + 8 j and res4
  cells at offset4 + 16 j; `hr_detector.cell_offset` is the res3 offset."""
  if backbone == "vgg16":
    module = backbones.VGG16()
  elif backbone == "mobilenet0.25":
    module = backbones.MobileNetV1("relu")
  else:
    module = backbones.ResNet(depth=backbone, last_layer=3)
  size = 192 if backbone == "resnet50" else 160
  x = jax.random.uniform(jax.random.key(1), (1, size, size, 3), minval=0.5, maxval=1.5)
  v = module.init(jax.random.key(0), x)
  def positive(path, a):                  # kernels: positive weighted averages (gain 1)
    if path[-1].key == "kernel":
      a = jnp.abs(a) + 0.01
      return a / a.sum(axis=tuple(range(a.ndim - 1)), keepdims=True)
    return jnp.ones_like(a) if path[-1].key == "scale" else jnp.zeros_like(a)

  v = {"params": jax.tree_util.tree_map_with_path(positive, v["params"]),
       "batch_stats": jax.tree_util.tree_map_with_path(
           lambda p, a: jnp.ones_like(a) if p[-1].key == "var" else jnp.zeros_like(a),
           v.get("batch_stats", {}))}
  names = ("C3", "C4")
  offset3 = hr_detector.cell_offset(backbone)
  offset4 = 7.5 if backbone == "vgg16" else 0.0
  for name, stride, offset in ((names[0], 8, offset3), (names[1], 16, offset4)):
    j = size // (2 * stride)

    def unit(img):
      return module.apply(v, img)[name][0, j, j].sum()

    g = np.abs(np.asarray(jax.grad(unit)(x)[0].sum(-1)))
    ys, xs = np.mgrid[:size, :size]
    cy, cx = (g * ys).sum() / g.sum(), (g * xs).sum() / g.sum()
    want = offset + stride * j
    assert abs(cy - want) < 1.5 and abs(cx - want) < 1.5, (name, cy, cx, want)


def test_templates_equal_the_mat_file(shared_dir):
  path = shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"
  raw = scipy.io.loadmat(str(path))["clusters"]
  det = detectors.build_detector("hr", {"backbone": "mobilenet0.25", "templates": str(path)})
  out = det.model.config
  assert out.num_templates == 25 == raw.shape[0]
  from tinyfaces_jax.detectors.hr import templates
  t = templates.load_templates(str(path))
  np.testing.assert_array_equal(t.boxes, raw[:, :4].astype(np.float32))
  np.testing.assert_array_equal(t.sigma, raw[:, 4].astype(np.float32))
  np.testing.assert_allclose(t.wh, np.stack([raw[:, 2] - raw[:, 0] + 1,
                                             raw[:, 3] - raw[:, 1] + 1], 1), rtol=1e-6)
  # Release pruning: 5-12 everywhere, 19-25 (sigma 2) only on the upsampled image.
  a, b = hr_detector.DEFAULT_ALLSCALE, hr_detector.DEFAULT_ONESCALE
  for scale, extra in ((0.25, ()), (0.5, ()), (1.0, ()), (2.0, tuple(range(19, 26)))):
    on = np.flatnonzero(hr_detector.active_templates(t.sigma, scale, a, b)) + 1
    assert tuple(on) == tuple(range(5, 13)) + extra


def test_loss_is_the_release_loss():
  rng = np.random.default_rng(3)
  tpl = np.array([[-7.5, -9.5, 7.5, 9.5], [-3.5, -4.5, 3.5, 4.5], [-12, -15, 12, 15]],
                 np.float32)
  h = w = 7
  cls = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  reg = (0.3 * rng.normal(size=(2, h, w, 12))).astype(np.float32)
  gt = np.array([[[10, 12, 26, 32], [30, 5, 39, 16], [0, 0, 0, 0]],
                 [[20, 20, 44, 50], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  mask = np.array([[True, True, False], [True, False, False]])
  region = np.array([[0, 0, 56, 56], [4, 2, 50, 56]], np.float32)
  cfg = hr_loss.TinyFacesLossConfig(easy_loss=0.0, max_pos=10_000, max_neg=10_000)
  batch = {"boxes": gt, "box_mask": mask, "valid_region": region}
  loss, m = hr_loss.tiny_faces_loss({"cls": jnp.asarray(cls), "reg": jnp.asarray(reg)}, batch,
                                   jnp.asarray(tpl), jax.random.key(0), cfg)
  want_cls, want_reg = tiny_faces_ref.release_loss(cls, reg, tpl, gt, mask, region, 0.0)
  assert float(m["num_pos"]) > 0
  np.testing.assert_allclose(float(m["loss_cls"]), want_cls, rtol=1e-5)
  np.testing.assert_allclose(float(m["loss_reg"]), want_reg, rtol=1e-5)
  np.testing.assert_allclose(float(loss), want_cls + want_reg, rtol=1e-5)
  # The release's mining: with the defaults at most 128 + 128 draws per image.
  _, m = hr_loss.tiny_faces_loss({"cls": jnp.asarray(cls), "reg": jnp.asarray(reg)}, batch,
                                jnp.asarray(tpl), jax.random.key(0))
  assert float(m["num_neg"]) <= 256 and float(m["num_pos"]) <= 256


def test_decode_inverts_the_training_targets(shared_dir):
  """Offsets equal to the targets of a face decode to that face (our x2 = x1 + w boxes)."""
  path = shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"
  det = detectors.build_detector("hr", {"backbone": "mobilenet0.25", "templates": str(path)})
  from tinyfaces_jax.detection import box_coder
  from tinyfaces_jax.detectors.hr import template_matching, templates
  tpl = jnp.asarray(templates.load_templates(str(path)).boxes)
  face = jnp.asarray([[37.0, 41.0, 37.0 + 30.0, 41.0 + 38.0]])
  h = w = 9
  grid = template_matching.template_grid(tpl, (h, w), offset=0.0).reshape(-1, 4)
  target = box_coder.encode_boxes(face - jnp.asarray([0, 0, 1, 1.0]), grid, (1.0, 1.0),
                                  pixel_offset=1.0)                     # [A, 4]
  t = tpl.shape[0]
  reg = jnp.moveaxis(target.reshape(h, w, t, 4), -1, 2).reshape(1, h, w, 4 * t)
  out = det.decode({"cls": jnp.zeros((1, h, w, t)), "reg": reg}, (72, 72), scale=2.0)
  np.testing.assert_allclose(np.asarray(out["boxes"][0]),
                             np.broadcast_to(np.asarray(face), (h * w * t, 4)), atol=1e-3)
  s = np.asarray(out["scores"][0]).reshape(h, w, t)
  assert np.allclose(s[..., 4:12], 0.5) and np.allclose(s[..., 18:], 0.5)
  assert np.all(s[..., :4] == 0) and np.all(s[..., 12:18] == 0)


def test_border_mask_is_the_releases_violation_mask(shared_dir):
  """border_mask: scores 0 exactly where cnn_widerface_test_AB.m's `violation` (1-based
  pixels: cell centre ofx + (x - 1) stx plus the template, x1 <= 0 | y1 <= 0 | x2 > w | y2 > h)
  flags the template; everything else as without the mask."""
  path = shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"
  from tinyfaces_jax.detectors.hr import templates
  tpl = templates.load_templates(str(path)).boxes[:, :4]
  kw = {"backbone": "mobilenet0.25", "templates": str(path)}
  plain = detectors.build_detector("hr", kw)
  masked = detectors.build_detector("hr", {**kw, "border_mask": True})
  h, w, t = 7, 9, tpl.shape[0]
  rng = np.random.default_rng(0)
  outs = {"cls": jnp.asarray(rng.normal(size=(1, h, w, t)), jnp.float32),
          "reg": jnp.asarray(0.1 * rng.normal(size=(1, h, w, 4 * t)), jnp.float32)}
  image_hw = (50, 70)
  a = np.asarray(plain.decode(outs, image_hw, 1.0)["scores"][0]).reshape(h, w, t)
  b = np.asarray(masked.decode(outs, image_hw, 1.0)["scores"][0]).reshape(h, w, t)
  ofs = 1.0                                      # mobilenet cell 0 at 0-based 0 = 1-based 1
  viol = np.zeros((h, w, t), bool)
  for y in range(h):
    for x in range(w):
      cx, cy = ofs + 8 * x, ofs + 8 * y
      x1, y1, x2, y2 = cx + tpl[:, 0], cy + tpl[:, 1], cx + tpl[:, 2], cy + tpl[:, 3]
      viol[y, x] = (x1 <= 0) | (y1 <= 0) | (x2 > image_hw[1]) | (y2 > image_hw[0])
  assert viol.any() and (~viol & (a > 0)).any()
  np.testing.assert_array_equal(b[viol], 0.0)
  np.testing.assert_array_equal(b[~viol], a[~viol])
  # Two images padded into that input: the first 42 x 60 (its own border), the second
  # mirrored (a flipped branch puts it at the right: x from 70 - 60 = 10 to 70).
  outs2 = jax.tree.map(lambda v: jnp.concatenate([v, v]), outs)
  region = inference.image_region(np.asarray([[42, 60], [42, 60]]), image_hw, image_hw, False)
  region = region.at[1].set(inference.image_region(np.asarray([[42, 60]]), image_hw, image_hw,
                                                   True)[0])
  np.testing.assert_allclose(region, [[0, 0, 60, 42], [10, 0, 70, 42]])
  c = np.asarray(masked.decode(outs2, image_hw, 1.0, region=region)["scores"]).reshape(
      2, h, w, t)
  for k, (left, right) in enumerate(((0, 60), (10, 70))):
    viol2 = np.zeros((h, w, t), bool)
    for y in range(h):
      for x in range(w):
        cx, cy = ofs + 8 * x, ofs + 8 * y
        x1, y1, x2, y2 = cx + tpl[:, 0], cy + tpl[:, 1], cx + tpl[:, 2], cy + tpl[:, 3]
        viol2[y, x] = (x1 <= left) | (y1 <= 0) | (x2 > right) | (y2 > 42)
    assert (viol2 & ~viol).any()
    np.testing.assert_array_equal(c[k][viol2], 0.0)
    np.testing.assert_array_equal(c[k][~viol2], a[~viol2])
  assert masked.decode_region and not plain.decode_region


def test_trunk_importers_cover_torchvision_layouts():
  """torchvision resnet101 (layer4 and fc ignored: HR stops at res4) and vgg16 (classifier
  ignored) state dicts fill every variable of the truncated trunks."""
  from tinyfaces_jax.pretrained import backbones_pth as bp
  for depth in ("resnet101",):
    entries = bp.backbone_entries(depth, "", ())
    model = backbones.ResNet(depth=depth)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    sd = _zeros_for(entries, shapes)
    sd.update({"fc.weight": np.zeros((1000, 2048)), "fc.bias": np.zeros(1000)})
    got = _load(bp, sd, depth, 3)
    assert "layer4_0" not in got["params"] and "layer3_22" in got["params"]
  entries = bp.vgg16_entries(5)
  shapes = jax.eval_shape(backbones.VGG16().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  sd = _zeros_for(entries, shapes)
  assert sorted({int(k.split(".")[1]) for k in sd}) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21,
                                                        24, 26, 28]   # torchvision indices
  sd.update({"classifier.0.weight": np.zeros((4096, 25088))[:1]})
  got = _load(bp, sd, "vgg16", 5)
  assert got["params"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)


def _zeros_for(entries, shapes):
  leaves = {"/".join(k.key for k in p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  sd = {}
  for key, coll, path, perm in entries:
    shape = leaves["/".join((coll,) + path)]
    sd[key] = np.zeros(shape if perm is None else tuple(shape[i] for i in np.argsort(perm)),
                       np.float32)
  return sd


def _load(bp, sd, backbone, last):
  import unittest.mock
  with unittest.mock.patch.object(bp, "load_torch_checkpoint", lambda path: sd):
    return bp.load_trunk("unused.pth", backbone, last)




def test_hr_trains_and_evaluates_end_to_end(tmp_path):
  """configs/hr_res101.py:backbone=mnet025,test through the training system on 8 devices:
  finite losses, checkpoints, a pyramid (0.5, 1, 2) evaluation with predictions written."""
  from configs import hr_res101
  from tinyfaces_jax.training import train
  c = hr_res101.get_config("backbone=mnet025,test")
  c.data.data_dir = str(tmp_path / "tfds")
  r = train.train_and_evaluate(c, str(tmp_path / "wd"))
  assert r["step"] == 4 and not r["preempted"]
  (final,) = r["evals"]
  assert final["num_images"] == 8 and 0.0 <= final["scalars"]["wider/ap_hard"] <= 1.0
  assert len(list((tmp_path / "wd/eval/step_4/wider/predictions").rglob("*.txt"))) == 8


@pytest.mark.slow
def test_hr_step_8_devices_equals_1(shared_dir):
  """The HR loss draws its hard-mining subsets from the step key: the same draws, losses and
  labels whatever the sharding."""
  from tinyfaces_jax.training import optim, sharding, train_step
  det = detectors.build_detector("hr", {"backbone": "mobilenet0.25", "templates": str(
      shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat")}, {})
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 60, (8, 3, 2))
  batch = {"image": rng.uniform(0, 255, (8, 96, 96, 3)).astype(np.float32),
           "boxes": np.concatenate([xy, xy + rng.uniform(10, 36, (8, 3, 2))], -1)
           .astype(np.float32),
           "box_mask": np.ones((8, 3), bool),
           "valid_region": np.tile(np.float32([0, 0, 96, 96]), (8, 1))}
  out = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = sharding.make_mesh(devices)
    state = train_step.init_detector_state(det, optim.OptimConfig(learning_rate=1e-2),
                                           (96, 96), mesh)
    step = train_step.detector_train_step(det, mesh)
    state, m = step(state, sharding.host_to_global(batch, mesh), jax.random.key(1))
    out.append({k: float(m[k]) for k in ("loss", "num_pos", "num_neg")})
  assert len(jax.devices()) == 8 and out[0]["num_neg"] > 0
  assert out[0]["num_pos"] == out[1]["num_pos"] and out[0]["num_neg"] == out[1]["num_neg"]
  np.testing.assert_allclose(out[0]["loss"], out[1]["loss"], rtol=1e-5)
