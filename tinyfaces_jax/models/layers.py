"""Convolution building blocks (NHWC) shared by every detector's backbone, neck and heads.

`Conv2D` is a PyTorch-padded convolution whose parameters are exactly those of `nn.Conv`
(`kernel` [k, k, C_in / groups, C_out], optional `bias` [C_out]), so importers and
checkpoints do not depend on how it is computed. The computation is chosen per layer:
  * "shift_add" for depthwise convs (groups == C_in == C_out): the k x k strided slices of
    the padded input times the kernel taps, summed. XLA's CPU backend runs a grouped
    convolution as one generic convolution that is 20-50x slower than this (measured with
    benchmarks/retinaface_inference.py); on GPU/TPU its native depthwise kernels are used.
  * "matmul" for 1x1 convs: a strided slice, then one [.., C_in] x [C_in, C_out] dot
    (cheaper weight gradients than a convolution on XLA CPU);
  * `lax.conv_general_dilated` otherwise.
`impl` "auto" takes the first two on the CPU backend only (the platform jit compiles for).

Mixed precision: `dtype` is the compute dtype (None: the input's, at least float32). With
bfloat16 the input and the kernel are cast to it, so every path (convolution, shift-add
taps, 1x1 dot) runs on bf16 operands and returns bf16; parameters are created in
`param_dtype` (float32) and their gradients come back in it through the cast. ConvBN's
BatchNorm is flax's with the same dtype / param_dtype: the batch statistics are reduced in
float32, the running averages, scale and bias are float32, the normalisation arithmetic is
float32 (flax promotes the bf16 input against the float32 statistics) and its output is cast
to `dtype`, so the next layer gets bf16 again.
A model binds these shared options once (`layer_constructors`: functools.partial of Conv2D
and ConvBN) and passes the constructors down to its backbone, neck and heads.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS = ("relu", "leaky_relu")
IMPLS = ("auto", "conv", "fast")


def activate(x, activation: Optional[str], negative_slope: float = 0.1):
  """Applies 'relu', 'leaky_relu' (with `negative_slope`) or nothing (None)."""
  if activation is None:
    return x
  if activation == "relu":
    return jax.nn.relu(x)
  if activation == "leaky_relu":
    return jnp.where(x >= 0, x, negative_slope * x)
  raise ValueError(f"unknown activation {activation!r}; known: {ACTIVATIONS}")


def depthwise_shift_add(x, kernel, stride: int, pad: int):
  """Depthwise conv as shifted multiply-adds.

  x [B, H, W, C], kernel [k, k, C] -> [B, Ho, Wo, C] with Ho = (H + 2 pad - k) // stride + 1.
  """
  k = kernel.shape[0]
  b, h, w, c = x.shape
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1,
                                         j + stride * (wo - 1) + 1, c), (1, stride, stride, 1))
      term = tap * kernel[i, j]
      out = term if out is None else out + term
  return out


def _fast_paths() -> bool:
  return jax.default_backend() == "cpu"


class Conv2D(nn.Module):
  """conv with PyTorch padding k // 2 (stride s: H -> floor((H + 2 (k // 2) - k) / s) + 1);
  `padding` / `dilation` as torch's Conv2d when given (S3FD's fc6: pad 3, or pad 6 dilation 6).

  [B, H, W, C_in] -> [B, Ho, Wo, features]. Parameters as `nn.Conv`: kernel (lecun normal),
  bias (zeros) when `use_bias`.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  impl: str = "auto"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  padding: Optional[int] = None
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    if self.impl not in IMPLS:
      raise ValueError(f"unknown conv impl {self.impl!r}; known: {IMPLS}")
    cin = x.shape[-1]
    k, s, d = self.kernel, self.stride, self.dilation
    p = self.kernel // 2 * d if self.padding is None else self.padding
    w = self.param("kernel", self.kernel_init,
                   (k, k, cin // self.groups, self.features), self.param_dtype)
    dtype = jnp.promote_types(x.dtype, jnp.float32) if self.dtype is None else self.dtype
    x, w = x.astype(dtype), w.astype(dtype)
    fast = self.impl == "fast" or (self.impl == "auto" and _fast_paths())
    plain = d == 1 and p == k // 2
    if fast and plain and self.groups > 1 and self.groups == cin == self.features:
      y = depthwise_shift_add(x, w[:, :, 0, :], s, p)
    elif fast and plain and k == 1 and self.groups == 1:
      y = jnp.einsum("bhwc,cd->bhwd", x[:, ::s, ::s], w[0, 0])
    else:
      y = lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=self.groups)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         self.param_dtype).astype(dtype)
    return y


class ConvBN(nn.Module):
  """Conv2D (no bias, named "conv") + BatchNorm ("bn") + optional activation; with
  `batch_norm=False` a biased Conv2D + activation instead (the plain Caffe conv + ReLU layers
  of SSH's modules, with the same call signature).

  [B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), features].
  BatchNorm: epsilon 1e-5, momentum 0.9 (PyTorch's 0.1); statistics in float32.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  activation: Optional[str] = None
  negative_slope: float = 0.1
  impl: str = "auto"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Variables folded by `fold_batch_norm` have a biased conv and no "bn": conv + activation.
    folded = (self.batch_norm and not self.is_initializing()
              and "bias" in self.variables.get("params", {}).get("conv", {}))
    if folded and train:
      raise ValueError("ConvBN: folded variables (fold_batch_norm) are for inference only")
    x = Conv2D(self.features, self.kernel, self.stride, self.groups,
               use_bias=folded or not self.batch_norm, impl=self.impl, dtype=self.dtype,
               param_dtype=self.param_dtype, name="conv")(x)
    if folded or not self.batch_norm:
      return activate(x, self.activation, self.negative_slope)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
    return activate(x, self.activation, self.negative_slope)


def bilinear_upsample_2x(x, out_hw: Optional[tuple[int, int]] = None):
  """A fixed bilinear 2x transposed conv per channel: Caffe's Deconvolution (kernel 4, stride 2,
  pad 1, bilinear filler, one group per channel; SSH's conv5_128_up) and MatConvNet's
  ConvTranspose(bilinear_u(4, 1, C), upsample 2) (HR's score4) alike.

  [B, h, w, C] -> [B, 2h, 2w, C], then the top-left `out_hw` of it (MatConvNet's crop [1 2 1 2]
  is out_hw = (2h - 1, 2w - 1); SSH crops to conv4's map). Separable with the 1-D taps (0.25,
  0.75, 0.75, 0.25): along each axis out[2m] = 0.75 x[m] + 0.25 x[m - 1] and out[2m + 1] =
  0.75 x[m] + 0.25 x[m + 1], with zeros outside the map.
  """
  def axis_up(v, axis, n_out):
    n = v.shape[axis]
    zero = jnp.zeros_like(jnp.take(v, jnp.arange(1), axis=axis))
    prev = jnp.concatenate([zero, jnp.take(v, jnp.arange(n - 1), axis=axis)], axis=axis)
    nxt = jnp.concatenate([jnp.take(v, jnp.arange(1, n), axis=axis), zero], axis=axis)
    both = jnp.stack([0.75 * v + 0.25 * prev, 0.75 * v + 0.25 * nxt], axis=axis + 1)
    shape = list(v.shape)
    shape[axis] = 2 * n
    out = both.reshape(shape)
    return out if n_out == 2 * n else jnp.take(out, jnp.arange(n_out), axis=axis)

  h, w = x.shape[1:3]
  oh, ow = (2 * h, 2 * w) if out_hw is None else out_hw
  if not (0 < oh <= 2 * h and 0 < ow <= 2 * w):
    raise ValueError(f"bilinear_upsample_2x: cannot crop a {2 * h}x{2 * w} map to {oh}x{ow}")
  return axis_up(axis_up(x, 1, oh), 2, ow)


def fold_batch_norm(variables: dict, epsilon: float = 1e-5) -> dict:
  """Inference variables with every ConvBN's BatchNorm folded into its convolution.

  A ConvBN scope (params {"conv": {"kernel"}, "bn": {"scale", "bias"}} with batch_stats
  {"bn": {"mean", "var"}}) becomes params {"conv": {"kernel" * f, "bias": bias - mean * f}},
  f = scale / sqrt(var + epsilon) per output channel [C_out], and its statistics leave
  batch_stats; ConvBN then runs conv + bias + activation (the same function at inference,
  train=False, up to float rounding) in one pass fewer over the activations and without the
  per-channel BatchNorm arithmetic of every call. Everything else (other modules' statistics,
  other collections) is kept as it is. Fold once, outside the jitted function (the fold is
  itself jitted): folding inside it would redo the kernel scaling on every call.
  """
  return _fold_jit(dict(variables), epsilon)


@functools.partial(jax.jit, static_argnums=1)
def _fold_jit(variables, epsilon):
  def walk(node, st):
    """(params, the batch_stats left) of one scope."""
    if (set(node) == {"conv", "bn"} and isinstance(st, Mapping) and set(st) == {"bn"}
        and set(node["conv"]) == {"kernel"}):
      bn, ms = node["bn"], st["bn"]
      f = bn["scale"] * lax.rsqrt(ms["var"] + epsilon)
      return {"conv": {"kernel": node["conv"]["kernel"] * f,
                       "bias": bn["bias"] - ms["mean"] * f}}, {}
    params, left = {}, {k: v for k, v in st.items() if k not in node} if isinstance(
        st, Mapping) else {}
    for name, sub in node.items():
      sub_st = st.get(name, {}) if isinstance(st, Mapping) else {}
      if isinstance(sub, Mapping):
        params[name], rest = walk(sub, sub_st)
        if rest:
          left[name] = rest
      else:
        params[name] = sub
    return params, left

  params, stats = walk(dict(variables["params"]), dict(variables.get("batch_stats", {})))
  out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
  out["params"] = params
  if stats:
    out["batch_stats"] = stats
  return out


def layer_constructors(impl: str = "auto", dtype: Any = None,
                       param_dtype: Any = jnp.float32) -> tuple[Callable, Callable]:
  """(conv, conv_bn): `Conv2D` and `ConvBN` with the options every layer of a model shares
  (conv impl, compute dtype, parameter dtype) bound once by functools.partial; call them as
  the classes (`conv_bn(64, 3, 2, activation="relu", name="stem")`)."""
  shared = dict(impl=impl, dtype=None if dtype is None else jnp.dtype(dtype),
                param_dtype=param_dtype)
  return functools.partial(Conv2D, **shared), functools.partial(ConvBN, **shared)
