"""RetinaFace train-step throughput (images/s): our sharded jitted step vs a PyTorch peer.

  python benchmarks/train_step.py [--configs mnet,r50] [--mnet_batch 4] [--r50_batch 2]
      [--steps 3] [--bf16] [--results [FILE]] [--peak_tflops 989] [--flops] [--no_peer]
      [--conv_impl auto|conv|fast] [--image_size S]

Configs (the reference recipes' input sizes): "mnet" = RetinaFace-MobileNet0.25 at 640x640,
"r50" = RetinaFace-ResNet50 at 840x840. Per config, on synthetic batches (random RGB 0..255
images; M = 64 ground-truth slots with about 10 random faces per image, landmarks for half):
  * ours: the step training runs (train.py): `detectors.build_detector("retinaface", ...)`,
    `train_step.init_detector_state` + `detector_train_step(det, mesh, bf16=...)` (the setup
    train.py uses): RGB -> BGR - mean inside the step, RetinaFace,
    `multibox_loss.multibox_loss` (MultiboxLossConfig defaults: argmax matching at IoU 0.35, 7:1
    OHEM, landmarks; matching and OHEM run INSIDE the jitted step), SGD-momentum 0.9, lr
    1e-3, weight decay 5e-4 (`optim.make_optimizer`), on `sharding.make_mesh()` with the
    batch placed by `sharding.host_to_global`; compiled ahead of time (`step.lower(...)
    .compile()`, as train.py does), one warm-up step, then --steps timed steps.
    `--bf16`: the step's model is `det.with_dtype(jnp.bfloat16).model` and bf16=True (what
    train.bf16 builds, through detector_train_step): convs / dots / activations in bfloat16;
    parameters, optimizer state, loss, matching and box math float32;
  * peer: benchmarks/torch_retinaface_peer.py, the same network in PyTorch (CPU, threads =
    os.cpu_count(); `--bf16`: CPU autocast bf16) on the same images as BGR - mean:
    forward + backward + torch.optim.SGD step, the same loss on targets PRECOMPUTED once with
    our matcher (the peer EXCLUDES in-step matching and hard-negative mining). Skipped with a
    message when torch is not importable.
Prints images/s for both and ours / peer per config. With --results, writes a JSON (default
benchmarks/results/train_step_<platform>.json) naming the device.
FLOPs: XLA's cost_analysis of the compiled step. For the program partitioned over the mesh it
counts ONE device's share (flops_per_device; flops_total = flops_per_device x devices), so
MFU = flops_per_device / step time / per-device peak (--peak_tflops); printed on a GPU/TPU or
with --flops (on CPU the peak is not the CPU's).
--conv_impl picks how our convs are computed (models/layers.py: 'auto' = depthwise shift-adds
and 1x1 matmuls on CPU, XLA convolutions elsewhere; 'conv' = always XLA convolutions).
No TensorFlow, tensorflow_datasets, clu or ml_collections in the import chain (runs on an
image with only jax/flax/optax/orbax).
CPU timings on a shared machine are noisy: quote numbers from a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import results_file  # noqa: E402
from tinyfaces_jax import detectors  # noqa: E402
from tinyfaces_jax.training import optim  # noqa: E402
from tinyfaces_jax.detection import multibox_loss  # noqa: E402
from tinyfaces_jax.detection import anchors as anchors_lib  # noqa: E402
from tinyfaces_jax.detection import box_coder, matching, sampling  # noqa: E402
from tinyfaces_jax.detectors.retinaface.model import MEAN_BGR, PRESETS  # noqa: E402

CONFIGS = {"mnet": ("mnet025", 640), "r50": ("resnet50", 840)}
OPTIM = optim.OptimConfig(learning_rate=1e-3, momentum=0.9, weight_decay=5e-4)
SLOTS, FACES = 64, 10


def synthetic_batch(rng: np.random.Generator, b: int, size: int, slots: int = SLOTS) -> dict:
  """Host batch as the training pipeline gives it: image [B, S, S, 3] float32 RGB 0..255,
  boxes [B, M, 4] xyxy, box_mask [B, M], landmarks [B, M, 5, 2], landmarks_present [B, M]
  (M = `slots`, default 64, > 12; 8..12 faces per image, side log-uniform 12 .. S/2 px,
  landmarks inside the box for a random half of them)."""
  image = rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)
  side = np.exp(rng.uniform(np.log(12), np.log(size / 2), (b, slots)))
  x1, y1 = (rng.uniform(0, size - side) for _ in range(2))
  boxes = np.stack([x1, y1, x1 + side, y1 + side], -1)
  mask = np.arange(slots)[None] < rng.integers(FACES - 2, FACES + 3, (b, 1))
  lm = boxes[..., None, :2] + rng.uniform(0.2, 0.8, (b, slots, 5, 2)) * side[..., None, None]
  present = mask & (rng.uniform(size=(b, slots)) < 0.5)
  return {"image": image, "boxes": np.where(mask[..., None], boxes, 0).astype(np.float32),
          "box_mask": mask, "landmarks": np.where(mask[..., None, None], lm, 0).astype(
              np.float32), "landmarks_present": present}


def precomputed_targets(batch: dict, anchors: np.ndarray, seed: int = 0) -> dict:
  """The peer's fixed targets, from our matcher: pos / neg / has_landm [B, A] float32 masks
  (neg: 7 hard negatives per positive ranked by a random loss, as OHEM picks them, but once),
  loc [B, A, 4] and landm [B, A, 10] encoded targets (variances 0.1 / 0.2)."""
  cfg = multibox_loss.MultiboxLossConfig()
  a = jnp.asarray(anchors)
  m = multibox_loss.match_batch(a, jnp.asarray(batch["boxes"]), jnp.asarray(batch["box_mask"]),
                                cfg)
  pos = m.labels == matching.POSITIVE
  gather = jax.vmap(lambda x, i: x[i])
  b = batch["boxes"].shape[0]
  rand = jax.random.uniform(jax.random.PRNGKey(seed), pos.shape)
  neg = sampling.batched_hard_negative_mask(jnp.where(pos, 0.0, rand), m.labels,
                                            cfg.neg_pos_ratio)
  lm = jnp.asarray(batch["landmarks"]).reshape(b, SLOTS, 10)
  out = {"pos": pos, "neg": neg,
         "has_landm": pos & gather(jnp.asarray(batch["landmarks_present"]), m.matched_gt),
         "loc": box_coder.encode_boxes(gather(jnp.asarray(batch["boxes"]), m.matched_gt), a),
         "landm": box_coder.encode_landmarks(gather(lm, m.matched_gt), a)}
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def run_ours(preset: str, size: int, batch: dict, steps: int, bf16: bool,
             conv_impl: str = "auto") -> dict:
  """The library's train step on the mesh, as train.py builds and runs it -> dict(
  images_per_s, step_s, compile_s, first_step_s, loss, num_pos, flops_per_device,
  flops_total, devices, compute_dtype)."""
  det = detectors.build_detector("retinaface", {"preset": preset, "conv_impl": conv_impl})
  out = results_file.time_train_step(det, OPTIM, batch, (size, size), steps, bf16)
  for k in ("initial_variables", "params"):
    out.pop(k)
  return out


def run_peer(preset: str, batch: dict, anchors: np.ndarray, steps: int, bf16: bool) -> dict:
  """The PyTorch step on precomputed targets -> dict(images_per_s, step_s, loss)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_retinaface_peer as peer  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = peer.RetinaFaceTorch.from_config(PRESETS[preset])
  targets = {k: torch.from_numpy(np.array(v)) for k, v in
             precomputed_targets(batch, anchors).items()}
  bgr = batch["image"][..., ::-1] - np.asarray(MEAN_BGR, np.float32)  # our preprocess
  images = torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))
  step = peer.make_peer_step(model, targets, bf16=bf16)
  loss = step(images)  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step(images)
  dt = (time.perf_counter() - t0) / steps
  return {"images_per_s": images.shape[0] / dt, "step_s": dt, "loss": loss,
          "torch": torch.__version__, "threads": torch.get_num_threads()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="mnet,r50", help="comma list of mnet, r50")
  p.add_argument("--mnet_batch", type=int, default=4)
  p.add_argument("--r50_batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
  p.add_argument("--image_size", type=int, default=0,
                 help="square input size for every config (0: the recipe's 640 / 840)")
  p.add_argument("--bf16", action="store_true",
                 help="the bf16 model (Detector.with_dtype) + make_train_step(bf16=True), as "
                      "train.bf16; peer: CPU autocast")
  p.add_argument("--no_peer", action="store_true")
  p.add_argument("--flops", action="store_true", help="print MFU also on CPU")
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="per-device peak for MFU (default H100/H200 bf16 dense)")
  p.add_argument("--results", nargs="?", const="", default=None,
                 help="write a JSON (no value: benchmarks/results/train_step_<platform>.json)")
  p.add_argument("--conv_impl", default="auto", choices=("auto", "conv", "fast"),
                 help="how our convs are computed (models/layers.py)")
  a = p.parse_args()
  dev = jax.devices()[0]
  platform, n_dev = dev.platform, jax.device_count()
  want_mfu = a.flops or platform != "cpu"
  no_torch = None if a.no_peer else results_file.torch_missing()
  print(f"jax {jax.__version__}: {n_dev} x {dev.device_kind} ({platform}), "
        f"{os.cpu_count()} cpus; bf16={a.bf16}; conv_impl={a.conv_impl}")
  run_torch = results_file.report_peer(
      a.no_peer, no_torch, f"PyTorch CPU, torch.set_num_threads({os.cpu_count()}); it "
      "EXCLUDES in-step matching + OHEM (targets precomputed once with our matcher), ours "
      "INCLUDES them")
  rows = []
  for name in a.configs.split(","):
    preset, size = CONFIGS[name]
    size = a.image_size or size
    b = a.mnet_batch if name == "mnet" else a.r50_batch
    batch = synthetic_batch(np.random.default_rng(0), b, size)
    anchors = anchors_lib.anchor_grid(PRESETS[preset].anchor_spec, (size, size))
    print(f"\n[{name}] RetinaFace {preset} {size}x{size}, batch {b}, A = {len(anchors)} anchors, "
          f"{int(batch['box_mask'].sum())} faces in the batch", flush=True)
    ours = run_ours(preset, size, batch, a.steps, a.bf16, a.conv_impl)
    row = {"config": name, "preset": preset, "image_size": size, "batch_size": b,
           "steps": a.steps, "bf16": a.bf16, "conv_impl": a.conv_impl, "ours": ours}
    print(f"  ours: {ours['images_per_s']:.2f} images/s ({ours['step_s']:.3f} s/step, compile "
          f"{ours['compile_s']:.1f} s, first step {ours['first_step_s']:.2f} s, loss "
          f"{ours['loss']:.3f}, {ours['num_pos']:.0f} positives, model in "
          f"{ours['compute_dtype']})", flush=True)
    if ours["flops_per_device"]:
      per_dev = ours["flops_per_device"] / ours["step_s"] / 1e12
      ours["achieved_tflops_per_device"] = per_dev
      ours["achieved_tflops_total"] = per_dev * ours["devices"]
      print(f"  ours: XLA cost_analysis {ours['flops_per_device'] / 1e9:.4g} GFLOP per device "
            f"per step (x {ours['devices']} devices = {ours['flops_total'] / 1e9:.4g} GFLOP), "
            f"{per_dev:.3f} TFLOP/s per device", flush=True)
      if want_mfu:
        ours["mfu"] = per_dev / a.peak_tflops
        print(f"  ours: MFU {100 * ours['mfu']:.3g}% (per-device FLOPs / step time / "
              f"{a.peak_tflops:g} TFLOP/s per device)")
    if run_torch:
      peer = run_peer(preset, batch, anchors, a.steps, a.bf16)
      row["peer"] = peer
      row["ours_over_peer"] = ours["images_per_s"] / peer["images_per_s"]
      print(f"  peer: {peer['images_per_s']:.2f} images/s ({peer['step_s']:.3f} s/step, "
            f"loss {peer['loss']:.3f}; no in-step matching/OHEM)")
      print(f"  ours / peer images/s: {row['ours_over_peer']:.2f}x", flush=True)
    rows.append(row)

  print("\n| config | batch | ours img/s | peer img/s | ours/peer |")
  print("| --- | --- | --- | --- | --- |")
  for r in rows:
    pe = r.get("peer", {}).get("images_per_s")
    print(f"| {r['config']} | {r['batch_size']} | {r['ours']['images_per_s']:.2f} | "
          + (f"{pe:.2f} | {r['ours_over_peer']:.2f}x |" if pe else "skipped | - |"))
  print("(peer excludes in-step matching + OHEM; ours includes them. Timings on a shared "
        "machine are noisy.)")
  print("imported: " + ", ".join(f"{m} {m in sys.modules}" for m in (
      "tensorflow", "tensorflow_datasets", "clu", "ml_collections")))
  if a.results is not None:
    results_file.write_results(a.results, "train_step", {
        "peak_tflops_per_device": a.peak_tflops,
        "flops": "XLA cost_analysis of the compiled step: flops_per_device is one device's "
                 "share; flops_total = flops_per_device x devices; mfu = flops_per_device / "
                 "step_s / peak_tflops_per_device",
        "peer": None if not run_torch else "torch CPU, precomputed targets "
                                           "(excludes matching/OHEM)",
        "peer_skipped_reason": no_torch, "configs": rows})

if __name__ == "__main__":
  main()
