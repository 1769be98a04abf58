"""S3FD and SSH speed: train-step images/s and batch-1 inference, ours vs a PyTorch peer.

  python benchmarks/s3fd_ssh.py [--families s3fd,ssh] [--batch B] [--image_size S] [--steps 3]
      [--infer_size WxH] [--runs 3] [--ssh_backbone vgg16|mobilenet0.25] [--bf16]
      [--results [FILE]] [--no_peer] [--peer_threads N] [--peak_tflops 989] [--flops]

Sizes: on CPU (defaults sized for one run of both families in about 3 minutes on 2 cores) the
train step runs at 320x320, batch 1, and inference on a 320x256 image; elsewhere (a GPU/TPU)
the recipes' sizes: S3FD trains at 640x640 (its crops), SSH at 1200x1200 (the release's short
side; its canvas is 1600: --image_size 1600), batch 2, inference at 640x480. --batch,
--image_size (every family) and --infer_size (W x H) override them.
Families: "s3fd" = `detectors.build_detector("s3fd", {"variant": "caffe"}, {})` (VGG16 + fc6 /
fc7 + extras, L2Norm, six heads, max-out); "ssh" = `build_detector("ssh", {"backbone": ...})`
(VGG16 conv1..5_3, the M1 fusion with the fixed bilinear deconvolution, three detection
modules; --ssh_backbone mobilenet0.25 with configs/ssh_vgg16.py:backbone=mnet025's halved
widths). Per family, on synthetic batches (random RGB 0..255; M = 64 ground-truth slots with
8..12 random square faces per image, sides log-uniform 12 .. S/2 px; SSH's valid_region =
the whole image):
  * train, ours: the step train.py runs: `train_step.init_detector_state` +
    `detector_train_step(det, mesh, bf16=...)` on `sharding.make_mesh()`, the batch placed by
    `sharding.host_to_global`, compiled ahead of time, one warm-up step, then --steps timed.
    INSIDE the jitted step: RGB -> BGR - mean, the network, and the family's whole loss:
    S3FD's two-stage matching (bipartite + IoU 0.35, then stage two for faces with < 6
    anchors), 3:1 hard-negative mining, SSD box encoding, softmax CE + Smooth L1; SSH's
    border filter, IoU labelling (0.5 / 0.3, +1 pixel), OHEM on a stop-gradient of the same
    forward (per image and module: <= 64 hardest positives, 256 - #pos hardest negatives),
    bbox_transform targets, CE + Smooth L1 (sigma 3) per module. SGD momentum 0.9, weight
    decay 5e-4 on every parameter, constant lr 1e-4 (the recipes' 1e-3 / 4e-3 are meant for
    an ImageNet trunk and diverge within a few steps from random weights; the speed does not
    depend on it); the SSH VGG16 recipe's
    frozen conv1_* / conv2_* (optim.frozen: their gradients are still computed, for the step's
    grad_norm metric, then discarded). `--bf16`: det.with_dtype(bfloat16) + bf16=True (convs
    and activations bf16; parameters, optimizer, loss, matching float32).
  * train, peer (benchmarks/torch_s3fd_ssh_peer.py, the same network in PyTorch CPU, threads
    --peer_threads; --bf16: CPU autocast bf16), starting from OUR initial weights (copied from
    the train state): BGR - mean done once outside the step; forward
    + backward + torch.optim.SGD step (same lr / momentum / decay; SSH's conv1/conv2 with
    requires_grad=False, so torch skips their backward), the same loss on targets PRECOMPUTED
    once with OUR matchers (S3FD: `multibox_loss.match_batch` + hard negatives ranked by a
    random loss once; SSH: `ssh.module_targets` + `sampling.ohem_sample_mask` on random
    scores once): the peer EXCLUDES in-step matching, hard-negative mining / OHEM and target
    encoding, ours INCLUDES them.
  * inference (batch 1, float32, both on the SAME random weights: ours drawn in numpy, copied
    into the peer; the face-logit biases shifted so that 1% of the anchors score > 0.05), one
    random RGB image padded to a multiple of 32 with the mean colour, given to both sides:
      ours forward   jit(preprocess + model.apply): BGR - mean, network, raw outputs;
      ours e2e       `inference.make_predict_fn(det, InferenceConfig(score_threshold=0.05,
                     iou_threshold=0.3))`, ONE jit: preprocess, network, the family's decode
                     (S3FD: softmax + SSD decode; SSH: softmax + bbox_transform_inv + clip +
                     top 1000 per module), score > 0.05, top 5000, greedy +1-pixel NMS at 0.3
                     (batched XLA NMS), keep 750; outputs fetched to the host;
      peer forward   torch.inference_mode: BGR - mean in torch, network, raw outputs;
      peer e2e       the peer forward + the same decode, threshold, top-k, NMS and keep in
                     numpy (torch_s3fd_ssh_peer.s3fd_postprocess / ssh_postprocess; no
                     torchvision); anchors precomputed once, outside the timing.
    Medians of --runs interleaved runs (load drift on a shared machine hits both alike), after
    one warm-up (ours: compile). Agreement printed: max |ours - peer| of the raw outputs and
    the detections each side keeps.
Prints images/s (train) and seconds per image (inference), ours / peer per measurement. With
--results, writes a JSON (no value: benchmarks/results/s3fd_ssh_<platform>.json) naming the
device. FLOPs: XLA cost_analysis of the compiled train step, one device's share (MFU =
flops_per_device / step time / --peak_tflops; printed on a GPU/TPU or with --flops).
No TensorFlow, tensorflow_datasets, clu or ml_collections in the import chain (the last line
says so); the peer is skipped with a message when torch is not importable.
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
from tinyfaces_jax.detection import box_coder, matching, multibox_loss, sampling  # noqa: E402
from tinyfaces_jax.detectors import s3fd as s3fd_det, ssh as ssh_det  # noqa: E402
from tinyfaces_jax.detectors.s3fd import model as s3fd_model  # noqa: E402
from tinyfaces_jax.detectors.ssh import model as ssh_model  # noqa: E402
from tinyfaces_jax.training import optim  # noqa: E402

FAMILIES = ("s3fd", "ssh")
SLOTS, FACES, BUCKET, CANDIDATES = 64, 10, 32, 0.01
INFER = inference.InferenceConfig(score_threshold=0.05, iou_threshold=0.3)
NMS_KW = dict(iou_threshold=INFER.iou_threshold, max_output=INFER.max_output,
              score_threshold=INFER.score_threshold, pre_nms_top_k=INFER.pre_nms_top_k,
              pixel_offset=INFER.pixel_offset)
SSH_MNET = dict(fuse_channels=64, module_widths=((64, 32), (128, 64), (128, 64)))
SSH_FROZEN = (r"^vgg/conv[12]_",)
LR = 1e-4   # not the recipes' 1e-3 / 4e-3: from random weights those diverge within a few steps
DEFAULTS = {"cpu": dict(batch=1, image_size={"s3fd": 320, "ssh": 320}, infer=(256, 320)),
            "other": dict(batch=2, image_size={"s3fd": 640, "ssh": 1200}, infer=(480, 640))}
MEAN_BGR = {"s3fd": s3fd_model.MEAN_BGR, "ssh": ssh_model.MEAN_BGR}


def build(family: str, ssh_backbone: str, s3fd_backbone: str = "vgg16",
          conv_impl: str = "auto"):
  """-> (detector, optim.OptimConfig) as the family's config trains it (s3fd_backbone
  mobilenet0.25: configs/s3fd_vgg16.py:backbone=mnet025's CPU-sized S3FD; conv_impl: how the
  convs are computed, models/layers.py)."""
  if family == "s3fd":
    return (detectors.build_detector("s3fd", {"variant": "caffe", "backbone": s3fd_backbone,
                                              "conv_impl": conv_impl}, {}),
            optim.OptimConfig(learning_rate=LR, schedule="constant"))
  model = {"backbone": ssh_backbone, "conv_impl": conv_impl,
           **(SSH_MNET if ssh_backbone != "vgg16" else {})}
  return (detectors.build_detector("ssh", model, {}),
          optim.OptimConfig(learning_rate=LR, schedule="constant",
                            frozen=SSH_FROZEN if ssh_backbone == "vgg16" else ()))


def synthetic_batch(rng: np.random.Generator, b: int, size: int, family: str,
                    slots: int = SLOTS) -> dict:
  """image [B, S, S, 3] float32 RGB 0..255, boxes [B, M, 4] xyxy, box_mask [B, M] (M =
  `slots`, default 64, > 12; 8..12 faces, side log-uniform 12 .. S/2 px); SSH: valid_region
  [B, 4] = (0, 0, S, S)."""
  image = rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32)
  side = np.exp(rng.uniform(np.log(12), np.log(size / 2), (b, slots)))
  x1, y1 = (rng.uniform(0, size - side) for _ in range(2))
  boxes = np.stack([x1, y1, x1 + side, y1 + side], -1)
  mask = np.arange(slots)[None] < rng.integers(FACES - 2, FACES + 3, (b, 1))
  out = {"image": image, "boxes": np.where(mask[..., None], boxes, 0).astype(np.float32),
         "box_mask": mask}
  if family == "ssh":
    out["valid_region"] = np.tile(np.asarray([0, 0, size, size], np.float32), (b, 1))
  return out


def anchors_of(det, family: str, hw) -> np.ndarray:
  if family == "s3fd":
    return np.asarray(s3fd_model.anchors(det.model.config, tuple(hw)))
  return np.asarray(ssh_model.anchors(tuple(hw)))


def s3fd_targets(batch: dict, anchors: np.ndarray, seed: int = 0) -> dict:
  """The peer's fixed S3FD targets from our matcher (LOSS_DEFAULTS): pos / neg [B, A] masks
  (neg: 3 hard negatives per positive ranked by a random loss, as the mining picks them, but
  once), loc [B, A, 4] encoded targets (variances 0.1 / 0.2)."""
  cfg = multibox_loss.MultiboxLossConfig(**s3fd_det.LOSS_DEFAULTS)
  a = jnp.asarray(anchors)
  boxes = jnp.asarray(batch["boxes"])
  m = multibox_loss.match_batch(a, boxes, jnp.asarray(batch["box_mask"]), cfg)
  pos = m.labels == matching.POSITIVE
  rand = jax.random.uniform(jax.random.PRNGKey(seed), pos.shape)
  neg = sampling.batched_hard_negative_mask(jnp.where(pos, 0.0, rand), m.labels,
                                            cfg.neg_pos_ratio)
  gather = jax.vmap(lambda x, i: x[i])
  loc = box_coder.encode_boxes(gather(boxes, m.matched_gt), a, cfg.variances)
  return {k: np.asarray(v, np.float32) for k, v in {"pos": pos, "neg": neg, "loc": loc}.items()}


def ssh_targets(batch: dict, anchors: np.ndarray, slices, seed: int = 0) -> dict:
  """The peer's fixed SSH targets from our labelling (`ssh.module_targets`: border filter,
  IoU 0.5 / 0.3) and OHEM (`sampling.ohem_sample_mask`) on random scores, once: pos [B, A],
  cls_w / reg_w [B, A] (1 / the image's sampled count per module on the sampled anchors /
  the positives), target [B, A, 4] (bbox_transform, +1 widths)."""
  cfg = ssh_det.SSHLossConfig()
  a = jnp.asarray(anchors)
  boxes = jnp.asarray(batch["boxes"])
  match = jax.vmap(lambda b, k, r: ssh_det.module_targets(a, b, k, r, cfg, slices))(
      boxes, jnp.asarray(batch["box_mask"]), jnp.asarray(batch["valid_region"]))
  scores = jax.random.uniform(jax.random.PRNGKey(seed), match.labels.shape)
  pos_all, cls_w, reg_w = [], [], []
  for sl in slices:
    pos, neg = jax.vmap(lambda s, l: sampling.ohem_sample_mask(
        s, l, num_samples=cfg.num_samples, fg_fraction=cfg.fg_fraction,
        hard_positives=cfg.hard_positives))(scores[:, sl], match.labels[:, sl])
    sampled = (pos | neg).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(sampled, axis=1, keepdims=True), 1.0)
    pos_all.append(pos)
    cls_w.append(sampled / count)
    reg_w.append(pos / count)
  matched = jax.vmap(lambda x, i: x[i])(boxes, match.matched_gt)
  target = box_coder.encode_boxes(matched, a, ssh_det.NO_VARIANCES, pixel_offset=1.0)
  out = {"pos": jnp.concatenate(pos_all, 1), "cls_w": jnp.concatenate(cls_w, 1),
         "reg_w": jnp.concatenate(reg_w, 1), "target": target}
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def ready(tree):
  return jax.device_get(jax.block_until_ready(tree))


# --- train ------------------------------------------------------------------------------------

def peer_model(family: str, det):
  import torch_s3fd_ssh_peer as peer  # pylint: disable=import-outside-toplevel
  if family == "s3fd":
    return peer.S3FDTorch.from_config(det.model.config)
  return peer.SSHTorch.from_config(det.model.config)


def load_variables(family: str, model, variables) -> int:
  """Our variables into the peer (torch_s3fd_ssh_peer.load_flax_variables_*)."""
  import torch_s3fd_ssh_peer as peer  # pylint: disable=import-outside-toplevel
  load = peer.load_flax_variables_s3fd if family == "s3fd" else peer.load_flax_variables_ssh
  return load(model, variables)


def run_peer_train(family: str, det, opt_cfg, batch: dict, steps: int, bf16: bool,
                   variables: dict) -> dict:
  """The PyTorch step on precomputed targets, from our initial `variables` -> dict(
  images_per_s, step_s, loss, params)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_s3fd_ssh_peer as peer  # pylint: disable=import-outside-toplevel
  model = peer_model(family, det)
  load_variables(family, model, variables)
  b, size = batch["image"].shape[:2]
  anchors = anchors_of(det, family, (size, size))
  if family == "s3fd":
    targets, loss_fn = s3fd_targets(batch, anchors), peer.precomputed_s3fd_loss
  else:
    targets = ssh_targets(batch, anchors, ssh_model.module_slices((size, size)))
    loss_fn = peer.precomputed_ssh_loss
    if opt_cfg.frozen:
      model.freeze()
  targets = {k: torch.from_numpy(np.array(v)) for k, v in targets.items()}
  bgr = batch["image"][..., ::-1] - np.asarray(MEAN_BGR[family], np.float32)  # our preprocess
  images = torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))
  step = peer.make_peer_step(model, loss_fn, targets, lr=opt_cfg.learning_rate,
                             momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay,
                             bf16=bf16)
  loss = step(images)  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step(images)
  dt = (time.perf_counter() - t0) / steps
  return {"images_per_s": b / dt, "step_s": dt, "loss": loss,
          "params": peer.count_parameters(model), "torch": torch.__version__,
          "threads": torch.get_num_threads()}


def bench_train(a, family, det, opt_cfg, size, b, want_mfu, run_torch) -> dict:
  batch = synthetic_batch(np.random.default_rng(0), b, size, family)
  n_anchors = len(anchors_of(det, family, (size, size)))
  print(f"  [train] {size}x{size}, batch {b}, A = {n_anchors} anchors, "
        f"{int(batch['box_mask'].sum())} faces in the batch", flush=True)
  ours = results_file.time_train_step(det, opt_cfg, batch, (size, size), a.steps, a.bf16)
  initial = ours.pop("initial_variables")
  row = {"image_size": size, "batch_size": b, "steps": a.steps, "bf16": a.bf16, "ours": ours}
  print(f"  ours: {ours['images_per_s']:.3f} images/s ({ours['step_s']:.3f} s/step, compile "
        f"{ours['compile_s']:.1f} s, first step {ours['first_step_s']:.2f} s, loss "
        f"{ours['loss']:.3f}, {ours['num_pos']:.0f} positives, model in "
        f"{ours['compute_dtype']}, {ours['params']:,} params)", flush=True)
  if ours["flops_per_device"]:
    per_dev = ours["flops_per_device"] / ours["step_s"] / 1e12
    ours["achieved_tflops_per_device"] = per_dev
    msg = (f"  ours: XLA cost_analysis {ours['flops_per_device'] / 1e9:.4g} GFLOP per device "
           f"per step, {per_dev:.3f} TFLOP/s per device")
    if want_mfu:
      ours["mfu"] = per_dev / a.peak_tflops
      msg += f", MFU {100 * ours['mfu']:.3g}% of {a.peak_tflops:g} TFLOP/s"
    print(msg)
  if run_torch:
    peer = row["peer"] = run_peer_train(family, det, opt_cfg, batch, a.steps, a.bf16,
                                        initial)
    row["ours_over_peer"] = ours["images_per_s"] / peer["images_per_s"]
    print(f"  peer: {peer['images_per_s']:.3f} images/s ({peer['step_s']:.3f} s/step, loss "
          f"{peer['loss']:.3f}, {peer['params']:,} params"
          + ("" if peer["params"] == ours["params"] else " (ours counts MobileNet's unused "
             "stage3)") + "; targets precomputed: no in-step matching / mining)")
    print(f"  ours / peer images/s: {row['ours_over_peer']:.2f}x", flush=True)
  return row


# --- inference --------------------------------------------------------------------------------

def random_variables(det, hw, seed: int = 1):
  """Variables of our tree drawn in numpy (shapes from jax.eval_shape; compiling flax's init
  for a VGG16 costs more than the benchmark): kernels N(0, 1 / fan_in), biases 0, L2Norm
  scales as initialised (10 / 8 / 5), BatchNorm scale 1 / bias 0 / mean 0 / var 1."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: det.init_variables(tuple(hw)))

  def leaf(path, x):
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[-1] == "kernel":
      return rng.normal(0.0, 1.0 / np.sqrt(np.prod(x.shape[:-1])), x.shape).astype(np.float32)
    if keys[-1] == "scale" and keys[-2].endswith("_norm"):
      return np.full(x.shape, s3fd_model.L2_SCALES[s3fd_model.SOURCES.index(keys[-2][:-5])],
                     np.float32)
    return np.full(x.shape, 1.0 if keys[-1] in ("scale", "var") else 0.0, np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def face_bias_slots(family: str, params: dict) -> list[tuple[str, slice]]:
  """(head, channels) of the face logits: S3FD conf heads (conv3_3's channel 3, else 1),
  SSH cls_score channels 2, 3 (A + a)."""
  if family == "s3fd":
    return [(k, slice(3, 4) if k.startswith("conv3_3") else slice(1, 2))
            for k in params if k.endswith("_mbox_conf")]
  return [(m, slice(2, 4)) for m in ssh_model.MODULES]


def calibrate(family: str, variables, forward, x) -> dict:
  """Shifts every face-logit bias by one constant so that CANDIDATES of the anchors of x score
  > the threshold (a detection load, not a random 50%)."""
  out = ready(forward(variables, x))
  logits = out["conf" if family == "s3fd" else "logits"]
  diff = (logits[..., 1] - logits[..., 0]).ravel()
  t = INFER.score_threshold
  shift = np.log(t / (1 - t)) - np.quantile(diff, 1 - CANDIDATES)
  p = variables["params"]
  for head, sl in face_bias_slots(family, p):
    bias = p[head]["bias"] if family == "s3fd" else p[head]["cls_score"]["bias"]
    bias[sl] += shift
  return variables


def bench_infer(a, family, det, hw, run_torch) -> dict:
  h, w = hw
  image = np.random.default_rng(2).uniform(0, 255, (h, w, 3)).astype(np.float32)
  phw = inference.bucket_hw(h, w, BUCKET)
  x = inference.pad_to(image, phw, det.pad_value)[None]
  print(f"  [inference] {w}x{h} image (padded to {phw[1]}x{phw[0]}), batch 1, float32, "
        f"A = {len(anchors_of(det, family, phw))} anchors", flush=True)
  forward = jax.jit(lambda v, im: det.model.apply(v, det.preprocess(im), train=False))
  variables = calibrate(family, random_variables(det, phw), forward, x)
  jv, jx = jax.device_put(variables), jax.device_put(x)
  predict = inference.make_predict_fn(det, INFER)
  t0 = time.perf_counter()
  res = ready(predict(jv, jx))
  compile_s = time.perf_counter() - t0
  row = {"image_hw": [h, w], "padded_hw": list(phw), "ours": {
      "compile_s": compile_s, "detections": int(res["valid"].sum())}}
  fns = {"ours_forward": lambda: ready(forward(jv, jx)),
         "ours_e2e": lambda: ready(predict(jv, jx))}
  fns["ours_forward"]()
  if run_torch:
    import torch  # pylint: disable=import-outside-toplevel
    import torch_s3fd_ssh_peer as peer  # pylint: disable=import-outside-toplevel
    model = peer_model(family, det).eval()
    copied = load_variables(family, model, variables)
    mean = torch.tensor(MEAN_BGR[family][::-1], dtype=torch.float32).view(1, 3, 1, 1)
    timg = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    anchors = anchors_of(det, family, phw)
    if family == "s3fd":
      def post(out):
        return peer.s3fd_postprocess(out, anchors, **NMS_KW)
    else:
      slices = ssh_model.module_slices(phw)
      top = ssh_det.TestOptions().top_per_module    # the options build() got: defaults
      def post(out):
        return peer.ssh_postprocess(out, anchors, slices, phw, top_per_module=top, **NMS_KW)

    def peer_forward():
      with torch.inference_mode():
        return model((timg - mean)[:, [2, 1, 0]])

    fns["peer_forward"] = peer_forward
    fns["peer_e2e"] = lambda: post(peer_forward())
    o, r = fns["ours_forward"](), peer_forward()
    diff = {k: float(np.abs(np.asarray(o[k]) - r[k].numpy()).max()) for k in o}
    top_abs = {k: float(np.abs(np.asarray(o[k])).max()) for k in o}
    dets = post(r)
    n_ours, n_peer = row["ours"]["detections"], len(dets["scores"])
    n = min(n_ours, n_peer)
    score_diff = float(np.abs(res["scores"][0][:n] - dets["scores"][:n]).max()) if n else 0.0
    print(f"  weights copied into the peer: {copied:,} elements; max |ours - peer| raw: "
          + ", ".join(f"{k} {diff[k]:.2e} (max |{k}| {top_abs[k]:.2f})" for k in diff)
          + f"; detections kept: ours {n_ours}, peer {n_peer} (max |score diff| over the "
          f"first {n}: {score_diff:.2e})")
    row.update(agreement_max_abs=diff, agreement_max_value=top_abs, weights_copied=copied,
               peer={"detections": n_peer, "torch": torch.__version__,
                     "threads": torch.get_num_threads()}, detections_score_max_abs=score_diff)
    fns["peer_e2e"]()   # warm-up
  times = {k: [] for k in fns}
  for _ in range(a.runs):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  row["ours"].update(forward_s=med["ours_forward"], e2e_s=med["ours_e2e"])
  print(f"  ours: forward {med['ours_forward']:.3f} s, end-to-end {med['ours_e2e']:.3f} s "
        f"(median of {a.runs}; e2e = one jit: preprocess, model, decode, top-k, NMS; compile "
        f"{compile_s:.1f} s, {row['ours']['detections']} detections)")
  if run_torch:
    row["peer"].update(forward_s=med["peer_forward"], e2e_s=med["peer_e2e"])
    row["ours_over_peer_forward"] = med["ours_forward"] / med["peer_forward"]
    row["ours_over_peer_e2e"] = med["ours_e2e"] / med["peer_e2e"]
    print(f"  peer: forward {med['peer_forward']:.3f} s, end-to-end {med['peer_e2e']:.3f} s "
          f"(e2e = forward + numpy decode, threshold, top-k, NMS)")
    print(f"  ours / peer time: forward {row['ours_over_peer_forward']:.2f}x, end-to-end "
          f"{row['ours_over_peer_e2e']:.2f}x (< 1: ours faster)", flush=True)
  return row


def parse_hw(text: str) -> tuple[int, int]:
  """'WxH' -> (H, W)."""
  w, h = (int(v) for v in text.lower().split("x"))
  return h, w


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--families", default="s3fd,ssh", help="comma list of s3fd, ssh")
  p.add_argument("--batch", type=int, default=None, help="train batch (default 1 on CPU, 2)")
  p.add_argument("--image_size", type=int, default=0,
                 help="square train size for every family (0: 320 on CPU; S3FD 640, SSH 1200)")
  p.add_argument("--steps", type=int, default=3, help="timed train steps after one warm-up")
  p.add_argument("--infer_size", default="",
                 help="inference image W x H (default 320x256 on CPU, 640x480)")
  p.add_argument("--runs", type=int, default=3, help="timed inference runs after a warm-up")
  p.add_argument("--ssh_backbone", default="vgg16", choices=ssh_model.BACKBONES)
  p.add_argument("--bf16", action="store_true",
                 help="train: the bf16 model + bf16=True, as train.bf16; peer: CPU autocast")
  p.add_argument("--no_peer", action="store_true")
  p.add_argument("--peer_threads", type=int, default=os.cpu_count(),
                 help="torch threads (OpenMP; 1 is far faster when other jobs load the cores)")
  p.add_argument("--flops", action="store_true", help="print MFU also on CPU")
  p.add_argument("--peak_tflops", type=float, default=989.0,
                 help="per-device peak for MFU (default H100/H200 bf16 dense)")
  p.add_argument("--results", nargs="?", const="", default=None,
                 help="write a JSON (no value: benchmarks/results/s3fd_ssh_<platform>.json)")
  a = p.parse_args()
  families = a.families.split(",")
  if set(families) - set(FAMILIES):
    p.error(f"--families: unknown {sorted(set(families) - set(FAMILIES))}")
  dev = jax.devices()[0]
  platform, n_dev = dev.platform, jax.device_count()
  d = DEFAULTS["cpu" if platform == "cpu" else "other"]
  b = a.batch or d["batch"]
  infer_hw = parse_hw(a.infer_size) if a.infer_size else d["infer"]
  no_torch = None if a.no_peer else results_file.torch_missing(a.peer_threads)
  print(f"jax {jax.__version__}: {n_dev} x {dev.device_kind} ({platform}), {os.cpu_count()} "
        f"cpus; bf16={a.bf16} (train only)")
  run_torch = results_file.report_peer(
      a.no_peer, no_torch, f"PyTorch CPU, torch.set_num_threads({a.peer_threads}); train: it "
      "EXCLUDES in-step matching + mining / OHEM (targets precomputed once with our "
      "matchers), ours INCLUDES them; inference: forward and forward + numpy decode / NMS")
  rows = []
  for family in families:
    det, opt_cfg = build(family, a.ssh_backbone)
    size = a.image_size or d["image_size"][family]
    name = family if family == "s3fd" else f"ssh-{a.ssh_backbone}"
    print(f"\n[{name}]", flush=True)
    row = {"family": family, "name": name,
           "train": bench_train(a, family, det, opt_cfg, size, b,
                                a.flops or platform != "cpu", run_torch),
           "inference": bench_infer(a, family, det, infer_hw, run_torch)}
    rows.append(row)

  print("\n| family | measurement | ours | peer | ours/peer |\n| --- | --- | --- | --- | --- |")
  for r in rows:
    t, i = r["train"], r["inference"]
    tp = t.get("peer", {}).get("images_per_s")
    print(f"| {r['name']} | train img/s ({t['image_size']}px, batch {t['batch_size']}) | "
          f"{t['ours']['images_per_s']:.3f} | "
          + (f"{tp:.3f} | {t['ours_over_peer']:.2f}x |" if tp else "skipped | - |"))
    for key, what in (("forward_s", "forward"), ("e2e_s", "end-to-end")):
      pe = i.get("peer", {}).get(key)
      ratio = i.get("ours_over_peer_" + ("forward" if key == "forward_s" else "e2e"))
      print(f"| {r['name']} | inference {what} s/image ({i['image_hw'][1]}x{i['image_hw'][0]}) "
            f"| {i['ours'][key]:.3f} | "
            + (f"{pe:.3f} | {ratio:.2f}x |" if pe else "skipped | - |"))
  print("(train: ours/peer of images/s, > 1 ours faster; the peer excludes matching + mining / "
        "OHEM. Inference: ours/peer of seconds, < 1 ours faster; e2e: ours one jit with XLA "
        "NMS, the peer numpy decode + NMS. Timings on a shared machine are noisy.)")
  print("imported: " + ", ".join(f"{m} {m in sys.modules}" for m in (
      "tensorflow", "tensorflow_datasets", "clu", "ml_collections")))
  if a.results is not None:
    results_file.write_results(a.results, "s3fd_ssh", {
        "settings": vars(a), "peak_tflops_per_device": a.peak_tflops,
        "peer": None if not run_torch else "torch CPU; train: precomputed targets (excludes "
                "matching / mining / OHEM); inference: forward, and forward + numpy decode/NMS",
        "peer_skipped_reason": no_torch, "families": rows})

if __name__ == "__main__":
  main()
