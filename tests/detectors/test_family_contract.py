"""The family contracts a cascade needs, end to end: a detector package that brings its own
training input (fixed-size crops instead of whole-image batches) and its own prediction (a
window proposal stage, then a network on resampled crops) is trained, evaluated by the WIDER
and FDDB evaluators of one config, and run by `detect`, through the same loop and CLIs as the
built-in families. The package lives in a temporary folder added to `detectors.__path__`, so
it is found the way every family is: by module name."""

import json
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config

FAMILY = "toycascade"

INIT = '''
"""A toy two-stage family: 32 px windows proposed on a grid, each resampled to 16 px and
scored by a one-conv network (stage 2)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tinyfaces_jax.detectors.base import Detector

CALLS = {"make_predict": 0}
WINDOW, CROP = 32, 16


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return {"logit": nn.Dense(1)(jnp.mean(nn.relu(x), axis=(1, 2)))[:, 0]}


def build(model, loss):
  assert not model and not loss

  def preprocess(images):
    return images.astype(jnp.float32) / 255.0

  def loss_fn(outputs, batch, key):
    del key
    label = batch["label"].astype(jnp.float32)
    value = jnp.mean(optax.sigmoid_binary_cross_entropy(outputs["logit"], label))
    return value, {"loss": value, "num_pos": jnp.sum(label)}

  def make_predict(cfg):
    CALLS["make_predict"] += 1

    @jax.jit
    def predict(variables, images, image_hw):
      b, h, w, _ = images.shape
      gh, gw = h // WINDOW, w // WINDOW
      win = images[:, :gh * WINDOW, :gw * WINDOW].reshape(b, gh, WINDOW, gw, WINDOW, 3)
      win = win.transpose(0, 1, 3, 2, 4, 5).reshape(b * gh * gw, WINDOW, WINDOW, 3)
      crops = jax.image.resize(win, (b * gh * gw, CROP, CROP, 3), "linear")
      out = Net().apply(variables, preprocess(crops), train=False)
      scores = jax.nn.sigmoid(out["logit"]).reshape(b, gh * gw)
      ys, xs = jnp.meshgrid(jnp.arange(gh), jnp.arange(gw), indexing="ij")
      x1, y1 = xs.reshape(-1) * WINDOW, ys.reshape(-1) * WINDOW
      boxes = jnp.stack([x1, y1, x1 + WINDOW, y1 + WINDOW], -1).astype(jnp.float32)
      inside = ((boxes[None, :, 2] <= image_hw[:, 1:2])
                & (boxes[None, :, 3] <= image_hw[:, 0:1]))   # windows in the image only
      k = min(cfg.max_output, gh * gw)
      top, idx = jax.lax.top_k(jnp.where(inside, scores, -1.0), k)
      return {"boxes": jnp.broadcast_to(boxes, (b,) + boxes.shape)[
                  jnp.arange(b)[:, None], idx],
              "scores": top, "valid": top > max(cfg.score_threshold, 0.0)}

    return predict

  return Detector(name="toycascade", model=Net(), preprocess=preprocess, loss=loss_fn,
                  decode=None, make_predict=make_predict)
'''

RECIPE = '''
"""Training input of the toy family: per image one face crop (label 1) and one corner crop
(label 0), resized to `size`; fixed-shape batches {image [b, size, size, 3], label [b]}."""
import tensorflow as tf

from tinyfaces_jax.data import pipeline

CALLS = []


def train_dataset(builder, split, *, batch_size, size, max_boxes, seed, start_step,
                  shuffle_buffer, threads, ram_budget_gb):
  CALLS.append(dict(split=split, batch_size=batch_size, size=size, start_step=start_step))
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=pipeline.host_split(split), shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})

  def crops(ex):
    d = pipeline.decode_example(ex)
    img = tf.cast(d["image"], tf.float32)
    hw = tf.cast(tf.shape(img)[:2], tf.float32)
    box = tf.concat([d["boxes"], [[0.0, 0.0, 8.0, 8.0]]], 0)[0]
    face = tf.image.crop_and_resize(img[None], [[box[1] / hw[0], box[0] / hw[1],
                                                 box[3] / hw[0], box[2] / hw[1]]], [0],
                                    [size, size])[0]
    corner = tf.image.resize(img[:size, :size], [size, size])
    return tf.data.Dataset.from_tensor_slices({"image": tf.stack([face, corner]),
                                               "label": tf.constant([1, 0], tf.int32)})

  ds = ds.flat_map(crops).repeat().shuffle(shuffle_buffer, seed=seed)
  return ds.batch(batch_size, drop_remainder=True).skip(start_step)
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
  """The package on the detectors path (removed, with its modules, afterwards)."""
  from tinyfaces_jax import detectors
  pkg = tmp_path / "families" / FAMILY
  pkg.mkdir(parents=True)
  (pkg / "__init__.py").write_text(textwrap.dedent(INIT))
  (pkg / "recipe.py").write_text(textwrap.dedent(RECIPE))
  monkeypatch.setattr(detectors, "__path__", list(detectors.__path__) + [str(pkg.parent)])
  yield
  for name in [m for m in sys.modules if m.startswith(f"tinyfaces_jax.detectors.{FAMILY}")]:
    del sys.modules[name]


def write_fddb(root, rng):
  """Three FDDB-layout images (one ellipse each) under root/originalPics and root/FDDB-folds.
  -> the image names."""
  names = [f"2002/08/{11 + i}/big/img_{i}" for i in range(3)]
  ellipses = []
  for i, name in enumerate(names):
    path = root / "originalPics" / f"{name}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 255, (70 + 10 * i, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels if i else pixels[..., 0]).save(path)   # one grayscale JPEG
    ellipses.append(f"{name}\n1\n14.0 10.0 0.3 {30 + 5 * i}.0 30.0 1\n")
  folds = root / "FDDB-folds"
  folds.mkdir(parents=True)
  (folds / "FDDB-fold-01.txt").write_text("\n".join(names) + "\n")
  (folds / "FDDB-fold-01-ellipseList.txt").write_text("".join(ellipses))
  return names


def test_own_training_input_and_prediction_through_loop_evaluators_and_detect(
    toy_family, tmp_path):
  from configs import common
  from tinyfaces_jax import detectors
  from tinyfaces_jax.cli import detect
  from tinyfaces_jax.training import checkpointing
  from tinyfaces_jax.training import train

  assert FAMILY in detectors.known_families()
  names = write_fddb(tmp_path / "fddb", np.random.default_rng(0))
  c = test_config.get_config()
  c.detector = FAMILY
  c.data.recipe = FAMILY
  c.data.image_size = 16
  c.data.data_dir = str(tmp_path / "tfds")
  c.model, c.loss = {}, {}
  c.eval.max_output = 6
  c.eval.resize = "none"   # windows are 32 px in original pixels too
  common.add_fddb(c, str(tmp_path / "fddb"))
  c.eval.evaluators.fddb.folds = "1"
  result = train.train_and_evaluate(c, str(tmp_path / "wd"))

  family = sys.modules[f"tinyfaces_jax.detectors.{FAMILY}"]
  recipe = sys.modules[f"tinyfaces_jax.detectors.{FAMILY}.recipe"]
  # The loop trained on the family's crops: one call, the host batch, the configured size.
  assert recipe.CALLS == [dict(split="train", batch_size=8, size=16, start_step=0)]
  assert result["step"] == 4 and not result["preempted"]
  # One evaluation: the family's predictor (built once) over 8 WIDER + 3 FDDB images.
  (ev,) = result["evals"]
  assert family.CALLS["make_predict"] == 1
  assert ev["num_images"] == 11
  assert sorted(ev["scalars"]) == sorted(
      [f"wider/ap_{s}" for s in ("easy", "medium", "hard")]
      + [f"fddb/{k}_tpr_fp{n}" for k in ("disc", "cont") for n in (100, 500, 1000, 2000)])
  assert all(0.0 <= v <= 1.0 for v in ev["scalars"].values())
  out = tmp_path / "wd" / "eval" / "step_4"
  assert json.loads((out / "summary.json").read_text())["scalars"] == ev["scalars"]
  fddb = json.loads((out / "fddb" / "fddb.json").read_text())
  assert (fddb["num_images"], fddb["num_faces"]) == (3, 3)
  # Every FDDB image has its block of (at most max_output) 32 px windows inside the image.
  lines = (out / "fddb" / "detections.txt").read_text().splitlines()
  assert [lines[i] for i in range(len(lines)) if lines[i] in names] == names
  for name in names:
    i = lines.index(name)
    rows = np.asarray([list(map(float, r.split())) for r in lines[i + 2:i + 2 + int(lines[i + 1])]])
    assert 0 < len(rows) <= 6 and np.all(rows[:, 2:4] == 32.0)
    assert np.all(rows[:, 0] + 32 <= 96) and np.all(rows[:, 1] + 32 <= 100)
  assert (out / "fddb" / "fddb_disc_roc.png").stat().st_size > 1000
  assert len(list((out / "wider" / "predictions").rglob("*.txt"))) == 8

  # detect: the workdir's own config (the toy family) and weights, the family's predictor.
  photo = tmp_path / "fddb" / "originalPics" / f"{names[1]}.jpg"
  r = detect.run(checkpointing.saved_config(str(tmp_path / "wd")), str(tmp_path / "wd"),
                 str(tmp_path / "det"), [str(photo)], min_score=0.0, log=lambda m: None)
  assert r["images"] == 1 and family.CALLS["make_predict"] == 2
  record = json.loads((tmp_path / "det" / "img_1.json").read_text())
  boxes = np.asarray([f["box"] for f in record["faces"]])
  assert 0 < len(boxes) <= 6 and np.allclose(boxes[:, 2:] - boxes[:, :2], 32.0)
