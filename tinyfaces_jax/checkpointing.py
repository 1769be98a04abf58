"""orbax CheckpointManager: restore-or-init, periodic saves, save on SIGTERM (preemption).

A workdir holds `checkpoints/<step>/`. `restore_or_init` resumes from the latest step when
there is one (the state's shardings come from the abstract state, so a restored state lands on
the mesh as the initialised one would). `PreemptionGuard` turns SIGTERM into a flag that the
train loop polls: it saves at the current step and exits cleanly.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

import jax
import orbax.checkpoint as ocp

from tinyfaces_jax.train_state import TrainState


def make_manager(workdir: str, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1) -> ocp.CheckpointManager:
  path = os.path.abspath(os.path.join(workdir, "checkpoints"))
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                      save_interval_steps=save_interval_steps, create=True)
  return ocp.CheckpointManager(path, options=opts)


def save(manager: ocp.CheckpointManager, state: TrainState, *, force: bool = False) -> bool:
  """Saves the replicated state at its step (async write; `manager.wait_until_finished()`
  blocks)."""
  step = int(jax.device_get(state.step))
  # The state is replicated: one host copy per leaf is the whole checkpoint (orbax would
  # otherwise slice every replica on every device). The write itself stays asynchronous.
  items = jax.device_get(state.checkpoint_items())
  return manager.save(step, args=ocp.args.StandardSave(items), force=force)


def restore_or_init(manager: ocp.CheckpointManager, state: TrainState,
                    step: Optional[int] = None) -> tuple[TrainState, int]:
  """-> (the checkpointed state at `step` (default: the latest) or `state` itself when there
  is none, restored step or 0). A `step` that is not in the manager is a FileNotFoundError."""
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint of step {step} in {manager.directory} (steps: "
                            f"{sorted(manager.all_steps())})")
  step = manager.latest_step() if step is None else step
  if step is None:
    return state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state.checkpoint_items())
  items = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return state.replace(**items), step


class PreemptionGuard:
  """Context manager: SIGTERM sets `.requested` instead of killing the process."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self) -> "PreemptionGuard":
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread (e.g. some notebooks): no handler
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
