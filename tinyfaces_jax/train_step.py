"""Sharded init and the pure, jitted train step shared by every detector.

`make_train_step(model, loss_fn, mesh)` returns `step(state, batch, base_key) -> (state,
metrics)`, a `jax.jit` with the state replicated, the batch split over the mesh's "data" axis,
and the state donated. Matching and OHEM run inside `loss_fn` (XLA). The step's PRNG key is
`fold_in(base_key, state.step)`: nothing random is checkpointed and resume is deterministic.
Optional bf16 compute: the images are cast to bfloat16 and the model computes in it; the
parameters, the loss and all box math stay float32.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tinyfaces_jax import sharding
from tinyfaces_jax.train_state import TrainState

# (outputs, batch, key) -> (scalar loss, metrics); `key` drives in-loss sampling (OHEM draws).
LossFn = Callable[[dict, dict, jax.Array], tuple[jnp.ndarray, dict]]


def create_train_state(model, tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                       key: jax.Array, mesh: Mesh) -> TrainState:
  """Initialises params/batch_stats/opt_state directly replicated on the mesh.

  image_shape: one example's [H, W, 3]. Uses `jax.eval_shape` for the structure, then a jit
  with replicated out_shardings, so nothing is first materialised on one device.
  """
  def init(k):
    variables = model.init(k, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    return TrainState.create(variables["params"], variables.get("batch_stats", {}), tx)

  abstract = jax.eval_shape(init, key)
  rep = sharding.replicated(mesh)
  out_shardings = jax.tree.map(lambda _: rep, abstract)
  # Init runs once: on CPU, LLVM's optimisations cost ~3x the compile time for nothing.
  opts = ({"xla_backend_optimization_level": 0}
          if mesh.devices.flat[0].platform == "cpu" else None)
  return jax.jit(init, out_shardings=out_shardings).lower(key).compile(opts)(key)


def make_train_step(model, loss_fn: LossFn, mesh: Mesh, *, bf16: bool = False,
                    donate: bool = True, preprocess: Optional[Callable] = None) -> Callable:
  """Builds the jitted train step (see the module docstring).

  `preprocess` maps batch["image"] to the model input inside the step (e.g. RGB 0..255 ->
  BGR minus the mean); the loss still sees the batch as given.
  """
  rep = sharding.replicated(mesh)
  data = sharding.data_sharding(mesh)

  def step(state: TrainState, batch: dict, base_key: jax.Array):
    key = jax.random.fold_in(base_key, state.step)
    dropout_key, loss_key = jax.random.split(key)
    images = batch["image"] if preprocess is None else preprocess(batch["image"])
    images = images.astype(jnp.bfloat16 if bf16 else jnp.float32)

    def compute_loss(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      outputs, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
      outputs = jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
      loss, metrics = loss_fn(outputs, batch, loss_key)
      return loss, (metrics, new_vars.get("batch_stats", state.batch_stats))

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                   finite=jnp.isfinite(loss))
    return new_state, metrics

  def shard_like(tree, s):
    return jax.tree.map(lambda _: s, tree)

  cache: dict[Any, Callable] = {}

  def cached(state, batch, base_key):
    key = (jax.tree.structure(state), jax.tree.structure(batch))
    if key not in cache:
      cache[key] = jax.jit(
          step, in_shardings=(shard_like(state, rep), shard_like(batch, data), rep),
          out_shardings=(shard_like(state, rep), None),
          donate_argnums=(0,) if donate else ())
    return cache[key](state, batch, base_key)

  return cached
