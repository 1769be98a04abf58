"""What the benchmarks share: the `--results` JSON (the numbers plus the device that produced
them), whether the PyTorch peer can run and its status line, XLA's FLOPs and memory of a
compiled program, and the timing of the library's train step."""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import time

import jax


def pin_threads(argv) -> int:
  """Parses --threads from argv before jax creates its CPU client (XLA CPU sizes its thread
  pool from the affinity when the backend starts) and pins the process to that many cores if
  fewer than it has -> the thread count (default: os.cpu_count())."""
  n = os.cpu_count()
  for i, a in enumerate(argv):
    if a.startswith("--threads"):
      n = int(a.split("=", 1)[1] if "=" in a else argv[i + 1])
  if n < len(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
  return n

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def write_results(requested: str, default_stem: str, payload: dict,
                  quiet: bool = False) -> pathlib.Path:
  """Writes payload + device info to `requested` (or results/<stem>_<platform>.json when
  the flag was given without a value); returns the path (printed unless `quiet`)."""
  dev = jax.devices()[0]
  path = pathlib.Path(requested or RESULTS_DIR / f"{default_stem}_{dev.platform}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  info = {"device_kind": dev.device_kind, "platform": dev.platform,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, **payload, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  path.write_text(json.dumps(info, indent=2) + "\n")
  if not quiet:
    print(f"wrote {path}")
  return path


def torch_missing(threads: int | None = None) -> str | None:
  """None when torch imports (then set to `threads` CPU threads when given), else the reason
  (the GPU image has no torch)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    return str(e)
  if threads is not None:
    torch.set_num_threads(threads)
  return None


def report_peer(no_peer: bool, no_torch, description: str) -> bool:
  """Prints whether the PyTorch peer runs (no_torch: why torch did not import, or None);
  -> whether it runs."""
  if no_peer:
    print("peer: disabled (--no_peer)")
    return False
  if no_torch is not None:
    print(f"peer: SKIPPED, torch is not importable ({no_torch}); reporting ours only")
    return False
  print(f"peer: {description}")
  return True


def flops_per_device(compiled) -> float | None:
  """XLA's FLOPs of a compiled program, or None. For a program partitioned over a mesh this
  is ONE device's share (cost_analysis is per device): MFU = it / time / per-device peak."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0)) or None


MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes", "generated_code_size_in_bytes")


def memory_stats(compiled) -> dict | None:
  """XLA's buffer sizes of a compiled program (bytes, one device's share), or None where the
  backend gives none: the `compiled.memory_analysis()` fields of MEMORY_FIELDS plus
  peak_estimate_bytes = arguments + outputs - aliased (donated) + temporaries."""
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (unimplemented on some backends)
    return None
  mem = mem[0] if isinstance(mem, (list, tuple)) else mem
  if mem is None:
    return None
  out = {k: int(getattr(mem, k)) for k in MEMORY_FIELDS if getattr(mem, k, None) is not None}
  if all(k in out for k in MEMORY_FIELDS[:4]):
    out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                  - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out or None


def time_train_step(det, opt_cfg, batch: dict, image_hw, steps: int, bf16: bool, *,
                    max_seconds: float | None = None, keep_initial: bool = True,
                    before_run=None) -> dict:
  """The library's train step on the mesh, as train.py builds and runs it: state from
  `train_step.init_detector_state`, `detector_train_step(det, mesh, bf16=bf16)`, the batch
  placed by `sharding.host_to_global`, compiled ahead of time, one warm-up step, then `steps`
  timed (with `max_seconds`: fewer, at least 1, when the warm-up step's time says `steps`
  would take longer). `before_run(compiled)` is called once compiled, before
  anything runs (it may raise to stop there, e.g. on a memory estimate). -> dict(
  images_per_s, step_s, steps, compile_s, first_step_s, loss, num_pos, params, compute_dtype,
  devices, flops_per_device, flops_total, memory (`memory_stats`), initial_variables (host copy
  of the variables before the first step; None unless `keep_initial`))."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tinyfaces_jax.training import sharding, train_step  # pylint: disable=import-outside-toplevel
  train_det = det.with_dtype(jnp.bfloat16) if bf16 else det
  mesh = sharding.make_mesh()
  b = batch["image"].shape[0]
  sharding.check_batch_size(b, mesh)
  key = jax.random.PRNGKey(0)
  state = train_step.init_detector_state(det, opt_cfg, tuple(image_hw), mesh)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  initial = (jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
             if keep_initial else None)
  step = train_step.detector_train_step(det, mesh, bf16=bf16)
  gbatch = sharding.host_to_global(batch, mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, gbatch, key).compile()
  compile_s = time.perf_counter() - t0
  flops = flops_per_device(compiled)
  memory = memory_stats(compiled)
  if before_run is not None:
    before_run(compiled)
  t0 = time.perf_counter()
  state, metrics = compiled(state, gbatch, key)   # warm-up
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - t0
  if max_seconds is not None:
    steps = max(1, min(steps, int(max_seconds / max(first_s, 1e-6))))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, gbatch, key)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / steps
  n_dev = mesh.devices.size
  return {"images_per_s": b / dt, "step_s": dt, "steps": steps, "compile_s": compile_s,
          "first_step_s": first_s, "loss": float(metrics["loss"]),
          "num_pos": float(metrics["num_pos"]), "params": n_params,
          "compute_dtype": train_det.dtype.name, "devices": n_dev, "flops_per_device": flops,
          "flops_total": None if flops is None else flops * n_dev, "memory": memory,
          "initial_variables": initial}


def median_ms_interleaved(fns: dict, runs: int, warmup: int = 2, block: int = 5) -> dict:
  """{name: fn} -> {name: median ms}: the functions take turns in blocks of `block` timed
  calls, each block after one untimed call (block=0: one timed call each per turn, none
  untimed), so that load drift on a shared machine hits both alike while neither is timed
  right after the other: onnxruntime's intra-op threads spin for a while after each run and
  slow down whatever runs next on the same cores (measured here: jax 14 ms in blocks, 21 ms
  when every call follows an ort call)."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {k: [] for k in fns}
  for _ in range(max(1, -(-runs // max(block, 1)))):
    for k, fn in fns.items():
      if block:
        fn()
      for _ in range(max(block, 1)):
        t0 = time.perf_counter()
        fn()
        times[k].append(time.perf_counter() - t0)
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}
