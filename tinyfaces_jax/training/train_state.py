"""TrainState: the whole trainable state as one pytree (checkpointed as is; no RNG inside,
the step's key is `fold_in(base_key, step)`, so resume is deterministic)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """step [] int32; params / batch_stats: flax variable collections; opt_state: optax state.

  `tx` is static (not a pytree leaf) and not checkpointed.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params, batch_stats, tx: optax.GradientTransformation) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
               opt_state=tx.init(params), tx=tx)

  def apply_gradients(self, grads, batch_stats=None) -> "TrainState":
    """One optimizer step; optionally replaces batch_stats (BatchNorm running statistics)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state,
                        batch_stats=self.batch_stats if batch_stats is None else batch_stats)

  def checkpoint_items(self) -> dict:
    """What orbax saves."""
    return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
            "opt_state": self.opt_state}
