"""Evaluation of a detector on every host: one prediction pass per image set, the configured
evaluators on host 0 (used by training/train.py periodically and by `main --mode=eval`).

The `eval` section holds the test-time settings (inference.InferenceConfig), the pass's own
(`EvalLoopConfig`: batch size, max images) and `evaluators` ({name: {type, options}},
evaluation/evaluators.py). For each image set the evaluators need (a split of the run's
dataset, or image files), every host runs the detector's predictor (inference.py: the
family's own cascade when it has one) over its own share, each image exactly once
(data/pipeline.py: test resize, size buckets, padded last batches), on its local devices
(batch split over them; parameters replicated). Detections are mapped back to original
pixels, gathered on host 0 and scored by each evaluator, which writes under
`<out_dir>/<name>/` (WIDER: predictions/, aps.json, PR curves; FDDB: detections, ROC files,
plot); host 0 also writes `<out_dir>/summary.json` (every evaluator's scalars and timings).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tinyfaces_jax import inference, paths, settings
from tinyfaces_jax.training import hosts
from tinyfaces_jax.training import sharding
from tinyfaces_jax.detectors import Detector
from tinyfaces_jax.evaluation import evaluators as evaluators_lib
from tinyfaces_jax.models import layers

DEFAULT_EVALUATORS = {"wider": {"type": "wider"}}


@dataclasses.dataclass(frozen=True)
class EvalLoopConfig:
  """The pass's own fields of the `eval` section (the rest is InferenceConfig).

  batch_size: images per host and step (divisible by the host's devices; 0 = one image per
    local device).
  max_images: evaluate only the first N images of each image set (0 = all).
  evaluators: {name: {"type": "wider" | "fddb", options}} (evaluation/evaluators.py).
  """
  batch_size: int = 8
  max_images: int = 0
  evaluators: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_EVALUATORS))


LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(EvalLoopConfig))


def split_eval_section(section: dict, where: str = "config.eval"):
  """The `eval` section -> (InferenceConfig, EvalLoopConfig)."""
  section = settings.as_dict(section)
  if "evaluators" in section:
    section["evaluators"] = {k: settings.as_dict(v)
                             for k, v in settings.as_dict(section["evaluators"]).items()}
  inf, loop = settings.partition(section, (inference.InferenceConfig, EvalLoopConfig), where)
  return (settings.dataclass_from(inference.InferenceConfig, inf, where),
          settings.dataclass_from(EvalLoopConfig, loop, where))


def local_copy(tree, mesh):
  """Replicates (possibly global, multi-host) arrays onto this host's local `mesh`."""
  rep = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.device_put(x.addressable_data(0) if isinstance(x, jax.Array) else x, rep),
      tree)


def pack_detections(dets: dict) -> np.ndarray:
  """{key: {field: array}} -> uint8 bytes (an .npz of the keys and each image's arrays)."""
  buf = io.BytesIO()
  keys = list(dets)
  arrays = {f"{i}/{field}": np.asarray(v) for i, k in enumerate(keys)
            for field, v in dets[k].items()}
  np.savez(buf, keys=np.asarray(keys, dtype=str), **arrays)
  return np.frombuffer(buf.getvalue(), np.uint8)


def unpack_detections(blob: np.ndarray) -> dict:
  """Inverse of `pack_detections` (trailing padding allowed)."""
  z = np.load(io.BytesIO(np.asarray(blob, np.uint8).tobytes()))
  out = {str(k): {} for k in z["keys"]}
  keys = [str(k) for k in z["keys"]]
  for name in z.files:
    if name != "keys":
      i, field = name.split("/", 1)
      out[keys[int(i)]][field] = z[name]
  return out


def _allgather(dets: dict) -> dict:
  """Merges every host's {key: {field: array}} on all hosts (a no-op on one host)."""
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


class PredictionPass:
  """Runs a predictor over image sets on every host: each host its own share of the images,
  each image exactly once, in size buckets with padded last batches, on its local devices
  (the batch split over them, parameters replicated); detections in original pixels.

  `predict`: (variables, images [B, H, W, 3], image_hw [B, 2]) -> dict(boxes [B, K, 4],
  scores [B, K], valid [B, K][, landmarks]) (inference.make_predict_fn's contract);
  `inf_cfg` gives the test resize and size buckets; `batch_size` images per host and step
  (0: one per local device); `pad_value` fills the bucket padding; `name` starts its log
  lines."""

  def __init__(self, predict: Callable, inf_cfg: inference.InferenceConfig, batch_size: int,
               pad_value, log: Callable[[str], None] = print, name: str = "eval"):
    self.predict, self.inf_cfg, self.pad_value, self.log = predict, inf_cfg, pad_value, log
    self.name = name
    self.mesh = sharding.make_mesh(jax.local_devices())
    n_local = self.mesh.devices.size
    self.batch_size = batch_size or n_local
    if self.batch_size % n_local:
      raise ValueError(f"config.eval.batch_size {batch_size} is not divisible by "
                       f"this host's {n_local} devices (0 = one image per device)")

  def _dataset(self, images: evaluators_lib.ImageSet):
    import tensorflow as tf
    from tinyfaces_jax.data import pipeline
    cfg = self.inf_cfg
    common = dict(batch_size=self.batch_size, bucket=cfg.bucket,
                  scale_fn=lambda hw: inference.base_scale(tf.cast(hw[0], tf.float32),
                                                           tf.cast(hw[1], tf.float32), cfg,
                                                           tf.minimum),
                  max_size=max(cfg.max_size, 1) if cfg.max_size else 1 << 16,
                  pad_value=self.pad_value)
    if images.builder is not None:
      return pipeline.eval_dataset(images.builder, images.split, max_boxes=1, **common)
    return pipeline.files_eval_dataset(images.files, images.keys, **common)

  def local(self, variables, images: evaluators_lib.ImageSet, preemption=None,
            reduce: Optional[Callable[[str, dict], dict]] = None) -> Optional[dict]:
    """{key: dict(boxes, scores[, landmarks], image_hw)} for this host's share of `images`,
    original pixels (each through `reduce(key, detections)` when given: what a host keeps
    of an image); None when a preemption notice stopped it (`preemption`:
    checkpointing.Preemption or None).

    With several hosts, the batches are taken in lockstep: every host runs the same number of
    iterations (a host whose share is done idles) and the hosts agree after each one whether
    a notice arrived, so they all stop at the same iteration (never one in a collective while
    another has left). A batch, and any compile it triggers, runs while SIGTERM is watched.
    """
    it = self._dataset(images).as_numpy_iterator()
    variables = layers.fold_batch_norm(local_copy(variables, self.mesh))
    data = NamedSharding(self.mesh, P(sharding.DATA_AXIS))
    dets, t0, shapes, i = {}, time.time(), set(), 0

    def next_batch():
      batch = next(it, None)
      if batch is None:
        return None
      return batch, jax.device_get(self.predict(variables, jax.device_put(batch["image"], data),
                                                jax.device_put(batch["image_hw"], data)))

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
        self.log(f"  {self.name}: stopped by a preemption notice after {len(dets)} images")
        return None
      if item is None:
        continue
      batch, out = item
      shapes.add(batch["image"].shape[1:3])
      for j in np.flatnonzero(batch["valid"]):
        d = inference.to_original(out, j, float(batch["scale"][j]))
        d["image_hw"] = np.asarray(batch["orig_hw"][j], np.int32)
        key = batch["filename"][j].decode()
        dets[key] = reduce(key, d) if reduce is not None else d
      i += 1
      if i % 25 == 0:
        self.log(f"  {self.name}: {len(dets)} images ({len(dets) / (time.time() - t0):.1f} img/s, "
                 f"{len(shapes)} size buckets)")
    return dets

  def gathered(self, variables, images: evaluators_lib.ImageSet, preemption=None,
               reduce: Optional[Callable[[str, dict], dict]] = None) -> Optional[dict]:
    """`local` on every host, merged on every host (a collective: every host calls it)."""
    dets = self.local(variables, images, preemption, reduce)
    return None if dets is None else _allgather(dets)


class Evaluation:
  """Evaluates variables of `detector` with the configured evaluators (construct once, run
  often); `builder` / `split` are the run's dataset and eval split."""

  def __init__(self, detector: Detector, builder, split: str,
               inf_cfg: inference.InferenceConfig, loop_cfg: EvalLoopConfig,
               log: Callable[[str], None] = print):
    self.detector, self.log = detector, log
    self.inf_cfg, self.loop_cfg = inf_cfg, loop_cfg
    self.evaluators = evaluators_lib.make_evaluators(loop_cfg.evaluators, builder, split,
                                                     loop_cfg.max_images)
    if not self.evaluators:
      raise settings.ConfigError("config.eval.evaluators: no evaluator configured")
    self.passes = PredictionPass(inference.make_predict_fn(detector, inf_cfg), inf_cfg,
                                 loop_cfg.batch_size, detector.pad_value, log)

  def describe(self) -> str:
    """e.g. "wider (validation)"."""
    return ", ".join(f"{e.name} ({e.images().describe()})" for e in self.evaluators)

  def run(self, variables, out_dir, *, method_name: str = "tinyfaces_jax",
          preemption=None) -> Optional[dict]:
    """Predicts once per image set, evaluates on host 0 and writes under `out_dir` (a local
    path or URL). -> dict(num_images, predict_seconds, seconds, scalars {"<name>/<scalar>"},
    results {name: the evaluator's summary}; the last two on host 0 only), or None when a
    preemption notice stopped it."""
    t0 = time.time()
    passes: dict = {}
    for ev in self.evaluators:
      images = ev.images()
      if images.identity not in passes:
        dets = self.passes.gathered(variables, images, preemption)
        if dets is None:
          return None
        passes[images.identity] = dets
    summary = {"num_images": int(sum(len(d) for d in passes.values())),
               "predict_seconds": round(time.time() - t0, 2)}
    if jax.process_index() != 0:
      return summary
    out = paths.resolve(out_dir)
    summary.update(scalars={}, results={})
    for ev in self.evaluators:
      r = ev.evaluate(passes[ev.images().identity], out / ev.name, method_name=method_name)
      summary["results"][ev.name] = r
      summary["scalars"].update({f"{ev.name}/{k}": v for k, v in r["scalars"].items()})
    summary["seconds"] = round(time.time() - t0, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        {k: summary[k] for k in ("num_images", "predict_seconds", "seconds", "scalars")},
        indent=2))
    return summary

  def log_lines(self, summary: dict) -> list:
    """Each evaluator's lines for `summary` (host 0's)."""
    return [line for ev in self.evaluators
            for line in ev.describe(summary["results"][ev.name])]
