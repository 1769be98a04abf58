"""One command for the day a GPU is lent: train-step images/s and MFU, inference latency and
throughput, and the matching + OHEM share of the train step, for every family, in one JSON.

On the GPU (one H100 / H200; jax[cuda12] + flax + optax + orbax + numpy + PIL are enough),
from the repository root:

  python benchmarks/gpu_suite.py

writes benchmarks/results/gpu_suite_<device kind>.json (e.g. gpu_suite_nvidia_h200.json) and
prints one line per case as it goes and a table at the end; budgeted to finish within 8
minutes, compiles included. Options:

  --tiny                the same cases with tiny sizes and batches (CPU smoke run; see below)
  --cases A,B,...       names (any case) or fnmatch patterns (of the default cases), e.g.
                        'retinaface_*,*_infer_*'; 'all': every case; default: the default
                        cases (--list shows them)
  --out FILE            the JSON (default benchmarks/results/gpu_suite_<device kind>[_tiny].json)
  --budget_s S          the suite's wall-clock budget (default 450 s; see Budget)
  --peak_tflops T       per-device peak (TFLOP/s) for MFU, instead of the table's bf16 peak;
                        --peak_tflops_f32 T: for the float32 cases (default: --peak_tflops)
  --compilation_cache D a persistent XLA cache kept across runs (default: a fresh temporary
                        one, so that identical programs of this run compile once)
  --compile_only        compile every case and record its FLOPs and memory, run nothing (plans
                        memory on a machine without the GPU); --list: print the cases, exit.

Goals (the JSON's "goals" evaluates them; "met" is null with --tiny, whose numbers say
nothing, and where the value is missing, e.g. MFU without a peak):
  * RetinaFace-mnet batched inference >= 3000 images/s (retinaface_mnet_infer_b128: 640x480,
    batch 128, the end-to-end predict function including NMS; the forward alone is beside it);
  * RetinaFace-R50 bf16 train MFU >= 40% (retinaface_r50_train_bf16_b24);
  * matching + OHEM <= 5% of the train step (the worst train case).

Cases (default selection in run order, most important first; the settings are the recipes',
read from configs/*.py, which this script does not import):
  retinaface_mnet_infer_b128    RetinaFace mnet025, 640x480 (W x H), batch 128
  retinaface_r50_train_bf16_b24 RetinaFace resnet50 840x840, batch 24, bfloat16 (retinaface_r50.py)
  retinaface_mnet_train_f32_b32 RetinaFace mnet025 640x640, batch 32 (retinaface_mnet025.py)
  retinaface_mnet_infer_b1      RetinaFace mnet025, 640x480, batch 1 (latency)
  retinaface_r50_train_f32_b24  RetinaFace resnet50 840x840, batch 24, float32
  retinaface_mnet_train_bf16_b32, retinaface_mnet_train_f32_b128, retinaface_mnet_train_bf16_b128
  hr_r101_train_f32_b12         HR ResNet-101 500x500, batch 12 (hr_res101.py)
  s3fd_train_f32_b32            S3FD VGG16 (caffe variant) 640x640, batch 32 (s3fd_vgg16.py)
  ssh_train_f32_b32             SSH VGG16 640x640, batch 32 (ssh_vgg16.py's network, loss, frozen
                                conv1/conv2 and 1024 slots; the recipe's 1600 canvas at batch 8
                                is the extra ssh_train_f32_b8: too big for an H100, see Memory)
  hr_pyramid_infer_b1           HR ResNet-101 pyramid on a 1024x768 image, scales 0.25 / 0.5 / 1 /
                                2 (hr_res101.py's eval), batch 1 (latency)
  hr_r101_train_f32_b48         HR ResNet-101 500x500, batch 48
Extra cases (--cases all, or by name): retinaface_mnet_infer_b64, retinaface_mnet_infer_bf16_b128
(the model in bfloat16), hr_pyramid_infer_b8, ssh_train_f32_b8 (SSH on the recipe's 1600x1600
canvas, batch 8: short side 1200, long <= 1600).

What each case measures (one device's program; batches are synthetic, as the other benchmarks'):
  train  `results_file.time_train_step`: the step train.py runs (`train_step.init_detector_state`
         + `detector_train_step(det, mesh, bf16=...)` on `sharding.make_mesh()`, the batch placed
         by `sharding.host_to_global`, compiled ahead of time with `lower().compile()`, one
         warm-up step, then up to 50 steps dispatched back to back, at most ~3 s). Inside the
         jitted step: preprocessing, the network, the family's whole loss with matching and
         OHEM / hard mining, SGD-momentum. Batches: random RGB 0..255 images, M ground-truth
         slots = the recipe's data.max_boxes (512; SSH 1024: matching is [anchors x M] whatever
         the number of real faces), 8..12 random faces per image (HR 3..8), RetinaFace with
         landmarks for half. Detectors and optimizers as the recipes build them:
         RetinaFace `build_detector("retinaface", {"preset"})` with the loss defaults (IoU 0.35,
         7:1 OHEM) and benchmarks/train_step.py's OPTIM (lr 1e-3, momentum 0.9, decay 5e-4);
         HR `build_detector("hr", {"backbone", "templates"})` (RefBox_N25_scaled.mat: the file
         beside the repository, else the copy in TEMPLATES_N25; labels 0.7 / 0.3, 128 + 128
         mined) with lr 1e-4 and the recipe's 0.1x lr on score_res3; S3FD / SSH
         `s3fd_ssh.build` (the recipes' matching, 3:1 mining / per-module OHEM, SSH's frozen
         conv1/conv2; lr 1e-4 instead of 1e-3 / 4e-3, which diverge from random weights).
         Reported: images/s, s/step, compile s, XLA cost_analysis FLOPs of one device's program,
         TFLOP/s and MFU = flops_per_device / step time / the device's peak (bf16 cases against
         the bf16 peak, float32 cases against the TF32 one: JAX's default precision lets XLA use
         TF32 tensor cores for float32 convs and dots on Ampere and later, and a bf16 pass on
         TPU), `compiled.memory_analysis()` (bytes; peak_estimate_bytes = arguments + outputs -
         donated + temporaries; a case whose estimate exceeds the device's memory is stopped
         before it runs, with that error), the loss and the number of positives.
  matching + OHEM share (every train case): the family's loss ALONE (`det.loss`: matching,
         OHEM / hard mining, target encoding and the loss terms, forward only) jitted on the
         same batch, on float32 network outputs of the step's shapes (random normal), timed as
         the step is (back-to-back calls) -> loss_s; matching_ohem_share = loss_s / step_s.
         Everything the loss computes besides matching and OHEM is elementwise over
         [B, anchors], so this is an upper bound of the matching + OHEM part (approximate: in
         the step XLA may fuse it differently). The f32 and bf16 steps share one measurement
         (their losses are the same float32 program).
  retinaface_mnet_infer_*: `retinaface_inference.jax_functions()`: "forward" = jit(model.apply)
         on the preprocessed float input (BGR - mean), "end_to_end" = the library's predict
         function (`inference.make_predict_fn`, as `detect` and the WIDER evaluation run it) on
         uint8 BGR images -> RGB float -> preprocess, network, decode, score > 0.02, top 5000,
         batched XLA NMS at 0.4, 750 kept; detections fetched to the host. Random weights
         (`s3fd_ssh.random_variables`) with BatchNorm folded into the convs
         (`layers.fold_batch_norm`, as `detect` and the evaluation run the model) and the
         face-logit biases shifted so that 1% of the anchors pass the score threshold (a
         detection load, not every anchor). Inputs are on the device before timing; each
         call blocks; median of up to 100 calls (~3 s). Reported: latency ms, images/s =
         batch / latency, FLOPs, TFLOP/s, MFU (against the f32 peak; bf16 for the bf16 model).
  hr_pyramid_infer_*: `inference.make_predict_fn(det, hr.INFER)` on an image padded to a
         bucket of 64: resize to the four scales, network, template pruning, decode, top 5000
         per scale, one NMS at 0.3, 2000 kept; `hr.pyramid_variables` (random weights with
         the score convs calibrated so that 1% of the active templates pass 0.03), BatchNorm
         folded. Timed as the RetinaFace inference.

--tiny: every case at a tiny size for a 2-core CPU (a smoke run of the whole suite; its
numbers mean nothing): train at 64x64, batch 2, 16 slots; RetinaFace inference at 64x48,
batch 1 / 2; HR pyramid on a 128x96 image, batch 1 / 2; the heavy trunks SUBSTITUTED
(recorded per case as "substituted"): RetinaFace resnet50 -> mnet025, HR resnet101 ->
mobilenet0.25, S3FD / SSH vgg16 -> mobilenet0.25 (their configs' CPU-sized trunks); XLA at
--xla_backend_optimization_level=0 (XLA_FLAGS; compile time dominates there); at most 3
timed steps.
Every run computes convs as XLA convolutions (conv_impl 'conv': what 'auto' picks on a GPU /
TPU; on a CPU, so that --tiny and --compile_only rehearse the GPU's programs). The process
sets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 unless it is set (JAX preallocates 75% of the GPU by
default). Memory: XLA's peak estimates of the float32 train steps, compiled for the CPU
with --compile_only (the GPU's differ somewhat): RetinaFace-R50 840 batch 24 ~48 GiB, SSH
640 batch 32 ~47, HR-R101 500 batch 48 ~44, RetinaFace-mnet 640 batch 128 ~20 (SSH on the
1600 canvas, batch 8: ~73, the reason it is an extra); RetinaFace-mnet inference at batch
128 ~2 GiB. The default cases fit an H100's 80 GB.

Budget: the cases run in the order above; before each, its estimated wall time (Case.est_s:
a guess of compile + timing on an H100 / H200, scaled by how the finished cases compared to
their guesses; the JSON's wall_s per case is what to put there after a GPU run) must fit in
what is left of --budget_s (counted from the start of the process), else the case is
recorded as skipped. The guesses add up to ~565 s for the default cases: if the GPU
compiles that slowly, the last ones (HR pyramid, HR batch 48) are skipped; they come last
because the goals do not depend on them. Timing loops are bounded (~3 s per loop);
a compile cannot be interrupted. A case that fails is recorded with its error and the suite
goes on; the exit status is 1 when any case failed or was skipped: rerun those with, e.g.,
  python benchmarks/gpu_suite.py --cases hr_r101_train_f32_b48 --out rerun.json
(`python benchmarks/gpu_suite.py --tiny` on the GPU first is a ~1-2 minute check that every
case runs there.)

Peak FLOP/s per device (PEAKS, dense, i.e. half of NVIDIA's "with sparsity" datasheet
figures): H100 SXM and H200 SXM bf16 989.5 / TF32 494.5 TFLOP/s; H100 NVL and H200 NVL
835.5 / 417.5; H100 PCIe 756.5 / 378; A100 (SXM4 / PCIe) 312 / 156 (NVIDIA H100, H200 and
A100 Tensor Core GPU datasheets). TPU per chip, bf16 (Google Cloud TPU system-architecture
pages; no separate f32 figure: JAX's default precision runs f32 dots in one bf16 pass):
v4 275, v5e 197, v5p 459, v6e 918. Other devices (and the CPU): MFU null unless --peak_tflops.

JSON: the device (kind, platform, count), jax / jaxlib / flax / optax versions, the peaks,
budget and total time, "goals", and "cases": one entry per selected case with its name, kind,
family, status (ok / error / skipped), settings (sizes, batch, dtype, slots, optimizer,
substitutions), results, compile seconds, wall seconds and the error (type, message,
traceback tail) when it failed. Rewritten after every case, so a killed run keeps what it
measured ("complete": false).
No TensorFlow, tensorflow_datasets, clu or ml_collections in the import chain (the JSON's
"imported" says so).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import fnmatch
import gc
import os
import pathlib
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback

START = time.perf_counter()
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _cache_dir(argv) -> str:
  """--compilation_cache's folder, else a fresh temporary one (removed at exit); read before
  the imports below (they compile small programs, and JAX decides on its first compile
  whether the persistent cache is used)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--compilation_cache"):
      return arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
  path = tempfile.mkdtemp(prefix="gpu_suite_cache_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


if __name__ == "__main__":   # before jax starts (module docstring)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
  if "--tiny" in sys.argv:   # compile time is most of a tiny run: LLVM without optimisations
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402

CACHE_DIR = _cache_dir(sys.argv) if __name__ == "__main__" else None
if CACHE_DIR:  # identical programs of a run (inits, the f32 / bf16 twins' loss) compile once
  jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hr as hr_bench  # noqa: E402
import results_file  # noqa: E402
import retinaface_inference  # noqa: E402
import s3fd_ssh  # noqa: E402
import train_step as retinaface_bench  # noqa: E402
from tinyfaces_jax import detectors, inference  # noqa: E402
from tinyfaces_jax.detectors import hr as hr_detector  # noqa: E402
from tinyfaces_jax.detectors.hr import templates as templates_lib  # noqa: E402
from tinyfaces_jax.models import layers  # noqa: E402
from tinyfaces_jax.training import sharding  # noqa: E402

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")
DEFAULT_BUDGET_S = 450.0
CANDIDATES = 0.01   # RetinaFace inference: the fraction of anchors above the score threshold

# (substring of the lower-cased device_kind, name, bf16 dense TFLOP/s, TF32 / f32 dense TFLOP/s)
# per device, most specific first (module docstring: sources).
PEAKS = (
    ("h200 nvl", "NVIDIA H200 NVL", 835.5, 417.5),
    ("h200", "NVIDIA H200 SXM", 989.5, 494.5),
    ("h100 nvl", "NVIDIA H100 NVL", 835.5, 417.5),
    ("h100 pcie", "NVIDIA H100 PCIe", 756.5, 378.0),
    ("h100", "NVIDIA H100 SXM", 989.5, 494.5),
    ("a100", "NVIDIA A100", 312.0, 156.0),
    ("tpu v4", "TPU v4", 275.0, 275.0),
    ("tpu v5 lite", "TPU v5e", 197.0, 197.0),
    ("tpu v5e", "TPU v5e", 197.0, 197.0),
    ("tpu v5", "TPU v5p", 459.0, 459.0),     # v5p reports "TPU v5"
    ("tpu v6 lite", "TPU v6e", 918.0, 918.0),
    ("tpu v6e", "TPU v6e", 918.0, 918.0),
)

# RefBox_N25_scaled.mat (the HR release's 25 templates): (half width, half height, sigma) of
# the centred boxes (-hw, -hh, hw, hh), for a machine without ../shared.
TEMPLATES_N25 = (
    (86.338235, 113.444118, 0.5), (48.75, 65.25, 0.5), (33.25, 43.75, 0.5),
    (25.75, 33.75, 0.5), (40.5, 54.5, 1.0), (34.5, 43.5, 1.0), (28.5, 38.0, 1.0),
    (25.658905, 31.32215, 1.0), (21.6137, 27.59767, 1.0), (20.0, 22.5, 1.0),
    (17.5, 25.5, 1.0), (16.327985, 20.88555, 1.0), (29.4755, 34.4803, 2.0),
    (25.4202, 37.10609, 2.0), (24.2118, 30.21456, 2.0), (22.0129, 24.7059, 2.0),
    (19.3142, 28.0202, 2.0), (17.9677, 22.7849, 2.0), (15.6123, 19.5907, 2.0),
    (13.1842, 18.3421, 2.0), (13.50277, 15.0792, 2.0), (11.1091, 16.4909, 2.0),
    (10.97686, 14.0478, 2.0), (9.9722, 12.4105, 2.0), (9.6613, 10.6161, 2.0))


@dataclasses.dataclass(frozen=True)
class Case:
  """One measurement. kind: "train" or "infer"; family: a detectors/ family; model: the
  RetinaFace preset or the trunk; hw: the (square) training crop or the inference image
  (H, W); slots: ground-truth slots M of a train batch; est_s: the GPU wall-time guess
  (compile + timing) the budget uses; default: in the default selection; recipe: where the
  settings come from."""
  name: str
  kind: str
  family: str
  model: str
  hw: tuple
  batch: int
  bf16: bool = False
  slots: int = 0
  est_s: float = 60.0
  default: bool = True
  recipe: str = ""


RF, HR = "configs/retinaface_mnet025.py", "configs/hr_res101.py"
R50 = "configs/retinaface_r50.py"
CASES = (
    Case("retinaface_mnet_infer_b128", "infer", "retinaface", "mnet025", (480, 640), 128,
         est_s=35, recipe="RetinaFace detect.py settings (inference.InferenceConfig defaults)"),
    Case("retinaface_r50_train_bf16_b24", "train", "retinaface", "resnet50", (840, 840), 24,
         True, 512, 70, recipe=R50),
    Case("retinaface_mnet_train_f32_b32", "train", "retinaface", "mnet025", (640, 640), 32,
         False, 512, 40, recipe=RF),
    Case("retinaface_mnet_infer_b1", "infer", "retinaface", "mnet025", (480, 640), 1,
         est_s=20, recipe="RetinaFace detect.py settings (inference.InferenceConfig defaults)"),
    Case("retinaface_r50_train_f32_b24", "train", "retinaface", "resnet50", (840, 840), 24,
         False, 512, 55, recipe=R50),
    Case("retinaface_mnet_train_bf16_b32", "train", "retinaface", "mnet025", (640, 640), 32,
         True, 512, 35, recipe=RF),
    Case("retinaface_mnet_train_f32_b128", "train", "retinaface", "mnet025", (640, 640), 128,
         False, 512, 35, recipe=RF + " at batch 128"),
    Case("retinaface_mnet_train_bf16_b128", "train", "retinaface", "mnet025", (640, 640), 128,
         True, 512, 35, recipe=RF + " at batch 128"),
    Case("hr_r101_train_f32_b12", "train", "hr", "resnet101", (500, 500), 12, False, 512, 60,
         recipe=HR),
    Case("s3fd_train_f32_b32", "train", "s3fd", "vgg16", (640, 640), 32, False, 512, 40,
         recipe="configs/s3fd_vgg16.py"),
    Case("ssh_train_f32_b32", "train", "ssh", "vgg16", (640, 640), 32, False, 1024, 45,
         recipe="configs/ssh_vgg16.py network, loss and max_boxes at 640x640, batch 32"),
    Case("hr_pyramid_infer_b1", "infer", "hr", "resnet101", (768, 1024), 1, est_s=50,
         recipe=HR + " eval (hr.INFER)"),
    Case("hr_r101_train_f32_b48", "train", "hr", "resnet101", (500, 500), 48, False, 512, 45,
         recipe=HR + " at batch 48"),
    # extras: --cases all, or by name
    Case("retinaface_mnet_infer_b64", "infer", "retinaface", "mnet025", (480, 640), 64,
         est_s=25, default=False, recipe="RetinaFace detect.py settings"),
    Case("retinaface_mnet_infer_bf16_b128", "infer", "retinaface", "mnet025", (480, 640), 128,
         True, est_s=30, default=False, recipe="RetinaFace detect.py settings, bf16 model"),
    Case("hr_pyramid_infer_b8", "infer", "hr", "resnet101", (768, 1024), 8, est_s=50,
         default=False, recipe=HR + " eval (hr.INFER)"),
    Case("ssh_train_f32_b8", "train", "ssh", "vgg16", (1600, 1600), 8, False, 1024, 50,
         default=False, recipe="configs/ssh_vgg16.py (1600 canvas, batch 8, max_boxes 1024)"),
)
# --tiny: the CPU-sized trunk that replaces a heavy one (configs' mnet025 variants).
TINY_TRUNK = {("retinaface", "resnet50"): "mnet025", ("hr", "resnet101"): "mobilenet0.25",
              ("s3fd", "vgg16"): "mobilenet0.25", ("ssh", "vgg16"): "mobilenet0.25"}
# (goal, case, path to the value in its results, the value's minimum)
GOALS = (
    ("RetinaFace-mnet batched inference, end-to-end incl. NMS (640x480, batch 128) >= 3000 "
     "images/s", "retinaface_mnet_infer_b128", ("end_to_end", "images_per_s"), 3000.0),
    ("RetinaFace-R50 bf16 train MFU >= 40%", "retinaface_r50_train_bf16_b24", ("mfu",), 0.40),
)
SHARE_GOAL = 0.05


class SkipRun(Exception):
  """--compile_only: raised once a program is compiled, carrying what was recorded."""


@dataclasses.dataclass
class Context:
  """Run-wide settings: tiny, compile_only, conv_impl, timing bounds (max timed steps /
  calls, seconds per loop), the peaks (TFLOP/s or None), the HR template file, the device
  memory limit (bytes or None), and the loss timings measured so far."""
  tiny: bool
  compile_only: bool
  conv_impl: str
  max_steps: int
  max_calls: int
  loop_s: float
  peak_bf16: float | None
  peak_f32: float | None
  templates: str
  memory_limit: int | None
  loss_cache: dict = dataclasses.field(default_factory=dict)

  def peak(self, bf16: bool) -> float | None:
    return self.peak_bf16 if bf16 else self.peak_f32


# --- settings -----------------------------------------------------------------------------------

def tiny_case(case: Case) -> tuple[Case, str | None]:
  """-> (the case at its --tiny settings, the trunk substitution or None)."""
  trunk = TINY_TRUNK.get((case.family, case.model), case.model)
  sub = None if trunk == case.model else f"{case.model} -> {trunk}"
  if case.kind == "train":
    return dataclasses.replace(case, model=trunk, hw=(64, 64), batch=2, slots=16), sub
  hw = (48, 64) if case.family == "retinaface" else (96, 128)
  return dataclasses.replace(case, model=trunk, hw=hw, batch=min(case.batch, 2)), sub


def device_peaks(kind: str) -> tuple[str, float, float] | None:
  """-> (name, bf16, f32 dense TFLOP/s per device) from PEAKS, or None."""
  k = kind.lower()
  for key, name, bf16, f32 in PEAKS:
    if key in k:
      return name, bf16, f32
  return None


def device_memory_limit() -> int | None:
  """Bytes the first device can allocate (None where the backend does not say: CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def hr_templates_file() -> tuple[str, str]:
  """-> (path of RefBox_N25_scaled.mat, source): the file beside the repository, else
  TEMPLATES_N25 written to a temporary .mat."""
  if hr_bench.TEMPLATES.exists():
    return str(hr_bench.TEMPLATES), str(hr_bench.TEMPLATES)
  import scipy.io  # pylint: disable=import-outside-toplevel  (a dependency of jax)
  t = np.asarray(TEMPLATES_N25, np.float64)
  clusters = np.stack([-t[:, 0], -t[:, 1], t[:, 0], t[:, 1], t[:, 2]], 1)
  path = os.path.join(tempfile.mkdtemp(prefix="gpu_suite_"), "RefBox_N25_scaled.mat")
  scipy.io.savemat(path, {"clusters": clusters})
  return path, "gpu_suite.TEMPLATES_N25 (a copy of RefBox_N25_scaled.mat)"


def build_train(case: Case, ctx: Context):
  """-> (detector, optim.OptimConfig, host batch) as the family's recipe trains it."""
  rng = np.random.default_rng(0)
  size = case.hw[0]
  if case.family == "retinaface":
    det = detectors.build_detector("retinaface", {"preset": case.model,
                                                  "conv_impl": ctx.conv_impl})
    return (det, retinaface_bench.OPTIM,
            retinaface_bench.synthetic_batch(rng, case.batch, size, case.slots))
  if case.family == "hr":
    det = detectors.build_detector("hr", {"backbone": case.model, "templates": ctx.templates,
                                          "conv_impl": ctx.conv_impl}, {})
    opt = dataclasses.replace(hr_bench.OPTIM, lr_multipliers=(("score_res3", 0.1),))
    return det, opt, hr_bench.synthetic_batch(rng, case.batch, size, case.slots)
  if case.family == "s3fd":
    det, opt = s3fd_ssh.build("s3fd", "vgg16", s3fd_backbone=case.model,
                              conv_impl=ctx.conv_impl)
  else:
    det, opt = s3fd_ssh.build("ssh", case.model, conv_impl=ctx.conv_impl)
  return det, opt, s3fd_ssh.synthetic_batch(rng, case.batch, size, case.family, case.slots)


def settings_of(case: Case, ctx: Context, substituted: str | None) -> dict:
  out = {"family": case.family, "model": case.model, "image_hw": list(case.hw),
         "batch_size": case.batch, "dtype": "bfloat16" if case.bf16 else "float32",
         "conv_impl": ctx.conv_impl, "recipe": case.recipe, "substituted": substituted}
  if case.kind == "train":
    out["gt_slots"] = case.slots
  return out


# --- timing -------------------------------------------------------------------------------------

def time_blocking(fn, ctx: Context) -> dict:
  """fn() blocks until done: one warm-up call, then calls until ctx.max_calls or ctx.loop_s
  (at least 3) -> dict(median_s, min_s, calls, first_call_s)."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times, start = [], time.perf_counter()
  while len(times) < 3 or (len(times) < ctx.max_calls
                           and time.perf_counter() - start < ctx.loop_s):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "calls": len(times),
          "first_call_s": first}


def time_back_to_back(fn, ctx: Context) -> dict:
  """fn() dispatches without blocking (returns arrays): one warm-up call, then n calls
  dispatched back to back and waited for once, n bounded by ctx.max_steps and ctx.loop_s as
  time_train_step bounds its steps -> dict(mean_s, calls, first_call_s)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  n = max(1, min(ctx.max_steps, int(ctx.loop_s / max(first, 1e-6))))
  t0 = time.perf_counter()
  outs = [fn() for _ in range(n)]
  jax.block_until_ready(outs)
  return {"mean_s": (time.perf_counter() - t0) / n, "calls": n, "first_call_s": first}


def compile_checked(lowered, ctx: Context, what: str, record: dict):
  """lowered.compile(), timed; FLOPs and memory into record[what]; then the memory guard
  (not with --compile_only, which records and goes on)."""
  t0 = time.perf_counter()
  compiled = lowered.compile()
  record[what] = {"compile_s": time.perf_counter() - t0,
                  "flops_per_device": results_file.flops_per_device(compiled),
                  "memory": results_file.memory_stats(compiled)}
  if not ctx.compile_only:
    memory_guard(compiled, ctx)
  return compiled


def memory_guard(compiled, ctx: Context) -> None:
  """MemoryError when XLA's peak estimate exceeds the device's memory (the case is recorded
  with it instead of dying of an out-of-memory in the middle of the suite)."""
  mem = results_file.memory_stats(compiled) or {}
  peak = mem.get("peak_estimate_bytes")
  if ctx.memory_limit and peak and peak > ctx.memory_limit:
    raise MemoryError(f"XLA's memory estimate {peak / 2**30:.1f} GiB exceeds the device's "
                      f"{ctx.memory_limit / 2**30:.1f} GiB; not run")


def throughput(flops, seconds: float, peak: float | None) -> dict:
  """-> dict(tflops_per_device, mfu) of `flops` per device done in `seconds`."""
  if not flops:
    return {"tflops_per_device": None, "mfu": None}
  tf = flops / seconds / 1e12
  return {"tflops_per_device": tf, "mfu": tf / peak if peak else None}


# --- cases --------------------------------------------------------------------------------------

def time_loss(det, batch: dict, ctx: Context) -> dict:
  """The family's loss alone (module docstring), jitted on the placed batch and random
  float32 outputs of the network's shapes -> dict(loss_s, calls, compile_s, flops)."""
  mesh = sharding.make_mesh()
  data = sharding.data_sharding(mesh)
  gbatch = sharding.host_to_global(batch, mesh)
  hw = tuple(batch["image"].shape[1:3])
  var_shapes = jax.eval_shape(lambda: det.init_variables(hw))
  image = jax.ShapeDtypeStruct(batch["image"].shape, jnp.float32)
  shapes = jax.eval_shape(lambda v, x: det.model.apply(v, det.preprocess(x), train=False),
                          var_shapes, image)
  rng = np.random.default_rng(1)
  outputs = jax.device_put(jax.tree.map(
      lambda s: rng.normal(0.0, 1.0, s.shape).astype(np.float32), shapes), data)
  key = jax.random.PRNGKey(0)
  record = {}
  compiled = compile_checked(jax.jit(det.loss).lower(outputs, gbatch, key), ctx, "loss",
                             record)
  if ctx.compile_only:
    return {"loss_s": None, **record["loss"]}
  t = time_back_to_back(lambda: compiled(outputs, gbatch, key), ctx)
  return {"loss_s": t["mean_s"], "calls": t["calls"], **record["loss"]}


def run_train(case: Case, ctx: Context) -> dict:
  det, opt, batch = build_train(case, ctx)
  n_dev = jax.device_count()
  if batch["image"].shape[0] % n_dev:
    raise ValueError(f"batch {case.batch} does not split over {n_dev} devices")
  t0 = time.perf_counter()

  def before_run(compiled):
    if ctx.compile_only:   # compile_s: here with the state's init
      raise SkipRun(dict(compile_s=time.perf_counter() - t0, compile_s_includes_init=True,
                         flops_per_device=results_file.flops_per_device(compiled),
                         memory=results_file.memory_stats(compiled), compile_only=True))
    memory_guard(compiled, ctx)

  out = {"settings": {"optimizer": dataclasses.asdict(opt)}}
  try:
    step = results_file.time_train_step(
        det, opt, batch, case.hw, ctx.max_steps, case.bf16, max_seconds=ctx.loop_s,
        keep_initial=False, before_run=before_run)
  except SkipRun as e:
    step = e.args[0]
  step.pop("initial_variables", None)
  out.update(step)
  if not ctx.compile_only:
    out.update(throughput(step["flops_per_device"], step["step_s"], ctx.peak(case.bf16)))
  key = (case.family, case.model, case.hw, case.batch, case.slots)
  if key in ctx.loss_cache:    # the f32 and bf16 steps share their (float32) loss
    loss = dict(ctx.loss_cache[key])
    loss.pop("compile_s")      # counted in the case that measured it
  else:
    loss = ctx.loss_cache[key] = dict(time_loss(det, batch, ctx), measured_in=case.name)
  out["loss_alone"] = loss
  if not ctx.compile_only:
    out["matching_ohem_share"] = loss["loss_s"] / step["step_s"]
  return out


def calibrate_retinaface(variables: dict, conf) -> dict:
  """Shifts the face-logit biases (ClassHead_l channels 1, 3: (background, face) per anchor)
  by one constant so that CANDIDATES of the anchors of `conf` [B, A, 2] score above the
  score threshold."""
  diff = np.asarray(conf[..., 1] - conf[..., 0], np.float64).ravel()
  t = retinaface_inference.SETTINGS["score_threshold"]
  shift = np.log(t / (1 - t)) - np.quantile(diff, 1 - CANDIDATES)
  for name, head in variables["params"].items():
    if name.startswith("ClassHead_"):
      head["bias"] = np.asarray(head["bias"], np.float32).copy()
      head["bias"][1::2] += shift
  return variables


def run_retinaface_infer(case: Case, ctx: Context) -> dict:
  forward, end_to_end = retinaface_inference.jax_functions(
      ctx.conv_impl, jnp.bfloat16 if case.bf16 else None)
  det = detectors.build_detector("retinaface", {"preset": case.model,
                                                "conv_impl": ctx.conv_impl})
  h, w = case.hw
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (case.batch, h, w, 3), dtype=np.uint8)       # BGR
  img = jax.device_put(image)
  x = jax.device_put(image.astype(np.float32) - retinaface_inference.MEAN_BGR)
  # as detect and the evaluation run the model: BatchNorm folded into the convs
  variables = jax.device_get(layers.fold_batch_norm(s3fd_ssh.random_variables(det, (h, w))))
  record = {}
  fwd = compile_checked(forward.lower(variables, x), ctx, "forward", record)
  if not ctx.compile_only:
    conf = jax.device_get(fwd(variables, x)["conf"])
    variables = calibrate_retinaface(variables, conf)
  variables = jax.device_put(variables)
  e2e = compile_checked(end_to_end.lower(variables, img), ctx, "end_to_end", record)
  out = {"settings": dict(retinaface_inference.SETTINGS, batch_norm_folded=True), **record}
  if ctx.compile_only:
    return dict(out, compile_only=True)
  peak = ctx.peak(case.bf16)
  t = time_blocking(lambda: jax.block_until_ready(fwd(variables, x)), ctx)
  out["forward"].update(latency_ms=1e3 * t["median_s"], images_per_s=case.batch / t["median_s"],
                        calls=t["calls"], first_call_s=t["first_call_s"],
                        **throughput(out["forward"]["flops_per_device"], t["median_s"], peak))
  time_end_to_end(out, lambda: e2e(variables, img), case, ctx, peak)
  return out


def time_end_to_end(out: dict, call, case: Case, ctx: Context, peak) -> None:
  """Times `call()` (-> the predict dict, brought to the host as a user would) into
  out["end_to_end"]: latency, images/s, detections per image, TFLOP/s and MFU."""
  res = jax.device_get(call())
  t = time_blocking(lambda: jax.device_get(jax.block_until_ready(call())), ctx)
  out["end_to_end"].update(
      latency_ms=1e3 * t["median_s"], images_per_s=case.batch / t["median_s"],
      calls=t["calls"], first_call_s=t["first_call_s"],
      detections_per_image=float(np.asarray(res["valid"]).sum(1).mean()),
      **throughput(out["end_to_end"]["flops_per_device"], t["median_s"], peak))


def run_hr_pyramid(case: Case, ctx: Context) -> dict:
  det = detectors.build_detector("hr", {"backbone": case.model, "templates": ctx.templates,
                                        "conv_impl": ctx.conv_impl}, {})
  h, w = case.hw
  image = np.random.default_rng(0).uniform(0, 255, (h, w, 3)).astype(np.float32)
  hw = inference.bucket_hw(h, w, hr_bench.BUCKET)
  x1 = inference.pad_to(image, hw, det.pad_value)[None]
  tpl = templates_lib.load_templates(ctx.templates)
  active = hr_detector.active_templates(tpl.sigma, 1.0, hr_detector.DEFAULT_ALLSCALE,
                                        hr_detector.DEFAULT_ONESCALE)
  if ctx.compile_only:
    variables = jax.jit(lambda k: det.init_variables((64, 64), k))(jax.random.key(0))
  else:
    variables, _ = hr_bench.pyramid_variables(det, jnp.asarray(x1), active)
  variables = layers.fold_batch_norm(variables)   # as detect and the evaluation run it
  x = jax.device_put(np.repeat(x1, case.batch, 0))
  predict = inference.make_predict_fn(det, hr_bench.INFER)
  record = {}
  compiled = compile_checked(predict.lower(variables, x), ctx, "end_to_end", record)
  out = {"padded_hw": list(hw), "settings": dict(dataclasses.asdict(hr_bench.INFER),
                                                 batch_norm_folded=True), **record}
  if ctx.compile_only:
    return dict(out, compile_only=True)
  time_end_to_end(out, lambda: compiled(variables, x), case, ctx, ctx.peak(False))
  return out


def run_case(case: Case, ctx: Context) -> dict:
  if case.kind == "train":
    return run_train(case, ctx)
  if case.family == "retinaface":
    return run_retinaface_infer(case, ctx)
  return run_hr_pyramid(case, ctx)


# --- reporting ----------------------------------------------------------------------------------

def describe(case: Case) -> str:
  what = (f"{case.hw[0]}x{case.hw[1]}" if case.kind == "train"
          else f"{case.hw[1]}x{case.hw[0]} image")
  return (f"{case.family} {case.model} {what}, batch {case.batch}, "
          f"{'bfloat16' if case.bf16 else 'float32'}"
          + (f", {case.slots} slots" if case.kind == "train" else ""))


def pct(v) -> str:
  return "-" if v is None else f"{100 * v:.1f}%"


def summary(entry: dict) -> str:
  """One line of a case's results."""
  if entry["status"] != "ok":
    return entry.get("error", {}).get("message", "")[:150]
  r = entry["results"]
  if r.get("compile_only"):
    parts = []
    for k in ("memory", "forward", "end_to_end", "loss_alone"):
      v = r.get(k)
      mem = (v if k == "memory" else (v or {}).get("memory")) or {}
      if mem.get("peak_estimate_bytes"):
        parts.append(f"{k} peak {mem['peak_estimate_bytes'] / 2**30:.2f} GiB")
    return "compiled only; " + ", ".join(parts)
  if entry["kind"] == "train":
    return (f"{r['images_per_s']:,.1f} img/s ({1e3 * r['step_s']:.1f} ms/step), MFU "
            f"{pct(r['mfu'])}, matching+OHEM {pct(r['matching_ohem_share'])}")
  parts = [f"{k.replace('_', '-')} {r[k]['latency_ms']:.2f} ms = {r[k]['images_per_s']:,.1f} img/s"
           for k in ("forward", "end_to_end") if k in r]
  return ", ".join(parts)


def compile_seconds(entry: dict) -> float | None:
  r = entry.get("results") or {}
  total = [r.get("compile_s")] + [(r.get(k) or {}).get("compile_s")
                                  for k in ("forward", "end_to_end", "loss_alone")]
  total = [t for t in total if t is not None]
  return sum(total) if total else None


def evaluate_goals(entries: list, tiny: bool) -> list:
  """The docstring's goals -> [{goal, case, value, target, met}] (met None when tiny or the
  value is missing)."""
  by_name = {e["name"]: e for e in entries if e["status"] == "ok"}
  out = []
  for text, name, path, target in GOALS:
    value = by_name.get(name, {}).get("results")
    for k in path:
      value = (value or {}).get(k)
    out.append({"goal": text, "case": name, "value": value, "target": target,
                "met": None if tiny or value is None else bool(value >= target)})
  shares = [(e["results"]["matching_ohem_share"], e["name"]) for e in by_name.values()
            if e["kind"] == "train" and e["results"].get("matching_ohem_share") is not None]
  worst = max(shares) if shares else (None, None)
  out.append({"goal": "matching + OHEM <= 5% of the train step (worst train case)",
              "case": worst[1], "value": worst[0], "target": SHARE_GOAL,
              "per_case": {n: s for s, n in shares},
              "met": None if tiny or worst[0] is None else bool(worst[0] <= SHARE_GOAL)})
  return out


def slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "device"


def select(spec: str | None) -> list[Case]:
  """--cases -> the cases in run order: exact names pick any case, fnmatch patterns the
  default ones, 'all' every case, nothing the default ones (ValueError naming an entry that
  picks none)."""
  if not spec:
    return [c for c in CASES if c.default]
  if spec == "all":
    return list(CASES)
  patterns = [p.strip() for p in spec.split(",") if p.strip()]

  def picks(case: Case, pattern: str) -> bool:
    return case.name == pattern or (case.default and fnmatch.fnmatchcase(case.name, pattern))

  bad = [p for p in patterns if not any(picks(c, p) for c in CASES)]
  if bad:
    raise ValueError(f"--cases: {bad} match no case; known: {[c.name for c in CASES]}")
  return [c for c in CASES if any(picks(c, p) for p in patterns)]


def versions() -> dict:
  out = {"jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "orbax.checkpoint", "numpy"):
    try:
      out[name] = __import__(name, fromlist=["__version__"]).__version__
    except (ImportError, AttributeError):
      out[name] = None
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
  p.add_argument("--tiny", action="store_true", help="tiny sizes / batches (CPU smoke run)")
  p.add_argument("--cases", default=None,
                 help="comma list of names (any case) or fnmatch patterns (of the default "
                      "cases); 'all': every case; default: the default cases")
  p.add_argument("--out", default=None, help="the JSON (default benchmarks/results/"
                                             "gpu_suite_<device kind>[_tiny].json)")
  p.add_argument("--budget_s", type=float, default=DEFAULT_BUDGET_S,
                 help="wall-clock budget of the suite (seconds from the process start)")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="per-device peak TFLOP/s for MFU (default: PEAKS by device kind)")
  p.add_argument("--peak_tflops_f32", type=float, default=None,
                 help="peak for the float32 cases (default: --peak_tflops, else PEAKS' TF32)")
  p.add_argument("--compilation_cache", default=None,
                 help="persistent XLA cache folder (default: a fresh temporary one)")
  p.add_argument("--compile_only", action="store_true",
                 help="compile every case, record FLOPs and memory, run nothing")
  p.add_argument("--list", action="store_true", help="print the cases and exit")
  a = p.parse_args()
  try:
    cases = select(a.cases)
  except ValueError as e:
    p.error(str(e))
  if a.list:
    for c in CASES:
      t, sub = tiny_case(c)
      print(f"{c.name:<34} {'default' if c.default else 'extra  '} {describe(c)}; --tiny: "
            f"{describe(t)}" + (f" ({sub})" if sub else ""))
    return 0

  dev = jax.devices()[0]
  platform, kind = dev.platform, dev.device_kind
  known = device_peaks(kind) if platform != "cpu" else None
  peak_bf16 = a.peak_tflops or (known[1] if known else None)
  peak_f32 = a.peak_tflops_f32 or a.peak_tflops or (known[2] if known else None)
  templates, templates_source = hr_templates_file()
  ctx = Context(tiny=a.tiny, compile_only=a.compile_only,
                conv_impl="conv",
                max_steps=3 if a.tiny else 50, max_calls=5 if a.tiny else 100,
                loop_s=1.0 if a.tiny else 3.0, peak_bf16=peak_bf16, peak_f32=peak_f32,
                templates=templates, memory_limit=device_memory_limit())
  out_path = pathlib.Path(a.out or results_file.RESULTS_DIR /
                          f"gpu_suite_{slug(kind)}{'_tiny' if a.tiny else ''}.json")
  print(f"jax {jax.__version__}: {jax.device_count()} x {kind} ({platform}), "
        f"{os.cpu_count()} cpus; {'TINY ' if a.tiny else ''}{len(cases)} cases, budget "
        f"{a.budget_s:.0f} s; peak TFLOP/s per device: bf16 {peak_bf16}, f32 {peak_f32}"
        + (f" ({known[0]})" if known and not a.peak_tflops else "")
        + ("; compile only" if a.compile_only else ""), flush=True)

  entries, spent_s, guessed_s = [], 0.0, 0.0   # the finished cases' wall time and guesses

  def payload(complete: bool) -> dict:
    return {"suite": "gpu_suite", "tiny": a.tiny, "compile_only": a.compile_only,
            "complete": complete, "versions": versions(),
            "peak_tflops_per_device": {"bf16": peak_bf16, "f32": peak_f32,
                                       "source": ("--peak_tflops" if a.peak_tflops else
                                                  known[0] if known else None)},
            "memory_limit_bytes": ctx.memory_limit, "compilation_cache": CACHE_DIR,
            "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                   "JAX_PLATFORMS")},
            "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "hr_templates": templates_source, "budget_s": a.budget_s,
            "elapsed_s": time.perf_counter() - START,
            "goals": evaluate_goals(entries, a.tiny),
            "failed": [e["name"] for e in entries if e["status"] != "ok"],
            "imported": {m: m in sys.modules for m in BLOCKED}, "cases": entries}

  for i, full in enumerate(cases):
    case, sub = tiny_case(full) if a.tiny else (full, None)
    entry = {"name": full.name, "kind": case.kind, "family": case.family,
             "settings": settings_of(case, ctx, sub), "status": "ok"}
    elapsed = time.perf_counter() - START
    est = (10.0 if a.tiny else full.est_s) * (min(3.0, max(0.3, spent_s / guessed_s))
                                              if guessed_s else 1.0)
    print(f"[{i + 1:>2}/{len(cases)} {elapsed:6.1f} s] {full.name}: {describe(case)}"
          + (f" ({sub})" if sub else ""), flush=True)
    if elapsed + est > a.budget_s:
      entry.update(status="skipped", error={
          "type": "Budget", "message": f"skipped: {elapsed:.0f} s elapsed + ~{est:.0f} s "
                                       f"estimated > the {a.budget_s:.0f} s budget"})
    else:
      t0 = time.perf_counter()
      try:
        entry["results"] = run_case(case, ctx)
        entry["settings"].update(entry["results"].pop("settings", {}))
      except Exception as e:  # pylint: disable=broad-except  (recorded; the suite goes on)
        entry.update(status="error", error={
            "type": type(e).__name__, "message": str(e)[:2000],
            "traceback": traceback.format_exc()[-4000:]})
      entry["wall_s"] = time.perf_counter() - t0
      entry["compile_s"] = compile_seconds(entry)
      spent_s += entry["wall_s"]
      guessed_s += 10.0 if a.tiny else full.est_s
      gc.collect()
      jax.clear_caches()   # this case's executables (the persistent cache keeps them)
    entries.append(entry)
    print(f"      {entry['status']}{' in %.1f s' % entry['wall_s'] if 'wall_s' in entry else ''}"
          f": {summary(entry)}", flush=True)
    results_file.write_results(str(out_path), "gpu_suite", payload(False), quiet=True)

  print("\n| case | status | settings | compile s | wall s | result |")
  print("| --- | --- | --- | --- | --- | --- |")
  for e, full in zip(entries, cases):
    case = tiny_case(full)[0] if a.tiny else full
    cs = e.get("compile_s")
    print(f"| {e['name']} | {e['status']} | {describe(case)} | "
          f"{'-' if cs is None else f'{cs:.1f}'} | {e.get('wall_s', 0):.1f} | {summary(e)} |")
  final = payload(True)
  for g in final["goals"]:
    value = "-" if g["value"] is None else f"{g['value']:.4g}"
    print(f"goal: {g['goal']}: {value} ({g['case']}) -> "
          + ("n/a" if g["met"] is None else "MET" if g["met"] else "NOT met"))
  print("imported: " + ", ".join(f"{m} {v}" for m, v in final["imported"].items()))
  results_file.write_results(str(out_path), "gpu_suite", final)
  print(f"total {final['elapsed_s']:.1f} s; {len(final['failed'])} failed or skipped"
        + (f": {final['failed']}" if final["failed"] else ""))
  return 1 if final["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
