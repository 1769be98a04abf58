"""Jitted S3FD matching + 3:1 OHEM vs the per-image numpy peer, in the same run.

  python benchmarks/matching.py [--batch 32] [--slots 16,256,1024] [--repeats 3]

For B images at 640x640 with S3FD anchors (A = 34,125) and M ground-truth slots per image
(every slot a real face, sizes log-uniform 4..400 px: the crowded worst case), times
  * jax:   jit(vmap(match_s3fd) + batched_hard_negative_mask) on [B, M] padded ground truth,
  * numpy: tests/reference/matching_peer.py, a Python loop over images with vectorised numpy
    inside,
checks that both give identical labels / matches / kept negatives, and prints the median
times, the ratio numpy / jax and the peak memory of each (XLA's compiled temp buffers;
tracemalloc peak for numpy). Runs on whatever jax backend is default (CPU here).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tests.reference import matching_peer  # noqa: E402
from tinyfaces_jax.detection import anchors as anchors_lib  # noqa: E402
from tinyfaces_jax.detection import matching, sampling  # noqa: E402


def make_batch(rng, batch, slots, size=640):
  """[B, M, 4] xyxy faces (all slots real) and [B, A] synthetic classification losses."""
  side = np.exp(rng.uniform(np.log(4), np.log(400), (batch, slots)))
  aspect = rng.uniform(0.7, 1.4, (batch, slots))
  w, h = side, side * aspect
  x1 = rng.uniform(0, size - w)
  y1 = rng.uniform(0, np.maximum(size - h, 1))
  gt = np.stack([x1, y1, x1 + w, y1 + h], -1).astype(np.float32)
  return gt, np.ones((batch, slots), bool)


def jax_step(anchors, ratio=3.0):
  def step(gt, mask, losses):
    m = matching.match_s3fd_batch(anchors, gt, mask, force="best", stage2="average")  # = peer
    neg = sampling.batched_hard_negative_mask(losses, m.labels, ratio)
    return m.labels, m.matched_gt, neg
  return jax.jit(step)


def time_it(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def run(batch, slots, repeats, seed=0):
  anchors = anchors_lib.anchor_grid(anchors_lib.S3FD, (640, 640))
  rng = np.random.default_rng(seed)
  gt, mask = make_batch(rng, batch, slots)
  losses = rng.uniform(0, 5, (batch, anchors.shape[0])).astype(np.float32)
  step = jax_step(jnp.asarray(anchors))
  t0 = time.perf_counter()
  compiled = step.lower(gt, mask, losses).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  jax_temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
  args = [jax.device_put(x) for x in (gt, mask, losses)]
  jax.block_until_ready(compiled(*args))
  t_jax, out_jax = time_it(lambda: jax.block_until_ready(compiled(*args)), repeats)

  tracemalloc.start()
  t_np, out_np = time_it(
      lambda: matching_peer.match_and_mine_batch(anchors, list(gt), losses), max(1, repeats // 2))
  _, np_peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()

  same = all(np.array_equal(np.asarray(a), b) for a, b in zip(out_jax, out_np))
  pos = np.asarray(out_jax[0] == 1).sum(1).mean()
  return dict(M=slots, jax_s=t_jax, numpy_s=t_np, ratio=t_np / t_jax, compile_s=compile_s,
              jax_temp_mib=jax_temp / 2**20, numpy_peak_mib=np_peak / 2**20, same=same,
              pos_per_image=pos)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--slots", default="16,256,1024")
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus); "
        f"B={a.batch}, 640x640, S3FD anchors A=34125, two-stage matching + 3:1 OHEM")
  print(f"{'M':>5} {'jax s':>8} {'numpy s':>8} {'numpy/jax':>9} {'compile s':>9} "
        f"{'jax temp MiB':>12} {'numpy peak MiB':>14} {'pos/img':>8} same")
  for m in [int(s) for s in a.slots.split(",")]:
    r = run(a.batch, m, a.repeats)
    print(f"{r['M']:>5} {r['jax_s']:>8.3f} {r['numpy_s']:>8.3f} {r['ratio']:>9.2f} "
          f"{r['compile_s']:>9.2f} {r['jax_temp_mib']:>12.1f} {r['numpy_peak_mib']:>14.1f} "
          f"{r['pos_per_image']:>8.1f} {r['same']}", flush=True)


if __name__ == "__main__":
  main()
