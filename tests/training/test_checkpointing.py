"""orbax save/restore round trip of a TrainState on a sharded mesh, with the run facts saved
beside it; what a resume on another topology changes; SIGTERM handling on one process."""

import os
import signal
import threading
import time

import numpy as np
import jax
import jax.numpy as jnp
import optax

from tinyfaces_jax.training import checkpointing, sharding
from tinyfaces_jax.training.train_state import TrainState


def _facts(**over):
  f = checkpointing.run_facts(global_batch=16, local_batch=16, grad_accum_steps=1, seed=0,
                              num_examples_per_host=100)
  f.update(over)
  return f


def test_save_restore_roundtrip(tmp_path):
  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  params = jax.device_put({"w": jnp.arange(6.0).reshape(2, 3)}, rep)
  state = TrainState.create(params, {"bn": {"mean": jnp.ones(3)}}, optax.sgd(0.1, 0.9))
  state = state.apply_gradients({"w": jnp.ones((2, 3))})
  mgr = checkpointing.make_manager(str(tmp_path))
  checkpointing.save(mgr, state, _facts())
  mgr.wait_until_finished()
  fresh = TrainState.create(params, {"bn": {"mean": jnp.zeros(3)}}, optax.sgd(0.1, 0.9))
  mgr2 = checkpointing.make_manager(str(tmp_path))
  restored, step, meta = checkpointing.restore_or_init(mgr2, fresh)
  assert step == 1 and int(restored.step) == 1
  np.testing.assert_array_equal(restored.params["w"], state.params["w"])
  np.testing.assert_array_equal(restored.batch_stats["bn"]["mean"], 1.0)
  for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)
  assert restored.params["w"].sharding == params["w"].sharding
  assert meta["step"] == 1 and meta["process_count"] == 1 and meta["device_count"] == 8
  assert meta["local_batch"] == 16 and meta["num_examples_per_host"] == 100
  assert checkpointing.resume_changes(meta, _facts()) == []
  empty = checkpointing.make_manager(str(tmp_path / "none"))
  same, step0, meta0 = checkpointing.restore_or_init(empty, fresh)
  assert step0 == 0 and same is fresh and meta0 == {}


def test_resume_changes_name_the_topology():
  saved = _facts(process_count=8, local_batch=2, device_count=32)
  changes = checkpointing.resume_changes(saved, _facts())
  assert any(c.startswith("process_count 8 -> 1 (each host reads its own share") for c in changes)
  assert any(c.startswith("local_batch 2 -> 16") for c in changes)
  assert any(c == "device_count 32 -> 8" for c in changes)


def test_preemption_on_one_process_turns_sigterm_into_a_stop(tmp_path):
  mgr = checkpointing.make_manager(str(tmp_path))
  with checkpointing.Preemption(mgr) as p:
    assert not p.distributed and not p.reached(3) and not p.notice()
    done, value = p.run(lambda: 7, "quick")
    assert done and value == 7
    # A long blocking call is abandoned within the poll interval once SIGTERM arrives.
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    t0 = time.time()
    done, value = p.run(lambda: time.sleep(30), "long")
    assert not done and value is None and time.time() - t0 < 5
    assert p.reached(4) and p.notice()
    done, _ = p.agreed_run(lambda: 1, "compile")
    assert not done  # the notice is already there: nothing starts
  assert signal.getsignal(signal.SIGTERM) is not p._handler


def test_run_reraises_errors(tmp_path):
  mgr = checkpointing.make_manager(str(tmp_path))
  with checkpointing.Preemption(mgr) as p:
    try:
      p.run(lambda: 1 / 0, "boom")
    except ZeroDivisionError:
      pass
    else:
      raise AssertionError("the worker's error was not re-raised")
