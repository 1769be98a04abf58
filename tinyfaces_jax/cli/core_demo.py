"""A demonstration of the detection core on a crowded synthetic batch (no data, no model).

One jitted call runs the whole anchor path of a detector on B images of crowded faces:
S3FD anchors at 640x640 -> two-stage matching -> box targets (encode) -> an "oracle" head
that scores every anchor by its IoU with the faces and regresses exactly to its target ->
3:1 hard negative mining on the oracle's loss -> decode -> batched NMS. The faces the oracle
recovers after NMS measure the core end to end (an anchor set, matcher, coder or NMS bug shows
up as lost faces). Prints statistics and timings and draws one image as PNG.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.evaluation import drawing
from tinyfaces_jax.detection import anchors as anchors_lib
from tinyfaces_jax.detection import box_coder, box_ops, matching, nms, sampling


@dataclasses.dataclass(frozen=True)
class DemoResult:
  num_faces: int          # real faces in the batch
  faces_with_anchor: int  # faces that own at least one positive anchor
  recalled: int           # faces recovered by a kept detection with IoU >= 0.5
  positives_per_face: float
  negatives_kept: int
  step_seconds: float
  compile_seconds: float
  image_path: str


def synthetic_faces(rng: np.random.Generator, batch: int, slots: int, size: int):
  """[B, M, 4] xyxy faces + [B, M] mask: sizes log-uniform 6..300 px, a random number per
  image, mutually overlapping by IoU < 0.2 (as faces in photos; heavier overlap would make
  NMS rightly merge two faces and blur what the demo measures)."""
  gt = np.zeros((batch, slots, 4), np.float32)
  mask = np.zeros((batch, slots), bool)
  for b in range(batch):
    want = int(rng.integers(slots // 4, slots + 1))
    side = np.exp(rng.uniform(np.log(6), np.log(300), 8 * slots))
    h = side * rng.uniform(1.0, 1.35, side.shape)
    x1, y1 = rng.uniform(0, size - side), rng.uniform(0, size - h)
    cand = np.stack([x1, y1, x1 + side, y1 + h], -1).astype(np.float32)
    iou = np.asarray(box_ops.pairwise_iou(cand, cand))            # [8M, 8M], host copy
    kept = []
    for i in range(len(cand)):
      if len(kept) == want:
        break
      if not kept or iou[i, kept].max() < 0.2:
        kept.append(i)
    gt[b, :len(kept)] = cand[kept]
    mask[b, :len(kept)] = True
  return gt, mask


def make_core_step(anchors: np.ndarray, max_output: int = 750):
  """Builds the jitted step: (gt [B, M, 4], mask [B, M]) -> dict of [B, ...] results."""
  anchors = jnp.asarray(anchors)

  def step(gt, mask):
    m = matching.match_s3fd_batch(anchors, gt, mask)
    pos = m.labels == matching.POSITIVE
    matched = jnp.take_along_axis(gt, m.matched_gt[..., None], axis=1)        # [B, A, 4]
    targets = box_coder.encode_boxes(matched, anchors)                         # [B, A, 4]
    score = jnp.clip(m.max_iou, 0.0, 1.0)                                      # oracle head
    loss = -jnp.log1p(-jnp.minimum(score, 0.999))                              # as background
    neg = sampling.batched_hard_negative_mask(loss, m.labels, 3.0)
    boxes = box_coder.decode_boxes(targets, anchors)
    out = nms.batched_nms(boxes, jnp.where(pos, score, 0.0), iou_threshold=0.3,
                          max_output=max_output, score_threshold=0.0)
    return dict(labels=m.labels, matched=m.matched_gt, neg=neg, kept=out.boxes,
                kept_valid=out.valid, kept_scores=out.scores)

  return jax.jit(step)


def run_demo(workdir: str, batch: int = 4, slots: int = 128, size: int = 640,
             seed: int = 0) -> DemoResult:
  """Runs the demo, writes `core_demo.png` into workdir and returns the statistics."""
  os.makedirs(workdir, exist_ok=True)
  rng = np.random.default_rng(seed)
  gt, mask = synthetic_faces(rng, batch, slots, size)
  anchors = anchors_lib.anchor_grid(anchors_lib.S3FD, (size, size))
  step = make_core_step(anchors)
  t0 = time.perf_counter()
  compiled = step.lower(gt, mask).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(gt, mask))
  t0 = time.perf_counter()
  out = jax.tree.map(np.asarray, jax.block_until_ready(compiled(gt, mask)))
  step_s = time.perf_counter() - t0

  pos = out["labels"] == matching.POSITIVE
  owned = np.zeros_like(mask)
  for b in range(batch):
    owned[b, np.unique(out["matched"][b][pos[b]])] = True
  iou = np.asarray(jax.vmap(box_ops.pairwise_iou)(gt, out["kept"]))           # [B, M, K]
  iou = np.where(out["kept_valid"][:, None, :], iou, 0.0)
  recalled = (iou.max(-1) >= 0.5) & mask

  canvas = _background(rng, size)
  img = drawing.draw_boxes(canvas, gt[0][mask[0]], colour=(0, 220, 0), width=3)
  img = drawing.draw_boxes(img, out["kept"][0][out["kept_valid"][0]], colour=(230, 40, 40),
                           width=1)
  path = os.path.join(workdir, "core_demo.png")
  img.save(path)
  return DemoResult(num_faces=int(mask.sum()), faces_with_anchor=int((owned & mask).sum()),
                    recalled=int(recalled.sum()),
                    positives_per_face=float(pos.sum() / max(mask.sum(), 1)),
                    negatives_kept=int(out["neg"].sum()), step_seconds=step_s,
                    compile_seconds=compile_s, image_path=path)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A soft colour gradient [size, size, 3] uint8 to draw on."""
  y, x = np.mgrid[0:size, 0:size] / size
  c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
  img = c0 * (1 - (x + y)[..., None] / 2) + c1 * ((x + y)[..., None] / 2)
  return img.astype(np.uint8)


if __name__ == "__main__":
  import sys
  print(run_demo(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tinyfaces_core_demo"))
