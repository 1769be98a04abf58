"""Where XLA's CPU backend spends a RetinaFace-MobileNet0.25 step: per-op device time by kind.

  python benchmarks/xla_cpu_profile.py [--what train|inference] [--size 640] [--batch 4]
      [--runs 3] [--top 12] [--results FILE]

Compiles the library's function (`train`: the train step training runs, matching and OHEM
inside, as benchmarks/train_step.py times it; `inference`: the forward of the BatchNorm-folded
variables, as `detect` runs it, at size x size * 3/4) and records `--runs` executions with
jax.profiler while XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true (set here, before jax starts)
makes every executed HLO op (thunk) a trace event. Each op is classified by the op_name
metadata XLA keeps from JAX:
  pass   forward / backward (`transpose(jvp(...))`) / outside the model (the train step's
         loss, matching, OHEM and optimizer; inference's preprocessing);
  layer  BatchNorm (`/bn/`), depthwise (`/dw/`), pointwise and other convolutions, the rest;
  kind   library kernels (YNNPACK / Eigen convolutions and matmuls: `ynn_fusion`,
         `conv_general_dilated`, `dot`) vs XLA's own loop fusions (elementwise, reductions,
         pads, slices; memory-bound passes over the activations).
Prints the ms per step of each group, their share, and the `--top` most expensive ops with
their op_name. The sum of the op times is the time the ops ran (the two cores overlap ops
only inside a kernel), close to the step time on a quiet machine.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_enable_xprof_traceme=true").strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

LIBRARY_KERNELS = ("ynn_fusion", "xnn_fusion", "conv_general_dilated", "convolution", "dot",
                   "custom-call", "onednn")


def op_metadata(hlo_text: str) -> dict:
  """Optimized HLO text -> {instruction name: op_name}."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = .*?op_name="([^"]*)"', line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def classify(name: str, op_name: str, model: str) -> tuple[str, str, str]:
  """(pass, layer, kind) of one executed HLO instruction (module docstring)."""
  if model not in op_name:
    pas = "outside the model"
  elif "transpose(jvp(" in op_name:
    pas = "backward"
  else:
    pas = "forward"
  layer = ("BatchNorm" if "/bn/" in op_name else "depthwise" if "/dw/" in op_name
           else "conv" if "/conv/" in op_name or "conv_general_dilated" in op_name
           else "other")
  kind = ("library kernel" if any(k in name for k in LIBRARY_KERNELS)
          else "XLA loop fusion")
  return pas, layer, kind


def trace_op_times(compiled, args, runs: int) -> dict:
  """{instruction name: ms per run} from a jax.profiler trace of `runs` calls."""
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(runs):
      jax.block_until_ready(compiled(*args))
    jax.profiler.stop_trace()
    (path,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
    events = json.load(gzip.open(path))["traceEvents"]
  times = collections.defaultdict(float)
  for e in events:
    if e.get("ph") == "X":
      times[e["name"]] += e["dur"] / 1e3 / runs
  return times


def build(what: str, size: int, batch: int):
  """-> (compiled, args) of the function to profile."""
  from tinyfaces_jax import detectors
  from tinyfaces_jax.models import layers
  det = detectors.build_detector("retinaface", {"preset": "mnet025"})
  if what == "inference":
    hw = (size * 3 // 4, size)
    variables = layers.fold_batch_norm(det.init_variables(hw))
    x = jax.numpy.asarray(np.random.default_rng(0).uniform(0, 255, (batch, *hw, 3)),
                          jax.numpy.float32)
    fn = jax.jit(lambda v, im: det.model.apply(v, det.preprocess(im)))
    return fn.lower(variables, x).compile(), (variables, x)
  import train_step as bench  # benchmarks/train_step.py: the same batch and optimizer
  from tinyfaces_jax.training import sharding, train_step
  mesh = sharding.make_mesh()
  state = train_step.init_detector_state(det, bench.OPTIM, (size, size), mesh)
  step = train_step.detector_train_step(det, mesh, bf16=False)
  gbatch = sharding.host_to_global(
      bench.synthetic_batch(np.random.default_rng(0), batch, size), mesh)
  key = jax.random.PRNGKey(0)
  compiled = step.lower(state, gbatch, key).compile()
  # Donated state: each call gets the same (not yet donated) arguments via a fresh copy.
  return _Repeat(compiled, state, gbatch, key), ()


class _Repeat:
  """The compiled step called on its own output state (the step donates its input)."""

  def __init__(self, compiled, state, batch, key):
    self.compiled, self.state, self.batch, self.key = compiled, state, batch, key

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.key)
    return metrics

  def as_text(self):
    return self.compiled.as_text()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--what", choices=("train", "inference"), default="train")
  p.add_argument("--size", type=int, default=640)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--top", type=int, default=12)
  p.add_argument("--results", default=None, help="write the groups as JSON here")
  a = p.parse_args()
  compiled, args = build(a.what, a.size, a.batch)
  meta = op_metadata(compiled.as_text())
  t0 = time.perf_counter()
  times = trace_op_times(compiled, args, a.runs)
  wall = (time.perf_counter() - t0) / (a.runs + 2)
  ops = {n: t for n, t in times.items() if n in meta}
  total = sum(ops.values())
  groups = collections.defaultdict(float)
  for n, t in ops.items():
    groups[classify(n, meta[n], "RetinaFace")] += t
  print(f"RetinaFace-MobileNet0.25 {a.what}, batch {a.batch} at {a.size}: {len(ops)} ops ran, "
        f"{total:.1f} ms of op time per call (wall {1e3 * wall:.1f} ms per call, profiler on)")
  print(f"| {'pass':<17} | {'layer':<9} | {'kind':<15} | {'ms':>8} | {'share':>6} |")
  print(f"| {'-' * 17} | {'-' * 9} | {'-' * 15} | {'-' * 8} | {'-' * 6} |")
  for (pas, layer, kind), t in sorted(groups.items(), key=lambda kv: -kv[1]):
    print(f"| {pas:<17} | {layer:<9} | {kind:<15} | {t:8.2f} | {100 * t / total:5.1f}% |")
  by_kind = collections.defaultdict(float)
  for (_, _, kind), t in groups.items():
    by_kind[kind] += t
  print("by kind: " + ", ".join(f"{k} {100 * t / total:.1f}%" for k, t in by_kind.items()))
  print(f"\nthe {a.top} most expensive ops (ms per call):")
  for n, t in sorted(ops.items(), key=lambda kv: -kv[1])[:a.top]:
    print(f"  {t:8.2f}  {n:<28} {meta[n][-90:]}")
  if a.results:
    pathlib.Path(a.results).write_text(json.dumps({
        "what": a.what, "size": a.size, "batch": a.batch, "jax": jax.__version__,
        "op_ms_total": total, "groups": [
            {"pass": k[0], "layer": k[1], "kind": k[2], "ms": t} for k, t in groups.items()]},
        indent=1))


if __name__ == "__main__":
  main()
