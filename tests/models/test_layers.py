"""models/layers.py: the fast conv paths (depthwise shift-add, 1x1 matmul) equal XLA's
convolution, values and gradients, for odd/even sizes and strides 1/2; same parameters;
BatchNorm folding for inference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyfaces_jax.models.layers import Conv2D, ConvBN, fold_batch_norm


@pytest.mark.parametrize("kernel,groups,stride,hw", [
    (3, 8, 1, (9, 12)), (3, 8, 2, (9, 12)), (3, 8, 2, (10, 7)), (1, 1, 1, (5, 6)),
    (1, 1, 2, (7, 9)), (3, 1, 2, (7, 9)), (7, 1, 2, (11, 10))])
def test_fast_paths_equal_convolution(kernel, groups, stride, hw):
  cin, cout = 8, (8 if groups > 1 else 6)
  x = jax.random.normal(jax.random.key(0), (2, *hw, cin))
  ref = Conv2D(cout, kernel, stride, groups, use_bias=True, impl="conv")
  fast = Conv2D(cout, kernel, stride, groups, use_bias=True, impl="fast")
  v = ref.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.1, v)                  # a non-zero bias
  assert jax.tree.structure(v) == jax.tree.structure(fast.init(jax.random.key(1), x))
  np.testing.assert_allclose(fast.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  want = -(-hw[0] // stride), -(-hw[1] // stride)
  assert ref.apply(v, x).shape == (2, *want, cout)

  def loss(m):
    return lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
  g_fast = jax.grad(loss(fast), argnums=(0, 1))(v, x)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 8, 8, 4))
  m = Conv2D(4, 3, groups=4, impl="fast", dtype=jnp.bfloat16)
  v = m.init(jax.random.key(0), x)
  assert v["params"]["kernel"].dtype == jnp.float32
  assert m.apply(v, x).dtype == jnp.bfloat16


def _random_statistics(variables):
  """BatchNorm scale / bias / mean / var away from their initial values (var > 0)."""
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  out = []
  for i, (path, a) in enumerate(leaves):
    name = jax.tree_util.keystr(path)
    if "bn'" in name:
      u = jax.random.uniform(jax.random.key(i), a.shape, minval=0.2, maxval=1.5)
      a = u if "var" in name or "scale" in name else u - 0.8
    out.append(a)
  return jax.tree.unflatten(tree, out)


class _Nested(nn.Module):
  """A ConvBN inside a block, beside a BatchNorm that is not a ConvBN's (kept as it is)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Sequential([ConvBN(6, 3, 2, activation="leaky_relu")], name="block")(x)
    x = nn.BatchNorm(use_running_average=not train, name="plain_bn")(x)
    return ConvBN(5, 1, activation="relu", name="head")(x, train)


def test_fold_batch_norm_keeps_the_inference_function():
  """fold_batch_norm: numpy statement of BatchNorm folding (kernel * scale / sqrt(var + eps),
  bias - mean * that) on one layer; nested ConvBNs folded, another BatchNorm's statistics kept;
  the same outputs from the folded variables (conv + bias); training on them is an error."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 12, 4))
  layer = ConvBN(6, 3, activation="relu")
  v = _random_statistics(layer.init(jax.random.key(1), x))
  folded = fold_batch_norm(v)
  assert set(folded) == {"params"} and set(folded["params"]["conv"]) == {"kernel", "bias"}
  k = np.asarray(v["params"]["conv"]["kernel"])
  bn, st = v["params"]["bn"], v["batch_stats"]["bn"]
  f = np.asarray(bn["scale"]) / np.sqrt(np.asarray(st["var"]) + 1e-5)
  np.testing.assert_allclose(folded["params"]["conv"]["kernel"], k * f, rtol=1e-6)
  np.testing.assert_allclose(folded["params"]["conv"]["bias"],
                             np.asarray(bn["bias"]) - np.asarray(st["mean"]) * f, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(layer.apply(folded, x), layer.apply(v, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="folded variables .* inference only"):
    layer.apply(folded, x, train=True)

  net = _Nested()
  v = _random_statistics(net.init(jax.random.key(2), x))
  folded = fold_batch_norm(v)
  assert jax.tree.structure(folded["batch_stats"]) == jax.tree.structure(
      {"plain_bn": v["batch_stats"]["plain_bn"]})
  assert set(folded["params"]["head"]["conv"]) == {"kernel", "bias"}
  np.testing.assert_allclose(net.apply(folded, x), net.apply(v, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["retinaface_mnet025:test", "hr_res101:backbone=mnet025,test"])
def test_fold_batch_norm_of_whole_networks(config):
  """Whole networks with random statistics give the same outputs from folded variables."""
  import importlib
  from tinyfaces_jax.training import train
  module, arg = config.split(":")
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  det = train.RunSpec.from_config(c).detector
  v = _random_statistics(jax.jit(lambda: det.init_variables((64, 64)))())
  images = jax.random.uniform(jax.random.key(2), (1, 64, 96, 3), maxval=255.0)
  run = jax.jit(lambda v, x: det.model.apply(v, det.preprocess(x), train=False))
  want, got = run(v, images), run(fold_batch_norm(v), images)
  for name in want:
    scale = float(jnp.abs(want[name]).max())
    np.testing.assert_allclose(got[name], want[name], atol=1e-5 * max(scale, 1.0), err_msg=name)
