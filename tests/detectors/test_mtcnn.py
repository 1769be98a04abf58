"""MTCNN: the importers, the three networks against facenet-pytorch's outputs, the static-shape
cascade against facenet-pytorch's detections (../shared/reference/mtcnn_facenet.npz, from the
original code) and its building blocks against numpy statements."""

import json
import os
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyfaces_jax.detectors import build_detector
from tinyfaces_jax.detectors.mtcnn import cascade, model as model_lib, weights
from tinyfaces_jax.pretrained import joblib_lz4

IMAGES = ("t1", "multiface", "ivan", "nofaces")


@pytest.fixture(scope="module")
def ref(shared_dir):
  return dict(np.load(shared_dir / "reference" / "mtcnn_facenet.npz"))


@pytest.fixture(scope="module")
def weights_dir(shared_dir):
  return str(shared_dir / "weights" / "mtcnn")


@pytest.fixture(scope="module")
def det():
  return build_detector("mtcnn", {}, {})


@pytest.fixture(scope="module")
def variables(det, weights_dir):
  return det.import_weights(weights_dir)


def test_pt_and_lz4_files_import_to_the_same_numbers(det, weights_dir, variables):
  """facenet-pytorch's .pt and the PyPI package's .lz4 hold the same weights up to layout
  (../shared/references/mtcnn_alignment.md 0), so both importers give one tree, exactly."""
  from_lz4 = weights.load_mtcnn(os.path.join(weights_dir, "onet.lz4"))
  assert jax.tree.structure(from_lz4) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(from_lz4), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  init = jax.eval_shape(lambda: det.init_variables((48, 48)))
  assert jax.tree.map(np.shape, init["params"]) == jax.tree.map(np.shape, variables["params"])


def test_networks_match_facenet_outputs(det, variables, ref):
  m = det.model
  out = m.apply(variables, jnp.asarray(ref["pnet_input"]).transpose(0, 2, 3, 1), method="pnet")
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(out["logits"], -1)).transpose(0, 3, 1, 2),
                             ref["pnet_prob"], atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["reg"]).transpose(0, 3, 1, 2), ref["pnet_reg"],
                             atol=1e-5)
  out = m.apply(variables, jnp.asarray(ref["rnet_input"]).transpose(0, 2, 3, 1), method="rnet")
  np.testing.assert_allclose(jax.nn.softmax(out["logits"], -1), ref["rnet_prob"], atol=1e-5)
  np.testing.assert_allclose(out["reg"], ref["rnet_reg"], atol=1e-5)
  out = m.apply(variables, jnp.asarray(ref["onet_input"]).transpose(0, 2, 3, 1), method="onet")
  np.testing.assert_allclose(jax.nn.softmax(out["logits"], -1), ref["onet_prob"], atol=1e-5)
  np.testing.assert_allclose(out["reg"], ref["onet_reg"], atol=1e-5)
  np.testing.assert_allclose(out["landmarks"], ref["onet_landmarks"], atol=1e-5)


def test_pyramid_is_facenets(ref):
  h, w = ref["t1_image_rgb"].shape[:2]
  np.testing.assert_allclose(cascade.pyramid_scales(min(h, w), cascade.CascadeConfig()),
                             ref["pnet_scales_t1"], rtol=0, atol=0)


def area_resize_ref(img, oh, ow):
  """torch interpolate(mode='area') = adaptive average pooling, in float64 loops."""
  h, w = img.shape[:2]
  out = np.zeros((oh, ow, img.shape[2]))
  for i in range(oh):
    y0, y1 = (i * h) // oh, -(-((i + 1) * h) // oh)
    for j in range(ow):
      x0, x1 = (j * w) // ow, -(-((j + 1) * w) // ow)
      out[i, j] = img[y0:y1, x0:x1].reshape(-1, img.shape[2]).mean(0)
  return out


def test_area_resample_matches_adaptive_pooling():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (41, 37, 3)).astype(np.float32)
  integral = cascade.integral_image(jnp.asarray(img))
  for (y0, x0, h, w, oh, ow) in [(0, 0, 41, 37, 25, 23), (3, 5, 17, 30, 24, 24),
                                 (10, 2, 7, 9, 24, 24), (0, 0, 41, 37, 41, 37)]:
    got = cascade.area_resample(integral, y0, x0, h, w, oh, ow, (oh + 2, ow + 3))
    want = area_resize_ref(img[y0:y0 + h, x0:x0 + w], oh, ow)
    np.testing.assert_allclose(np.asarray(got)[:oh, :ow], want, rtol=1e-6, atol=1e-4)
    assert not np.asarray(got)[oh:].any() and not np.asarray(got)[:, ow:].any()


def bilinear_ref(img, valid_hw, y0, x0, h, w, oh, ow):
  """The MATLAB-style crop, one output pixel at a time: half-pixel centres clamped to the
  window, neighbours outside the image's valid area read 0."""
  out = np.zeros((oh, ow, 3))

  def px(y, x):
    ok = 0 <= y < valid_hw[0] and 0 <= x < valid_hw[1]
    return img[y, x] if ok else np.zeros(3)
  for i in range(oh):
    sy = min(max((i + 0.5) * h / oh - 0.5, 0.0), h - 1.0)
    ya = int(np.floor(sy))
    fy, yb = sy - ya, min(ya + 1, h - 1)
    for j in range(ow):
      sx = min(max((j + 0.5) * w / ow - 0.5, 0.0), w - 1.0)
      xa = int(np.floor(sx))
      fx, xb = sx - xa, min(xa + 1, w - 1)
      out[i, j] = ((1 - fy) * ((1 - fx) * px(y0 + ya, x0 + xa) + fx * px(y0 + ya, x0 + xb))
                   + fy * ((1 - fx) * px(y0 + yb, x0 + xa) + fx * px(y0 + yb, x0 + xb)))
  return out


def test_bilinear_crops_match_a_loop_statement():
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (40, 50, 3)).astype(np.float32)
  valid = (33, 45)                                  # the rest is bucket padding
  for (y0, x0, h, w, oh, ow) in [(0, 0, 33, 45, 20, 27), (-6, 30, 24, 30, 24, 24),
                                 (25, -3, 12, 9, 24, 24), (5, 5, 1, 1, 24, 24)]:
    got = cascade.bilinear_resample(jnp.asarray(img), valid, y0, x0, jnp.int32(h), jnp.int32(w),
                                    oh, ow, (24, 28))
    np.testing.assert_allclose(np.asarray(got)[:oh, :ow],
                               bilinear_ref(img, valid, y0, x0, h, w, oh, ow), atol=1e-3)
    assert not np.asarray(got)[oh:].any() and not np.asarray(got)[:, ow:].any()


@pytest.mark.slow
def test_bilinear_cascade_finds_the_people(det, weights_dir, ref):
  """resample="bilinear" (the MATLAB code's resampling) is another detector, not facenet's:
  on t1 it still boxes the six people (IoU > 0.8 with facenet's boxes)."""
  from tinyfaces_jax import inference
  from tinyfaces_jax.detection import box_ops
  bil = build_detector("mtcnn", {"resample": "bilinear"}, {})
  res = jax.device_get(inference.make_predict_fn(bil, inference.InferenceConfig())(
      det.import_weights(weights_dir), ref["t1_image_rgb"][None].astype(np.float32)))
  boxes = res["boxes"][0][res["valid"][0]]
  people = ref["t1_boxes"][ref["t1_probs"] > 0.95]
  assert len(people) == 6
  assert (np.asarray(box_ops.pairwise_iou(people, boxes)).max(1) > 0.8).all()


def test_pnet_on_a_padded_input_equals_pnet_on_the_image(det, variables):
  """The valid_hw mask keeps padding out of the ceil pool: every cell of the image's own map
  equals P-Net on the image alone (odd sizes make the last pool window partial)."""
  rng = np.random.default_rng(1)
  img = model_lib.normalise(rng.integers(0, 256, (2, 37, 51, 3)).astype(np.float32))
  alone = det.model.apply(variables, img, method="pnet")
  padded = jnp.pad(img, ((0, 0), (0, 12), (0, 9), (0, 0)), constant_values=3.0)
  got = det.model.apply(variables, padded, jnp.asarray([[37, 51], [37, 51]]), method="pnet")
  ch, cw = model_lib.pnet_output_size(37), model_lib.pnet_output_size(51)
  assert alone["logits"].shape[1:3] == (ch, cw)
  for k in ("logits", "reg"):
    np.testing.assert_allclose(got[k][:, :ch, :cw], alone[k], atol=1e-5)


def match_faces(boxes, ref_boxes):
  """ref index -> our index, one to one, nearest box (L-inf)."""
  out = {}
  for i, rb in enumerate(ref_boxes):
    d = np.abs(boxes - rb).max(1)
    j = int(np.argmin(d))
    assert j not in out.values()
    out[i] = j
  return out


def other_photos(shared_dir) -> list:
  """Photos the fixture was not made from: skimage's astronaut, a collage of the reference
  photos rescaled and pasted at odd offsets (more, smaller faces; new pyramid geometry) and a
  rotated, mirrored crop of t1."""
  from PIL import Image
  from skimage import data as skdata
  ref = shared_dir / "reference" / "images"
  t1 = Image.open(ref / "t1.jpg").convert("RGB")
  multi = Image.open(ref / "multiface.jpg").convert("RGB")
  canvas = Image.new("RGB", (733, 517), (118, 121, 97))
  canvas.paste(t1.resize((461, 319), Image.BILINEAR), (7, 3))
  canvas.paste(multi.resize((390, 205), Image.BILINEAR), (331, 301))
  canvas.paste(multi.crop((0, 0, 400, 630)).resize((150, 236)), (560, 20))
  turned = t1.crop((200, 150, 1100, 800)).transpose(Image.Transpose.ROTATE_90)
  turned = turned.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((423, 585))
  return [np.asarray(skdata.astronaut()), np.asarray(canvas), np.asarray(turned)]


def test_weight_files_are_found_and_checked(tmp_path, weights_dir):
  for n in model_lib.NETS:
    shutil.copy(os.path.join(weights_dir, f"{n}.lz4"), tmp_path / f"{n}.lz4")
  assert weights.weight_files(str(tmp_path))["rnet"].endswith("rnet.lz4")
  os.remove(tmp_path / "onet.lz4")
  with pytest.raises(FileNotFoundError, match="pnet, rnet and onet"):
    weights.weight_files(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not found"):
    weights.weight_files(str(tmp_path / "nothing"))
  (tmp_path / "model.pt").write_bytes(b"x")
  with pytest.raises(ValueError, match="named pnet/rnet/onet"):
    weights.weight_files(str(tmp_path / "model.pt"))
  # A .pt of another network is named, not loaded into the wrong place.
  with pytest.raises(ValueError, match="rnet"):
    weights.load_net(os.path.join(weights_dir, "pnet.pt"), "rnet")


def test_installed_mtcnn_package_weights(tmp_path, monkeypatch, weights_dir, variables):
  """`pypi:mtcnn` finds the installed package's assets/weights without importing it."""
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="not installed"):
    weights.load_mtcnn(weights.PACKAGE)
  pkg = tmp_path / "mtcnn"
  (pkg / "assets" / "weights").mkdir(parents=True)
  (pkg / "__init__.py").write_text("raise ImportError('importing the package needs TF')\n")
  for n in model_lib.NETS:
    shutil.copy(os.path.join(weights_dir, f"{n}.lz4"), pkg / "assets" / "weights")
  loaded = weights.load_mtcnn(weights.PACKAGE)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_joblib_reader_refuses_code_and_names_bad_files(tmp_path, weights_dir):
  import lz4.frame
  arrays = joblib_lz4.read_joblib_lz4(os.path.join(weights_dir, "pnet.lz4"))
  assert [a.shape for a in arrays[:3]] == [(3, 3, 3, 10), (10,), (1, 1, 10)]
  evil = tmp_path / "evil.lz4"
  evil.write_bytes(lz4.frame.compress(pickle.dumps(os.getcwd)))
  with pytest.raises(pickle.UnpicklingError, match="refusing the global"):
    joblib_lz4.read_joblib_lz4(str(evil))
  raw = (tmp_path / "raw.lz4")
  raw.write_bytes(b"not lz4 at all")
  with pytest.raises(ValueError, match="raw.lz4: not an LZ4 frame"):
    joblib_lz4.read_joblib_lz4(str(raw))
  data = open(os.path.join(weights_dir, "pnet.lz4"), "rb").read()
  cut = tmp_path / "cut.lz4"
  cut.write_bytes(lz4.frame.compress(lz4.frame.decompress(data)[:5000]))
  with pytest.raises(pickle.UnpicklingError, match="cut.lz4"):
    joblib_lz4.read_joblib_lz4(str(cut))
  bad = tmp_path / "bad.lz4"
  bad.write_bytes(data[:200] + bytes(300) + data[500:])
  with pytest.raises((ValueError, pickle.UnpicklingError), match="bad.lz4"):
    joblib_lz4.read_joblib_lz4(str(bad))


def test_config_errors_name_the_key():
  from tinyfaces_jax import settings
  with pytest.raises(settings.ConfigError, match="min_face_sise"):
    build_detector("mtcnn", {"min_face_sise": 20}, {})
  with pytest.raises(settings.ConfigError, match="resample must be one of"):
    build_detector("mtcnn", {"resample": "cubic"}, {})
  with pytest.raises(settings.ConfigError, match="min_face_size must be >= 12"):
    build_detector("mtcnn", {"min_face_size": 8}, {})
  with pytest.raises(settings.ConfigError, match=r"config.loss.keep_ratoi \(did you mean "
                                                 r"config.loss.keep_ratio\?\)"):
    build_detector("mtcnn", {}, {"keep_ratoi": 0.7})


@pytest.fixture(scope="module")
def detected(tmp_path_factory, shared_dir, weights_dir):
  """`detect` with the MTCNN config (and --align) on the four reference photos and three other
  photos (PNG), all padded into one bucket and one batch: one compile, each image's own size
  driving its pyramid. -> (output folder, {stem: RGB array} of the other photos)."""
  from PIL import Image
  from configs import mtcnn as mtcnn_config
  from tinyfaces_jax.cli import detect
  folder = tmp_path_factory.mktemp("photos")
  for f in (shared_dir / "reference" / "images").iterdir():
    shutil.copy(f, folder / f.name)
  others = {f"other{i}": img for i, img in enumerate(other_photos(shared_dir))}
  for stem, img in others.items():
    Image.fromarray(img).save(folder / f"{stem}.png")
  out = tmp_path_factory.mktemp("out")
  config = mtcnn_config.get_config()
  config.eval.bucket = 1280
  r = detect.run(config, weights_dir, str(out), [str(folder)], min_score=0.0, batch_size=8,
                 align=True, log=lambda *_: None)
  assert r["images"] == 7 and not r["failed"]
  return out, others


def read_faces(out, stem):
  faces = json.loads((out / f"{stem}.json").read_text())["faces"]
  assert (out / f"{stem}.png").is_file()
  return faces


def check_faces(faces, boxes, probs, landmarks, what):
  assert len(faces) == len(boxes), what
  if not faces:
    return
  ours = np.asarray([f["box"] for f in faces])
  for i, j in match_faces(ours, boxes).items():
    np.testing.assert_allclose(faces[j]["box"], boxes[i], atol=0.05, err_msg=what)
    np.testing.assert_allclose(faces[j]["landmarks"], landmarks[i], atol=0.05, err_msg=what)
    np.testing.assert_allclose(faces[j]["score"], probs[i], atol=1e-4, err_msg=what)


def test_detect_matches_facenet_detections(detected, ref):
  """The reference photos: the same faces as facenet-pytorch's detect(), boxes and landmarks
  within 0.05 px, scores within 1e-4, in the JSON every family writes; with --align one ArcFace
  crop per face, the warp of norm_crop on that face's landmarks."""
  from PIL import Image
  from tinyfaces_jax.alignment import similarity
  out, _ = detected
  total = 0
  for name, stem in zip(IMAGES, ("t1", "multiface", "ivan", "no-faces")):
    faces = read_faces(out, stem)
    check_faces(faces, ref[f"{name}_boxes"], ref[f"{name}_probs"], ref[f"{name}_landmarks"],
                name)
    total += len(faces)
    image = ref[f"{name}_image_rgb"]
    for i, f in enumerate(faces):
      crop = np.asarray(Image.open(out / f"{stem}_face{i}.png"))
      want = similarity.norm_crop(image[None].astype(np.float32),
                                  np.asarray([f["landmarks"]], np.float32))[0]
      assert crop.shape == (112, 112, 3)
      assert np.abs(crop.astype(np.float32) - np.asarray(want)).max() <= 1.0
    assert not (out / f"{stem}_face{len(faces)}.png").exists()
  assert total == 8 + 6 + 1


def test_detect_matches_the_numpy_statement_on_other_photos(detected, weights_dir):
  """Photos the fixture does not have, against tests/reference/mtcnn.py (facenet-pytorch's
  detect_face in numpy, itself checked against the real outputs: crops bit-identical)."""
  from tests.reference import mtcnn as mtcnn_ref
  out, others = detected
  sds = mtcnn_ref.load_state_dicts(weights_dir)
  total = 0
  for stem, img in others.items():
    want = mtcnn_ref.detect(sds, img)
    check_faces(read_faces(out, stem), want["boxes"], want["probs"], want["landmarks"], stem)
    total += len(want["boxes"])
  assert total >= 10
