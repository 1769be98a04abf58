"""benchmarks/gpu_suite.py: the GPU day's one command runs without TensorFlow,
tensorflow_datasets, clu and ml_collections (the GPU image has none of them) and writes one
JSON with every case it ran.

The suite runs in a subprocess (one CPU device, --tiny) whose `sitecustomize` hides the four
packages the way an image without them does (`importlib.util.find_spec` gives None, `import`
raises ModuleNotFoundError). Every run of it is marked slow (the default run's time budget);
`.ci/run` runs them after the default set: `python -m pytest -m slow tests/benchmarks`.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")

# Wraps every import finder so that the blocked top-level packages are not found: an image
# where they are not installed (a finder that raises would also break etils' probe for TF).
SITECUSTOMIZE = f'''
import sys
BLOCKED = {BLOCKED!r}


class _Hide:
  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      return None
    find = getattr(self._finder, "find_spec", None)
    return None if find is None else find(name, path, target)

  def __getattr__(self, attr):
    return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''


def _load_suite():
  spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
  module = importlib.util.module_from_spec(spec)
  sys.modules["gpu_suite"] = module     # (its dataclasses look their module up)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def suite():
  return _load_suite()


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory) -> dict:
  """The subprocess environment: the import blocker first on PYTHONPATH, the CPU, one device
  (conftest's 8 virtual devices removed)."""
  block = tmp_path_factory.mktemp("block")
  (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
  env = dict(os.environ)
  env["PYTHONPATH"] = str(block)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  probe = ("import importlib.util as u\n"
           f"assert all(u.find_spec(m) is None for m in {BLOCKED!r})\n"
           "try:\n  import tensorflow\nexcept ModuleNotFoundError:\n  pass\n"
           "else:\n  raise SystemExit('tensorflow imported')\n")
  r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 0, r.stderr
  return env


def run_suite(env: dict, out: pathlib.Path, *args, expect_rc: int = 0) -> tuple[dict, str]:
  r = subprocess.run([sys.executable, str(SUITE), "--tiny", "--out", str(out), *args],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert r.returncode == expect_rc, f"rc {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
  return json.loads(out.read_text()), r.stdout


def check_cases(data: dict, names: list) -> None:
  """Every named case ran, ok, with positive rates and FLOPs and a matching share in (0, 1)."""
  assert [c["name"] for c in data["cases"]] == names
  assert data["complete"] and data["tiny"] and data["failed"] == []
  assert data["imported"] == {m: False for m in BLOCKED}
  assert data["jax"] and data["device_kind"] and data["versions"]["flax"]
  for c in data["cases"]:
    assert c["status"] == "ok", c.get("error")
    assert "error" not in c
    assert c["wall_s"] > 0 and c["compile_s"] > 0
    s, r = c["settings"], c["results"]
    assert s["batch_size"] >= 1 and s["dtype"] in ("float32", "bfloat16")
    if c["kind"] == "train":
      assert r["images_per_s"] > 0 and r["step_s"] > 0 and r["flops_per_device"] > 0
      assert math.isfinite(r["loss"])
      assert r["mfu"] is None        # CPU: no peak
      assert 0 < r["matching_ohem_share"] < 1
      assert r["loss_alone"]["loss_s"] > 0
      assert r["memory"]["peak_estimate_bytes"] > 0
      assert s["gt_slots"] == 16 and s["optimizer"]["momentum"] == 0.9
    else:
      assert s["batch_norm_folded"]
      for k in ("forward", "end_to_end") if c["family"] == "retinaface" else ("end_to_end",):
        assert r[k]["images_per_s"] > 0 and r[k]["latency_ms"] > 0
        assert r[k]["flops_per_device"] > 0 and r[k]["compile_s"] > 0
      assert r["end_to_end"]["detections_per_image"] > 0
  for g in data["goals"]:
    assert g["met"] is None          # tiny numbers say nothing about the goals


@pytest.mark.slow
def test_tiny_train_and_inference_cases(blocked_env, tmp_path):
  names = ["retinaface_mnet_train_f32_b32", "retinaface_mnet_infer_b1"]
  data, stdout = run_suite(blocked_env, tmp_path / "out.json", "--cases", ",".join(names))
  check_cases(data, names)
  assert "| retinaface_mnet_train_f32_b32 | ok |" in stdout
  share = data["goals"][-1]
  assert share["case"] == names[0] and 0 < share["value"] < 1


@pytest.mark.slow
def test_over_budget_cases_are_recorded_as_skipped(blocked_env, tmp_path):
  data, _ = run_suite(blocked_env, tmp_path / "out.json", "--cases", "hr_*", "--budget_s", "0",
                      expect_rc=1)
  names = [c["name"] for c in data["cases"]]
  assert names == ["hr_r101_train_f32_b12", "hr_pyramid_infer_b1", "hr_r101_train_f32_b48"]
  assert data["failed"] == names
  for c in data["cases"]:
    assert c["status"] == "skipped" and "budget" in c["error"]["message"]
    assert c["settings"]["substituted"] == "resnet101 -> mobilenet0.25"


@pytest.mark.slow
def test_whole_tiny_suite(blocked_env, tmp_path, suite):
  data, stdout = run_suite(blocked_env, tmp_path / "out.json")
  check_cases(data, [c.name for c in suite.CASES if c.default])
  subs = {c["name"]: c["settings"]["substituted"] for c in data["cases"]}
  assert subs["retinaface_r50_train_bf16_b24"] == "resnet50 -> mnet025"
  assert subs["s3fd_train_f32_b32"] == subs["ssh_train_f32_b32"] == "vgg16 -> mobilenet0.25"
  assert "total" in stdout


def test_case_selection_and_peaks(suite):
  assert [c.name for c in suite.select("retinaface_r50_*")] == [
      "retinaface_r50_train_bf16_b24", "retinaface_r50_train_f32_b24"]
  assert len(suite.select("all")) == len(suite.CASES) > len(suite.select(None))
  assert "hr_pyramid_infer_b8" not in [c.name for c in suite.select("hr_*")]   # an extra
  assert [c.name for c in suite.select("hr_pyramid_infer_b8,ssh_*")] == [
      "ssh_train_f32_b32", "hr_pyramid_infer_b8"]
  with pytest.raises(ValueError, match="match no case"):
    suite.select("nope")
  for kind, name, bf16 in (("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM", 989.5),
                           ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe", 756.5),
                           ("NVIDIA H200", "NVIDIA H200 SXM", 989.5),
                           ("NVIDIA A100-SXM4-80GB", "NVIDIA A100", 312.0),
                           ("TPU v5 lite", "TPU v5e", 197.0), ("TPU v5", "TPU v5p", 459.0),
                           ("TPU v6 lite", "TPU v6e", 918.0)):
    assert suite.device_peaks(kind)[:2] == (name, bf16), kind
  assert suite.device_peaks("cpu") is None
  # the tiny settings keep the case, only smaller
  case, sub = suite.tiny_case(suite.select("hr_r101_train_f32_b48")[0])
  assert (case.model, case.hw, case.batch, sub) == ("mobilenet0.25", (64, 64), 2,
                                                     "resnet101 -> mobilenet0.25")
