"""HR / Finding Tiny Faces speed: train-step images/s and pyramid inference, ours vs PyTorch.

  python benchmarks/hr.py [--configs train,pyramid] [--batch B] [--steps 3] [--runs 3]
      [--backbone resnet101|resnet50] [--results [FILE]] [--peak_tflops 989] [--flops]
      [--no_peer] [--peer_threads N] [--templates RefBox_N25_scaled.mat]

Our detector is built as the training system builds it: `detectors.build_detector("hr",
{"backbone", "templates"}, {})` (HybridResolution, RGB - TINY_RGB_MEAN, `tiny_faces_loss`).
  * train: images/s of one step at 500x500 (the release's crops), batch --batch (default 2 on
    CPU, 12 = the release's elsewhere), synthetic batches (RGB 0..255 noise, 3-8 faces of
    10-200 px, valid_region = the whole crop). Ours: `train_step.create_train_state` +
    `make_train_step(preprocess=det.preprocess)`, SGD-momentum 0.9, lr 1e-4, weight decay 5e-4,
    on `sharding.make_mesh()`; template labelling (IoU 0.7 / 0.3) and hard mining (easy < 0.03
    dropped, 128 + 128 drawn) run INSIDE the jitted step. Peer (benchmarks/torch_hr_peer.py):
    the same network in PyTorch CPU, forward + backward + torch.optim.SGD, a loss of the same
    shape on a FIXED subset (256 cells per image, 128 "positives" with fixed random targets):
    the peer EXCLUDES labelling and mining. Both parameter counts are printed and checked.
  * pyramid: one 1024x768 RGB noise image, scales 0.25 / 0.5 / 1 / 2, score > 0.03, NMS 0.3,
    top-k 5000 per scale, 2000 kept (configs/hr_res101.py's eval). Ours: ONE jit,
    `inference.make_predict_fn` on the BatchNorm-folded variables (`layers.fold_batch_norm`,
    as `detect` and the evaluation run it; the peer runs torch's eval-mode BatchNorm) (resize, model, template pruning, decode, top-k, batched XLA
    NMS) on the image padded to a bucket of 64, compile time apart; and its post-processing
    alone (decode + top-k + NMS) on the peer's raw maps. Peer: the torch forward at the four
    scales (F.interpolate bilinear, align_corners=False, antialias when shrinking) + sigmoid +
    template pruning + numpy threshold: the peer LEAVES OUT box decoding and NMS. Both share
    our random weights (default flax init; the zero-initialised score convs set to small
    random values, cls bias set so that 1% of the active cells at scale 1 pass 0.03);
    agreement: max |ours - peer| of the raw score maps at scale 1 and of the resized inputs.
Prints ours, the peer and ours / peer per measurement (medians; pyramid runs interleaved). With
--results, writes a JSON naming the device (no value: benchmarks/results/hr_<platform>.json).
FLOPs: XLA cost_analysis of the compiled functions (the train step's on GPU or with --flops),
one device's share of a partitioned program, so MFU = FLOPs / time / --peak_tflops (the
per-device peak). No TensorFlow anywhere in the import chain (runs
on an image with only jax/flax/optax/orbax; the peer is skipped when torch is not importable).
CPU timings on a shared machine are noisy: quote numbers from a quiet machine (torch's OpenMP
threads suffer most from other jobs on the cores: try --peer_threads 1 there).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import results_file  # noqa: E402
from tinyfaces_jax import detectors, inference  # noqa: E402
from tinyfaces_jax.training import optim  # noqa: E402
from tinyfaces_jax.detectors import hr as hr_detector  # noqa: E402
from tinyfaces_jax.training import sharding, train_step  # noqa: E402
from tinyfaces_jax.detection import nms as nms_lib  # noqa: E402
from tinyfaces_jax.detectors.hr import templates as templates_lib  # noqa: E402
from tinyfaces_jax.detectors.hr.model import TINY_RGB_MEAN, output_size  # noqa: E402
from tinyfaces_jax.models import layers  # noqa: E402

TEMPLATES = ROOT.parent / "shared" / "data" / "tinyfaces" / "RefBox_N25_scaled.mat"
OPTIM = optim.OptimConfig(learning_rate=1e-4, momentum=0.9, weight_decay=5e-4,
                          schedule="constant")
INFER = inference.InferenceConfig(scales=(0.25, 0.5, 1.0, 2.0), score_threshold=0.03,
                                  iou_threshold=0.3, pre_nms_top_k=5000, max_output=2000,
                                  pixel_offset=1.0, max_branch_size=5000)
TRAIN_SIZE, SLOTS, PYRAMID_HW, BUCKET = 500, 16, (768, 1024), 64
# Pyramid score convs: RMS of the C3 / C4 taps under the default flax init (measured on the
# noise image at scale 1), for logits of std ~LOGIT_STD per map; CANDIDATES: the fraction of
# the active (cell, template) pairs at scale 1 that pass the score threshold.
TAP_RMS = {"resnet101": (120.0, 683.0), "resnet50": (120.0, 142.0),
           "mobilenet0.25": (0.41, 0.007)}   # the CPU-sized trunk (gpu_suite.py --tiny)
LOGIT_STD, REG_GAIN, CANDIDATES = 0.7, 0.1, 0.01


def synthetic_batch(rng: np.random.Generator, b: int, size: int = TRAIN_SIZE,
                    slots: int = SLOTS) -> dict:
  """Host batch: image [B, S, S, 3] float32 RGB 0..255, boxes [B, M, 4] xyxy (x2 = x1 + w;
  M = `slots` (default 16, > 8), 3..8 faces, height log-uniform 10..min(200, S / 2) px,
  width 0.7..1 of it), box_mask [B, M], valid_region [B, 4] = (0, 0, S, S)."""
  image = rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)
  h = np.exp(rng.uniform(np.log(10), np.log(min(200, size / 2)), (b, slots)))
  w = h * rng.uniform(0.7, 1.0, (b, slots))
  x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
  boxes = np.stack([x1, y1, x1 + w, y1 + h], -1)
  mask = np.arange(slots)[None] < rng.integers(3, 9, (b, 1))
  return {"image": image, "boxes": np.where(mask[..., None], boxes, 0).astype(np.float32),
          "box_mask": mask,
          "valid_region": np.tile(np.asarray([0, 0, size, size], np.float32), (b, 1))}


def tree_size(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def ready(tree):
  return jax.device_get(jax.block_until_ready(tree))


# --- train ------------------------------------------------------------------------------------

def run_ours_train(det, batch: dict, steps: int, want_flops: bool) -> dict:
  """Our step -> dict(images_per_s, step_s, compile_s, loss, num_pos, num_pos_labelled,
  params, batch_stats, flops_per_step)."""
  mesh = sharding.make_mesh()
  b, size = batch["image"].shape[:2]
  sharding.check_batch_size(b, mesh)
  key = jax.random.PRNGKey(0)
  state = train_step.init_detector_state(det, OPTIM, (size, size), mesh)
  n_params, n_stats = tree_size(state.params), tree_size(state.batch_stats)
  step = train_step.detector_train_step(det, mesh)
  gbatch = sharding.host_to_global(batch, mesh)
  flops = (results_file.flops_per_device(step.lower(state, gbatch, key).compile())
           if want_flops else None)
  t0 = time.perf_counter()
  state, metrics = step(state, gbatch, key)   # traces and compiles
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, gbatch, key)
  jax.block_until_ready((state, metrics))
  dt = (time.perf_counter() - t0) / steps
  m = {k: float(jax.device_get(metrics[k])) for k in ("loss", "num_pos", "num_pos_labelled")}
  return {"images_per_s": b / dt, "step_s": dt, "compile_s": compile_s, **m,
          "params": n_params, "batch_stats": n_stats, "flops_per_step": flops}


def run_peer_train(backbone: str, batch: dict, steps: int, num_templates: int) -> dict:
  """The PyTorch step on fixed targets -> dict(images_per_s, step_s, loss, params, ...)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_hr_peer as peer  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = peer.HRTorch(backbone, num_templates)
  n_params, n_stats = peer.count_parameters(model)
  b, size = batch["image"].shape[:2]
  targets = peer.fixed_targets(b, output_size(size, size), num_templates)
  images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
  step = peer.make_peer_step(model, targets, TINY_RGB_MEAN, lr=OPTIM.learning_rate,
                             momentum=OPTIM.momentum, weight_decay=OPTIM.weight_decay)
  loss = step(images)  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step(images)
  dt = (time.perf_counter() - t0) / steps
  return {"images_per_s": b / dt, "step_s": dt, "loss": loss, "params": n_params,
          "batch_stats": n_stats, "torch": torch.__version__,
          "threads": torch.get_num_threads()}


def bench_train(a, det, platform: str, run_torch: bool) -> dict:
  b = a.batch or (2 if platform == "cpu" else 12)
  batch = synthetic_batch(np.random.default_rng(0), b)
  nt = det.model.config.num_templates
  print(f"\n[train] HR {a.backbone} {TRAIN_SIZE}x{TRAIN_SIZE}, batch {b}, output "
        f"{output_size(TRAIN_SIZE, TRAIN_SIZE)} x {nt} templates, "
        f"{int(batch['box_mask'].sum())} faces in the batch", flush=True)
  ours = run_ours_train(det, batch, a.steps, a.flops or platform != "cpu")
  row = {"image_size": TRAIN_SIZE, "batch_size": b, "steps": a.steps, "ours": ours}
  print(f"  ours: {ours['images_per_s']:.3f} images/s ({ours['step_s']:.3f} s/step, compile + "
        f"first step {ours['compile_s']:.1f} s, loss {ours['loss']:.3f}, {ours['num_pos']:.0f} "
        f"positives drawn of {ours['num_pos_labelled']:.0f} labelled)", flush=True)
  if ours["flops_per_step"]:
    tf_s = ours["achieved_tflops"] = ours["flops_per_step"] / ours["step_s"] / 1e12
    ours["mfu"] = tf_s / a.peak_tflops
    print(f"  ours: {ours['flops_per_step'] / 1e9:.1f} GFLOP/step per device (XLA "
          f"cost_analysis), {tf_s:.3f} TFLOP/s per device, MFU {100 * ours['mfu']:.3g}% of "
          f"{a.peak_tflops:g} TFLOP/s per device")
  print(f"  parameters: ours {ours['params']:,} params + {ours['batch_stats']:,} BN stats")
  if run_torch:
    peer = row["peer"] = run_peer_train(a.backbone, batch, a.steps, nt)
    row["ours_over_peer"] = ours["images_per_s"] / peer["images_per_s"]
    same = (peer["params"], peer["batch_stats"]) == (ours["params"], ours["batch_stats"])
    row["same_parameter_count"] = same
    print(f"  parameters: peer {peer['params']:,} params + {peer['batch_stats']:,} BN running "
          "mean/var: " + ("EQUAL to ours" if same else "DIFFERENT (not the same network)"))
    print(f"  peer: {peer['images_per_s']:.3f} images/s ({peer['step_s']:.3f} s/step, loss "
          f"{peer['loss']:.3f}; fixed cells, no labelling/mining)")
    print(f"  ours / peer images/s: {row['ours_over_peer']:.2f}x", flush=True)
  return row


# --- pyramid ----------------------------------------------------------------------------------

def pyramid_variables(det, x, active1, seed: int = 1):
  """Default flax init; score convs N(0, LOGIT_STD / (sqrt(C_in) x tap RMS)) kernels (reg
  columns x REG_GAIN); the cls biases of score_res3 (they shift the fused map uniformly) set
  so that CANDIDATES of the `active1` pairs of x [1, H, W, 3] at scale 1 pass the threshold.
  -> (variables, jit forward(variables, images) -> raw outputs)."""
  # jitted: flax's init run eagerly compiles every op on its own (tens of seconds for a ResNet)
  v = jax.device_get(jax.jit(lambda k: det.init_variables((64, 64), k))(jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  nt = det.model.config.num_templates
  for name, rms in zip(("score_res3", "score_res4"), TAP_RMS[det.model.config.backbone]):
    shape = v["params"][name]["kernel"].shape
    k = rng.normal(0, LOGIT_STD / (np.sqrt(shape[2]) * rms), shape).astype(np.float32)
    k[..., nt:] *= REG_GAIN
    v["params"][name] = {"kernel": k, "bias": np.zeros(5 * nt, np.float32)}
  fwd = jax.jit(lambda v, im: det.model.apply(v, det.preprocess(im)))
  cls = np.asarray(ready(fwd(v, x))["cls"])[..., active1]
  t = INFER.score_threshold
  v["params"]["score_res3"]["bias"][:nt] = np.log(t / (1 - t)) - np.quantile(cls, 1 - CANDIDATES)
  return jax.device_put(v), fwd


def postprocess_fn(det, cfg: inference.InferenceConfig, hw: tuple[int, int]):
  """jit(outputs per scale [{cls, reg} NHWC]) -> nms result: the tail of
  `inference.make_predict_fn` (decode with template pruning, back to input pixels, top-k per
  scale, one batched NMS), for timing it alone."""
  h, w = hw

  def post(outs):
    boxes_all, scores_all = [], []
    for s, out in zip(cfg.scales, outs):
      hs, ws = max(1, round(h * s)), max(1, round(w * s))
      d = det.decode(out, (hs, ws), scale=s)
      boxes = d["boxes"] / jnp.asarray([ws / w, hs / h] * 2, jnp.float32)
      sc, i = jax.lax.top_k(d["scores"], min(cfg.pre_nms_top_k, d["scores"].shape[1]))
      boxes_all.append(jax.vmap(lambda x, j: x[j])(boxes, i))
      scores_all.append(sc)
    return nms_lib.batched_nms(jnp.concatenate(boxes_all, 1), jnp.concatenate(scores_all, 1),
                               iou_threshold=cfg.iou_threshold, max_output=cfg.max_output,
                               score_threshold=cfg.score_threshold, pre_nms_top_k=None,
                               pixel_offset=cfg.pixel_offset)
  return jax.jit(post)


def peer_pyramid(a, variables, fwd, x, active: dict, row: dict):
  """Builds the torch peer on our weights, runs it once and checks it against ours (raw maps
  at scale 1, resized inputs); fills `row`. -> (run() -> peer.pyramid result, that result)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_hr_peer as peer  # pylint: disable=import-outside-toplevel
  model = peer.HRTorch(a.backbone, len(active[1.0])).eval()
  copied = peer.load_flax_variables(model, jax.device_get(variables))
  timg = torch.from_numpy(np.array(x).transpose(0, 3, 1, 2).copy())

  def run():
    return peer.pyramid(model, timg, TINY_RGB_MEAN, INFER.scales, active, INFER.score_threshold)

  out = run()   # warm-up; also the agreement check and the post-processing inputs
  o1 = ready(fwd(variables, x))
  r1 = next(r[4] for r in out if r[0] == 1.0)
  diff = {k: float(np.abs(o1[k] - r1[k]).max()) for k in ("cls", "reg")}
  top = {k: float(np.abs(r1[k]).max()) for k in ("cls", "reg")}
  rdiff = {str(s): float(np.abs(
      np.asarray(jax.image.resize(x, (1,) + tuple(shw) + (3,), "linear"))
      - peer.resize(timg, shw).permute(0, 2, 3, 1).numpy()).max())
           for s, shw, *_ in out if tuple(shw) != tuple(x.shape[1:3])}
  cand = {str(s): int(len(c)) for s, _, c, *_ in out}
  print(f"  weights copied into the peer: {copied:,} elements; agreement at scale 1 "
        f"({o1['cls'].shape[1]}x{o1['cls'].shape[2]} cells): max |ours - peer| cls "
        f"{diff['cls']:.2e} (max |cls| {top['cls']:.2f}), reg {diff['reg']:.2e} (max |reg| "
        f"{top['reg']:.2f}); resized inputs (0..255): "
        + ", ".join(f"x{s} {d:.2e}" for s, d in rdiff.items()))
  print(f"  peer candidates > {INFER.score_threshold} per scale: {cand}")
  row.update(agreement_max_abs=diff, agreement_max_value=top, resize_max_abs=rdiff,
             peer_candidates=cand, weights_copied=copied,
             peer={"torch": torch.__version__, "threads": torch.get_num_threads()})
  return run, out


def bench_pyramid(a, det, platform: str, run_torch: bool) -> dict:
  h, w = PYRAMID_HW
  image = np.random.default_rng(0).uniform(0, 255, (h, w, 3)).astype(np.float32)
  hw = inference.bucket_hw(h, w, BUCKET)
  x = jnp.asarray(inference.pad_to(image, hw, det.pad_value)[None])
  print(f"\n[pyramid] HR {a.backbone}, one {w}x{h} image padded to {hw[1]}x{hw[0]}, scales "
        f"{INFER.scales}, score > {INFER.score_threshold}, NMS {INFER.iou_threshold}", flush=True)
  tpl = templates_lib.load_templates(a.templates)
  active = {s: hr_detector.active_templates(tpl.sigma, s, hr_detector.DEFAULT_ALLSCALE,
                                            hr_detector.DEFAULT_ONESCALE) for s in INFER.scales}
  variables, fwd = pyramid_variables(det, x, active[1.0])
  folded = layers.fold_batch_norm(variables)  # as detect and the evaluation run it
  t0 = time.perf_counter()
  compiled = inference.make_predict_fn(det, INFER).lower(folded, x).compile()
  compile_s, flops = time.perf_counter() - t0, results_file.flops_per_device(compiled)
  t0 = time.perf_counter()
  res = ready(compiled(folded, x))
  first_s = time.perf_counter() - t0
  row = {"image_hw": [h, w], "padded_hw": list(hw), "runs": a.runs, "scales": list(INFER.scales),
         "ours": {"compile_s": compile_s, "first_run_s": first_s, "flops": flops,
                  "detections": int(res["valid"].sum())}}
  print(f"  ours: compile {compile_s:.1f} s, first run {first_s:.2f} s, "
        f"{row['ours']['detections']} detections kept", flush=True)
  fns = {"ours": lambda: ready(compiled(folded, x))}
  if run_torch:
    fns["peer"], out = peer_pyramid(a, variables, fwd, x, active, row)
  times = {k: [] for k in fns}
  for _ in range(a.runs):   # interleaved: load drift on a shared machine hits both alike
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  row["ours"]["median_s"] = med["ours"]
  print(f"  ours: {med['ours']:.3f} s per image (median of {a.runs}; one jit: resize, model, "
        f"decode, top-k, NMS)")
  if flops:
    tf_s = row["ours"]["achieved_tflops"] = flops / med["ours"] / 1e12
    print(f"  ours: {flops / 1e9:.1f} GFLOP (XLA cost_analysis), {tf_s:.3f} TFLOP/s"
          + (f", MFU {100 * tf_s / a.peak_tflops:.3g}% of {a.peak_tflops:g}"
             if platform != "cpu" else ""))
  if run_torch:
    post = postprocess_fn(det, INFER, hw)
    outs = [{k: jnp.asarray(v) for k, v in r[4].items()} for r in out]
    ready(post(outs))   # compile
    t_post = []
    for _ in range(max(a.runs, 3)):
      t0 = time.perf_counter()
      ready(post(outs))
      t_post.append(time.perf_counter() - t0)
    t_post = row["ours"]["postprocess_s"] = statistics.median(t_post)
    row["peer"]["median_s"] = med["peer"]
    row["ours_over_peer"] = med["ours"] / med["peer"]
    print(f"  ours, post-processing alone (decode + top-k + NMS on the peer's maps): "
          f"{t_post:.3f} s")
    print(f"  peer: {med['peer']:.3f} s per image (median of {a.runs}; forward + sigmoid + "
          f"threshold, NO decoding / NMS)")
    print(f"  ours / peer time: {row['ours_over_peer']:.2f}x (ours minus its post-processing: "
          f"{(med['ours'] - t_post) / med['peer']:.2f}x)", flush=True)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="train,pyramid", help="comma list of train, pyramid")
  p.add_argument("--batch", type=int, default=None, help="train batch (default 2 on CPU, 12)")
  p.add_argument("--steps", type=int, default=3, help="timed train steps after one warm-up")
  p.add_argument("--runs", type=int, default=3, help="timed pyramid runs after one warm-up")
  p.add_argument("--backbone", default="resnet101", choices=("resnet101", "resnet50"))
  p.add_argument("--templates", default=str(TEMPLATES))
  p.add_argument("--no_peer", action="store_true")
  p.add_argument("--peer_threads", type=int, default=os.cpu_count(),
                 help="torch threads (OpenMP; 1 is far faster when other jobs load the cores)")
  p.add_argument("--flops", action="store_true", help="train-step FLOPs also on CPU")
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="per-device peak for MFU (default H100/H200 bf16 dense)")
  p.add_argument("--results", nargs="?", const="", default=None,
                 help="write a JSON (no value: benchmarks/results/hr_<platform>.json)")
  a = p.parse_args()
  configs = a.configs.split(",")
  if set(configs) - {"train", "pyramid"}:
    p.error(f"--configs: unknown {sorted(set(configs) - {'train', 'pyramid'})}")
  dev = jax.devices()[0]
  platform, n_dev = dev.platform, jax.device_count()
  no_torch = None if a.no_peer else results_file.torch_missing(a.peer_threads)
  print(f"jax {jax.__version__}: {n_dev} x {dev.device_kind} ({platform}), {os.cpu_count()} "
        f"cpus; HR {a.backbone}")
  run_torch = results_file.report_peer(
      a.no_peer, no_torch, f"PyTorch CPU, torch.set_num_threads({a.peer_threads}); train: it "
      "EXCLUDES template labelling + hard mining (fixed cells), ours INCLUDES them; pyramid: "
      "it EXCLUDES decoding + NMS, ours INCLUDES them")
  det = detectors.build_detector("hr", {"backbone": a.backbone, "templates": a.templates}, {})
  rows = {}
  if "train" in configs:
    rows["train"] = bench_train(a, det, platform, run_torch)
  if "pyramid" in configs:
    rows["pyramid"] = bench_pyramid(a, det, platform, run_torch)

  print("\n| measurement | ours | peer | ours/peer |\n| --- | --- | --- | --- |")
  for name, key, what in (("train", "images_per_s", "train img/s"),
                          ("pyramid", "median_s", "pyramid s/image")):
    if name in rows:
      r, pe = rows[name], rows[name].get("peer", {}).get(key)
      print(f"| {what} | {r['ours'][key]:.3f} | "
            + (f"{pe:.3f} | {r['ours_over_peer']:.2f}x |" if pe else "skipped | - |"))
  print("(train: peer excludes labelling + mining; pyramid: peer excludes decoding + NMS. "
        "Timings on a shared machine are noisy: quote numbers from a quiet machine.)")
  print(f"tensorflow imported: {'tensorflow' in sys.modules}")
  if a.results is not None:
    results_file.write_results(a.results, "hr", {
        "settings": vars(a), "peak_tflops_per_device": a.peak_tflops,
        "peer": None if not run_torch else "torch CPU; train: fixed cells (excludes "
                "labelling/mining); pyramid: forward + threshold (excludes decode/NMS)",
        "peer_skipped_reason": no_torch, "results": rows})

if __name__ == "__main__":
  main()
