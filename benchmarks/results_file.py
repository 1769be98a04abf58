"""What the benchmarks share: the `--results` JSON (the numbers plus the device that produced
them), the peer status line, and XLA's FLOPs of a compiled program."""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def write_results(requested: str, default_stem: str, payload: dict) -> pathlib.Path:
  """Writes payload + device info to `requested` (or results/<stem>_<platform>.json when
  the flag was given without a value); returns the path."""
  dev = jax.devices()[0]
  path = pathlib.Path(requested or RESULTS_DIR / f"{default_stem}_{dev.platform}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  info = {"device_kind": dev.device_kind, "platform": dev.platform,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, **payload, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  path.write_text(json.dumps(info, indent=2) + "\n")
  print(f"wrote {path}")
  return path


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
