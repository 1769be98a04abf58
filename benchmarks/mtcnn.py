"""MTCNN detection speed: our jitted cascade vs facenet-pytorch's MTCNN, same images, same run.

  python benchmarks/mtcnn.py [--images DIR_OR_FILES...] [--batch 8] [--batch_hw 480x640]
      [--runs 3] [--peer_threads N] [--no_peer] [--results [FILE]]

Both sides use the same weights (facenet-pytorch's pnet/rnet/onet.pt, ../shared/weights/mtcnn;
our importer reads the same files) and facenet's defaults (min face 20, thresholds 0.6 / 0.7 /
0.7, factor 0.709):
  * per image (batch 1): each photo (default ../shared/reference/images) as a uint8 RGB array;
    ours: `inference.make_predict_fn` of the mtcnn detector on the image padded to its 64-px
    bucket (its size in image_hw), compiled once per bucket before timing, then `--runs`
    timed calls (device_get included); peer: `MTCNN(keep_all=True).detect(PIL image)`.
  * batched: `--batch` copies of the first photo resized to `--batch_hw` (facenet needs equal
    sizes), one call each side.
Reported: seconds per image (median of the runs), ours/peer (< 1: ours faster), and whether
the two found the same number of faces. The peer needs torch and the facenet-pytorch
package (pip install --no-deps facenet-pytorch==2.6.0); when torchvision does not import (no
CPU wheel here) its `ops.boxes.batched_nms` is given as a pure-torch greedy NMS (areas without
+1, suppress IoU > t, stable order: the same stand-in the reference outputs were made with)
and the rest of torchvision as an empty module. Runs without tensorflow / tfds / clu /
ml_collections.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import types

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import results_file  # noqa: E402
from tinyfaces_jax import inference  # noqa: E402
from tinyfaces_jax.detectors import build_detector  # noqa: E402

SHARED = ROOT.parent / "shared"


def load_images(items) -> list:
  from PIL import Image
  paths = []
  for item in items:
    p = pathlib.Path(item)
    paths += sorted(p.glob("*.jpg")) + sorted(p.glob("*.png")) if p.is_dir() else [p]
  return [(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def torchvision_stand_in() -> None:
  """Registers a minimal `torchvision` whose ops.boxes.batched_nms is a greedy torch NMS."""
  try:
    import torchvision  # noqa: F401
    return
  except Exception:  # a missing or a broken (CUDA-only) wheel
    pass
  import torch

  def batched_nms(boxes, scores, idxs, thr):
    if boxes.numel() == 0:
      return torch.empty((0,), dtype=torch.int64)
    b = boxes + (idxs.to(boxes) * (boxes.max() + 1))[:, None]
    order = torch.sort(scores, descending=True, stable=True).indices
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep, alive = [], torch.ones(len(order), dtype=torch.bool)
    for pos, i in enumerate(order.tolist()):
      if not alive[pos]:
        continue
      keep.append(i)
      rest = order[pos + 1:]
      lt = torch.maximum(b[i, :2], b[rest, :2])
      rb = torch.minimum(b[i, 2:], b[rest, 2:])
      inter = (rb - lt).clamp(min=0).prod(1)
      iou = inter / (area[i] + area[rest] - inter)
      alive[pos + 1:] &= ~(iou > thr)
    return torch.as_tensor(keep, dtype=torch.int64)

  tv = types.ModuleType("torchvision")
  ops = types.ModuleType("torchvision.ops")
  boxes = types.ModuleType("torchvision.ops.boxes")
  boxes.batched_nms = batched_nms
  transforms = types.ModuleType("torchvision.transforms")
  functional = types.ModuleType("torchvision.transforms.functional")
  tv.ops, ops.boxes, tv.transforms, transforms.functional = ops, boxes, transforms, functional
  for name, mod in (("torchvision", tv), ("torchvision.ops", ops),
                    ("torchvision.ops.boxes", boxes), ("torchvision.transforms", transforms),
                    ("torchvision.transforms.functional", functional)):
    sys.modules[name] = mod


def make_peer():
  torchvision_stand_in()
  from facenet_pytorch.models.mtcnn import MTCNN
  return MTCNN(keep_all=True, device="cpu")


def timed(fn, runs: int) -> tuple[float, object]:
  times, out = [], None
  for _ in range(runs):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", nargs="*", default=[str(SHARED / "reference" / "images")])
  p.add_argument("--weights", default=str(SHARED / "weights" / "mtcnn"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--batch_hw", default="480x640", help="H x W of the batched images")
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--peer_threads", type=int, default=os.cpu_count())
  p.add_argument("--no_peer", action="store_true")
  p.add_argument("--results", nargs="?", const="", default=None)
  a = p.parse_args()
  no_torch = None if a.no_peer else results_file.torch_missing(a.peer_threads)
  peer = None
  if results_file.report_peer(a.no_peer, no_torch, f"facenet-pytorch MTCNN.detect, torch "
                              f"threads {a.peer_threads}"):
    try:
      peer = make_peer()
    except ImportError as e:
      print(f"peer: SKIPPED, facenet-pytorch is not importable ({e})")
  from PIL import Image
  det = build_detector("mtcnn", {}, {})
  variables = det.import_weights(a.weights)
  predict = inference.make_predict_fn(det, inference.InferenceConfig())
  rows = []

  def ours_fn(batch, hw):
    return lambda: jax.device_get(predict(variables, batch, hw))

  images = load_images(a.images)
  for name, img in images:
    bucket = inference.bucket_hw(img.shape[0], img.shape[1], 64)
    batch = inference.pad_to(img, bucket, det.pad_value)[None]
    hw = np.asarray([img.shape[:2]], np.int32)
    t0 = time.perf_counter()
    ours_fn(batch, hw)()
    compile_s = time.perf_counter() - t0
    t_ours, res = timed(ours_fn(batch, hw), a.runs)
    row = {"image": name, "hw": list(img.shape[:2]), "compile_s": round(compile_s, 2),
           "ours_s": t_ours, "ours_faces": int(res["valid"][0].sum())}
    if peer is not None:
      pil = Image.fromarray(img)
      peer.detect(pil)
      t_peer, (boxes, _) = timed(lambda: peer.detect(pil), a.runs)
      row.update(peer_s=t_peer, peer_faces=0 if boxes is None else len(boxes),
                 ours_over_peer=t_ours / t_peer)
    rows.append(row)
    print(row, flush=True)
  h, w = (int(v) for v in a.batch_hw.split("x"))
  first = np.asarray(Image.fromarray(images[0][1]).resize((w, h), Image.BILINEAR))
  batch = np.stack([first] * a.batch).astype(np.float32)
  hw = np.tile(np.asarray([[h, w]], np.int32), (a.batch, 1))
  ours_fn(batch, hw)()
  t_ours, res = timed(ours_fn(batch, hw), a.runs)
  batched = {"batch": a.batch, "hw": [h, w], "ours_s_per_image": t_ours / a.batch,
             "ours_faces": int(res["valid"].sum())}
  if peer is not None:
    pils = [Image.fromarray(first)] * a.batch
    peer.detect(pils)
    t_peer, (boxes, _) = timed(lambda: peer.detect(pils), a.runs)
    batched.update(peer_s_per_image=t_peer / a.batch,
                   peer_faces=sum(0 if b is None else len(b) for b in boxes),
                   ours_over_peer=t_ours / t_peer)
  print(batched)
  print("\n| images | ours s/image | peer s/image | ours/peer | faces ours / peer |\n"
        "| --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['image']} {r['hw'][1]}x{r['hw'][0]} | {r['ours_s']:.3f} | "
          + (f"{r['peer_s']:.3f} | {r['ours_over_peer']:.2f}x | {r['ours_faces']} / "
             f"{r['peer_faces']} |" if "peer_s" in r else f"- | - | {r['ours_faces']} / - |"))
  b = batched
  print(f"| batch {b['batch']} x {w}x{h} | {b['ours_s_per_image']:.3f} | "
        + (f"{b['peer_s_per_image']:.3f} | {b['ours_over_peer']:.2f}x | {b['ours_faces']} / "
           f"{b['peer_faces']} |" if "peer_s_per_image" in b else "- | - | - |"))
  print("imported: " + ", ".join(f"{m} {m in sys.modules}" for m in (
      "tensorflow", "tensorflow_datasets", "clu", "ml_collections")))
  if a.results is not None:
    results_file.write_results(a.results, "mtcnn", {
        "settings": vars(a), "peer": None if peer is None else "facenet-pytorch 2.6.0",
        "per_image": rows, "batched": batched})


if __name__ == "__main__":
  main()
