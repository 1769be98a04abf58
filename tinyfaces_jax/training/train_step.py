"""Sharded init and the pure, jitted train step shared by every detector.

`make_train_step(model, loss_fn, mesh)` returns `step(state, batch, base_key) -> (state,
metrics)`, one `jax.jit` with the state replicated, the batch split over the mesh's "data"
axis, and the state donated (`step.lower(...)` gives its HLO and cost analysis). Matching and
OHEM run inside `loss_fn` (XLA). The step's PRNG key is `fold_in(base_key, state.step)`:
nothing random is checkpointed and resume is deterministic.
Gradient accumulation (`grad_accum_steps` k > 1): each device's rows are split into k
micro-batches (row r of a device goes to micro-batch r // (rows / k), so every micro-batch
spans all devices and no data moves), the loss and gradients of each are computed in a
`lax.scan`, BatchNorm statistics carried from one to the next, and the optimizer applies
the mean gradient once; the metrics are micro-batch means.
Mixed precision: pass the model already built to compute in bfloat16
(`detectors.Detector.with_dtype(jnp.bfloat16).model`, or config.model.dtype): its convs,
dots, BatchNorm outputs, activations, neck and heads run in bf16 while the parameters, batch
statistics and optimizer state stay float32. `bf16=True` here only casts the input images
to bfloat16 (it does not change how the model computes); the model's outputs are cast to
float32 before the loss, so matching, OHEM, the loss and all box math stay float32.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from tinyfaces_jax.training import optim, sharding
from tinyfaces_jax.training.train_state import TrainState

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


def init_detector_state(detector, optim_config, image_hw: tuple[int, int], mesh: Mesh,
                        seed: int = 0) -> TrainState:
  """The replicated initial TrainState of a `detectors.base.Detector` as training builds it:
  the optimizer of `optim_config` (optim.OptimConfig) built from the parameter shapes, then
  `create_train_state` at a training image of `image_hw` [H, W] with `jax.random.key(seed)`."""
  shapes = jax.eval_shape(lambda: detector.init_variables(tuple(image_hw)))
  tx = optim.make_optimizer(optim_config, shapes["params"])
  return create_train_state(detector.model, tx, tuple(image_hw) + (3,), jax.random.key(seed),
                            mesh)


def detector_train_step(detector, mesh: Mesh, *, bf16: bool = False, grad_accum_steps: int = 1,
                        donate: bool = True) -> Callable:
  """The jitted step of a `detectors.base.Detector` as training runs it: its preprocess inside
  the step, its loss, and with `bf16` its model computing in bfloat16 (`with_dtype`; params,
  optimizer state, loss and box math float32)."""
  model = (detector.with_dtype(jnp.bfloat16) if bf16 else detector).model
  return make_train_step(model, detector.loss, mesh, bf16=bf16, donate=donate,
                         preprocess=detector.preprocess, grad_accum_steps=grad_accum_steps)


def _micro_batches(batch: dict, k: int, n_dev: int) -> dict:
  """[B, ...] fields -> [k, B / k, ...]: micro-batch j holds rows j*m..(j+1)*m-1 of every
  device's B / n_dev rows (m = B / (n_dev k)), so each micro-batch stays spread over the
  devices."""
  def split(x):
    b = x.shape[0]
    m = b // (n_dev * k)
    x = x.reshape((n_dev, k, m) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((k, n_dev * m) + x.shape[3:])
  return jax.tree.map(split, batch)


def make_train_step(model, loss_fn: LossFn, mesh: Mesh, *, bf16: bool = False,
                    donate: bool = True, preprocess: Optional[Callable] = None,
                    grad_accum_steps: int = 1) -> Callable:
  """Builds the jitted train step (see the module docstring).

  `preprocess` maps batch["image"] to the model input inside the step (e.g. RGB 0..255 ->
  BGR minus the mean); the loss still sees the batch as given. The global batch must be
  divisible by grad_accum_steps x the mesh's devices. `bf16`: cast the model input to
  bfloat16 (the model itself must be the bf16 one to compute in it; module docstring).
  """
  rep = sharding.replicated(mesh)
  data = sharding.data_sharding(mesh)
  n_dev = mesh.devices.size

  def loss_and_grads(params, batch_stats, batch: dict, key: jax.Array):
    dropout_key, loss_key = jax.random.split(key)
    images = batch["image"] if preprocess is None else preprocess(batch["image"])
    images = images.astype(jnp.bfloat16 if bf16 else jnp.float32)

    def compute_loss(params):
      variables = {"params": params, "batch_stats": batch_stats}
      outputs, new_vars = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
      outputs = jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
      loss, metrics = loss_fn(outputs, batch, loss_key)
      return loss, (metrics, new_vars.get("batch_stats", batch_stats))

    (loss, (metrics, new_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(params)
    return grads, new_stats, dict(metrics, loss=loss)

  def step(state: TrainState, batch: dict, base_key: jax.Array):
    key = jax.random.fold_in(base_key, state.step)
    if grad_accum_steps == 1:
      grads, batch_stats, metrics = loss_and_grads(state.params, state.batch_stats, batch, key)
    else:
      micro = _micro_batches(batch, grad_accum_steps, n_dev)

      def accumulate(carry, xs):
        grad_sum, stats = carry
        mb, j = xs
        grads, stats, metrics = loss_and_grads(state.params, stats, mb,
                                               jax.random.fold_in(key, j))
        return (jax.tree.map(jnp.add, grad_sum, grads), stats), metrics

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grad_sum, batch_stats), per_micro = jax.lax.scan(
          accumulate, (zeros, state.batch_stats), (micro, jnp.arange(grad_accum_steps)))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), per_micro)
    new_state = state.apply_gradients(grads, batch_stats=batch_stats)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   finite=jnp.isfinite(metrics["loss"]))
    return new_state, metrics

  return jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())
