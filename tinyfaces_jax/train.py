"""`train_and_evaluate(config, workdir)`: the training loop shared by every detector.

Reads the ml_collections config once (`RunSpec.from_config`), then: a ("data",) mesh over all
devices of all hosts; the TFDS builder (embedded or the user's WIDER release); the detector
(detectors.py) and its optax chain; the TrainState initialised replicated on the mesh, from
imported weights when configured, or restored from `<workdir>/checkpoints` (resume); this
host's tf.data stream from the restored step (pipeline.train_dataset: the same batches an
uninterrupted run would see); the jitted sharded step (matching + OHEM inside); clu metric
writers (TensorBoard + logs) and progress; orbax checkpoints every `checkpoint_every` steps, at
the end and on SIGTERM (preemption); periodic WIDER evaluation (eval_loop.py). A non-finite
loss stops training with the step named (and nothing non-finite is checkpointed).

Outputs in the workdir: checkpoints/<step>/, config.json, TensorBoard events,
eval/step_<k>/ (predictions, aps.json, PR curves).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable, Optional

import jax
import numpy as np

from tinyfaces_jax import (checkpointing, detectors, eval_loop, inference, optim, settings,  # noqa: F401
                           sharding, train_step)
from tinyfaces_jax.data import sources
from tinyfaces_jax.evaluation import size_bins

SECTIONS = ("detector", "seed", "data", "model", "loss", "optim", "train", "eval", "init")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The `train` section: global batch, steps, logging/checkpoint/eval cadence, bf16."""
  batch_size: int = 32
  num_steps: int = 1000
  log_every: int = 50
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  eval_every: int = 0
  bf16: bool = False


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """The `init` section: weights a fresh run starts from (a resumed run ignores them)."""
  backbone: str = ""
  checkpoint: str = ""
  require: bool = True

  def check_files(self) -> None:
    """With `require`, a configured file that does not exist is an error (raised early)."""
    for name in ("backbone", "checkpoint"):
      path = getattr(self, name)
      if self.require and path and not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"config.init.{name}: {path} not found (set "
                                f"--config.init.{name}= to your file, or '' for none)")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything a run needs, parsed and checked from the config."""
  detector: detectors.Detector
  data: sources.DataConfig
  optim: optim.OptimConfig
  train: TrainConfig
  inference: inference.InferenceConfig
  eval_loop: eval_loop.EvalLoopConfig
  init: InitConfig
  seed: int

  @classmethod
  def from_config(cls, config) -> "RunSpec":
    settings.check_keys(settings.as_dict(config), SECTIONS, "config")
    tr = settings.dataclass_from(TrainConfig, config.train, "config.train")
    inf, loop = eval_loop.split_eval_section(settings.as_dict(config.eval))
    return cls(
        detector=detectors.build_detector(config.detector, config.model, config.loss),
        data=settings.dataclass_from(sources.DataConfig, config.data, "config.data"),
        optim=settings.dataclass_from(optim.OptimConfig, config.optim, "config.optim",
                                      total_steps=tr.num_steps),
        train=tr, inference=inf, eval_loop=loop,
        init=settings.dataclass_from(InitConfig, config.init, "config.init"),
        seed=int(config.seed))


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def optimizer_and_shape(spec: RunSpec):
  """(optax chain, training image shape [S, S, 3]) of the configured run (the optimizer is
  built from the parameter shapes only; no arrays are materialised)."""
  s = spec.data.image_size
  shapes = jax.eval_shape(lambda: spec.detector.init_variables((s, s)))
  return optim.make_optimizer(spec.optim, shapes["params"]), (s, s, 3)


def initial_state(spec: RunSpec, mesh, manager, step: Optional[int] = None):
  """-> (state, start step): restored from the manager's checkpoints (the latest, or `step`),
  else initialised (+ the configured imported weights)."""
  tx, shape = optimizer_and_shape(spec)
  state = train_step.create_train_state(spec.detector.model, tx, shape,
                                        jax.random.key(spec.seed), mesh)
  if manager.latest_step() is None and step is None:
    init = spec.init
    paths = {"checkpoint": init.checkpoint, "backbone": init.backbone}
    for k, p in paths.items():
      if p and not os.path.exists(os.path.expanduser(p)) and not init.require:
        _log(f"WARNING: init.{k} {p} not found; training from random initialisation")
        paths[k] = ""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables, what = detectors.load_initial_weights(spec.detector, variables, **paths)
    rep = sharding.replicated(mesh)
    variables = jax.device_put(variables, rep)
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    _log(f"initial weights: {what}")
  state, start = checkpointing.restore_or_init(manager, state, step)
  if start:
    _log(f"resumed from {manager.directory} at step {start}")
  return state, start


def _mean_metrics(pending: list) -> tuple[dict, Optional[tuple]]:
  """[(step, device metrics)] -> (means, first (step, loss) that is not finite or None)."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host):
    if not np.isfinite(m["loss"]):
      return {}, (step, float(m["loss"]))
  keys = [k for k in host[0] if k != "finite"]
  return {k: float(np.mean([m[k] for m in host])) for k in keys}, None


def _format(step: int, total: int, m: dict, lr: float, ips: float, eta: float,
            batch: int) -> str:
  parts = " ".join(f"{k[5:]} {m[k]:.3f}" for k in sorted(m) if k.startswith("loss_"))
  return (f"step {step:>6d}/{total}  loss {m['loss']:.4f} ({parts})  pos/img "
          f"{m.get('num_pos', 0.0) / batch:.1f}  lr {lr:.2e}  {ips:.1f} img/s  eta "
          f"{int(eta // 60)}m{int(eta % 60):02d}s")


def train_and_evaluate(config, workdir: str, *,
                       step_hook: Optional[Callable[[int], None]] = None) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints) and evaluates.

  Args:
    config: the ml_collections config (configs/*.py).
    workdir: output folder (created).
    step_hook: optional `fn(step)` called after every step (tests, notebooks).
  Returns:
    dict(step: last step done, preempted: bool, evals: [{step, minutes, aps, ...}], state).
  Raises:
    FloatingPointError: a non-finite loss (the message names the step).
  """
  from clu import metric_writers, periodic_actions
  from tinyfaces_jax.data import pipeline, recipes

  spec = RunSpec.from_config(config)
  spec.init.check_files()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=1))
  tc = spec.train
  mesh = sharding.make_mesh()
  local_batch = sharding.check_batch_size(tc.batch_size, mesh)
  _log(f"{spec.detector.name} on {mesh.devices.size} {jax.devices()[0].platform} device(s), "
       f"{jax.process_count()} host(s); global batch {tc.batch_size}, "
       f"{spec.data.image_size}px crops, {tc.num_steps} steps; workdir {workdir}")
  builder = sources.prepare_builder(spec.data, _log)
  manager = checkpointing.make_manager(workdir, max_to_keep=tc.keep_checkpoints)
  state, start = initial_state(spec, mesh, manager)
  step_fn = train_step.make_train_step(spec.detector.model, spec.detector.loss, mesh,
                                       bf16=tc.bf16, preprocess=spec.detector.preprocess)
  lr_at = optim.learning_rate_schedule(spec.optim)
  evaluator = eval_loop.Evaluator(spec.detector, builder, spec.data.eval_split,
                                  spec.inference, spec.eval_loop, log=_log)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=tc.num_steps, writer=writer,
                                             every_steps=tc.log_every)
  evals: list = []
  t_start = time.time()

  def evaluate(step: int) -> None:
    _log(f"evaluating {spec.data.eval_split} at step {step} ...")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    r = evaluator.run(variables, os.path.join(workdir, "eval", f"step_{step}"))
    r.update(step=step, minutes=round((time.time() - t_start) / 60, 2))
    evals.append(r)
    if "aps" in r:
      writer.write_scalars(step, {f"eval/ap_{k}": v for k, v in r["aps"].items()})
      _log(f"eval step {step}: WIDER AP easy {r['aps']['easy']:.4f} medium "
           f"{r['aps']['medium']:.4f} hard {r['aps']['hard']:.4f} on {r['num_images']} "
           f"images ({r['num_faces']['hard']} faces, {r['num_detections']} detections, "
           f"{r['seconds']:.0f} s)")
      _log("  hard AP by face height: " + "  ".join(
          f"{size_bins.bin_label(b['lo'], b['hi'] if b['hi'] is not None else float('inf'))}"
          f" {b['ap']:.3f} ({b['num_faces']})" for b in r["ap_by_height"]
          if b["ap"] is not None))

  if start == 0 and tc.eval_every:
    evaluate(0)
  transform = recipes.make_transform(spec.data.recipe, size=spec.data.image_size,
                                     **spec.data.recipe_options)
  ds = pipeline.train_dataset(builder, spec.data.train_split, batch_size=local_batch,
                              transform=transform, max_boxes=spec.data.max_boxes,
                              seed=spec.seed, shuffle_buffer=spec.data.shuffle_buffer,
                              start_step=start)
  batches = sharding.prefetch_to_mesh(
      pipeline.log_dropped_faces(ds.as_numpy_iterator(), every=max(tc.log_every, 1) * 10),
      mesh)
  base_key = jax.random.key(spec.seed + 1)
  pending: list = []
  step, preempted, saved_at = start, False, start
  t_log, n_log = time.time(), 0

  def flush(step: int) -> Optional[dict]:
    nonlocal pending
    if not pending:
      return None
    means, bad = _mean_metrics(pending)
    pending = []
    if bad:
      raise FloatingPointError(
          f"non-finite loss {bad[1]} at step {bad[0]}; training stopped (last checkpoint: "
          f"step {manager.latest_step()} in {manager.directory})")
    return means

  with checkpointing.PreemptionGuard() as guard:
    while step < tc.num_steps:
      batch, _ = next(batches)
      state, metrics = step_fn(state, batch, base_key)
      step += 1
      n_log += 1
      pending.append((step, metrics))
      progress(step)
      if step_hook is not None:
        step_hook(step)
      last = step == tc.num_steps
      stop = guard.requested
      if step % tc.log_every == 0 or last or stop or step % tc.checkpoint_every == 0:
        means = flush(step)
        if step % tc.log_every == 0 or last:
          dt = time.time() - t_log
          ips = n_log * tc.batch_size / max(dt, 1e-9)
          lr = float(lr_at(step))
          writer.write_scalars(step, dict({f"train/{k}": v for k, v in means.items()}, lr=lr))
          _log(_format(step, tc.num_steps, means, lr, ips,
                       (tc.num_steps - step) * dt / max(n_log, 1), tc.batch_size))
          t_log, n_log = time.time(), 0
      if step % tc.checkpoint_every == 0 or last or stop:
        checkpointing.save(manager, state, force=True)
        saved_at = step
      if stop:
        preempted = True
        _log(f"SIGTERM: saved a checkpoint at step {step}; stopping (resume by rerunning)")
        break
      if tc.eval_every and step % tc.eval_every == 0 and not last:
        evaluate(step)
  manager.wait_until_finished()
  if not preempted:
    if saved_at != step:
      checkpointing.save(manager, state, force=True)
      manager.wait_until_finished()
    evaluate(step)
  writer.flush()
  manager.close()
  return {"step": step, "preempted": preempted, "evals": evals, "state": state}


def evaluate_only(config, workdir: str) -> dict:
  """Evaluates the latest checkpoint in `workdir` (or, with none, `init` weights).

  Writes `<workdir>/eval/step_<k>/` (k = the checkpoint step, 0 for imported weights).
  """
  spec = RunSpec.from_config(config)
  spec.init.check_files()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = sharding.make_mesh()
  builder = sources.prepare_builder(spec.data, _log)
  manager = checkpointing.make_manager(workdir, max_to_keep=spec.train.keep_checkpoints)
  if manager.latest_step() is None and not (spec.init.checkpoint or spec.init.backbone):
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints and no "
                            "config.init.checkpoint to evaluate")
  state, step = initial_state(spec, mesh, manager)
  manager.close()
  evaluator = eval_loop.Evaluator(spec.detector, builder, spec.data.eval_split,
                                  spec.inference, spec.eval_loop, log=_log)
  _log(f"evaluating {evaluator.split} at step {step} ...")
  r = evaluator.run({"params": state.params, "batch_stats": state.batch_stats},
                    os.path.join(workdir, "eval", f"step_{step}"))
  if "aps" in r:
    _log("WIDER AP " + "  ".join(f"{k} {v:.4f}" for k, v in r["aps"].items())
         + f"  ({r['num_images']} images; predictions in {workdir}/eval/step_{step})")
  return dict(r, step=step)


def main_summary(result: dict) -> str:
  """The last lines the main job prints: the AP curve of a run."""
  rows = ["steps  minutes  AP easy  AP medium  AP hard"]
  for r in result["evals"]:
    if "aps" in r:
      a = r["aps"]
      rows.append(f"{r['step']:5d}  {r['minutes']:7.1f}  {a['easy']:7.4f}  {a['medium']:9.4f}  "
                  f"{a['hard']:7.4f}")
  return "\n".join(rows)
