"""WIDER-protocol evaluation of a detector on a TFDS split (used by training/train.py and eval mode).

Every host runs the jitted predictor (inference.py) over its own share of the split, each image
exactly once (pipeline.eval_dataset: test resize, size buckets, padded last batches), on its
local devices (batch split over them; parameters replicated). Detections are mapped back to
original pixels, gathered on host 0, evaluated with the official WIDER FACE protocol
(evaluation/wider.py) against the split's ground truth (or the official .mat files), and
written under `out_dir`:
  predictions/<event>/<stem>.txt   the official submission layout
  aps.json                         APs, AP per face-height bin (`ap_by_height`, evaluation/
                                   size_bins.py), face and detection counts, timings
  wider_pr_curve_<setting>_val.png PR curves (beside the official baselines when given)
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tinyfaces_jax import inference, paths
from tinyfaces_jax.training import hosts
from tinyfaces_jax.training import sharding
from tinyfaces_jax.detectors import Detector
from tinyfaces_jax.evaluation import plots, size_bins, wider, wider_io


@dataclasses.dataclass(frozen=True)
class EvalLoopConfig:
  """The loop's own fields of the `eval` config section (the rest is InferenceConfig).

  batch_size: images per host and step (divisible by the host's devices; 0 = one image per
    local device).
  gt_dir: official ground-truth .mat folder; "" = the split's own annotations.
  baselines_dir: official PR curves to draw beside ours ("" = none).
  max_images: evaluate only the first N images of the split (0 = all).
  """
  batch_size: int = 8
  gt_dir: str = ""
  baselines_dir: str = ""
  max_images: int = 0


LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(EvalLoopConfig))


def split_eval_section(section: dict, where: str = "config.eval"):
  """The `eval` section -> (InferenceConfig, EvalLoopConfig)."""
  from tinyfaces_jax import settings
  loop = {k: v for k, v in section.items() if k in LOOP_FIELDS}
  inf = {k: v for k, v in section.items() if k not in LOOP_FIELDS}
  return (settings.dataclass_from(inference.InferenceConfig, inf, where),
          settings.dataclass_from(EvalLoopConfig, loop, where))


def local_copy(tree, mesh):
  """Replicates (possibly global, multi-host) arrays onto this host's local `mesh`."""
  rep = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.device_put(x.addressable_data(0) if isinstance(x, jax.Array) else x, rep),
      tree)


def pack_detections(dets: dict) -> np.ndarray:
  """{key: [K, 5]} -> uint8 bytes (an .npz of keys, counts and the stacked rows)."""
  buf = io.BytesIO()
  keys = list(dets)
  np.savez(buf, keys=np.asarray(keys, dtype=str),
           counts=np.asarray([len(dets[k]) for k in keys], np.int64),
           rows=np.concatenate([dets[k] for k in keys]) if keys else np.zeros((0, 5)))
  return np.frombuffer(buf.getvalue(), np.uint8)


def unpack_detections(blob: np.ndarray) -> dict:
  """Inverse of `pack_detections` (trailing padding allowed)."""
  z = np.load(io.BytesIO(np.asarray(blob, np.uint8).tobytes()))
  offsets = np.concatenate([[0], np.cumsum(z["counts"])])
  return {str(k): z["rows"][offsets[i]:offsets[i + 1]] for i, k in enumerate(z["keys"])}


def _allgather(dets: dict) -> dict:
  """Merges every host's {key: [K, 5]} on all hosts (a no-op on one host)."""
  if jax.process_count() == 1:
    return dets
  from jax.experimental import multihost_utils
  data = pack_detections(dets)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int64)).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  out = {}
  for blob, n in zip(multihost_utils.process_allgather(padded), sizes):
    out.update(unpack_detections(blob[:int(n)]))
  return out


class Evaluator:
  """Evaluates variables of `detector` on `split` of `builder` (construct once, run often)."""

  def __init__(self, detector: Detector, builder, split: str,
               inf_cfg: inference.InferenceConfig, loop_cfg: EvalLoopConfig,
               log: Callable[[str], None] = print):
    self.detector, self.builder, self.log = detector, builder, log
    self.inf_cfg, self.loop_cfg = inf_cfg, loop_cfg
    self.split = f"{split}[:{loop_cfg.max_images}]" if loop_cfg.max_images else split
    self.predict = inference.make_predict_fn(detector, inf_cfg)
    self.mesh = sharding.make_mesh(jax.local_devices())
    n_local = self.mesh.devices.size
    self.batch_size = loop_cfg.batch_size or n_local
    if self.batch_size % n_local:
      raise ValueError(f"config.eval.batch_size {loop_cfg.batch_size} is not divisible by "
                       f"this host's {n_local} devices (0 = one image per device)")
    self._gt: Optional[wider_io.WiderGroundTruth] = None

  def ground_truth(self) -> wider_io.WiderGroundTruth:
    if self._gt is None:
      from tinyfaces_jax.data import sources
      if self.loop_cfg.gt_dir:
        self._gt = wider_io.load_ground_truth(paths.resolve(self.loop_cfg.gt_dir))
      else:
        self._gt = sources.ground_truth(self.builder, self.split)
    return self._gt

  def _scale_fn(self):
    import tensorflow as tf
    cfg = self.inf_cfg
    return lambda hw: inference.base_scale(tf.cast(hw[0], tf.float32),
                                           tf.cast(hw[1], tf.float32), cfg, tf.minimum)

  def predictions(self, variables, preemption=None) -> Optional[dict]:
    """{"<event>/<stem>": [K, 5] x y w h score} for this host's share, original pixels; None
    when a preemption notice stopped it (`preemption`: checkpointing.Preemption or None).

    With several hosts, the batches are taken in lockstep: every host runs the same number of
    iterations (a host whose share is done idles) and the hosts agree after each one whether
    a notice arrived, so they all stop at the same iteration (never one in a collective while
    another has left). A batch, and any compile it triggers, runs while SIGTERM is watched.
    """
    from tinyfaces_jax.data import pipeline
    cfg = self.inf_cfg
    ds = pipeline.eval_dataset(
        self.builder, self.split, batch_size=self.batch_size, max_boxes=1,
        bucket=cfg.bucket, scale_fn=self._scale_fn(),
        max_size=max(cfg.max_size, 1) if cfg.max_size else 1 << 16,
        pad_value=self.detector.pad_value)
    variables = local_copy(variables, self.mesh)
    data = NamedSharding(self.mesh, P(sharding.DATA_AXIS))
    dets, t0, shapes, i = {}, time.time(), set(), 0
    it = ds.as_numpy_iterator()

    def next_batch():
      batch = next(it, None)
      if batch is None:
        return None
      return batch, jax.device_get(self.predict(variables, jax.device_put(batch["image"], data)))

    lockstep = jax.process_count() > 1  # one flag exchange per iteration
    while True:
      if preemption is None:
        done, item = True, next_batch()
      else:
        done, item = preemption.run(next_batch, "eval_batch")
      flags = hosts.gather_flags([not done, item is not None]) if lockstep else np.asarray(
          [[not done, item is not None]])
      stop = bool(flags[:, 0].any())
      if not stop and not flags[:, 1].any():
        break
      if stop:
        self.log(f"  eval: stopped by a preemption notice after {len(dets)} images")
        return None
      if item is None:
        continue
      batch, out = item
      shapes.add(batch["image"].shape[1:3])
      for j in np.flatnonzero(batch["valid"]):
        d = inference.to_original(out, j, float(batch["scale"][j]))
        key = os.path.splitext(batch["filename"][j].decode())[0]
        dets[key] = inference.wider_rows(d)
      i += 1
      if i % 25 == 0:
        self.log(f"  eval: {len(dets)} images ({len(dets) / (time.time() - t0):.1f} img/s, "
                 f"{len(shapes)} size buckets)")
    return dets

  def run(self, variables, out_dir, *, method_name: str = "tinyfaces_jax",
          preemption=None) -> Optional[dict]:
    """Predicts, evaluates and writes under `out_dir` (host 0; a local path or URL).
    -> summary dict (all hosts), or None when a preemption notice stopped it."""
    t0 = time.time()
    dets = self.predictions(variables, preemption)
    if dets is None:
      return None
    dets = _allgather(dets)
    t_pred = time.time() - t0
    summary = {"split": self.split, "num_images": len(dets),
               "num_detections": int(sum(len(d) for d in dets.values())),
               "predict_seconds": round(t_pred, 2)}
    if jax.process_index() != 0:
      return summary
    gt = self.ground_truth()
    result = wider.evaluate(dets, gt, verbose=False)
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wider_io.write_predictions(out / "predictions", dets)
    plots.plot_result(result, out, method_name, self.loop_cfg.baselines_dir or None)
    summary.update(aps=result.aps, num_faces=result.num_faces, missing=len(result.missing),
                   ap_by_height=size_bins.to_json(size_bins.ap_by_height(dets, gt)),
                   seconds=round(time.time() - t0, 2))
    (out / "aps.json").write_text(json.dumps(summary, indent=2))
    return summary
