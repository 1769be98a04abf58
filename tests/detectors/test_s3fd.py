"""S3FD: the importers of both public layouts on synthetic state dicts with the real key names
and shapes (no S3FD weights exist offline), the network and decoding against a numpy statement
of the releases' forward (tests/reference/s3fd.py), map sizes and prior counts, and a file of
one release refused by a model of another geometry."""

import json

import jax
import tensorflow as tf
import jax.numpy as jnp
import numpy as np
import pytest

from tests.reference import s3fd as ref
from tests.support import torch_files
from tinyfaces_jax import detectors, settings
from tinyfaces_jax.detection import box_coder
from tinyfaces_jax.detectors.s3fd import model as s3fd_model

TRUNK_SHAPES = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
                (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
HEADS = [("conv3_3_norm", 256, 4), ("conv4_3_norm", 512, 2), ("conv5_3_norm", 512, 2),
         ("fc7", 1024, 2), ("conv6_2", 512, 2), ("conv7_2", 256, 2)]


def caffe_layers() -> dict:
  """Caffe layer name -> (weight shape or None for a norm, bias?) in the releases' order."""
  out = {n: (o, i, 3, 3) for n, (o, i) in zip(ref.FA_TRUNK, TRUNK_SHAPES)}
  out.update(fc6=(1024, 512, 3, 3), fc7=(1024, 1024, 1, 1), conv6_1=(256, 1024, 1, 1),
             conv6_2=(512, 256, 3, 3), conv7_1=(128, 512, 1, 1), conv7_2=(256, 128, 3, 3))
  for name, c in (("conv3_3_norm", 256), ("conv4_3_norm", 512), ("conv5_3_norm", 512)):
    out[name] = (c,)
  for head, c, n_conf in HEADS:
    out[f"{head}_mbox_loc"] = (4, c, 3, 3)
    out[f"{head}_mbox_conf"] = (n_conf, c, 3, 3)
  return out


def file_names(layout: str) -> dict:
  """Caffe layer name -> the file's key prefix."""
  if layout == "face_alignment":
    return {n: n for n in caffe_layers()}
  names = {}
  vgg = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  names.update({n: f"vgg.{i}" for n, i in zip(ref.FA_TRUNK, vgg)})
  names.update(fc6="vgg.31", fc7="vgg.33")
  names.update({n: f"extras.{k}" for k, n in enumerate(("conv6_1", "conv6_2", "conv7_1",
                                                         "conv7_2"))})
  for s in ("3_3", "4_3", "5_3"):
    names[f"conv{s}_norm"] = f"L2Norm{s}"
  for k, (head, _, _) in enumerate(HEADS):
    names[f"{head}_mbox_loc"] = f"loc.{k}"
    names[f"{head}_mbox_conf"] = f"conf.{k}"
  return names


def synthetic_state_dict(layout: str, seed: int = 0, head_scale: float = 1.0) -> dict:
  """65 tensors (33 layers) with the release's names and shapes; He-scaled random convs
  (the heads' weights times `head_scale`: small heads give trained-like outputs, moderate
  box deltas and spread scores)."""
  rng = np.random.default_rng(seed)
  names, sd = file_names(layout), {}
  for layer, shape in caffe_layers().items():
    key = names[layer]
    if len(shape) == 1:
      sd[f"{key}.weight"] = np.full(shape, {256: 10.0, 512: 8.0}[shape[0]]
                                    if layer != "conv5_3_norm" else 5.0, np.float32)
      continue
    fan_in = shape[1] * shape[2] * shape[3]
    std = np.sqrt(2.0 / fan_in) * (head_scale if "_mbox_" in layer else 1.0)
    sd[f"{key}.weight"] = rng.normal(0, std, shape).astype(np.float32)
    sd[f"{key}.bias"] = rng.normal(0, 0.05, shape[0]).astype(np.float32)
  return sd


@pytest.mark.parametrize("layout,priors_640", [
    pytest.param("face_alignment", 34356, marks=pytest.mark.slow), ("yxlijun", 34125)])
def test_import_and_forward_match_the_numpy_release(layout, priors_640, tmp_path, monkeypatch):
  sd = synthetic_state_dict(layout)
  assert len(sd) == 65 and round(sum(v.size for v in sd.values()) / 1e4) == 2246  # 22.46M
  path = tmp_path / f"{layout}.pth"
  torch_files.write_state_dict(path, sd, monkeypatch)
  det = detectors.build_detector("s3fd", {"variant": layout}, {})
  variables = det.import_weights(str(path))
  cfg = det.model.config
  # Map sizes at 640: the pad-3 fc6 of face-alignment gives 24 / 12 / 6 on the last three.
  sizes = s3fd_model.feature_sizes(cfg, (640, 640))
  assert sum(h * w for h, w in sizes) == priors_640
  out = jax.eval_shape(lambda x: det.model.apply(variables, x), jnp.zeros((1, 640, 640, 3)))
  assert out["loc"].shape == (1, priors_640, 4) and out["conf"].shape == (1, priors_640, 2)
  # An odd-sized image (pool rounding, fc6 padding / dilation) against the numpy release.
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 255, (1, 75, 99, 3)).astype(np.float32)
  got = jax.jit(lambda v, x: det.model.apply(v, det.preprocess(x)))(variables,
                                                                   jnp.asarray(image))
  dec = det.decode(got, (75, 99))
  x = image[0] - np.asarray([123.0, 117.0, 104.0], np.float32)       # RGB minus the means
  x = x if layout == "yxlijun" else x[..., ::-1]                     # BGR for face-alignment
  loc, conf, shapes = ref.forward(
      sd, x.transpose(2, 0, 1), fc6_pad=cfg.fc6_padding, fc6_dilation=cfg.fc6_dilation,
      ceil=cfg.ceil_pools, names=file_names(layout))
  assert [tuple(s) for s in shapes] == s3fd_model.feature_sizes(cfg, (75, 99))
  scale = np.abs(loc).max()
  np.testing.assert_allclose(np.asarray(got["loc"][0]), loc, atol=2e-4 * scale)
  np.testing.assert_allclose(np.asarray(got["conf"][0]), conf, atol=2e-4 * np.abs(conf).max())
  boxes, scores = ref.decode(loc, conf, shapes)
  # The shared decoder clips log-size deltas at MAX_LOG_SCALE (random heads overshoot it
  # on a few anchors); within it the decode is the release's.
  ok = (loc[:, 2:] * 0.2).max(1) < box_coder.MAX_LOG_SCALE
  assert ok.mean() > 0.9
  np.testing.assert_allclose(np.asarray(dec["boxes"][0])[ok], boxes[ok], rtol=1e-3, atol=1e-2)
  np.testing.assert_allclose(np.asarray(dec["scores"][0]), scores, atol=1e-4)


def test_a_file_never_loads_into_the_wrong_geometry(tmp_path, monkeypatch):
  path = tmp_path / "s3fd-619a316812.pth"
  torch_files.write_state_dict(path, synthetic_state_dict("face_alignment"), monkeypatch)
  det = detectors.build_detector("s3fd", {"variant": "yxlijun"}, {})
  with pytest.raises(ValueError, match=r"a face_alignment S3FD file .* the model is the "
                                       r"'yxlijun' variant; set config.model.variant="
                                       r"'face_alignment'"):
    det.import_weights(str(path))
  other = tmp_path / "other.pth"
  torch_files.write_state_dict(other, {"fc.weight": np.zeros((2, 2), np.float32)}, monkeypatch)
  with pytest.raises(ValueError, match="not an S3FD state dict of a known release"):
    det.import_weights(str(other))
  with pytest.raises(settings.ConfigError, match="unknown S3FD variant 'sfd'"):
    detectors.build_detector("s3fd", {"variant": "sfd"}, {})


def test_caffe_variant_maps_and_anchors():
  """The paper's geometry: 160/80/40/20/10/5 at 640 (34,125 priors), ceil pools on odd
  sizes (the network's own output shapes agree), square anchors of 4 x stride."""
  det = detectors.build_detector("s3fd", {}, {})
  cfg = det.model.config
  assert s3fd_model.feature_sizes(cfg, (640, 640)) == [(160, 160), (80, 80), (40, 40),
                                                       (20, 20), (10, 10), (5, 5)]
  assert s3fd_model.feature_sizes(cfg, (75, 99))[:3] == [(19, 25), (10, 13), (5, 7)]
  x = jnp.zeros((2, 75, 99, 3))
  out = jax.eval_shape(lambda v: det.model.apply(v, x),
                       jax.eval_shape(lambda: det.init_variables((75, 99))))
  n = sum(h * w for h, w in s3fd_model.feature_sizes(cfg, (75, 99)))
  assert out["loc"].shape == (2, n, 4) and out["conf"].shape == (2, n, 2)
  anchors = np.asarray(s3fd_model.anchors(cfg, (640, 640)))
  assert anchors.shape == (34125, 4)
  np.testing.assert_allclose(anchors[0], [-6.0, -6.0, 10.0, 10.0])       # centre 2, side 16
  np.testing.assert_allclose(anchors[-1], [320.0, 320.0, 832.0, 832.0])   # centre 576, 512


def _ramp_example(h=300, w=400, boxes=((20, 30, 60, 80), (150, 100, 190, 150),
                                       (300, 200, 390, 290), (10, 250, 30, 270))):
  """An image whose R channel is x * K and G channel y * K (float, exact), with faces."""
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  image = np.stack([xs * RAMP, ys * RAMP, np.zeros_like(xs)], -1)
  n = len(boxes)
  return {"image": tf.constant(image), "boxes": tf.constant(boxes, tf.float32),
          "trainable": tf.ones([n], tf.bool), "landmarks": -tf.ones([n, 5, 2]),
          "landmarks_present": tf.zeros([n], tf.bool), "filename": tf.constant("x.jpg")}


RAMP = 0.5


def _recovered_roi(image: np.ndarray) -> np.ndarray:
  """The crop window [x1, y1, x2, y2] read back from the ramps of a bilinear (half-pixel)
  resize: output pixel j samples input x1 + (j + 0.5) * s - 0.5."""
  size = image.shape[0]
  out = []
  for ch, row in ((0, image[0, :, 0]), (1, image[:, 0, 1])):
    r0, r1 = row[0] / RAMP, row[-1] / RAMP
    s = (r1 - r0) / (size - 1)
    lo = r0 - 0.5 * s + 0.5
    out.append((lo, lo + s * size))
  return np.asarray([out[0][0], out[1][0], out[0][1], out[1][1]])


def test_recipe_crops_keep_faces_by_centre_and_map_them():
  """The Caffe data layer: square crops of 0.3..1 x the short side covering a whole face,
  faces kept by centre and clipped, boxes mapped into the 96 px output (read back from the
  image content, independent of the recipe's own bookkeeping)."""
  from tinyfaces_jax.detectors.s3fd import recipe
  ex = _ramp_example()
  src = ex["boxes"].numpy()
  sides = []
  for i in range(12):
    out = recipe.transform(ex, tf.constant([i, 3]), size=96, distort=False, flip_prob=0.0,
                           random_interpolation=False)
    img = out["image"].numpy()
    roi = _recovered_roi(img)
    side = roi[2] - roi[0]
    assert abs((roi[3] - roi[1]) - side) < 1.0                       # a square
    assert 0.3 * 300 - 1 <= side <= 300 + 1                           # 0.3..1 x short side
    sides.append(side)
    full = [(b[0] >= roi[0] - 1) & (b[1] >= roi[1] - 1) & (b[2] <= roi[2] + 1)
            & (b[3] <= roi[3] + 1) for b in src]
    assert any(full)                                                  # coverage 1 on a face
    c = (src[:, :2] + src[:, 2:]) / 2
    kept = ((c > roi[:2] + 1) & (c < roi[2:] - 1)).all(1)
    maybe = ((c > roi[:2] - 1) & (c < roi[2:] + 1)).all(1)
    got = out["boxes"].numpy()
    assert kept.sum() <= len(got) <= maybe.sum()
    want = (np.clip(src[maybe], np.tile(roi[:2], 2), np.tile(roi[2:], 2))
            - np.tile(roi[:2], 2)) * 96 / side
    if kept.sum() == maybe.sum():
      np.testing.assert_allclose(got, want, atol=0.6)
  assert max(sides) - min(sides) > 30                                 # the scales vary


def test_recipe_falls_back_to_the_whole_image_warped():
  """No square crop can cover a face wider than the short side: the whole image is warped to
  size x size (Caffe's WARP), boxes scaled per axis."""
  from tinyfaces_jax.detectors.s3fd import recipe
  ex = _ramp_example(boxes=((10, 20, 390, 280),))
  out = recipe.transform(ex, tf.constant([0, 1]), size=96, distort=False, flip_prob=0.0,
                         random_interpolation=False)
  np.testing.assert_allclose(out["boxes"].numpy(), [[10 * 96 / 400, 20 * 96 / 300,
                                                     390 * 96 / 400, 280 * 96 / 300]],
                             rtol=1e-5)
  np.testing.assert_allclose(_recovered_roi(out["image"].numpy()), [0, 0, 400, 300], atol=0.5)


@pytest.mark.slow
def test_s3fd_trains_and_evaluates_through_the_loop(tmp_path):
  """configs/s3fd_vgg16.py:test through the training system on 8 devices: its recipe, the
  two-stage matching loss, finite losses, a WIDER evaluation with predictions written."""
  from configs import s3fd_vgg16
  from tinyfaces_jax.training import train
  c = s3fd_vgg16.get_config("test")
  c.data.data_dir = str(tmp_path / "tfds")
  r = train.train_and_evaluate(c, str(tmp_path / "wd"))
  assert r["step"] == 4 and not r["preempted"]
  (final,) = r["evals"]
  assert final["num_images"] == 8 and 0.0 <= final["scalars"]["wider/ap_hard"] <= 1.0
  assert len(list((tmp_path / "wd/eval/step_4/wider/predictions").rglob("*.txt"))) == 8


def test_detect_on_a_face_alignment_file_is_its_pipeline(shared_dir, tmp_path, monkeypatch):
  """`detect --config=configs/s3fd_vgg16.py:variant=face_alignment --min_score=0.05` on a
  (synthetic) s3fd-*.pth and a real photo gives face-alignment's detections: its decode,
  score > 0.05, +1-pixel NMS at 0.3 (tests/reference: the numpy forward and py_cpu_nms)."""
  from PIL import Image
  from configs import s3fd_vgg16
  from tests.reference.nms import py_cpu_nms
  from tinyfaces_jax.cli import detect
  sd = synthetic_state_dict("face_alignment", seed=4, head_scale=0.02)
  weights = tmp_path / "s3fd-619a316812.pth"
  torch_files.write_state_dict(weights, sd, monkeypatch)
  photo = Image.open(shared_dir / "reference" / "images" / "t1.jpg").convert("RGB")
  photo = photo.resize((160, 112), Image.BILINEAR)
  photo.save(tmp_path / "t1.png")
  c = s3fd_vgg16.get_config("variant=face_alignment")
  c.eval.bucket = 16
  r = detect.run(c, str(weights), str(tmp_path / "out"), [str(tmp_path / "t1.png")],
                 min_score=0.05, log=lambda m: None)
  got = json.loads((tmp_path / "out" / "t1.json").read_text())["faces"]
  assert r["images"] == 1 and len(got) > 5
  x = np.asarray(photo, np.float32)[..., ::-1] - np.asarray([104.0, 117.0, 123.0])
  loc, conf, shapes = ref.forward(sd, x.transpose(2, 0, 1), fc6_pad=3, fc6_dilation=1,
                                  ceil=(False,) * 5, names=file_names("face_alignment"))
  boxes, scores = ref.decode(loc, conf, shapes)
  sel = scores > 0.05
  dets = np.concatenate([boxes[sel], scores[sel, None]], 1).astype(np.float32)
  keep = py_cpu_nms(dets, 0.3, stable=True)[:750]
  want = dets[keep]
  assert len(got) == len(want)
  np.testing.assert_allclose([f["score"] for f in got], want[:, 4], atol=2e-4)
  np.testing.assert_allclose([f["box"] for f in got], want[:, :4], atol=0.05)


# ----------------------------------------------------------------------------- release protocol
def test_release_branches_follow_the_wider_test_script():
  """sfd_test_code/WIDER_FACE/wider_test.py: shrink + flip, st for large faces, bt / doubling /
  max_im_shrink for small ones (values worked out by hand from the script)."""
  from tinyfaces_jax.detectors.s3fd import predict
  ms = np.sqrt(0x7FFFFFFF / 577 / (768 * 1024))                     # 2.1755
  assert predict.release_branches(768, 1024) == [
      (1.0, False, "all"), (1.0, True, "all"), (0.5, False, "large"), (2.0, False, "small"),
      (pytest.approx(ms), False, "small")]
  ms = np.sqrt(0x7FFFFFFF / 577 / (200 * 300))                      # 7.876: 2, 4, then max
  assert [b[0] for b in predict.release_branches(200, 300)][3:] == [2.0, 4.0, pytest.approx(ms)]
  ms = np.sqrt(0x7FFFFFFF / 577 / (2000 * 3000))                    # 0.788: no enlargement
  assert predict.release_branches(2000, 3000) == [
      (pytest.approx(ms), False, "all"), (pytest.approx(ms), True, "all"),
      (0.5, False, "large"), (pytest.approx((0.5 + ms) / 2), False, "large")]
  ms = np.sqrt(0x7FFFFFFF / 577 / (2500 * 3000))                    # 0.704 < 0.75
  assert predict.release_branches(2500, 3000)[2] == (pytest.approx(0.5 * ms), False, "large")
  ms = np.sqrt(0x7FFFFFFF / 577 / (1200 * 1600))                    # 1.39: bt = max
  assert predict.release_branches(1200, 1600)[3:] == [(pytest.approx(ms), False, "small")]


@pytest.mark.slow
def test_release_protocol_is_the_script_over_the_networks_branches(monkeypatch):
  """The protocol predictor = per branch the deploy net's output (threshold 0.05, top 5000,
  NMS 0.3, keep 750), the size filters, then the release's box voting (numpy references of
  NMS and bbox_vote over the same branch outputs). A small Caffe blob limit gives a tiny
  image the branch structure of a WIDER image (max_im_shrink 2.5: 1, flip, 0.5, 2, 2.5)."""
  from tests.reference import box_voting as vote_ref
  from tests.reference import nms as nms_ref
  from tinyfaces_jax import inference
  from tinyfaces_jax.detectors.s3fd import predict
  hw = (48, 64)
  monkeypatch.setattr(predict, "CAFFE_MAX_BLOB", 2.5 ** 2 * hw[0] * hw[1])
  det = detectors.build_detector("s3fd", {"backbone": "mobilenet0.25",
                                          "test_protocol": "release"}, {})
  rng = np.random.default_rng(0)
  variables = det.init_variables(hw, rng=jax.random.key(3))
  # The release's 0.05 / 5000 with a higher threshold and fewer candidates: the numpy NMS
  # reference is a Python loop.
  cfg = inference.InferenceConfig(score_threshold=0.3, iou_threshold=0.3, pre_nms_top_k=300,
                                  max_output=60)
  images = jnp.asarray(rng.uniform(0, 255, (1, *hw, 3)), jnp.float32)
  got = inference.make_predict_fn(det, cfg)(variables, images)
  branches = predict.release_branches(*hw)
  assert [round(b[0], 3) for b in branches] == [1.0, 1.0, 0.5, 2.0, 2.5]
  pooled = []
  for scale, flip, kind in branches:
    b, s, _ = jax.jit(lambda v, x: inference.run_branch(det, v, x, scale, flip))(variables, images)
    b, s = np.asarray(b[0]), np.asarray(s[0])
    keep = nms_ref.nms_ref(b, s, 0.3, 60, score_threshold=0.3, pre_nms_top_k=300)
    d = np.concatenate([b[keep], s[keep, None]], 1)
    w, h = d[:, 2] - d[:, 0] + 1, d[:, 3] - d[:, 1] + 1
    sel = {"all": np.ones(len(d), bool), "large": np.maximum(w, h) > 30,
           "small": np.minimum(w, h) < 100}[kind]
    pooled.append(d[sel])
  want = vote_ref.bbox_vote(np.concatenate(pooled), 0.3, 60)
  v = np.asarray(got["valid"][0])
  assert v.sum() == len(want) > 3
  np.testing.assert_allclose(np.asarray(got["scores"][0])[v], want[:, 4], atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["boxes"][0])[v], want[:, :4], atol=2e-3)


def test_mobilenet_s3fd_maps_and_weights_guard(tmp_path, monkeypatch):
  det = detectors.build_detector("s3fd", {"backbone": "mobilenet0.25"}, {})
  cfg = det.model.config
  for hw in ((640, 640), (37, 101)):
    out = jax.eval_shape(det.model.apply, jax.eval_shape(lambda: det.init_variables(hw)),
                         jnp.zeros((1, *hw, 3)))
    assert out["loc"].shape[1] == len(s3fd_model.anchors(cfg, hw))
  assert s3fd_model.feature_sizes(cfg, (640, 640)) == [(160, 160), (80, 80), (40, 40),
                                                       (20, 20), (10, 10), (5, 5)]
  sd = synthetic_state_dict("face_alignment")
  torch_files.write_state_dict(tmp_path / "s3fd.pth", sd, monkeypatch)
  with pytest.raises(ValueError, match="VGG16 networks"):
    det.import_weights(str(tmp_path / "s3fd.pth"))
  with pytest.raises(settings.ConfigError, match="test_protocol"):
    detectors.build_detector("s3fd", {"test_protocol": "relase"}, {})


def test_data_anchor_sampling_rescales_a_face_to_an_anchor_size():
  """PyramidBox data-anchor-sampling (S3FD.pytorch's anchor_crop_image_sampling): a 40 px face
  (nearest anchor 32, so targets 16 / 32 / 64) ends 8..128 px in the 640 output (target x
  2^U(-1, 1)), inside a window that contains it; the image content is the window's (ramps)."""
  from tinyfaces_jax.detectors.s3fd import recipe
  ex = _ramp_example(h=400, w=500, boxes=((200, 150, 239, 189),))        # 40 x 40 (+1)
  sides = []
  for i in range(16):
    out = recipe.transform(ex, tf.constant([i, 11]), size=640, distort=False, flip_prob=0.0,
                           anchor_sampling_prob=1.0)
    (box,) = out["boxes"].numpy()
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    sides.append(side)
    assert 8 * 39 / 40 - 1 <= side <= 128 + 1
    win = recipe.anchor_sample_window(ex["boxes"], tf.constant([400, 500]), tf.constant(
        [0, 0], tf.int64), 640)
    assert win.shape == (4,)
    img = out["image"].numpy()
    # Where the output shows the image (not the mean padding), its ramps give the source x, y
    # of each output pixel: the face's output box must sit on the face's source pixels.
    cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    if 0 <= cx < 640 and 0 <= cy < 640:
      np.testing.assert_allclose(img[cy, cx, :2] / RAMP, [219.5, 169.5], atol=2.0)
  assert max(sides) / min(sides) > 2                                   # the scale varies
