"""models/layers.py: the fast conv paths (depthwise shift-add, 1x1 matmul) equal XLA's
convolution, values and gradients, for odd/even sizes and strides 1/2; same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinyfaces_jax.models.layers import Conv2D


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
