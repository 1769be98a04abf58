"""`python -m tinyfaces_jax.cli.detect` on the real photos in ../shared/reference/images: the faces
an independent detector (the MTCNN reference outputs) finds are found, the outputs follow the
documented layout, unreadable images are named and skipped, a training workdir loads, and
images, outputs and weights may be URLs (ram://, the gs:// code path)."""

import json
import shutil
import subprocess
import sys

import io

import jax
import numpy as np
import pytest
from PIL import Image

from tests.support import url_fs
from configs import retinaface_mnet025, test as test_config
from tinyfaces_jax.training import checkpointing, sharding, train
from tinyfaces_jax.cli import detect
from tinyfaces_jax.data import image_files
from tinyfaces_jax.detectors import base as detector_base
from tinyfaces_jax.detection import box_ops

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def config(resize="none"):
  c = retinaface_mnet025.get_config()
  c.init.backbone = ""
  c.eval.resize = resize
  return c


_LOADED = {}


def _load_once(detector, weights, _load=checkpointing.model_variables):
  """`checkpointing.model_variables`, once per weights file in this module (the slow part of
  a run)."""
  if weights not in _LOADED:
    _LOADED[weights] = _load(detector, weights)
  return _LOADED[weights]


@pytest.fixture(scope="module")
def detections(shared_dir, tmp_path_factory):
  images = tmp_path_factory.mktemp("images")
  for p in (shared_dir / "reference/images").iterdir():
    shutil.copy(p, images / p.name)
  (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  out = tmp_path_factory.mktemp("out")
  weights = shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(checkpointing, "model_variables", _load_once)
    result = detect.run(config(), str(weights), str(out), [str(images)], log=lambda m: None)
  return result, out, images


def test_finds_the_faces_of_the_reference_photos(detections, shared_dir):
  result, out, _ = detections
  assert result["images"] == 4
  mtcnn = np.load(shared_dir / "reference/mtcnn_facenet.npz")
  for stem, key, n in (("t1", "t1", 6), ("multiface", "multiface", 6), ("ivan", "ivan", 1),
                       ("no-faces", "nofaces", 0)):
    record = json.loads((out / f"{stem}.json").read_text())
    assert len(record["faces"]) == n, stem
    assert (out / f"{stem}.png").stat().st_size > 1000
    if not n:
      continue
    ours = np.array([f["box"] for f in record["faces"]], np.float32)
    theirs = mtcnn[f"{key}_boxes"][mtcnn[f"{key}_probs"] > 0.95]   # t1: the 6 people
    assert len(theirs) == n
    iou = np.asarray(box_ops.pairwise_iou(theirs, ours))
    assert (iou.max(1) > 0.75).all(), (stem, iou.max(1))
    assert sorted(iou.argmax(1).tolist()) == list(range(n))       # one box per person


def test_output_layout(detections, shared_dir):
  _, out, images = detections
  record = json.loads((out / "t1.json").read_text())
  assert record["image"] == str(images / "t1.jpg")
  assert (record["width"], record["height"]) == (1280, 886)
  assert record["min_score"] == 0.6
  scores = [f["score"] for f in record["faces"]]
  assert scores == sorted(scores, reverse=True) and min(scores) >= 0.6
  for f in record["faces"]:
    x1, y1, x2, y2 = f["box"]
    assert 0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 886
    assert np.array(f["landmarks"]).shape == (5, 2)
    (lx, ly), (rx, ry) = f["landmarks"][:2]
    assert x1 < lx < rx < x2 and y1 < ly < y2                     # eyes inside, left first


def test_unreadable_image_is_named_and_skipped(detections):
  result, out, images = detections
  assert result["failed"] == [str(images / "broken.jpg")]
  assert not (out / "broken.json").exists()
  with pytest.raises(ValueError, match="broken.jpg: cannot read the image"):
    image_files.load_image(images / "broken.jpg")
  with pytest.raises(FileNotFoundError, match="no such image file or folder: nope"):
    image_files.list_images(["nope"])


def test_weights_from_a_training_workdir(tmp_path):
  """A workdir (or its checkpoints/<step>) loads the checkpointed model variables without an
  optimizer; the workdir's config.json is the config detect uses when none is given; a
  checkpoint of another model is a one-line error naming the detector the run trained."""
  c = test_config.get_config()
  spec = train.RunSpec.from_config(c)
  mesh = sharding.make_mesh(jax.devices()[:1])
  manager = checkpointing.make_manager(tmp_path / "checkpoints")
  state = train.initial_state(spec, mesh, manager)[0]
  state = state.replace(step=state.step + 7,
                        params=jax.tree.map(lambda x: x + 1.0, state.params))
  checkpointing.save(manager, state, force=True)
  manager.wait_until_finished()
  manager.close()
  (tmp_path / "config.json").write_text(c.to_json_best_effort(indent=1))
  for weights in (tmp_path, tmp_path / "checkpoints" / "7"):
    variables, what = checkpointing.model_variables(spec.detector, str(weights))
    assert "step 7" in what
    for a, b in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    saved = checkpointing.saved_config(str(weights))
    assert saved.detector == "retinaface" and saved.model.preset == c.model.preset
    assert train.RunSpec.from_config(saved).detector.name == "retinaface"
  assert checkpointing.saved_config(str(tmp_path / "checkpoints" / "7" / "state")) is None
  with pytest.raises(FileNotFoundError, match="checkpoints/9: no such file or folder"):
    checkpointing.model_variables(spec.detector, str(tmp_path / "checkpoints" / "9"))
  other = test_config.get_config()
  other.model.preset = "resnet50"
  with pytest.raises(ValueError, match=r"does not fit the configured model .*configured "
                                       r"detector 'retinaface'; the run trained detector "
                                       r"'retinaface' \(its config.json: omit --config"):
    checkpointing.model_variables(train.RunSpec.from_config(other).detector, str(tmp_path))


def test_url_images_and_output_dir(shared_dir, ram_dir, monkeypatch):
  """Images read from, and JSON + PNG written to, ram:// URLs (the gs:// code path); the
  record names the image URL; nothing appears on the local disk."""
  monkeypatch.setattr(checkpointing, "model_variables", _load_once)  # the fixture's weights
  images = url_fs.copy_tree(shared_dir / "reference/images/ivan.jpg", ram_dir / "in/ivan.jpg")
  (ram_dir / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  weights = shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"
  out = ram_dir / "out"
  result = detect.run(config(), str(weights), str(out), [str(ram_dir / "in")],
                      log=lambda m: None)
  assert result["images"] == 1 and result["failed"] == [f"{ram_dir}/in/broken.jpg"]
  record = json.loads((out / "ivan.json").read_text())
  assert record["image"] == str(images) and len(record["faces"]) == 1
  with Image.open(io.BytesIO((out / "ivan.png").read_bytes())) as im:
    assert im.format == "PNG" and im.size == (record["width"], record["height"])
  # --weights as a URL file: the importer chain that train.initial_state runs reads it
  spec = train.RunSpec.from_config(config())
  shapes = jax.eval_shape(spec.detector.init_variables)
  remote = url_fs.copy_tree(weights, ram_dir / "w" / weights.name)
  loaded, what = detector_base.load_initial_weights(spec.detector, shapes, checkpoint=str(remote))
  assert what == f"whole model from {remote}"
  local = _load_once(spec, str(weights))[0]["params"]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded["params"]),
                                                   jax.tree.leaves(local)))
  assert url_fs.local_entries(".") == []


@pytest.mark.slow
def test_command_line(shared_dir, tmp_path):
  weights = shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"
  proc = subprocess.run([sys.executable, "-m", "tinyfaces_jax.cli.detect", f"--weights={weights}",
                         f"--output_dir={tmp_path}", "--scales=1,2", "--flip",
                         str(shared_dir / "reference/images/ivan.jpg")],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(json.loads((tmp_path / "ivan.json").read_text())["faces"]) == 1
