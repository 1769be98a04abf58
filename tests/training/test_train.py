"""The training system end to end on configs/test.py (8 CPU devices): train + evaluate,
kill-and-resume equality, a non-finite loss named by its step, eval-only mode, config errors,
and the RetinaFace step sharded over 8 devices equal to 1 device."""

import json
import os
import signal

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import test as test_config
from tinyfaces_jax import detectors, settings
from tinyfaces_jax.training import optim, sharding, train, train_step
from tests.support.url_fs import local_entries


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir, **train_overrides):
  c = test_config.get_config()
  c.data.data_dir = data_dir
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run_full")
  result = train.train_and_evaluate(make_config(data_dir), str(workdir))
  return workdir, result


def test_train_and_evaluate_end_to_end(uninterrupted, data_dir):
  workdir, result = uninterrupted
  assert result["step"] == 4 and not result["preempted"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  (final,) = result["evals"]
  assert final["step"] == 4 and final["num_images"] == 8
  aps = final["results"]["wider"]["aps"]
  assert set(aps) == {"easy", "medium", "hard"}
  assert all(0.0 <= a <= 1.0 for a in aps.values())
  assert final["scalars"] == {f"wider/ap_{k}": v for k, v in aps.items()}
  ev = workdir / "eval" / "step_4"
  assert json.loads((ev / "summary.json").read_text())["scalars"] == final["scalars"]
  written = sorted(p.name for p in (ev / "wider" / "predictions").rglob("*.txt"))
  assert len(written) == 8
  assert json.loads((ev / "wider" / "aps.json").read_text())["aps"] == aps
  assert (ev / "wider" / "wider_pr_curve_hard_val.png").stat().st_size > 1000
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["train"]["num_steps"] == 4
  assert any(p.startswith("events.out.tfevents") for p in os.listdir(workdir))
  # The embedded set's teacher landmarks reach RetinaFace's landmark loss.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(next(workdir.glob("events.out.tfevents*"))))
  events.Reload()
  landm = [float(np.asarray(tf.make_ndarray(e.tensor_proto)))
           for e in events.Tensors("train/loss_landm")]
  assert len(landm) == 2 and min(landm) > 0
  # Eval-only mode on the same workdir evaluates the latest checkpoint to the same APs.
  again = train.evaluate_only(make_config(data_dir), str(workdir))
  assert again["step"] == 4
  for s, a in final["scalars"].items():
    assert again["scalars"][s] == pytest.approx(a, abs=1e-12)


def test_sigterm_then_resume_equals_uninterrupted(uninterrupted, data_dir, tmp_path):
  """SIGTERM at step 1 saves and stops; rerunning resumes at 1 and ends where the
  uninterrupted run ended (same batches, same RNG), parameters equal."""
  _, full = uninterrupted

  def preempt(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  first = train.train_and_evaluate(make_config(data_dir), str(tmp_path), step_hook=preempt)
  assert first["preempted"] and first["step"] == 1 and first["evals"] == []
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  second = train.train_and_evaluate(make_config(data_dir), str(tmp_path))
  assert second["step"] == 4 and not second["preempted"]
  for tree in ("params", "batch_stats"):
    a = jax.tree.leaves(getattr(full["state"], tree))
    b = jax.tree.leaves(getattr(second["state"], tree))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  assert second["evals"][0]["scalars"] == pytest.approx(full["evals"][0]["scalars"], abs=1e-6)


def test_url_workdir_stays_a_url(uninterrupted, data_dir, ram_dir, tmp_path):
  """A `ram://` workdir (the code path of gs://: epath's URL backend, TensorBoard on a URL)
  with the checkpoints on local disk (orbax's arrays need a real filesystem or GCS): config,
  events and eval outputs land under the URL, nothing is created in
  the working directory (no `ram:` folder), and the run equals the local-workdir run."""
  c = make_config(data_dir, checkpoint_dir=str(tmp_path / "ckpt"), compilation_cache="")
  result = train.train_and_evaluate(c, str(ram_dir))
  assert result["step"] == 4 and not result["preempted"]
  assert local_entries(tmp_path / "cwd") == []
  assert json.loads((ram_dir / "config.json").read_text())["train"]["num_steps"] == 4
  assert any(p.name.startswith("events.out.tfevents") for p in ram_dir.iterdir())
  ev = ram_dir / "eval" / "step_4" / "wider"
  assert (json.loads((ev / "aps.json").read_text())["aps"]
          == result["evals"][0]["results"]["wider"]["aps"])
  assert (ev / "wider_pr_curve_hard_val.png").read_bytes()[:4] == b"\x89PNG"
  assert len(list((ev / "predictions").glob("*/*.txt"))) == 8
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["2", "4"]
  _, full = uninterrupted
  for x, y in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(result["state"].params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_non_finite_loss_stops_with_its_step(data_dir, tmp_path):
  c = make_config(data_dir, num_steps=6, log_every=3, checkpoint_every=100)
  c.optim.learning_rate = 1e12
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step [1-3];"):
    train.train_and_evaluate(c, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


def test_config_typos_are_named(data_dir):
  c = make_config(data_dir)
  with c.unlocked():
    c.train.num_step = 3
  with pytest.raises(settings.ConfigError, match=r"config\.train\.num_step \(did you mean "
                                                 r"config\.train\.num_steps\?\)"):
    train.RunSpec.from_config(c)
  c = make_config(data_dir)
  c.model.preset = "mnet26"
  with pytest.raises(settings.ConfigError, match="unknown RetinaFace preset 'mnet26'"):
    train.RunSpec.from_config(c)
  c = make_config(data_dir)
  c.eval.resize = "fitt"
  with pytest.raises(settings.ConfigError, match="config.eval: resize must be one of"):
    train.RunSpec.from_config(c)


def test_embedded_gpu_variants_are_valid_runs():
  """`:embedded,gpu`: the same recipe, longer, on a larger embedded set; `gpu` alone is an
  error naming the fix."""
  from configs import hr_res101, retinaface_mnet025
  rf = train.RunSpec.from_config(retinaface_mnet025.get_config("embedded,gpu"))
  hr = train.RunSpec.from_config(hr_res101.get_config("backbone=mnet025,embedded,gpu"))
  for spec, steps, batch in ((rf, 3000, 32), (hr, 4000, 16)):
    assert (spec.train.num_steps, spec.train.batch_size) == (steps, batch)
    assert (spec.data.source, spec.data.embedded_train) == ("embedded", 4000)
    assert spec.train.eval_every and steps % spec.train.eval_every == 0
  with pytest.raises(ValueError, match="write 'embedded,gpu'"):
    retinaface_mnet025.get_config("gpu")


def test_embedded_recipes_run_images_at_the_embedded_size():
  """Every `:embedded` recipe (and its gpu variant) runs an image at its own size, capped at
  the embedded set's long side, so a larger photo is shrunk to the scale trained on; the
  test shrink caps at its own tiny images."""
  from configs import hr_res101, retinaface_mnet025, s3fd_vgg16, ssh_vgg16
  configs = [retinaface_mnet025.get_config("embedded"),
             retinaface_mnet025.get_config("embedded,gpu"),
             hr_res101.get_config("backbone=mnet025,embedded"),
             hr_res101.get_config("backbone=mnet025,embedded,gpu"),
             s3fd_vgg16.get_config("backbone=mnet025,embedded"),
             ssh_vgg16.get_config("embedded")]
  for c in configs:
    spec = train.RunSpec.from_config(c)
    assert (spec.inference.resize, spec.inference.max_size) == ("none", 640), c.detector
    assert spec.data.embedded_image_size[1] == 640
  small = train.RunSpec.from_config(retinaface_mnet025.get_config("embedded,test"))
  assert small.inference.max_size == small.data.embedded_image_size[1] == 160
  # WIDER runs keep their own test resize (RetinaFace: shorter side 1600, longer <= 2150).
  wider = train.RunSpec.from_config(retinaface_mnet025.get_config())
  assert (wider.inference.resize, wider.inference.max_size) == ("fit", 2150)


def test_missing_initial_weights(data_dir, tmp_path):
  c = make_config(data_dir)
  c.init.backbone = str(tmp_path / "nope.tar")
  with pytest.raises(FileNotFoundError, match="nope.tar"):
    train.train_and_evaluate(c, str(tmp_path / "wd"))


def _retinaface_steps(devices, steps=2):
  """-> (variables after step 1 as numpy, losses of `steps` steps) of RetinaFace at 64 px."""
  det = detectors.build_detector("retinaface", {"preset": "mnet025"}, {})
  mesh = sharding.make_mesh(devices)
  state = train_step.init_detector_state(det, optim.OptimConfig(learning_rate=1e-2), (64, 64),
                                         mesh)
  step = train_step.detector_train_step(det, mesh)
  rng = np.random.default_rng(0)
  losses, after_first = [], None
  for _ in range(steps):
    xy = rng.uniform(0, 40, (8, 4, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(12, 24, (8, 4, 2))], -1).astype(np.float32)
    batch = {"image": rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32), "boxes": boxes,
             "box_mask": rng.uniform(size=(8, 4)) < 0.8,
             "landmarks": np.tile(boxes[:, :, None, :2], (1, 1, 5, 1)) + 3.0,
             "landmarks_present": rng.uniform(size=(8, 4)) < 0.5}
    state, m = step(state, sharding.host_to_global(batch, mesh), jax.random.key(1))
    losses.append(float(m["loss"]))
    if after_first is None:
      after_first = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  return after_first, losses


@pytest.mark.slow   # tests/training/test_train_step.py checks the sharded step in the default run
def test_retinaface_step_8_devices_equals_1():
  """Losses of 2 steps equal; variables after one step equal to 1e-4 of each leaf's scale
  (BatchNorm biases followed by BatchNorm get gradients that are differences of large
  terms, so a second step amplifies the reduction-order noise of either layout)."""
  assert len(jax.devices()) == 8
  v8, l8 = _retinaface_steps(jax.devices())
  v1, l1 = _retinaface_steps(jax.devices()[:1])
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert np.isfinite(l8).all() and l8[1] != l8[0]
  for a, b in zip(jax.tree.leaves(v8), jax.tree.leaves(v1)):
    assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1e-6)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, data_dir, tmp_path):
  """The README's command killed with SIGKILL (no chance to save) once its step-2 checkpoint
  is on disk; rerunning resumes from it and ends with the uninterrupted run's parameters."""
  import subprocess
  import sys
  import time
  from tinyfaces_jax.training import checkpointing
  _, full = uninterrupted
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "tinyfaces_jax.main", "--config=configs/test.py",
         f"--workdir={tmp_path}", f"--config.data.data_dir={data_dir}"]
  proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while not (tmp_path / "checkpoints" / "2").is_dir() and time.time() < deadline:
    assert proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.2)
  proc.kill()
  proc.wait()
  manager = checkpointing.make_manager(str(tmp_path / "checkpoints"))
  steps = manager.all_steps()
  manager.close()
  assert 2 in steps
  second = train.train_and_evaluate(make_config(data_dir), str(tmp_path))
  assert second["step"] == 4
  for x, y in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(second["state"].params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
