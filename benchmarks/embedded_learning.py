"""Does a detector measurably learn on the embedded dataset? (data-issue acceptance probe)

  python benchmarks/embedded_learning.py [--steps 300] [--size 320] [--workdir /tmp/probe]

Builds the embedded WIDER-format dataset, prepares it with the TFDS builder, trains a small
probe detector (5 conv stages + BatchNorm, RetinaFace anchors and multibox loss with 7:1 OHEM,
the project's jitted train step on all local devices) through the real tf.data pipeline with
the RetinaFace augmentation recipe, and evaluates the embedded val split with the official
WIDER protocol (every face of the val file counts; no easy/medium/hard files exist for it)
before training and at checkpoints. Prints an AP curve (steps, minutes, AP). The probe is
deliberately tiny (CPU minutes), not a real detector: the models come with the model issues.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tinyfaces_jax.training import optim, sharding, train_step  # noqa: E402
from tinyfaces_jax.detection import multibox_loss  # noqa: E402
from tinyfaces_jax import detectors  # noqa: E402
from tinyfaces_jax.data import pipeline  # noqa: E402
from tinyfaces_jax.data.embedded import build as embedded  # noqa: E402
from tinyfaces_jax.data.wider import annotations as wider_annotations  # noqa: E402
from tinyfaces_jax.data.wider.builder import WiderFace  # noqa: E402
from tinyfaces_jax.detection import anchors as anchors_lib  # noqa: E402
from tinyfaces_jax.detection import box_coder, nms  # noqa: E402
from tinyfaces_jax.evaluation import wider, wider_io  # noqa: E402

SPEC = anchors_lib.RETINAFACE
MEAN = jnp.array([123.0, 117.0, 104.0])


class ProbeDetector(nn.Module):
  """[B, H, W, 3] 0..255 RGB -> loc [B, A, 4], conf [B, A, 2] on RETINAFACE anchors."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = (x - MEAN) / 58.0
    taps = []
    for i, c in enumerate((16, 32, 48, 64, 96)):             # strides 2, 4, 8, 16, 32
      x = nn.Conv(c, (3, 3), strides=2, padding=1, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
      x = nn.Conv(c, (3, 3), padding=1, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
      if i >= 2:
        taps.append(x)
    b = x.shape[0]
    locs, confs = [], []
    for t in taps:
      locs.append(nn.Conv(2 * 4, (1, 1))(t).reshape(b, -1, 4))
      confs.append(nn.Conv(2 * 2, (1, 1))(t).reshape(b, -1, 2))
    return {"loc": jnp.concatenate(locs, 1), "conf": jnp.concatenate(confs, 1)}


def build_data(workdir: str):
  root = pathlib.Path(workdir) / "embedded"
  embedded.build_embedded_wider(root)
  builder = WiderFace(data_dir=str(pathlib.Path(workdir) / "tfds"), eval_dir=False,
                      label_path=False)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
  return root, builder


def val_ground_truth(root: pathlib.Path) -> wider_io.WiderGroundTruth:
  anns = wider_annotations.parse_bbx_gt(root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
  keys = [a.name[:-len(".jpg")] for a in anns]
  keep = [a.trainable for a in anns]
  return wider_io.WiderGroundTruth(keys=keys, boxes=[a.boxes.astype(np.float64) for a in anns],
                                   keep={s: keep for s in wider_io.SETTINGS}, version="current")


def make_predict(model):
  @jax.jit
  def predict(variables, images):
    out = model.apply(variables, images, train=False)
    hw = images.shape[1:3]
    anchors = jnp.asarray(anchors_lib.anchor_grid(SPEC, hw))
    boxes = box_coder.decode_boxes(out["loc"], anchors)
    scores = jax.nn.softmax(out["conf"], -1)[..., 1]
    return nms.batched_nms(boxes, scores, iou_threshold=0.4, max_output=300,
                           score_threshold=0.02, pre_nms_top_k=3000)
  return predict


def evaluate_ap(predict, state, builder, gt) -> float:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  dets = {}
  ds = pipeline.eval_dataset(builder, "validation", batch_size=8, max_boxes=64, bucket=64,
                             process_index=0, process_count=1)
  for b in ds.as_numpy_iterator():
    r = jax.device_get(predict(variables, b["image"]))
    for i in np.flatnonzero(b["valid"]):
      keep = r.valid[i]
      bx = r.boxes[i][keep] / b["scale"][i]
      xywh = np.concatenate([bx[:, :2], bx[:, 2:] - bx[:, :2]], 1)
      name = b["filename"][i].decode()[:-len(".jpg")]
      dets[name] = np.concatenate([xywh, r.scores[i][keep][:, None]], 1)
  return wider.evaluate(dets, gt, verbose=False).aps["hard"]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="/tmp/embedded_probe")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--eval_every", type=int, default=100)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", type=int, default=320)
  p.add_argument("--lr", type=float, default=0.02)
  a = p.parse_args()
  t0 = time.time()
  root, builder = build_data(a.workdir)
  gt = val_ground_truth(root)
  print(f"data ready in {time.time() - t0:.0f} s: {gt.num_images} val images, "
        f"{gt.num_faces('hard')} val faces", flush=True)
  mesh = sharding.make_mesh()
  model = ProbeDetector()
  params = model.init(jax.random.key(0), jnp.zeros((1, a.size, a.size, 3)), train=False)
  ocfg = optim.OptimConfig(learning_rate=a.lr, schedule="cosine", warmup_steps=20,
                           total_steps=a.steps, weight_decay=5e-4)
  tx = optim.make_optimizer(ocfg, params["params"])
  state = train_step.create_train_state(model, tx, (a.size, a.size, 3), jax.random.key(0), mesh)
  anchors = jnp.asarray(anchors_lib.anchor_grid(SPEC, (a.size, a.size)))
  step = train_step.make_train_step(
      model, lambda o, b, k: multibox_loss.multibox_loss(o, b, anchors), mesh)
  ds = pipeline.train_dataset(builder, "train", batch_size=a.batch,
                              transform=detectors.make_transform("retinaface", size=a.size),
                              max_boxes=64, seed=0, process_index=0, process_count=1)
  predict = make_predict(model)
  t_train = time.time()
  curve = [(0, 0.0, evaluate_ap(predict, state, builder, gt))]
  print(f"step 0: val AP {curve[-1][2]:.4f}", flush=True)
  key = jax.random.key(1)
  it = ds.as_numpy_iterator()
  for i in range(1, a.steps + 1):
    batch = next(it)
    batch = sharding.host_to_global({k: v for k, v in batch.items() if k != "filename"}, mesh)
    state, metrics = step(state, batch, key)
    if i % 25 == 0:
      print(f"step {i}: loss {float(metrics['loss']):.3f} ({time.time() - t_train:.0f} s)",
            flush=True)
    if i % a.eval_every == 0 or i == a.steps:
      ap = evaluate_ap(predict, state, builder, gt)
      curve.append((i, (time.time() - t_train) / 60, ap))
      print(f"step {i}: val AP {ap:.4f}", flush=True)
  print("steps  minutes  AP")
  for s, m, ap in curve:
    print(f"{s:5d}  {m:7.1f}  {ap:.4f}")


if __name__ == "__main__":
  main()
