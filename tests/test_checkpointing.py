"""orbax save/restore round trip of a TrainState on a sharded mesh; SIGTERM guard."""

import os
import signal

import numpy as np
import jax
import jax.numpy as jnp
import optax

from tinyfaces_jax import checkpointing, sharding
from tinyfaces_jax.train_state import TrainState


def test_save_restore_roundtrip(tmp_path):
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  params = jax.device_put({"w": jnp.arange(6.0).reshape(2, 3)}, rep)
  state = TrainState.create(params, {"bn": {"mean": jnp.ones(3)}}, optax.sgd(0.1, 0.9))
  state = state.apply_gradients({"w": jnp.ones((2, 3))})
  mgr = checkpointing.make_manager(str(tmp_path))
  checkpointing.save(mgr, state)
  mgr.wait_until_finished()
  fresh = TrainState.create(params, {"bn": {"mean": jnp.zeros(3)}}, optax.sgd(0.1, 0.9))
  mgr2 = checkpointing.make_manager(str(tmp_path))
  restored, step = checkpointing.restore_or_init(mgr2, fresh)
  assert step == 1 and int(restored.step) == 1
  np.testing.assert_array_equal(restored.params["w"], state.params["w"])
  np.testing.assert_array_equal(restored.batch_stats["bn"]["mean"], 1.0)
  for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)
  assert restored.params["w"].sharding == params["w"].sharding
  empty = checkpointing.make_manager(str(tmp_path / "none"))
  same, step0 = checkpointing.restore_or_init(empty, fresh)
  assert step0 == 0 and same is fresh


def test_preemption_guard_turns_sigterm_into_flag():
  with checkpointing.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested
