"""`train_and_evaluate(config, workdir)`: the training loop shared by every detector.

Reads the ml_collections config once (`RunSpec.from_config`), then, on every host of the run:
  1. the workdir as a path or URL (`paths.resolve`: a gs:// workdir stays a URL); host 0
     writes config.json;
  2. agreement checks before anything collective (hosts.py): the workdir is shared, and every
     host has the same config, devices per host and checkpoint steps, else every host stops
     with a message naming what differs;
  3. the dataset, prepared by host 0 while the others wait (`prepare_data`, also `main
     --mode=prepare`);
  4. a ("data",) mesh over all devices of all hosts in topology order; the detector and its
     optax chain; the TrainState initialised replicated, from imported weights (or another
     run's workdir), or restored from the checkpoints (a resume on another topology is
     named); the family's `prepare_training` (MTCNN's hard-sample mining); this host's tf.data stream
     from the restored step (the same batches an uninterrupted run would see), moved to the
     devices by a background thread;
  5. the jitted sharded step (matching + OHEM inside, optional bf16 and gradient
     accumulation), compiled ahead of time while SIGTERM is watched;
  6. clu writers (TensorBoard + logs), progress, optional profiler trace; orbax checkpoints
     every `checkpoint_every` steps, at the end, and on preemption at a step every host agrees
     on (checkpointing.Preemption; also during evaluation); periodic WIDER evaluation
     (eval_loop.py). A non-finite loss stops training with the step named (nothing
     non-finite is checkpointed).
Evaluation (periodic, final, and `evaluate_only`) runs the configured evaluators
(eval_loop.py, evaluation/evaluators.py) and logs / writes their named scalars.

Outputs in the workdir: checkpoints/<step>/ (unless train.checkpoint_dir), config.json,
TensorBoard events, eval/step_<k>/ (summary.json, and per evaluator its folder: wider/ with
predictions, aps.json, PR curves), profile/, jax_cache/.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Optional

import jax
import numpy as np

from tinyfaces_jax import detectors, inference, paths, settings
from tinyfaces_jax.training import eval_loop, hosts
from tinyfaces_jax.training import checkpointing, optim, sharding, train_step
from tinyfaces_jax.data import sources
from tinyfaces_jax.detectors import base as detector_base

SECTIONS = ("detector", "seed", "data", "model", "loss", "optim", "train", "eval", "init")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The `train` section: global batch, steps, logging/checkpoint/eval cadence (with
  `eval_every`, also at step 0 unless `eval_at_start` is False), bf16."""
  batch_size: int = 32
  num_steps: int = 1000
  log_every: int = 50
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  eval_every: int = 0
  eval_at_start: bool = True
  bf16: bool = False
  grad_accum_steps: int = 1
  checkpoint_dir: str = ""
  compilation_cache: str = "auto"
  profile_steps: tuple = ()
  prefetch: int = 2

  def __post_init__(self):
    if self.grad_accum_steps < 1:
      raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
    if self.profile_steps and (len(self.profile_steps) != 2
                               or not 0 < self.profile_steps[0] <= self.profile_steps[1]):
      raise ValueError(f"profile_steps must be (first, last) with 0 < first <= last, got "
                       f"{self.profile_steps}")


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """The `init` section: weights a fresh run starts from (a resumed run ignores them).

  backbone: an ImageNet trunk checkpoint (the family's importer); checkpoint: a whole-model
  public checkpoint, or a training workdir (its latest checkpoint) or one of its
  checkpoints/<step> folders (the model variables, no optimizer state); require: a missing
  file is an error (False: a warning and random initialisation)."""
  backbone: str = ""
  checkpoint: str = ""
  require: bool = True

  def check_files(self, detector=None) -> None:
    """With `require`, a configured file that does not exist is an error (raised early);
    `detector` resolves its family's own weight names (Detector.weights_path)."""
    for name in ("backbone", "checkpoint"):
      path = getattr(self, name)
      if name == "checkpoint" and detector is not None:
        path = detector.weights_path(path)
      if self.require and path and not paths.resolve(path).exists():
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


def initial_state(spec: RunSpec, mesh, manager, step: Optional[int] = None):
  """-> (state, start step, saved run facts): restored from the manager's checkpoints (the
  latest, or `step`), else initialised (+ the configured imported weights; facts {})."""
  s = spec.data.image_size
  state = train_step.init_detector_state(spec.detector, spec.optim, (s, s), mesh, spec.seed)
  if manager.latest_step() is None and step is None:
    init = spec.init
    files = {"checkpoint": init.checkpoint, "backbone": init.backbone}
    for k, p in files.items():
      if p and not paths.resolve(p).exists() and not init.require:
        _log(f"WARNING: init.{k} {p} not found; training from random initialisation")
        files[k] = ""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if files["checkpoint"] and checkpointing.workdir_of(files["checkpoint"]) is not None:
      variables, what = checkpointing.model_variables(spec.detector, files["checkpoint"],
                                                      "config.init.checkpoint")
    else:
      variables, what = detector_base.load_initial_weights(spec.detector, variables, **files)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    _log(f"initial weights: {what}")
  state, start, meta = checkpointing.restore_or_init(manager, state, step)
  if start:
    _log(f"resumed from {manager.directory} at step {start}")
  return state, start, meta


def prepare_training(spec: RunSpec, builder, state, workdir) -> dict:
  """The recipe options of the run's training batches: config.data.recipe_options, through
  the family's `prepare_training` when it has one (work on its starting weights, e.g. MTCNN's
  hard-sample mining, run on every host)."""
  options = dict(settings.as_dict(spec.data.recipe_options))
  det = spec.detector
  if det.prepare_training is None:
    return options
  from tinyfaces_jax.evaluation import evaluators

  def predict_split(predict, variables, reduce):
    images = evaluators.ImageSet(builder=builder, split=spec.data.train_split)
    return eval_loop.PredictionPass(predict, spec.inference, spec.eval_loop.batch_size,
                                    det.pad_value, _log, name="prepare").gathered(
                                        variables, images, reduce=reduce)

  ctx = detector_base.TrainingContext(
      builder=builder, split=spec.data.train_split, options=options, workdir=workdir,
      predict_split=predict_split, host0_first=hosts.host0_first,
      any_host=lambda flag: bool(hosts.gather_flags([flag]).any()), log=_log)
  return det.prepare_training({"params": state.params, "batch_stats": state.batch_stats}, ctx)


def checkpoint_dir(spec: RunSpec, workdir) -> "paths.epath.Path":
  """Where the run's checkpoints live: train.checkpoint_dir, else <workdir>/checkpoints."""
  if spec.train.checkpoint_dir:
    return paths.resolve(spec.train.checkpoint_dir)
  return paths.resolve(workdir) / "checkpoints"


def prepare_data(config, log: Callable[[str], None] = _log):
  """Prepares the run's TFDS dataset once: host 0 builds it while the other hosts wait, then
  they open it (`main --mode=prepare` runs only this). -> the prepared builder."""
  spec = settings.dataclass_from(sources.DataConfig, config.data, "config.data")
  return hosts.host0_first("prepare dataset", lambda: sources.prepare_builder(spec, log))


def _check_hosts(config, spec: RunSpec, workdir, ckpt_dir) -> None:
  """The agreement checks of the module docstring (step 2); no-ops on one process."""
  hosts.check_shared_folder(workdir, "workdir")
  if not str(ckpt_dir).startswith(str(workdir)):
    hosts.check_shared_folder(ckpt_dir, "checkpoint folder")
  hosts.check_agreement({
      "config": json.loads(config.to_json_best_effort()),
      "devices per host": jax.local_device_count(),
      "jax version": jax.__version__,
      f"checkpoint steps in {ckpt_dir}": hosts.checkpoint_steps(ckpt_dir),
  })


def _set_compilation_cache(setting: str, workdir) -> None:
  """The persistent XLA compilation cache (a resumed or requeued run skips its compiles)."""
  if not setting:
    return
  if setting == "auto":
    if jax.config.jax_compilation_cache_dir:
      return
    setting = str(paths.resolve(workdir) / "jax_cache")
  jax.config.update("jax_compilation_cache_dir", str(paths.resolve(setting)))


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


def _log_eval(evaluation: eval_loop.Evaluation, r: dict) -> None:
  _log(f"eval step {r['step']} ({r['seconds']:.0f} s):")
  for line in evaluation.log_lines(r):
    _log("  " + line)


class _Profiler:
  """A profiler trace of steps [first, last] on host 0 into <workdir>/profile."""

  def __init__(self, steps: tuple, workdir):
    self.first, self.last = steps if steps else (0, -1)
    self.logdir = str(paths.resolve(workdir) / "profile")
    self.active = False

  def before(self, step: int) -> None:
    """Call before running step `step` (1-based)."""
    if step == self.first and jax.process_index() == 0:
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def after(self, step: int) -> None:
    if self.active and step >= self.last:
      jax.profiler.stop_trace()
      self.active = False
      _log(f"profiler trace of steps {self.first}-{self.last} in {self.logdir}")


def train_and_evaluate(config, workdir, *,
                       step_hook: Optional[Callable[[int], None]] = None) -> dict:
  """Trains (resuming from the checkpoints if there are any) and evaluates.

  Args:
    config: the ml_collections config (configs/*.py).
    workdir: output folder, a local path or a URL (created by host 0).
    step_hook: optional `fn(step)` called after every step (tests, notebooks).
  Returns:
    dict(step: last step done, preempted: bool, evals: [{step, minutes, aps, ...}], state).
  Raises:
    FloatingPointError: a non-finite loss (the message names the step).
    hosts.HostsDisagree: the hosts of a multi-host run see different things.
  """
  from clu import metric_writers, periodic_actions
  from tinyfaces_jax.data import pipeline

  spec = RunSpec.from_config(config)
  spec.init.check_files(spec.detector)
  tc = spec.train
  workdir = paths.resolve(workdir)
  ckpt_dir = checkpoint_dir(spec, workdir)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  _check_hosts(config, spec, workdir, ckpt_dir)
  _set_compilation_cache(tc.compilation_cache, workdir)
  mesh = sharding.make_mesh()
  local_batch = sharding.check_batch_size(tc.batch_size, mesh, tc.grad_accum_steps)
  _log(f"{spec.detector.name} on {mesh.devices.size} {jax.devices()[0].platform} device(s), "
       f"{jax.process_count()} host(s); global batch {tc.batch_size}"
       + (f" in {tc.grad_accum_steps} micro-batches" if tc.grad_accum_steps > 1 else "")
       + f", {spec.data.image_size}px crops, {tc.num_steps} steps; workdir {workdir}")
  builder = hosts.host0_first("prepare dataset",
                              lambda: sources.prepare_builder(spec.data, _log))
  manager = checkpointing.make_manager(ckpt_dir, max_to_keep=tc.keep_checkpoints)
  state, start, saved_facts = initial_state(spec, mesh, manager)
  host_split = pipeline.host_split(spec.data.train_split)
  facts = checkpointing.run_facts(
      global_batch=tc.batch_size, local_batch=local_batch, grad_accum_steps=tc.grad_accum_steps,
      seed=spec.seed, num_examples_per_host=int(builder.info.splits[host_split].num_examples))
  for change in checkpointing.resume_changes(saved_facts, facts) if start else ():
    _log(f"WARNING: resuming step {start} with a different setup than the run that saved "
         f"it: {change}")
  # bf16: the model computes in bfloat16 (params, optimizer state, loss and box math stay
  # float32); evaluation uses the float32 model on the same parameters.
  step_fn = train_step.detector_train_step(spec.detector, mesh, bf16=tc.bf16,
                                           grad_accum_steps=tc.grad_accum_steps)
  lr_at = optim.learning_rate_schedule(spec.optim)
  evaluation = eval_loop.Evaluation(spec.detector, builder, spec.data.eval_split,
                                    spec.inference, spec.eval_loop, log=_log)
  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=tc.num_steps, writer=writer,
                                             every_steps=tc.log_every)
  profiler = _Profiler(tc.profile_steps, workdir)
  evals: list = []
  t_start = time.time()

  def evaluate(state, step: int, preemption) -> bool:
    """Evaluates `state`, appending to `evals`; False when a preemption stopped it."""
    _log(f"evaluating {evaluation.describe()} at step {step} ...")
    r = evaluation.run({"params": state.params, "batch_stats": state.batch_stats},
                      workdir / "eval" / f"step_{step}", preemption=preemption)
    if r is None:
      return False
    r.update(step=step, minutes=round((time.time() - t_start) / 60, 2))
    evals.append(r)
    if "scalars" in r:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in r["scalars"].items()})
      _log_eval(evaluation, r)
    return True

  def save(state, step: int, saved_at: int) -> int:
    """Saves `state` at `step` unless that step is already saved; -> the saved step."""
    if saved_at != step:
      checkpointing.save(manager, state, facts)
    return step

  def flush(pending: list) -> dict:
    """Means of the pending step metrics (one device fetch); a non-finite loss raises."""
    means, bad = _mean_metrics(pending) if pending else ({}, None)
    if bad:
      raise FloatingPointError(
          f"non-finite loss {bad[1]} at step {bad[0]}; training stopped (last checkpoint: "
          f"step {manager.latest_step()} in {manager.directory})")
    return means

  options = prepare_training(spec, builder, state, workdir)
  ds = detectors.make_train_dataset(
      spec.data.recipe, builder, spec.data.train_split, batch_size=local_batch,
      size=spec.data.image_size, max_boxes=spec.data.max_boxes, seed=spec.seed,
      start_step=start, shuffle_buffer=spec.data.shuffle_buffer, threads=spec.data.threads,
      ram_budget_gb=spec.data.ram_budget_gb, options=options)
  batches = sharding.DevicePrefetcher(
      pipeline.log_dropped_faces(ds.as_numpy_iterator(), every=max(tc.log_every, 1) * 10),
      mesh, size=tc.prefetch)
  base_key = jax.random.key(spec.seed + 1)
  pending: list = []
  step, preempted, saved_at = start, False, start
  t_log, n_log = time.time(), 0

  with checkpointing.Preemption(manager) as preemption:
    preemption.reached(start)  # every host's sync counter starts at the same step
    if (start == 0 and tc.eval_every and tc.eval_at_start
        and not evaluate(state, 0, preemption)):
      preempted = True
    compiled = None
    if not preempted and step < tc.num_steps:
      first = next(batches)[0]
      _log("compiling the train step ...")
      t0 = time.time()
      done, compiled = preemption.agreed_run(
          lambda: step_fn.lower(state, first, base_key).compile(), "compile")
      if done:
        _log(f"compiled in {time.time() - t0:.0f} s")
      else:
        preempted = True
        _log(f"SIGTERM during the compile: stopping at step {step} (nothing new to save; "
             f"resume by rerunning)")
    while not preempted and step < tc.num_steps:
      batch = first if step == start else next(batches)[0]
      profiler.before(step + 1)
      state, metrics = compiled(state, batch, base_key)
      step += 1
      n_log += 1
      pending.append((step, metrics))
      progress(step)
      profiler.after(step)
      if step_hook is not None:
        step_hook(step)
      last = step == tc.num_steps
      stop = preemption.reached(step)
      if step % tc.log_every == 0 or last or stop or step % tc.checkpoint_every == 0:
        means, pending = flush(pending), []
        if step % tc.log_every == 0 or last:
          dt = time.time() - t_log
          ips = n_log * tc.batch_size / max(dt, 1e-9)
          lr = float(lr_at(step))
          writer.write_scalars(step, dict({f"train/{k}": v for k, v in means.items()}, lr=lr))
          _log(_format(step, tc.num_steps, means, lr, ips,
                       (tc.num_steps - step) * dt / max(n_log, 1), tc.batch_size))
          t_log, n_log = time.time(), 0
      if step % tc.checkpoint_every == 0 or last or stop:
        saved_at = save(state, step, saved_at)
      if stop:
        preempted = True
        _log(f"preemption: every host saved step {step}; stopping (resume by rerunning)")
        break
      if tc.eval_every and step % tc.eval_every == 0 and not last:
        if not evaluate(state, step, preemption):
          saved_at = save(state, step, saved_at)
          preempted = True
          _log(f"preemption during evaluation: saved step {step}; stopping")
    batches.close()
    manager.wait_until_finished()
    if not preempted:
      saved_at = save(state, step, saved_at)
      manager.wait_until_finished()
      if not evaluate(state, step, preemption):
        preempted = True
        _log(f"preemption during the final evaluation (step {step} is saved); stopping")
  profiler.after(tc.num_steps)
  writer.flush()
  manager.close()
  return {"step": step, "preempted": preempted, "evals": evals, "state": state}


def evaluate_only(config, workdir) -> dict:
  """Evaluates the latest checkpoint (or, with none, `init` weights).

  Writes `<workdir>/eval/step_<k>/` (k = the checkpoint step, 0 for imported weights).
  -> the evaluation summary + step (+ preempted=True when SIGTERM stopped it).
  """
  spec = RunSpec.from_config(config)
  spec.init.check_files(spec.detector)
  workdir = paths.resolve(workdir)
  ckpt_dir = checkpoint_dir(spec, workdir)
  _check_hosts(config, spec, workdir, ckpt_dir)
  mesh = sharding.make_mesh()
  builder = hosts.host0_first("prepare dataset",
                              lambda: sources.prepare_builder(spec.data, _log))
  manager = checkpointing.make_manager(ckpt_dir, max_to_keep=spec.train.keep_checkpoints)
  if manager.latest_step() is None and not (spec.init.checkpoint or spec.init.backbone):
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} and no config.init.checkpoint to "
                            "evaluate")
  state, step, _ = initial_state(spec, mesh, manager)
  evaluation = eval_loop.Evaluation(spec.detector, builder, spec.data.eval_split,
                                    spec.inference, spec.eval_loop, log=_log)
  _log(f"evaluating {evaluation.describe()} at step {step} ...")
  out = workdir / "eval" / f"step_{step}"
  with checkpointing.Preemption(manager) as preemption:
    r = evaluation.run({"params": state.params, "batch_stats": state.batch_stats}, out,
                      preemption=preemption)
  manager.close()
  if r is None:
    _log("SIGTERM: evaluation stopped")
    return {"step": step, "preempted": True}
  if "scalars" in r:
    for line in evaluation.log_lines(r):
      _log(line)
    _log(f"({r['num_images']} images; outputs in {out})")
  return dict(r, step=step)


def main_summary(result: dict) -> str:
  """The last lines the main job prints: every evaluation's scalars, one row per step."""
  evals = [r for r in result["evals"] if "scalars" in r]
  names = list(evals[0]["scalars"]) if evals else []
  widths = [max(len(n), 7) for n in names]
  rows = ["steps  minutes  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
  for r in evals:
    rows.append(f"{r['step']:5d}  {r['minutes']:7.1f}  " + "  ".join(
        f"{r['scalars'].get(n, float('nan')):{w}.4f}" for n, w in zip(names, widths)))
  return "\n".join(rows)
