"""The jaxpr -> ONNX translator (export/onnx_graph.py) on small jax functions: each ONNX model
run in onnxruntime on a batch of 3 (the traced batch is symbolic) equals the jitted function;
the tricky translations (grouped / strided / dilated convolutions, negative and interior
padding, max pooling with padding, the gather forms of jnp.take and upsampling) and the
graph clean-up (BatchNorm constants folded into Conv, LeakyRelu / PRelu, nearest Resize)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tinyfaces_jax.export import onnx_graph
from tinyfaces_jax.models import layers, necks

RNG = np.random.default_rng(0)


def _run(fn, shape, batch=3):
  """-> (model, {name: (onnx output, jitted output)}) on normal noise [batch, *shape]."""
  model = onnx_graph.convert(fn, [("x", (None,) + tuple(shape), "float32")], "f")
  x = RNG.normal(size=(batch,) + tuple(shape)).astype(np.float32)
  got = onnx_graph.call(onnx_graph.session(model), x)
  want = jax.device_get(jax.jit(fn)(x))
  want = want if isinstance(want, dict) else {"output_0": want}
  assert list(got) == sorted(want)
  return model, {k: (got[k], np.asarray(want[k])) for k in want}


def _close(pairs, tol=1e-5):
  for k, (got, want) in pairs.items():
    assert got.shape == want.shape, k
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=k)


def _ops(model):
  return collections.Counter(n.op_type for n in model.graph.node)


def _conv(w, **kw):
  return lambda x: lax.conv_general_dilated(
      x, w, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


@pytest.mark.parametrize("kernel,kw", [
    ((3, 3, 1, 8), dict(window_strides=(2, 2), padding=((1, 1), (1, 1)),
                        feature_group_count=8)),                       # depthwise, stride 2
    ((3, 2, 4, 6), dict(window_strides=(1, 2), padding=((2, 0), (1, 3)), rhs_dilation=(2, 1),
                        feature_group_count=2)),                       # groups, dilation
    ((3, 3, 8, 5), dict(window_strides=(1, 1), padding=((1, -1), (-1, 2)),
                        lhs_dilation=(2, 1))),                         # negative pad, lhs dil.
])
def test_convolutions(kernel, kw):
  w = RNG.normal(size=kernel).astype(np.float32)
  model, pairs = _run(_conv(w, **kw), (9, 10, 8))
  _close(pairs)
  assert _ops(model)["Conv"] == 1
  graph_input = model.graph.input[0].type.tensor_type.shape.dim
  assert graph_input[0].dim_param == "B" and graph_input[3].dim_value == 8


def test_pad_slice_and_pooling():
  def fn(x):
    return {"pad": lax.pad(x, 1.5, ((0, 0, 0), (-1, 2, 1), (2, -3, 0), (0, 0, 2))),
            "pool": lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                      ((0, 0), (1, 1), (0, 2), (0, 0))),
            "avg": lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 2, 1), "VALID"),
            "rev": x[:, ::-1, 1:5:2],
            "dynamic_slice": lax.dynamic_slice_in_dim(
                x, jnp.argmax(x[0, :, 0, 0]).astype(jnp.int32), 3, axis=1),
            "dynamic_slice_const": lax.dynamic_slice_in_dim(x, 6, 3, axis=2)}
  model, pairs = _run(fn, (7, 8, 3))
  _close(pairs)
  assert _ops(model)["MaxPool"] == 1


def test_gather_forms():
  """jnp.take along an axis (FPN's nearest resize: a Resize node, a Slice when cropped; the
  bilinear upsampling of models/layers.py), a slice of several indexed dims, indices of rank
  2."""
  def fn(x):
    return {"nearest": necks.resize_nearest(x, (10, 12)),
            "nearest_crop": necks.resize_nearest(x, (9, 12)),
            "bilinear": layers.bilinear_upsample_2x(x, (9, 11)),
            "take2d": jnp.take(x, jnp.asarray([[0, 1], [4, 4]]), axis=1),
            "mixed": x[:, 1:3, ::2, jnp.asarray([2, 0])]}
  model, pairs = _run(fn, (5, 6, 3))
  _close(pairs)
  assert _ops(model)["Resize"] == 3   # one per 2x resize, two around the crop


def test_network_blocks_fold_into_conv():
  """ConvBN + LeakyReLU (BatchNorm constants folded into the Conv), a per-channel PReLU as
  MTCNN's, a dense layer and a softmax: a clean graph."""
  import flax.linen as nn

  class PReLU(nn.Module):
    @nn.compact
    def __call__(self, x):
      a = self.param("weight", nn.initializers.constant(0.25), (x.shape[-1],))
      return jnp.where(x >= 0, x, a * x)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = layers.ConvBN(8, 3, 2, activation="leaky_relu", impl="conv")(x)
      x = layers.ConvBN(8, 3, 1, groups=8, activation="relu", impl="conv")(x)
      x = PReLU()(layers.Conv2D(4, 1, use_bias=True, impl="conv")(x))
      return {"map": x, "dense": jax.nn.softmax(nn.Dense(3)(x.reshape(x.shape[0], -1)))}

  net = Net()
  variables = jax.device_get(jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 8, 10, 3))))
  variables = jax.tree.map(lambda v: v + 0.1 * RNG.normal(size=v.shape).astype(v.dtype),
                           variables)   # BatchNorm statistics away from (0, 1)
  model, pairs = _run(lambda x: net.apply(variables, x), (8, 10, 3))
  _close(pairs, 1e-4)
  ops = _ops(model)
  assert ops["Conv"] == 3 and ops["LeakyRelu"] == 1 and ops["Relu"] == 1 and ops["PRelu"] == 1
  assert not ops["Where"] and ops["Transpose"] <= 2, ops


def test_unsupported_primitive_is_named():
  with pytest.raises(NotImplementedError, match=r"cumsum_test: .*'cumsum'"):
    onnx_graph.convert(lambda x: jnp.cumsum(x, 1), [("x", (None, 4), "float32")],
                       "cumsum_test")
