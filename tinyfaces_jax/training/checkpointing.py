"""orbax checkpoints and preemption: restore-or-init, saves every host agrees on, run facts.

A checkpoint folder (`<workdir>/checkpoints` unless configured elsewhere, local or a URL)
holds `<step>/state` (the TrainState's arrays) and `<step>/meta` (JSON: the topology and data
position that wrote it, see `run_facts`). `restore_or_init` resumes from the latest step (the
state's shardings come from the abstract state, so a restored state lands on the mesh as the
initialised one would) and returns the saved facts so the caller can say what a resume on
another topology changes.

`Preemption` makes every host stop at the same step:
  * with `jax.distributed` (pods, multi-node GPU): JAX's own SIGTERM notifier (a Python
    handler would replace it) and its sync point: `reached(step)` is orbax's
    `manager.reached_preemption(step)`, True on every host at the same step once any host got
    the notice; `notice()` says whether a notice exists (polled between eval batches and during
    compiles, where no step follows soon);
  * on one process: a Python SIGTERM handler sets a flag that both read.
`Preemption.run(fn)` runs a long blocking call (a compile, an eval batch) in a worker thread
and gives up on it when a notice arrives, so SIGTERM is honoured within about a second. A
process that gave up on such a call ends with `exit_if_work_abandoned()` (the CLI does): the
interpreter cannot exit normally while a thread is inside XLA.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from tinyfaces_jax import paths
from tinyfaces_jax.training import hosts
from tinyfaces_jax.training.train_state import TrainState


_ABANDONED: list[threading.Thread] = []  # worker threads a notice made us leave running


def exit_if_work_abandoned(code: int = 0) -> None:
  """Ends the process now if a preemption left a compile or an eval batch running in a
  worker thread (`Preemption.run`); a no-op otherwise.

  A normal interpreter exit with a thread inside XLA aborts (SIGABRT, "FATAL: exception not
  rethrown"), so: flush the output, shut the distributed runtime down (its shutdown barrier,
  which every host reaches at exit anyway) and `os._exit(code)`. Call it last, after the
  checkpoints are written and closed.
  """
  if not any(t.is_alive() for t in _ABANDONED):
    return
  print(f"leaving {sum(t.is_alive() for t in _ABANDONED)} abandoned call(s) behind; exiting",
        flush=True)
  sys.stdout.flush()
  sys.stderr.flush()
  if hosts.is_distributed():
    jax.distributed.shutdown()
  os._exit(code)


def make_manager(directory, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager on `directory` (a local path or URL; created on first save)."""
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(paths.resolve(directory), options=opts)


def save(manager: ocp.CheckpointManager, state: TrainState, meta: Optional[dict] = None, *,
         force: bool = True) -> bool:
  """Saves the replicated state at its step, with `meta` (JSON) beside it; asynchronous
  (`manager.wait_until_finished()` blocks). Every host must call it for the same step."""
  step = int(jax.device_get(state.step))
  # The state is replicated: one host copy per leaf is the whole checkpoint (orbax would
  # otherwise slice every replica on every device). The write itself stays asynchronous.
  items = jax.device_get(state.checkpoint_items())
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(dict(meta or {}, step=step))),
      force=force)


def restore_or_init(manager: ocp.CheckpointManager, state: TrainState,
                    step: Optional[int] = None) -> tuple[TrainState, int, dict]:
  """-> (the checkpointed state at `step` (default: the latest) or `state` itself when there
  is none, restored step or 0, the saved meta or {}). A `step` that is not in the manager is
  a FileNotFoundError."""
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint of step {step} in {manager.directory} (steps: "
                            f"{sorted(manager.all_steps())})")
  step = manager.latest_step() if step is None else step
  if step is None:
    return state, 0, {}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.checkpoint_items())
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return state.replace(**restored["state"]), step, dict(restored["meta"] or {})


def restore_variables(manager: ocp.CheckpointManager, abstract: dict,
                      step: Optional[int] = None, device=None) -> tuple[dict, int]:
  """The model variables of a checkpoint without its optimizer state (inference, export).

  Args:
    manager: on the run's checkpoint folder.
    abstract: {'params', 'batch_stats'} of the model (shapes, e.g. `jax.eval_shape` of init).
    step: the checkpoint (default: the latest).
    device: where the arrays land (default: the first device).
  Returns:
    ({'params', 'batch_stats'} as jax arrays, the step).
  Raises:
    FileNotFoundError without checkpoints / the step; ValueError naming the checkpoint folder
    when its variables do not fit `abstract` (another detector or model configuration).
  """
  steps = sorted(manager.all_steps())
  step = steps[-1] if step is None and steps else step
  if step is None or step not in steps:
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' of step {step}'} in "
                            f"{manager.directory} (steps: {steps})")
  saved = ocp.PyTreeCheckpointer().metadata(paths.resolve(manager.directory) / str(step) /
                                            "state").item_metadata
  diff = _shape_differences({k: saved.get(k, {}) for k in abstract}, abstract)
  if diff:
    raise ValueError(f"the checkpoint {manager.directory}/{step} does not fit the configured "
                     f"model (first differences: {', '.join(diff[:3])})")
  target = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=target), abstract)
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      abstract, restore_args=args, partial_restore=True)))["state"]
  return {k: state[k] for k in abstract}, step


def workdir_of(weights):
  """The training workdir (epath.Path) `weights` names: the folder itself, or the workdir of a
  `checkpoints/<step>` folder; None for a file or another folder."""
  p = paths.resolve(weights)
  if p.name.isdigit() and p.parent.name == "checkpoints":
    p = p.parent.parent
  return p if (p / "checkpoints").is_dir() else None


def saved_config(weights):
  """The ml_collections config a training workdir saved (`config.json`), or None."""
  import ml_collections
  wd = workdir_of(weights)
  if wd is None or not (wd / "config.json").is_file():
    return None
  return ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))


def model_variables(detector, weights: str, what: str = "--weights") -> tuple[dict, str]:
  """Weights file / workdir / checkpoints/<step> folder (paths or URLs) -> (variables
  {'params', 'batch_stats'} on the first device, a description), with no optimizer: a file
  (or, for `detector.folder_weights`, a folder of files) through the detector's importer, a
  workdir's checkpoint through `restore_variables`. Errors start with `what` (the flag or
  config field that named the weights)."""
  from tinyfaces_jax.detectors import base
  abstract = jax.eval_shape(lambda: detector.init_variables((64, 64)))
  abstract = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
  weights = detector.weights_path(weights)
  p = paths.resolve(weights)
  if p.is_file() or (detector.folder_weights and p.is_dir() and workdir_of(p) is None):
    variables, _ = base.load_initial_weights(detector, abstract, checkpoint=os.fspath(p))
    return jax.device_put(variables, jax.devices()[0]), f"weights {p}"
  if not p.is_dir():
    raise FileNotFoundError(f"{what} {weights}: no such file or folder")
  wd = workdir_of(p)
  if wd is None:
    raise FileNotFoundError(f"{what} {weights}: a folder must be a training workdir (with "
                            "checkpoints/) or one of its checkpoints/<step> folders")
  step = int(p.name) if p != wd else None
  manager = make_manager(wd / "checkpoints")
  try:
    variables, step = restore_variables(manager, abstract, step)
  except ValueError as e:
    saved = saved_config(wd)
    trained = f"; the run trained detector {saved.detector!r} (its config.json: omit --config " \
              "to use it)" if saved is not None else ""
    raise ValueError(f"{what} {weights}: {e}; configured detector {detector.name!r}"
                     f"{trained}") from None
  finally:
    manager.close()
  return variables, f"checkpoint step {step} of {wd}"


def _shape_differences(saved, want) -> list[str]:
  """'path: checkpoint shape vs model shape' for every leaf where two trees differ."""
  def flat(tree):
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
            jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]}
  a, b = flat(saved), flat(want)
  return [f"{k}: checkpoint {a.get(k)} vs model {b.get(k)}" for k in sorted(set(a) | set(b))
          if a.get(k) != b.get(k)]


def run_facts(*, global_batch: int, local_batch: int, grad_accum_steps: int, seed: int,
              num_examples_per_host: Optional[int] = None) -> dict:
  """What a checkpoint records about the run that wrote it (topology and data position)."""
  dev = jax.devices()[0]
  return {"process_count": jax.process_count(), "device_count": jax.device_count(),
          "local_device_count": jax.local_device_count(), "platform": dev.platform,
          "device_kind": dev.device_kind, "global_batch": global_batch,
          "local_batch": local_batch, "grad_accum_steps": grad_accum_steps, "seed": seed,
          "num_examples_per_host": num_examples_per_host}


def resume_changes(saved: dict, now: dict) -> list[str]:
  """Human-readable differences between the saved run facts and this run's (empty when the
  resume continues exactly the stream an uninterrupted run would read)."""
  changes = []
  for key, why in (("process_count", "each host reads its own share of the split, so the "
                    "data stream after the resume differs from an uninterrupted run's"),
                   ("local_batch", "the per-host batch sets the data position of each step"),
                   ("global_batch", "the optimisation differs from the checkpointed run's"),
                   ("grad_accum_steps", "the examples per micro-batch differ"),
                   ("seed", "the data order and augmentation differ"),
                   ("num_examples_per_host", "the dataset differs")):
    if key in saved and saved[key] != now.get(key):
      changes.append(f"{key} {saved[key]} -> {now.get(key)} ({why})")
  for key in ("device_count", "device_kind"):
    if key in saved and saved[key] != now.get(key):
      changes.append(f"{key} {saved[key]} -> {now.get(key)}")
  return changes


class Preemption:
  """Context manager: SIGTERM handling that every host agrees on (see the module docstring)."""

  def __init__(self, manager: ocp.CheckpointManager, poll_s: float = 0.2):
    self.manager, self.poll_s = manager, poll_s
    self.distributed = hosts.is_distributed()
    self._flag = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self._flag = True

  def __enter__(self) -> "Preemption":
    if not self.distributed:  # JAX's notifier owns SIGTERM when distributed
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread (e.g. some notebooks): no handler
        self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def reached(self, step: int) -> bool:
    """True when the run must save `step` and stop; the same step on every host. Call it at
    every step (and once with the start step before the first)."""
    if self.distributed:
      return self.manager.reached_preemption(step)
    return self._flag

  def notice(self) -> bool:
    """Whether a preemption notice has arrived (this host or, distributed, any host)."""
    return self._flag or (self.distributed and hosts.preemption_notice())

  def run(self, fn: Callable[[], Any], name: str) -> tuple[bool, Any]:
    """Runs `fn()` in a worker thread; -> (True, its result), or (False, None) when a notice
    arrives first or is already there (the thread is left to finish on its own).
    Exceptions are re-raised."""
    if self.notice():
      return False, None
    box: dict = {}

    def work():
      try:
        box["result"] = fn()
      except BaseException as e:  # re-raised in the caller's thread
        box["error"] = e

    thread = threading.Thread(target=work, name=f"tinyfaces_{name}", daemon=True)
    thread.start()
    while thread.is_alive():
      thread.join(self.poll_s)
      if thread.is_alive() and self.notice():
        _ABANDONED.append(thread)
        return False, None
    if "error" in box:
      raise box["error"]
    return True, box["result"]

  def agreed_run(self, fn: Callable[[], Any], name: str,
                 timeout_s: float = 4 * 3600.0) -> tuple[bool, Any]:
    """`run` on every host, then the hosts agree: (False, _) on every host if any host was
    interrupted by a notice (for work before which nothing new needs saving, e.g. the first
    compile). Hosts wait for each other's outcome for up to `timeout_s`."""
    t0 = time.time()
    done, result = self.run(fn, name)
    outcomes = hosts.exchange(f"{name} outcome", "done" if done else "preempted",
                              max(timeout_s - (time.time() - t0), 1.0))
    return all(o == "done" for o in outcomes), result
