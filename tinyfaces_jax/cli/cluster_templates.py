"""Re-cluster HR / Tiny Faces templates from a dataset's face boxes (custom data).

  tinyfaces-cluster-templates --annotations=wider_face_train_bbx_gt.txt \
      --out=RefBox_N25.mat [--num=25] [--min_size=10] [--scaled]

Reads a WIDER-format `*_bbx_gt.txt` (yours, or `<release>/wider_face_split/...`), keeps the
trainable faces, and runs `detectors.hr.templates.cluster_templates` (K-medoids under 1 - IoU of
centred boxes, faces >= min_size, at most 1e5 boxes, as the release's `cluster_rects.m`).
Writes a .mat with `clusters` [T, 5] (centred x1 y1 x2 y2 in the +1 convention, sigma) that
`config.model.templates` reads. sigma is 1 for every template unless `--scaled`, which
assigns the release's three resolutions by template height (the scaled file's rule: faces
taller than `--big` px are matched at 0.5x, shorter than `--small` px at 2x; the template is
resized to the resolution it is applied at). `--annotations` and `--out` may be paths or URLs
(gs://...).
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np

from tinyfaces_jax import cli as cli_lib


def scale_templates(boxes: np.ndarray, big: float = 140.0, small: float = 40.0):
  """[T, 4] sigma-1 templates -> ([T, 4] resized, [T] sigma): height > big -> 0.5x at
  sigma 0.5, height < small -> 2x at sigma 2, else unchanged at 1."""
  wh = boxes[:, 2:] - boxes[:, :2] + 1.0
  sigma = np.where(wh[:, 1] > big, 0.5, np.where(wh[:, 1] < small, 2.0, 1.0))
  half = (wh * sigma[:, None] - 1.0) / 2.0
  return np.concatenate([-half, half], axis=1).astype(np.float32), sigma.astype(np.float32)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="tinyfaces-cluster-templates",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--annotations", required=True, help="a WIDER-format *_bbx_gt.txt")
  p.add_argument("--out", required=True, help="output .mat (variable `clusters`)")
  p.add_argument("--num", type=int, default=25, help="number of templates T")
  p.add_argument("--min_size", type=float, default=10.0, help="min face height and width")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--scaled", action="store_true", help="assign 0.5 / 1 / 2 resolutions")
  p.add_argument("--big", type=float, default=140.0)
  p.add_argument("--small", type=float, default=40.0)
  a = p.parse_args(argv)
  import scipy.io
  from tinyfaces_jax import paths
  from tinyfaces_jax.data.wider import annotations as wider_annotations
  from tinyfaces_jax.detectors.hr import templates
  anns = wider_annotations.parse_bbx_gt(a.annotations)
  boxes = [ann.boxes[ann.trainable] for ann in anns]
  xywh = np.concatenate(boxes) if boxes else np.zeros((0, 4))
  xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1)
  print(f"{len(anns)} images, {len(xyxy)} trainable faces from {a.annotations}")
  t = templates.cluster_templates(xyxy, a.num, min_size=(a.min_size, a.min_size), seed=a.seed)
  boxes, sigma = (scale_templates(t.boxes, a.big, a.small) if a.scaled
                  else (t.boxes, t.sigma))
  buf = io.BytesIO()
  scipy.io.savemat(buf, {"clusters": np.concatenate([boxes, sigma[:, None]], axis=1)
                         .astype(np.float64)})
  out = a.out if a.out.endswith(".mat") else a.out + ".mat"  # as savemat(name) names it
  paths.resolve(out).write_bytes(buf.getvalue())
  wh = boxes[:, 2:] - boxes[:, :2] + 1.0
  for i, ((w, h), s) in enumerate(zip(wh, sigma), start=1):
    print(f"  template {i:2d}: {w:6.1f} x {h:6.1f} px at sigma {s:g}")
  print(f"wrote {out}")
  return 0


def cli() -> None:
  """Console script `tinyfaces-cluster-templates`."""
  sys.exit(cli_lib.run(main, name="tinyfaces-cluster-templates"))


if __name__ == "__main__":
  cli()
