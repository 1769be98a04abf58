"""The jitted train step on a toy detector: 8-device sharded == 1 device; it learns."""

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn

from tinyfaces_jax.training import optim, sharding, train_step
from tinyfaces_jax.detection import multibox_loss
from tinyfaces_jax.detection import anchors as anchors_lib

SPEC = anchors_lib.AnchorSpec(strides=(8,), sizes=((8, 16),))
HW = (32, 32)


class ToyDetector(nn.Module):
  """3 stride-2 convs + BatchNorm -> per-cell 2 anchors x (4 box deltas, 2 logits)."""

  @nn.compact
  def __call__(self, x, train: bool):
    for c in (8, 16, 16):
      x = nn.Conv(c, (3, 3), strides=2, padding=1, use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    b = x.shape[0]
    loc = nn.Conv(2 * 4, (1, 1))(x).reshape(b, -1, 4)
    conf = nn.Conv(2 * 2, (1, 1))(x).reshape(b, -1, 2)
    return {"loc": loc, "conf": conf}


def make_batch(rng, b=8, m=3):
  img = rng.uniform(0, 1, (b, *HW, 3)).astype(np.float32)
  xy = rng.uniform(0, 20, (b, m, 2))
  wh = rng.uniform(6, 12, (b, m, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  for i in range(b):
    for x1, y1, x2, y2 in boxes[i].astype(int):
      img[i, y1:y2, x1:x2] = 1.0                      # faces are bright squares
  return {"image": img, "boxes": boxes, "box_mask": np.ones((b, m), bool)}


def setup(devices, lr=0.05):
  mesh = sharding.make_mesh(devices)
  model = ToyDetector()
  anchors = jnp.asarray(anchors_lib.anchor_grid(SPEC, HW))
  cfg = multibox_loss.MultiboxLossConfig(neg_pos_ratio=3.0)
  state = train_step.create_train_state(model, tx_for(model, lr), (*HW, 3),
                                        jax.random.key(0), mesh)
  step = train_step.make_train_step(
      model, lambda o, b, k: multibox_loss.multibox_loss(o, b, anchors, cfg), mesh)
  return mesh, state, step


def tx_for(model, lr):
  params = model.init(jax.random.key(0), jnp.zeros((1, *HW, 3)), train=False)["params"]
  return optim.make_optimizer(optim.OptimConfig(learning_rate=lr, schedule="constant",
                                                weight_decay=1e-4), params)


def run(devices, steps=3):
  mesh, state, step = setup(devices)
  rng = np.random.default_rng(0)
  key = jax.random.key(1)
  out = []
  for _ in range(steps):
    batch = sharding.host_to_global(make_batch(rng), mesh)
    state, metrics = step(state, batch, key)
    out.append(float(metrics["loss"]))
  return state, out


def test_sharded_step_equals_single_device():
  s8, l8 = run(jax.devices())
  s1, l1 = run(jax.devices()[:1])
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s8.batch_stats), jax.tree.leaves(s1.batch_stats)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  assert int(s8.step) == 3


def test_toy_detector_learns():
  mesh, state, step = setup(jax.devices())
  batch = sharding.host_to_global(make_batch(np.random.default_rng(5)), mesh)
  key = jax.random.key(1)
  first = None
  for i in range(60):
    state, metrics = step(state, batch, key)
    first = float(metrics["loss"]) if first is None else first
    assert bool(metrics["finite"])
  assert float(metrics["loss"]) < 0.5 * first


def test_gradient_accumulation_is_the_mean_of_micro_batch_gradients():
  """grad_accum_steps=2 on 8 devices, batch 16: the update equals SGD with the mean of the
  two micro-batches' gradients, computed here one after the other with `jax.grad` (each
  micro-batch's BatchNorm in train mode on its own rows, running statistics carried from the
  first to the second); micro-batch j holds row j of every device's 2 rows (rows j, j+2, ...)."""
  import optax
  mesh = sharding.make_mesh(jax.devices())
  model = ToyDetector()
  anchors = jnp.asarray(anchors_lib.anchor_grid(SPEC, HW))
  cfg = multibox_loss.MultiboxLossConfig(neg_pos_ratio=3.0)

  def loss_fn(o, b, k):
    return multibox_loss.multibox_loss(o, b, anchors, cfg)

  lr = 0.1
  state = train_step.create_train_state(model, optax.sgd(lr), (*HW, 3), jax.random.key(0),
                                        mesh)
  host = make_batch(np.random.default_rng(3), b=16)
  step = train_step.make_train_step(model, loss_fn, mesh, grad_accum_steps=2, donate=False)
  new, metrics = step(state, sharding.host_to_global(host, mesh), jax.random.key(1))

  params = jax.device_get(state.params)
  stats = jax.device_get(state.batch_stats)
  grads, losses_ = [], []

  def loss_of(p, stats, mb):
    out, upd = model.apply({"params": p, "batch_stats": stats}, mb["image"], train=True,
                           mutable=["batch_stats"])
    return loss_fn(out, mb, None)[0], upd["batch_stats"]

  grad_fn = jax.jit(jax.value_and_grad(loss_of, has_aux=True))
  for j in range(2):
    mb = {k: v[j::2] for k, v in host.items()}
    (loss, stats), g = grad_fn(params, stats, mb)
    grads.append(g)
    losses_.append(float(loss))
  want = jax.tree.map(lambda p, a, b: p - lr * (a + b) / 2, params, *grads)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(new.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(new.batch_stats)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(losses_), rtol=1e-5)
  with np.testing.assert_raises_regex(ValueError, "not divisible by 2 micro-batches x 8"):
    sharding.check_batch_size(12, mesh, grad_accum_steps=2)
