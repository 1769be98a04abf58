"""optax chain: schedules, torch-style SGD with weight decay, multipliers, frozen params."""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from tinyfaces_jax.training import optim


def test_schedules():
  cfg = optim.OptimConfig(learning_rate=0.1, warmup_steps=10, schedule="step",
                          decay_steps=(50, 80), decay_factor=0.1, total_steps=100)
  s = optim.learning_rate_schedule(cfg)
  np.testing.assert_allclose([float(s(i)) for i in (0, 5, 10, 49, 50, 79, 80, 99)],
                             [0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  c = optim.learning_rate_schedule(optim.OptimConfig(learning_rate=1.0, schedule="cosine",
                                                     total_steps=100))
  np.testing.assert_allclose([float(c(0)), float(c(50)), float(c(100))], [1, 0.5, 0], atol=1e-6)


def torch_sgd(p, grads, lr, mom, wd, steps):
  """torch.optim.SGD semantics: d = g + wd p; buf = mom buf + d; p -= lr buf."""
  buf = np.zeros_like(p)
  for _ in range(steps):
    d = grads + wd * p
    buf = mom * buf + d
    p = p - lr * buf
  return p


def test_sgd_matches_torch_semantics_with_groups_and_frozen():
  params = {"backbone": {"conv": {"kernel": jnp.ones((3,))}},
            "head": {"kernel": jnp.full((2,), 2.0)}, "bn": {"scale": jnp.ones((2,))}}
  cfg = optim.OptimConfig(learning_rate=0.1, momentum=0.9, weight_decay=0.01,
                          schedule="constant", lr_multipliers=(("^backbone/", 0.1),),
                          frozen=("^bn/",))
  tx = optim.make_optimizer(cfg, params)
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  p = params
  for _ in range(3):
    upd, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, upd)
  np.testing.assert_allclose(p["head"]["kernel"], torch_sgd(np.full(2, 2.0), 0.5, 0.1, 0.9,
                                                            0.01, 3), rtol=1e-6)
  np.testing.assert_allclose(p["backbone"]["conv"]["kernel"],
                             torch_sgd(np.ones(3), 0.5, 0.01, 0.9, 0.01, 3), rtol=1e-6)
  np.testing.assert_array_equal(p["bn"]["scale"], 1.0)
  labels = optim.param_labels(params, cfg)
  assert labels["bn"]["scale"] == "frozen" and labels["head"]["kernel"] == "default"


def test_config_errors():
  with pytest.raises(ValueError, match="schedule"):
    optim.OptimConfig(schedule="cosin")
  with pytest.raises(Exception):
    optim.OptimConfig(frozen=("backbone/(",))
