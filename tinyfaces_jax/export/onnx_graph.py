"""ONNX artifacts of the raw networks, by our own jaxpr -> ONNX translator (no jax2onnx /
tf2onnx): `<out_dir>/<name>.onnx`, opset 18, the batch dimension symbolic ("B").

`convert(fn, inputs)` traces `fn` with `jax.make_jaxpr` on a symbolic batch (jax.export's
`symbolic_shape("b")`; weights and other closed-over arrays are constants) and translates the
jaxpr equation by equation:
  * constants: an equation whose inputs are all constants is evaluated at export time (the
    BatchNorm arithmetic on the weights, index arithmetic, iota); the results become
    initializers. A constant broadcast to a shape with the symbolic batch stays compact (its
    broadcast dimensions of size 1) and ONNX's broadcasting does the rest.
  * layout: each ONNX tensor is the jax value with its dimensions permuted (`perm`), so a
    convolution's NCHW output stays NCHW through BatchNorm, activations and the next
    convolution; a Transpose is emitted only where an op needs the jax order (reshape,
    concatenate, dot, the outputs) or another one (Conv / MaxPool need [N, C, spatial]).
  * calls (jit / pjit, custom_jvp_call, custom_vjp_call, remat) are inlined.
Then a clean-up pass (export/onnx_passes.py) folds per-channel Mul / Add / Sub constants into the preceding Conv
(BatchNorm), turns `where(x >= 0, x, a * x)` into LeakyRelu / PRelu and `max(x, 0)` into Relu,
moves Transposes above elementwise ops with constants towards the input (the preprocessing
runs on NCHW planes), folds a channel reversal (RGB -> BGR) into the first Conv's weights,
merges the nearest Resizes of the two spatial axes and drops what nothing reads. An equation
without a translation raises NotImplementedError naming the artifact, the primitive and its
parameters.

Translated primitives: conv_general_dilated (feature groups, strides, padding, lhs / rhs
dilation), dot_general, the elementwise arithmetic, comparisons and select_n, reshape /
squeeze / broadcast_in_dim / transpose / slice / dynamic_slice / pad (negative and interior)
/ rev / concatenate / stack / split, reduce_window_max / _sum (pooling), reduce_sum / _max /
_min / _prod, argmax / argmin, iota, convert_element_type, clamp, and gather with constant
indices (what jnp.take, fancy indexing and symbolic-shape slicing produce: starts equal for
every index -> Slice; one indexed axis -> Gather, or a nearest Resize when the indices are
arange(m) // s as in models/necks.resize_nearest; several size-1 indexed axes -> one Gather on
them flattened); not: loops (while / scan / cond), sort, scatter, cumulative ops.

Networks with models/layers.py's CPU shift-add paths translate too, but `xla_convs(detector)`
(conv_impl="conv") gives plain (depthwise: group=C) Conv nodes, which is what onnxruntime is
fast at; `run` in cli/export.py exports that one.

`session(path)` opens a file in onnxruntime (CPUExecutionProvider); `call(session, *inputs)`
-> {output name: array}; `detections(detector, cfg, raw, input_hw)` runs the library's decode
and NMS on raw outputs (e.g. onnxruntime's).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np
import onnx
from jax import export as jax_export
from jax import lax
from jax.extend import core as jcore
from onnx import helper, numpy_helper

from tinyfaces_jax import paths
from tinyfaces_jax.export import onnx_passes
from tinyfaces_jax.export.onnx_passes import INT64_MIN

SUFFIX = ".onnx"
OPSET = 18
BATCH = "B"
# A constant equation whose (materialised) inputs are above this many elements is emitted as
# an ONNX op instead of evaluated (keeps broadcasts of scalars out of the file).
_FOLD_LIMIT = 1 << 22


# ------------------------------------------------------------------------------------------
# Values


@dataclasses.dataclass
class _Val:
  """A jaxpr value in the ONNX graph.

  shape: the jax shape (ints, or the symbolic batch `b`); dtype: numpy dtype.
  const: a numpy constant in jax dimension order, or None; compact: the same rank as
    `shape` with 1 where the value is broadcast (or rank 0).
  name / perm / oshape: an ONNX tensor whose dimension i is jax dimension perm[i]; oshape
    (jax order) is its size per jax dimension: shape[d], or 1 where it is broadcast.
  """
  shape: tuple
  dtype: np.dtype
  const: Optional[np.ndarray] = None
  name: Optional[str] = None
  perm: Optional[tuple] = None
  oshape: Optional[tuple] = None

  @property
  def rank(self) -> int:
    return len(self.shape)

  def compact_shape(self) -> tuple:
    return tuple(self.const.shape) if self.const is not None else tuple(self.oshape)


def _same_dim(a, b) -> bool:
  """Equal dimensions (an int is never the symbolic batch)."""
  return isinstance(a, (int, np.integer)) == isinstance(b, (int, np.integer)) and a == b


def _static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


def _renumber(perm, kept) -> tuple:
  """The perm of a value after dropping jax dimensions: `kept` are the remaining jax dims."""
  rank = {d: i for i, d in enumerate(sorted(kept))}
  return tuple(rank[d] for d in perm if d in rank)


# jax elementwise primitives -> the ONNX op (None: a p_<name> rule of _Translator).
_ELEMENTWISE = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
    "pow": "Pow", "eq": "Equal", "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less",
    "le": "LessOrEqual", "neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh",
    "logistic": "Sigmoid", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "floor": "Floor",
    "ceil": "Ceil", "erf": "Erf", "sin": "Sin", "cos": "Cos", "tan": "Tan",
    "ne": None, "rsqrt": None, "integer_pow": None, "square": None, "select_n": None,
    "convert_element_type": None, "clamp": None, "and": None, "or": None, "not": None,
    "xor": None, "rem": None, "round": None, "exp2": None, "log1p": None, "expm1": None,
    "is_finite": None,
}
_IDENTITY = ("copy", "copy_p", "optimization_barrier", "sharding_constraint", "pvary",
             "mesh_cast", "reshard", "stop_gradient")
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
# Calls whose body is inlined (their jaxpr param is the function itself).
_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "checkpoint", "remat")


# ------------------------------------------------------------------------------------------
# The translator


class _Translator:
  """Builds the ONNX graph of one closed jaxpr (module docstring)."""

  def __init__(self, what: str, batch_dim, batch_input: Optional[str]):
    self.what = what
    self.b = batch_dim
    self.batch_input = batch_input
    self.nodes: list = []
    self.inits: dict = {}
    self._count = collections.Counter()
    self._const_cache: dict = {}
    self._transpose_cache: dict = {}
    self._batch_name: Optional[str] = None
    self._scope = ""

  # -- names and nodes
  def fresh(self, hint: str = "t") -> str:
    self._count[hint] += 1
    return f"{hint}_{self._count[hint]}"

  def node(self, op: str, inputs, n_out: int = 1, **attrs) -> list:
    outs = [self.fresh(op.lower()) for _ in range(n_out)]
    name = (self._scope + "/" if self._scope else "") + self.fresh("n_" + op)
    self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
    return outs

  def node1(self, op: str, inputs, **attrs) -> str:
    return self.node(op, inputs, 1, **attrs)[0]

  def const(self, value, dtype=None) -> str:
    arr = np.asarray(value, dtype)
    key = None
    if arr.size <= 16:
      key = (arr.dtype.str, arr.shape, arr.tobytes())
      if key in self._const_cache:
        return self._const_cache[key]
    name = self.fresh("c")
    self.inits[name] = np.ascontiguousarray(arr)
    if key is not None:
      self._const_cache[key] = name
    return name

  def error(self, prim: str, params=None, why: str = "") -> NotImplementedError:
    shown = {k: v for k, v in (params or {}).items() if k not in _CALL_PARAMS}
    return NotImplementedError(
        f"{self.what}: no ONNX translation for the jax primitive {prim!r}"
        + (f" ({why})" if why else "") + f"; params {shown}")

  # -- shapes
  def batch(self) -> str:
    if self._batch_name is None:
      if self.batch_input is None:
        raise NotImplementedError(f"{self.what}: a symbolic dimension without a batch input")
      self._batch_name = self.node1("Shape", [self.batch_input], start=0, end=1)
    return self._batch_name

  def dim(self, d) -> Any:
    """A dimension -> int, or the name of a [1] int64 tensor holding it at run time."""
    if isinstance(d, (int, np.integer)):
      return int(d)
    if self.b is not None:
      if d == self.b:
        return self.batch()
      try:
        q = d // self.b
      except Exception:  # noqa: BLE001 (jax raises assorted errors on non-divisible dims)
        q = None
      if isinstance(q, int) and d == q * self.b:
        return self.node1("Mul", [self.batch(), self.const([q], np.int64)])
    raise NotImplementedError(f"{self.what}: the dimension {d} is not the batch or a multiple "
                              f"of it")

  def shape_tensor(self, dims) -> str:
    parts = [self.dim(d) for d in dims]
    if all(isinstance(p, int) for p in parts):
      return self.const(np.asarray(parts, np.int64))
    names, run = [], []
    for p in parts:
      if isinstance(p, int):
        run.append(p)
      else:
        if run:
          names.append(self.const(np.asarray(run, np.int64)))
          run = []
        names.append(p)
    if run:
      names.append(self.const(np.asarray(run, np.int64)))
    return names[0] if len(names) == 1 else self.node1("Concat", names, axis=0)

  # -- values in a layout
  def tensor(self, v: _Val, perm=None, full: bool = False) -> str:
    """The ONNX name of `v` with jax dims in `perm` order (default: its own / identity);
    `full`: broadcast dimensions expanded."""
    if perm is None:
      perm = v.perm if v.const is None else tuple(range(v.rank))
    perm = tuple(perm)
    if v.const is not None:
      c = v.const
      if c.ndim == v.rank:
        if full and _static(v.shape):
          c = np.broadcast_to(c, v.shape)
        c = np.transpose(c, perm)
      elif full and c.ndim == 0:
        c = c.reshape((1,) * v.rank)
        if _static(v.shape):
          c = np.broadcast_to(c, v.shape)
      name = self.const(c)
      compact = tuple(c.shape)
    else:
      name = v.name
      if v.perm != perm:
        key = (name, perm)
        if key not in self._transpose_cache:
          self._transpose_cache[key] = self.node1(
              "Transpose", [name], perm=[v.perm.index(p) for p in perm])
        name = self._transpose_cache[key]
      compact = tuple(v.oshape[p] for p in perm)
    if full:
      want = tuple(v.shape[p] for p in perm)
      if len(compact) != len(want) or not all(_same_dim(a, b) for a, b in zip(compact, want)):
        name = self.node1("Expand", [name, self.shape_tensor(want)])
    return name

  def out(self, name: str, aval, perm, oshape=None) -> _Val:
    shape = tuple(aval.shape)
    return _Val(shape, np.dtype(aval.dtype), name=name, perm=tuple(perm),
                oshape=tuple(shape if oshape is None else oshape))

  def full_out(self, name: str, aval, perm=None) -> _Val:
    return self.out(name, aval, tuple(range(len(aval.shape))) if perm is None else perm)

  # -- the jaxpr
  def run_jaxpr(self, jaxpr, consts, args) -> list:
    env = {}

    def read(a):
      if isinstance(a, jcore.Literal):
        return _Val((), np.dtype(a.aval.dtype), const=np.asarray(a.val, a.aval.dtype))
      return env[a]

    for var, c in zip(jaxpr.constvars, consts):
      env[var] = c if isinstance(c, _Val) else _Val(
          tuple(var.aval.shape), np.dtype(var.aval.dtype), const=np.asarray(c))
    for var, a in zip(jaxpr.invars, args):
      env[var] = a
    for eqn in jaxpr.eqns:
      ins = [read(a) for a in eqn.invars]
      outs = self.equation(eqn, ins)
      for var, o in zip(eqn.outvars, outs):
        if not isinstance(var, jcore.DropVar):
          env[var] = o
    return [read(a) for a in jaxpr.outvars]

  def equation(self, eqn, ins) -> list:
    prim = eqn.primitive.name
    if prim in _CALLS:
      for key in ("call_jaxpr", "jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
          return self.run_jaxpr(sub.jaxpr, sub.consts, ins)
        if isinstance(sub, jcore.Jaxpr):
          return self.run_jaxpr(sub, [], ins)
      raise self.error(prim, eqn.params, "a call without its jaxpr")
    if prim in _IDENTITY:
      return list(ins)
    folded = self.fold(eqn, ins)
    if folded is not None:
      return folded
    scope = str(getattr(eqn.source_info, "name_stack", "") or "")
    self._scope = scope
    try:
      rule = getattr(self, "p_" + prim, None)
      if rule is not None:
        out = rule(eqn, *ins)
      elif prim in _ELEMENTWISE and _ELEMENTWISE[prim] is not None:
        out = self.elementwise(eqn, _ELEMENTWISE[prim], ins)
      else:
        raise self.error(prim, eqn.params)
    finally:
      self._scope = ""
    return out if isinstance(out, list) else [out]

  def fold(self, eqn, ins) -> Optional[list]:
    """Evaluates an equation of constants: numpy for the common primitives, else jax (one
    eager op each); None when not all inputs are constants or they are too big."""
    prim = eqn.primitive.name
    if any(v.const is None for v in ins) or prim == "dim_as_value":
      return None
    outs_static = all(_static(o.aval.shape) for o in eqn.outvars)
    if prim in _ELEMENTWISE:
      arrays = [v.const for v in ins]
      ranked = [a for a in arrays if a.ndim]
      if ranked:
        target = np.broadcast_shapes(*[a.shape for a in ranked])
        arrays = [np.broadcast_to(a, target) if a.ndim else a for a in arrays]
        if prim in ("select_n", "clamp"):
          arrays = [np.broadcast_to(a, target) for a in arrays]
    elif prim == "broadcast_in_dim":
      return [self.p_broadcast_in_dim(eqn, *ins)]
    else:
      if not outs_static or not all(_static(v.shape) for v in ins):
        return None
      if sum(int(np.prod(v.shape)) for v in ins) > _FOLD_LIMIT:
        return None
      arrays = [np.broadcast_to(v.const, v.shape) for v in ins]
    res = _numpy_fold(prim, eqn.params, arrays, eqn.outvars[0].aval)
    if res is not None:
      aval = eqn.outvars[0].aval
      return [_Val(tuple(aval.shape), np.dtype(aval.dtype),
                   const=np.asarray(res).astype(aval.dtype, copy=False))]
    params, subfuns = eqn.primitive.get_bind_params(eqn.params), ()
    if isinstance(params, tuple):   # older jax: (subfuns, params)
      subfuns, params = params
    with jax.default_device(jax.devices("cpu")[0]):
      res = eqn.primitive.bind(*subfuns, *arrays, **params)
    res = res if eqn.primitive.multiple_results else [res]
    return [_Val(tuple(o.aval.shape), np.dtype(o.aval.dtype),
                 const=np.asarray(jax.device_get(r)).astype(o.aval.dtype, copy=False))
            for o, r in zip(eqn.outvars, res)]

  # -- elementwise
  def layout_of(self, ins, rank) -> tuple:
    """The layout an elementwise op computes in: that of its largest tensor input."""
    best, size = None, -1
    for v in ins:
      if v.const is None and v.rank == rank:
        s = sum(1 for d in v.oshape if not _same_dim(d, 1))
        if s > size:
          best, size = v.perm, s
    return tuple(range(rank)) if best is None else best

  def operands(self, ins, rank) -> tuple:
    perm = self.layout_of(ins, rank)
    names = [self.tensor(v, perm if v.rank == rank else None) for v in ins]
    return names, perm

  def result(self, name, aval, perm, ins) -> _Val:
    rank = len(aval.shape)
    oshape = []
    for d in range(rank):
      sizes = [v.compact_shape()[d] for v in ins if v.rank == rank]
      big = [s for s in sizes if not _same_dim(s, 1)]
      oshape.append(aval.shape[d] if big else 1)
    return self.out(name, aval, perm, oshape)

  def elementwise(self, eqn, op, ins, **attrs) -> _Val:
    aval = eqn.outvars[0].aval
    names, perm = self.operands(ins, len(aval.shape))
    return self.result(self.node1(op, names, **attrs), aval, perm, ins)

  def unary(self, eqn, v, fn) -> _Val:
    aval = eqn.outvars[0].aval
    names, perm = self.operands([v], len(aval.shape))
    return self.result(fn(names[0]), aval, perm, [v])

  def p_ne(self, eqn, a, b):
    aval = eqn.outvars[0].aval
    names, perm = self.operands([a, b], len(aval.shape))
    return self.result(self.node1("Not", [self.node1("Equal", names)]), aval, perm, [a, b])

  def p_rsqrt(self, eqn, x):
    return self.unary(eqn, x, lambda n: self.node1("Reciprocal", [self.node1("Sqrt", [n])]))

  def p_square(self, eqn, x):
    return self.unary(eqn, x, lambda n: self.node1("Mul", [n, n]))

  def p_exp2(self, eqn, x):
    two = self.const(np.asarray(2, x.dtype))
    return self.unary(eqn, x, lambda n: self.node1("Pow", [two, n]))

  def p_log1p(self, eqn, x):
    one = self.const(np.asarray(1, x.dtype))
    return self.unary(eqn, x, lambda n: self.node1("Log", [self.node1("Add", [n, one])]))

  def p_expm1(self, eqn, x):
    one = self.const(np.asarray(1, x.dtype))
    return self.unary(eqn, x, lambda n: self.node1("Sub", [self.node1("Exp", [n]), one]))

  def p_is_finite(self, eqn, x):
    return self.unary(eqn, x, lambda n: self.node1("Not", [self.node1(
        "Or", [self.node1("IsInf", [n]), self.node1("IsNaN", [n])])]))

  def p_round(self, eqn, x):
    if eqn.params.get("rounding_method") in (lax.RoundingMethod.TO_NEAREST_EVEN, 1):
      return self.unary(eqn, x, lambda n: self.node1("Round", [n]))
    half = self.const(np.asarray(0.5, x.dtype))   # half away from zero
    return self.unary(eqn, x, lambda n: self.node1("Mul", [
        self.node1("Sign", [n]),
        self.node1("Floor", [self.node1("Add", [self.node1("Abs", [n]), half])])]))

  def p_integer_pow(self, eqn, x):
    y = int(eqn.params["y"])

    def power(n):
      if y == 0:
        return self.node1("Add", [self.node1("Mul", [n, self.const(np.asarray(0, x.dtype))]),
                                  self.const(np.asarray(1, x.dtype))])
      acc, base, e = None, n, abs(y)
      while e:
        if e & 1:
          acc = base if acc is None else self.node1("Mul", [acc, base])
        e >>= 1
        if e:
          base = self.node1("Mul", [base, base])
      return self.node1("Reciprocal", [acc]) if y < 0 else acc
    return self.unary(eqn, x, power)

  def p_convert_element_type(self, eqn, x):
    to = np.dtype(eqn.params["new_dtype"])
    if to == x.dtype:
      return x
    return self.unary(eqn, x, lambda n: self.node1(
        "Cast", [n], to=helper.np_dtype_to_tensor_dtype(to)))

  def _logical(self, eqn, ins, bool_op, int_op):
    op = bool_op if ins[0].dtype == np.bool_ else int_op
    return self.elementwise(eqn, op, ins)

  def p_and(self, eqn, *ins):
    return self._logical(eqn, ins, "And", "BitwiseAnd")

  def p_or(self, eqn, *ins):
    return self._logical(eqn, ins, "Or", "BitwiseOr")

  def p_xor(self, eqn, *ins):
    return self._logical(eqn, ins, "Xor", "BitwiseXor")

  def p_not(self, eqn, x):
    return self._logical(eqn, [x], "Not", "BitwiseNot")

  def p_rem(self, eqn, a, b):
    return self.elementwise(eqn, "Mod", [a, b], fmod=1)

  def p_select_n(self, eqn, pred, *cases):
    aval = eqn.outvars[0].aval
    if pred.const is not None and np.unique(pred.const).size == 1:   # a constant choice
      pick = cases[int(pred.const.reshape(-1)[0])]
      if pick.rank == len(aval.shape) or not aval.shape:
        return pick
    names, perm = self.operands([pred, *cases], len(aval.shape))
    p, cs = names[0], names[1:]
    if pred.dtype == np.bool_:
      out = self.node1("Where", [p, cs[1], cs[0]])
    else:
      out = cs[-1]
      for i in range(len(cs) - 2, -1, -1):
        eq = self.node1("Equal", [p, self.const(np.asarray(i, pred.dtype))])
        out = self.node1("Where", [eq, cs[i], out])
    return self.result(out, aval, perm, [pred, *cases])

  def p_clamp(self, eqn, lo, x, hi):
    aval = eqn.outvars[0].aval
    names, perm = self.operands([lo, x, hi], len(aval.shape))
    out = self.node1("Max", [self.node1("Min", [names[1], names[2]]), names[0]])
    return self.result(out, aval, perm, [lo, x, hi])

  def p_reduce_precision(self, eqn, x):
    fi = np.finfo(x.dtype)
    if (eqn.params["exponent_bits"], eqn.params["mantissa_bits"]) == (fi.nexp, fi.nmant):
      return x
    raise self.error("reduce_precision", eqn.params, "narrower than the dtype")

  # -- shapes and layout
  def p_broadcast_in_dim(self, eqn, x, *dyn):
    if dyn:
      raise self.error("broadcast_in_dim", eqn.params, "dynamic shape operands")
    shape = tuple(eqn.params["shape"])
    bd = tuple(eqn.params["broadcast_dimensions"])
    aval = eqn.outvars[0].aval
    rank = len(shape)
    new = [d for d in range(rank) if d not in bd]
    if x.const is not None:
      c = x.const
      if c.ndim != x.rank:
        c = c.reshape((1,) * x.rank)
      compact = [1] * rank
      for j, d in enumerate(bd):
        compact[d] = c.shape[j]
      return _Val(shape, x.dtype, const=c.reshape(compact))
    name = x.name
    if new:
      name = self.node1("Unsqueeze", [name, self.const(np.arange(x.rank, rank, dtype=np.int64))])
    perm = tuple(bd[d] for d in x.perm) + tuple(new)
    oshape = [1] * rank
    for j, d in enumerate(bd):
      oshape[d] = 1 if _same_dim(x.oshape[j], 1) else shape[d]
    return self.out(name, aval, perm, oshape)

  def p_reshape(self, eqn, x, *dyn):
    if dyn or eqn.params.get("dimensions") not in (None, ()):
      raise self.error("reshape", eqn.params, "dynamic shapes or dimensions")
    aval = eqn.outvars[0].aval
    shape = tuple(aval.shape)
    if x.const is not None and _static(shape):
      return _Val(shape, x.dtype, const=np.reshape(np.broadcast_to(x.const, x.shape), shape))
    name = self.tensor(x, tuple(range(x.rank)), full=True)
    return self.full_out(self.node1("Reshape", [name, self.shape_tensor(shape)]), aval)

  def p_squeeze(self, eqn, x):
    dims = tuple(d % x.rank for d in eqn.params["dimensions"])
    aval = eqn.outvars[0].aval
    if x.const is not None:
      c = x.const if x.const.ndim == x.rank else x.const.reshape((1,) * x.rank)
      return _Val(tuple(aval.shape), x.dtype, const=np.squeeze(c, dims))
    kept = [d for d in range(x.rank) if d not in dims]
    name = self.node1("Squeeze", [x.name, self.const(
        np.asarray([x.perm.index(d) for d in dims], np.int64))])
    return self.out(name, aval, _renumber(x.perm, kept), [x.oshape[d] for d in kept])

  def p_transpose(self, eqn, x):
    p = tuple(eqn.params["permutation"])
    aval = eqn.outvars[0].aval
    if x.const is not None:
      c = x.const if x.const.ndim == x.rank else x.const.reshape((1,) * x.rank)
      return _Val(tuple(aval.shape), x.dtype, const=np.transpose(c, p))
    return self.out(x.name, aval, tuple(p.index(a) for a in x.perm),
                    [x.oshape[p[i]] for i in range(len(p))])

  def _slice(self, x: _Val, aval, starts, limits, strides) -> _Val:
    """Slice on jax dims (None strides: 1); keeps the layout and broadcast dimensions."""
    strides = strides or (1,) * x.rank
    if x.const is not None:
      c = x.const if x.const.ndim == x.rank else x.const.reshape((1,) * x.rank)
      name, perm, compact = self.const(c), tuple(range(x.rank)), c.shape
    else:
      name, perm, compact = x.name, x.perm, x.oshape
    axes, st, en, sp = [], [], [], []
    oshape = list(aval.shape)
    for d in range(x.rank):
      if _same_dim(compact[d], 1) and not _same_dim(x.shape[d], 1):
        oshape[d] = 1   # a broadcast dim stays one
        continue
      if (starts[d], strides[d]) == (0, 1) and _same_dim(limits[d], x.shape[d]):
        continue
      axes.append(perm.index(d))
      st.append(int(starts[d]))
      en.append(int(limits[d]))
      sp.append(int(strides[d]))
    if axes:
      name = self.node1("Slice", [name, self.const(np.asarray(st, np.int64)),
                                  self.const(np.asarray(en, np.int64)),
                                  self.const(np.asarray(axes, np.int64)),
                                  self.const(np.asarray(sp, np.int64))])
    return self.out(name, aval, perm, oshape)

  def p_slice(self, eqn, x):
    return self._slice(x, eqn.outvars[0].aval, eqn.params["start_indices"],
                       eqn.params["limit_indices"], eqn.params["strides"])

  def p_dynamic_slice(self, eqn, x, *idx):
    sizes = tuple(eqn.params["slice_sizes"])
    aval = eqn.outvars[0].aval
    if all(i.const is not None for i in idx):
      starts = []
      for d, (i, s) in enumerate(zip(idx, sizes)):
        if not isinstance(x.shape[d], int) and int(i.const) != 0:
          raise self.error("dynamic_slice", eqn.params, "a slice of the symbolic batch")
        starts.append(int(np.clip(int(i.const), 0, x.shape[d] - s)) if isinstance(
            x.shape[d], int) else 0)
      limits = [starts[d] + sizes[d] if isinstance(sizes[d], int) else sizes[d]
                for d in range(x.rank)]
      return self._slice(x, aval, starts, limits, None)
    perm = x.perm if x.const is None else tuple(range(x.rank))
    name = self.tensor(x, perm, full=True)
    st, en = [], []
    for d in perm:
      if not isinstance(x.shape[d], int):
        if not _same_dim(sizes[d], x.shape[d]):
          raise self.error("dynamic_slice", eqn.params, "a slice of the symbolic batch")
        st.append(self.const(np.asarray([0], np.int64)))
        en.append(self.const(np.asarray([2 ** 62], np.int64)))
        continue
      i = self.tensor(idx[d])
      i = self.node1("Cast", [i], to=onnx.TensorProto.INT64)
      i = self.node1("Clip", [i, self.const(np.asarray(0, np.int64)),
                              self.const(np.asarray(x.shape[d] - sizes[d], np.int64))])
      i = self.node1("Reshape", [i, self.const(np.asarray([1], np.int64))])
      st.append(i)
      en.append(self.node1("Add", [i, self.const(np.asarray([sizes[d]], np.int64))]))
    out = self.node1("Slice", [name, self.node1("Concat", st, axis=0),
                               self.node1("Concat", en, axis=0)])
    return self.out(out, aval, perm)

  def p_rev(self, eqn, x):
    dims = tuple(eqn.params["dimensions"])
    aval = eqn.outvars[0].aval
    if x.const is not None:
      c = x.const if x.const.ndim == x.rank else x.const.reshape((1,) * x.rank)
      return _Val(tuple(aval.shape), x.dtype, const=np.flip(c, dims))
    n = len(dims)
    name = self.node1("Slice", [x.name, self.const(np.full(n, -1, np.int64)),
                                self.const(np.full(n, INT64_MIN, np.int64)),
                                self.const(np.asarray([x.perm.index(d) for d in dims], np.int64)),
                                self.const(np.full(n, -1, np.int64))])
    return self.out(name, aval, x.perm, x.oshape)

  def p_concatenate(self, eqn, *xs):
    axis = eqn.params["dimension"]
    aval = eqn.outvars[0].aval
    perm = self.layout_of(xs, len(aval.shape))
    names = [self.tensor(v, perm, full=True) for v in xs]
    return self.out(self.node1("Concat", names, axis=perm.index(axis)), aval, perm)

  def p_stack(self, eqn, *xs):
    axis = eqn.params["axis"]
    aval = eqn.outvars[0].aval
    rank = len(aval.shape) - 1
    perm = self.layout_of(xs, rank)
    last = self.const(np.asarray([rank], np.int64))
    names = [self.node1("Unsqueeze", [self.tensor(v, perm, full=True), last]) for v in xs]
    out_perm = tuple(e if e < axis else e + 1 for e in perm) + (axis,)
    return self.out(self.node1("Concat", names, axis=rank), aval, out_perm)

  def p_split(self, eqn, x):
    axis, sizes = eqn.params["axis"], eqn.params["sizes"]
    outs, start = [], 0
    for var, s in zip(eqn.outvars, sizes):
      starts = [0] * x.rank
      limits = list(x.shape)
      starts[axis], limits[axis] = start, start + s
      outs.append(self._slice(x, var.aval, starts, limits, None))
      start += s
    return outs

  def p_pad(self, eqn, x, value):
    config = [tuple(c) for c in eqn.params["padding_config"]]
    aval = eqn.outvars[0].aval
    perm = x.perm if x.const is None else tuple(range(x.rank))
    name = self.tensor(x, perm, full=True)
    val = self.tensor(value)
    shape = [x.shape[d] for d in perm]   # ONNX order, as it goes
    for i, d in enumerate(perm):   # interior padding: unsqueeze, pad, merge, trim
      lo, hi, interior = config[d]
      if interior:
        if not isinstance(shape[i], int):
          raise self.error("pad", eqn.params, "interior padding of the symbolic batch")
        n = shape[i]
        u = self.node1("Unsqueeze", [name, self.const(np.asarray([i + 1], np.int64))])
        u = self.node1("Pad", [u, self.const(np.asarray([0, interior], np.int64)), val,
                               self.const(np.asarray([i + 1], np.int64))])
        merged = shape[:i] + [n * (interior + 1)] + shape[i + 1:]
        u = self.node1("Reshape", [u, self.shape_tensor(merged)])
        name = self.node1("Slice", [u, self.const(np.asarray([0], np.int64)),
                                    self.const(np.asarray([n * (interior + 1) - interior],
                                                          np.int64)),
                                    self.const(np.asarray([i], np.int64))])
        shape[i] = n + (n - 1) * interior
    neg = [(i, config[d][0], config[d][1]) for i, d in enumerate(perm)
           if config[d][0] < 0 or config[d][1] < 0]
    if neg:
      axes, st, en = [], [], []
      for i, lo, hi in neg:
        axes.append(i)
        st.append(-lo if lo < 0 else 0)
        en.append(hi if hi < 0 else 2 ** 62)
      name = self.node1("Slice", [name, self.const(np.asarray(st, np.int64)),
                                  self.const(np.asarray(en, np.int64)),
                                  self.const(np.asarray(axes, np.int64))])
    pos = [(i, max(config[d][0], 0), max(config[d][1], 0)) for i, d in enumerate(perm)]
    pos = [p for p in pos if p[1] or p[2]]
    if pos:
      pads = [p[1] for p in pos] + [p[2] for p in pos]
      name = self.node1("Pad", [name, self.const(np.asarray(pads, np.int64)), val,
                                self.const(np.asarray([p[0] for p in pos], np.int64))])
    return self.out(name, aval, perm)

  # -- reductions
  def _reduce(self, eqn, x, op):
    axes = tuple(eqn.params["axes"])
    aval = eqn.outvars[0].aval
    perm = x.perm if x.const is None else tuple(range(x.rank))
    name = self.tensor(x, perm, full=True)
    if not axes:
      return self.out(name, aval, perm)
    out = self.node1(op, [name, self.const(np.asarray([perm.index(a) for a in axes], np.int64))],
                     keepdims=0)
    kept = [d for d in range(x.rank) if d not in axes]
    return self.out(out, aval, _renumber(perm, kept))

  def p_reduce_sum(self, eqn, x):
    return self._reduce(eqn, x, "ReduceSum")

  def p_reduce_max(self, eqn, x):
    return self._reduce(eqn, x, "ReduceMax")

  def p_reduce_min(self, eqn, x):
    return self._reduce(eqn, x, "ReduceMin")

  def p_reduce_prod(self, eqn, x):
    return self._reduce(eqn, x, "ReduceProd")

  def _arg(self, eqn, x, op):
    (axis,) = eqn.params["axes"]
    aval = eqn.outvars[0].aval
    perm = x.perm if x.const is None else tuple(range(x.rank))
    name = self.tensor(x, perm, full=True)
    out = self.node1(op, [name], axis=perm.index(axis), keepdims=0)
    out = self.node1("Cast", [out], to=helper.np_dtype_to_tensor_dtype(
        np.dtype(eqn.params["index_dtype"])))
    kept = [d for d in range(x.rank) if d != axis]
    return self.out(out, aval, _renumber(perm, kept))

  def p_argmax(self, eqn, x):
    return self._arg(eqn, x, "ArgMax")

  def p_argmin(self, eqn, x):
    return self._arg(eqn, x, "ArgMin")

  def _window(self, eqn, x, what):
    p = eqn.params
    win, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
    pads, base, wdil = tuple(p["padding"]), tuple(p["base_dilation"]), tuple(
        p["window_dilation"])
    if any(b != 1 for b in base) or any(lo < 0 or hi < 0 for lo, hi in pads):
      raise self.error(eqn.primitive.name, p, "base dilation or negative padding")
    trivial = [d for d in range(x.rank) if win[d] == 1 and strides[d] == 1 and pads[d] == (0, 0)
               and wdil[d] == 1]
    cur = x.perm if x.const is None else tuple(range(x.rank))
    lead = [d for d in cur if d in trivial]
    spatial = [d for d in cur if d not in lead]
    if len(lead) < 2:
      raise self.error(eqn.primitive.name, p, "needs two dimensions without a window")
    if len(lead) > 2:   # extra window-less dims pool as spatial dims of window 1
      spatial = lead[2:] + spatial
      lead = lead[:2]
    perm = tuple(lead + spatial)
    name = self.tensor(x, perm, full=True)
    attrs = dict(kernel_shape=[win[d] for d in spatial], strides=[strides[d] for d in spatial],
                 pads=[pads[d][0] for d in spatial] + [pads[d][1] for d in spatial])
    if what == "max":
      out = self.node1("MaxPool", [name], dilations=[wdil[d] for d in spatial], **attrs)
    else:
      if any(wdil[d] != 1 for d in spatial):
        raise self.error(eqn.primitive.name, p, "window dilation")
      out = self.node1("AveragePool", [name], count_include_pad=1, **attrs)
      n = int(np.prod([win[d] for d in spatial]))
      out = self.node1("Mul", [out, self.const(np.asarray(n, x.dtype))])
    return self.out(out, eqn.outvars[0].aval, perm)

  def p_reduce_window_max(self, eqn, x):
    return self._window(eqn, x, "max")

  def p_reduce_window_sum(self, eqn, x):
    return self._window(eqn, x, "sum")

  # -- convolution, dot, gather
  def p_conv_general_dilated(self, eqn, x, w):
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec))
    if p["batch_group_count"] != 1:
      raise self.error("conv_general_dilated", p, "batch_group_count")
    nsp = len(lhs_spec) - 2
    pads = [tuple(v) for v in p["padding"]]
    lhs_dil = tuple(p["lhs_dilation"] or (1,) * nsp)
    if any(d != 1 for d in lhs_dil) or any(lo < 0 or hi < 0 for lo, hi in pads):
      # transposed conv / negative padding: an explicit pad (interior = lhs dilation - 1)
      cfg = [(0, 0, 0)] * x.rank
      for i, d in enumerate(lhs_spec[2:]):
        cfg[d] = (pads[i][0], pads[i][1], lhs_dil[i] - 1)
      shape = list(x.shape)
      for d, (lo, hi, it) in enumerate(cfg):
        shape[d] = shape[d] + lo + hi + max(shape[d] - 1, 0) * it
      fake = _FakeEqn("pad", {"padding_config": cfg}, [_FakeAval(tuple(shape), x.dtype)])
      x = self.p_pad(fake, x, _Val((), x.dtype, const=np.asarray(0, x.dtype)))
      pads = [(0, 0)] * nsp
    name = self.tensor(x, lhs_spec, full=True)
    if w.const is not None:
      wname = self.const(np.ascontiguousarray(np.transpose(np.broadcast_to(w.const, w.shape),
                                                           rhs_spec)))
    else:
      wname = self.tensor(w, rhs_spec, full=True)
    out = self.node1("Conv", [name, wname], kernel_shape=[int(w.shape[d]) for d in rhs_spec[2:]],
                     strides=list(p["window_strides"]),
                     pads=[lo for lo, _ in pads] + [hi for _, hi in pads],
                     dilations=list(p["rhs_dilation"] or (1,) * nsp),
                     group=int(p["feature_group_count"]))
    aval = eqn.outvars[0].aval
    if np.dtype(aval.dtype) != x.dtype:
      out = self.node1("Cast", [out], to=helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)))
    return self.out(out, aval, out_spec)

  def p_dot_general(self, eqn, a, b):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lc, rc, lb, rb = tuple(lc), tuple(rc), tuple(lb), tuple(rb)
    lf = tuple(d for d in range(a.rank) if d not in lc and d not in lb)
    rf = tuple(d for d in range(b.rank) if d not in rc and d not in rb)
    aval = eqn.outvars[0].aval
    if not _static([a.shape[d] for d in lc]):
      raise self.error("dot_general", eqn.params, "a symbolic contracted dim")
    k = int(np.prod([a.shape[d] for d in lc]))
    n = _prod([b.shape[d] for d in rf])
    an = self.tensor(a, lb + lf + lc, full=True)
    if b.const is not None:
      c = np.transpose(np.broadcast_to(b.const, b.shape), rb + rc + rf)
      bn = self.const(np.ascontiguousarray(c.reshape([b.shape[d] for d in rb] + [k, n])))
    else:
      bn = self.tensor(b, rb + rc + rf, full=True)
      if len(rc) != 1 or len(rf) != 1:
        bn = self.node1("Reshape", [bn, self.shape_tensor([b.shape[d] for d in rb] + [k, n])])
    if not lb and len(lc) == 1 and len(rf) == 1:   # [..., K] @ [K, N]: no reshapes
      out = self.node1("MatMul", [an, bn])
    else:
      m = _prod([a.shape[d] for d in lf])
      an = self.node1("Reshape", [an, self.shape_tensor([a.shape[d] for d in lb] + [m, k])])
      out = self.node1("MatMul", [an, bn])
      out = self.node1("Reshape", [out, self.shape_tensor(aval.shape)])
    if np.dtype(aval.dtype) != a.dtype:
      out = self.node1("Cast", [out], to=helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)))
    return self.full_out(out, aval)

  def p_gather(self, eqn, x, idx):
    """XLA gather with constant indices: the indexed dims whose start is the same for every
    index become a Slice (with the dims taken partly), at most one other indexed dim a
    Gather (jnp.take, bilinear upsampling); out-of-bounds starts clamp as XLA does (CLIP,
    PROMISE_IN_BOUNDS) and FILL_OR_DROP needs them in bounds."""
    p = eqn.params
    dn = p["dimension_numbers"]
    if dn.operand_batching_dims or idx.const is None:
      raise self.error("gather", p, "batching dims or indices that are not constants")
    sizes = tuple(p["slice_sizes"])
    sim, collapsed, offset = (tuple(dn.start_index_map), tuple(dn.collapsed_slice_dims),
                              tuple(dn.offset_dims))
    ind = np.array(np.broadcast_to(idx.const, idx.shape), np.int64)
    batch_shape = ind.shape[:-1]
    for k, d in enumerate(sim):
      if not isinstance(x.shape[d], int):   # x[:n] of the batch: start 0 only
        if np.any(ind[..., k] != 0) or not isinstance(sizes[d], int):
          raise self.error("gather", p, "indexing the symbolic batch")
        continue
      lim = x.shape[d] - sizes[d]
      bad = (ind[..., k] < 0) | (ind[..., k] > lim)
      if p["mode"] == lax.GatherScatterMode.FILL_OR_DROP and bad.any():
        raise self.error("gather", p, "out-of-bounds indices filled")
      ind[..., k] = np.clip(ind[..., k], 0, lim)
    flat = ind.reshape(-1, ind.shape[-1])
    varying = [d for k, d in enumerate(sim) if flat.size and (flat[:, k] != flat[0, k]).any()]
    if len(varying) > 1 and any(sizes[d] != 1 for d in varying):
      raise self.error("gather", p, "windows along several indexed dims")
    if batch_shape and not varying:
      varying = [sim[0]]   # the same slice for every index: a Gather repeats it
    aval = eqn.outvars[0].aval
    perm = x.perm if x.const is None else tuple(range(x.rank))
    name = self.tensor(x, perm, full=True)
    axes, st, en = [], [], []
    for d in range(x.rank):
      if d in varying:
        continue
      if d in sim:
        start = int(flat[0, sim.index(d)]) if flat.size else 0
      elif not _same_dim(sizes[d], x.shape[d]):
        start = 0
      else:
        continue
      axes.append(perm.index(d))
      st.append(start)
      en.append(start + int(sizes[d]))
    if axes:
      name = self.node1("Slice", [name, self.const(np.asarray(st, np.int64)),
                                  self.const(np.asarray(en, np.int64)),
                                  self.const(np.asarray(axes, np.int64))])
    labels = [("o", e) for e in perm]   # the ONNX dims of `name`
    if len(varying) > 1:   # several indexed dims (of size 1): flattened into one
      rest = [e for e in perm if e not in varying]
      name = self.node1("Transpose", [name], perm=[perm.index(e) for e in varying + rest])
      vshape = [x.shape[e] for e in varying]
      dims = [sizes[e] if e in sim or not _same_dim(sizes[e], x.shape[e]) else x.shape[e]
              for e in rest]
      name = self.node1("Reshape", [name, self.shape_tensor([int(np.prod(vshape))] + dims)])
      gi = np.ravel_multi_index(tuple(ind[..., sim.index(e)] for e in varying), vshape)
      name = self.node1("Gather", [name, self.const(gi)], axis=0)
      labels = [("b", j) for j in range(len(batch_shape))] + [("o", e) for e in rest]
      keep = [e for e in varying if e not in collapsed]
      if keep:
        name = self.node1("Unsqueeze", [name, self.const(
            np.arange(len(labels), len(labels) + len(keep), dtype=np.int64))])
        labels += [("o", e) for e in keep]
    elif varying:
      (d,) = varying
      gi = ind[..., sim.index(d)]
      if (d in collapsed and len(batch_shape) == 1 and not axes and not
          [c for c in collapsed if c != d] and np.array_equal(gi, np.arange(x.shape[d])) and
          [i for i in range(len(aval.shape)) if i not in offset] == [d]):
        return self.out(name, aval, perm)   # x[..., arange(n), ...]: the operand itself
      up = self._repeat(name, gi, d, perm, [x.shape[e] if e == d else sizes[e] for e in perm])
      if (up is not None and d in collapsed and len(batch_shape) == 1 and not
          [c for c in collapsed if c != d] and
          [i for i in range(len(aval.shape)) if i not in offset] == [d]):
        return self.out(up, aval, perm)   # nearest upsampling by an integer factor
      if d not in collapsed:
        gi = gi[..., None] + np.arange(sizes[d])
      name = self.node1("Gather", [name, self.const(gi)], axis=perm.index(d))
      i = perm.index(d)
      labels = (labels[:i] + [("b", j) for j in range(len(batch_shape))]
                + ([] if d in collapsed else [("o", d)]) + labels[i + 1:])
    drop = [i for i, lab in enumerate(labels) if lab[0] == "o" and lab[1] in collapsed]
    if drop:
      name = self.node1("Squeeze", [name, self.const(np.asarray(drop, np.int64))])
      labels = [lab for i, lab in enumerate(labels) if i not in drop]
    kept = [d for d in range(x.rank) if d not in collapsed]
    where = {("b", j): pos for j, pos in enumerate(
        i for i in range(len(aval.shape)) if i not in offset)}
    where.update({("o", e): offset[j] for j, e in enumerate(kept)})
    return self.out(name, aval, tuple(where[lab] for lab in labels))

  def _repeat(self, name, gi, d, perm, dims) -> Optional[str]:
    """Gather of `gi` = arange(m) // s (s >= 2, an integer: nearest upsampling) along jax dim
    d of `name` (ONNX dims `dims`, in `perm`) as a nearest Resize by s (asymmetric, floor:
    source index floor(i / s), exact for an integer s), then a Slice when m < n s.
    None when gi is not of that form."""
    i = perm.index(d)
    n, m = dims[i], gi.shape[0] if gi.ndim == 1 else 0
    if not m or not isinstance(n, int) or m <= n or len(dims) < 3:
      return None
    s = -(-m // n)
    if s < 2 or not np.array_equal(gi, np.arange(m) // s):
      return None
    scales = np.ones(len(dims), np.float32)
    scales[i] = s
    u = self.node1("Resize", [name, "", self.const(scales)], mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if m < n * s:
      u = self.node1("Slice", [u, self.const(np.asarray([0], np.int64)),
                               self.const(np.asarray([m], np.int64)),
                               self.const(np.asarray([i], np.int64))])
    return u

  def p_dim_as_value(self, eqn):
    aval = eqn.outvars[0].aval
    d = self.dim(eqn.params["dim"])
    d = self.const(np.asarray(d, np.int64)) if isinstance(d, int) else d
    d = self.node1("Reshape", [d, self.const(np.zeros(0, np.int64))])
    return self.full_out(self.node1("Cast", [d], to=helper.np_dtype_to_tensor_dtype(
        np.dtype(aval.dtype))), aval)

  def p_iota(self, eqn):
    raise self.error("iota", eqn.params, "over a symbolic dimension")


_NP_UNARY = {"neg": np.negative, "sqrt": np.sqrt, "exp": np.exp, "log": np.log,
             "abs": np.abs, "floor": np.floor, "ceil": np.ceil, "sign": np.sign,
             "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "not": np.invert,
             "rsqrt": lambda x: np.reciprocal(np.sqrt(x)), "square": np.square,
             "logistic": lambda x: np.reciprocal(1 + np.exp(-x))}
_NP_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum,
              "min": np.minimum, "eq": np.equal, "ne": np.not_equal, "lt": np.less,
              "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "and": np.bitwise_and,
              "or": np.bitwise_or, "xor": np.bitwise_xor, "pow": np.power}


def _numpy_fold(prim: str, params, arrays, aval):
  """An equation of constants in numpy (exact for the integer / IEEE ops; None: use jax)."""
  with np.errstate(all="ignore"):
    if prim in _NP_UNARY and np.dtype(aval.dtype).kind == "f" or prim == "not":
      return _NP_UNARY[prim](arrays[0])
    if prim in _NP_BINARY:
      return _NP_BINARY[prim](arrays[0], arrays[1])
    if prim == "div" and np.dtype(aval.dtype).kind == "f":
      return np.divide(arrays[0], arrays[1])
    if prim == "integer_pow" and np.dtype(aval.dtype).kind == "f" and params["y"] in (2, 3):
      return arrays[0] * arrays[0] * (arrays[0] if params["y"] == 3 else 1)
    if prim == "convert_element_type" and np.dtype(aval.dtype).kind in "biuf" \
        and arrays[0].dtype.kind in "biu":
      return arrays[0].astype(aval.dtype)
    if prim == "select_n" and arrays[0].dtype == np.bool_ and len(arrays) == 3:
      return np.where(arrays[0], arrays[2], arrays[1])
    if prim == "iota":
      shape, dim = tuple(params["shape"]), params["dimension"]
      r = np.arange(shape[dim], dtype=params["dtype"])
      return np.broadcast_to(r.reshape([-1 if i == dim else 1 for i in range(len(shape))]),
                             shape)
    if prim == "reshape" and params.get("dimensions") is None:
      return arrays[0].reshape(aval.shape)
    if prim == "squeeze":
      return arrays[0].reshape(aval.shape)
    if prim == "transpose":
      return np.transpose(arrays[0], params["permutation"])
    if prim == "rev":
      return np.flip(arrays[0], tuple(params["dimensions"]))
    if prim == "concatenate":
      return np.concatenate(arrays, params["dimension"])
    if prim == "slice":
      strides = params["strides"] or (1,) * arrays[0].ndim
      return arrays[0][tuple(slice(a, b, c) for a, b, c in zip(
          params["start_indices"], params["limit_indices"], strides))]
  return None


def _prod(dims):
  out = 1
  for d in dims:
    out = out * d
  return out


@dataclasses.dataclass
class _FakeAval:
  shape: tuple
  dtype: Any


class _FakeVar:
  def __init__(self, aval):
    self.aval = aval


class _FakeEqn:
  """A stand-in equation for rules reused inside others (conv's explicit pad)."""

  def __init__(self, prim, params, avals):
    self.params = params
    self.outvars = [_FakeVar(a) for a in avals]
    self.primitive = type("P", (), {"name": prim})


# ------------------------------------------------------------------------------------------
# Public API


def convert(fn: Callable, inputs, name: str = "model", opset: int = OPSET) -> onnx.ModelProto:
  """`fn(*arrays) -> {name: array}` (or one array / a pytree) as an ONNX model.

  inputs: ((name, shape with None for the batch, dtype name), ...) as an Exportable's; the
  None becomes the symbolic dimension "B". Outputs are named by the dict keys (jax's
  flattening order: sorted keys; other pytrees: their key paths), input names as given.
  Raises NotImplementedError naming a primitive without a translation.
  """
  (b,) = jax_export.symbolic_shape("b")
  specs, batch_input = [], None
  for n, shape, dtype in inputs:
    dims = tuple(b if d is None else int(d) for d in shape)
    if None in shape and batch_input is None:
      batch_input = n
    specs.append(jax.ShapeDtypeStruct(dims, np.dtype(dtype)))
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*specs)
  leaves = jax.tree_util.tree_flatten_with_path(out_shape)[0]
  out_names = [_key_name(path) or f"output_{i}" for i, (path, _) in enumerate(leaves)]
  tr = _Translator(name, b, batch_input)
  args = [_Val(s.shape, np.dtype(s.dtype), name=n, perm=tuple(range(len(s.shape))),
               oshape=s.shape) for (n, _, _), s in zip(inputs, specs)]
  results = tr.run_jaxpr(closed.jaxpr, closed.consts, args)
  outputs = []
  for out_name, v in zip(out_names, results):
    src = tr.tensor(v, tuple(range(v.rank)), full=True)
    tr.nodes.append(helper.make_node("Identity", [src], [out_name], name="out_" + out_name))
    outputs.append(helper.make_tensor_value_info(
        out_name, helper.np_dtype_to_tensor_dtype(v.dtype), _onnx_dims(v.shape, b)))
  nodes = onnx_passes.optimize(tr.nodes, tr.inits, out_names)
  nodes = _drop_output_identities(nodes, out_names, {n for n, _, _ in inputs}, tr.inits)
  graph = helper.make_graph(
      nodes, name,
      [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(d)),
                                     [BATCH if s is None else int(s) for s in shape])
       for n, shape, d in inputs],
      outputs,
      [numpy_helper.from_array(np.asarray(v), k) for k, v in tr.inits.items()])
  opsets = [helper.make_opsetid("", opset)]
  model = helper.make_model(graph, opset_imports=opsets, producer_name="tinyfaces_jax",
                            ir_version=helper.find_min_ir_version_for(opsets))
  onnx.checker.check_model(model)
  return model


def _key_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "_".join(parts)


def _onnx_dims(shape, b) -> list:
  out = []
  for d in shape:
    if isinstance(d, (int, np.integer)):
      out.append(int(d))
    elif d == b:
      out.append(BATCH)
    else:
      out.append(str(d).replace("b", BATCH))
  return out


def _drop_output_identities(nodes, outputs, inputs, inits) -> list:
  """Identity(t) -> output: the producer of t writes the output itself when nothing else
  reads t."""
  uses = collections.Counter(i for n in nodes for i in n.input)
  producer = {o: n for n in nodes for o in n.output}
  keep = []
  for n in nodes:
    if n.op_type == "Identity" and n.output[0] in outputs:
      src = n.input[0]
      p = producer.get(src)
      if p is not None and uses[src] == 1 and src not in outputs and src not in inputs \
          and src not in inits:
        p.output[list(p.output).index(src)] = n.output[0]
        continue
    keep.append(n)
  return keep


def translate(exportable) -> onnx.ModelProto:
  """An Exportable (export/functions.py) -> its ONNX model (convert)."""
  return convert(exportable.fn, exportable.inputs, exportable.name)


def save(exportable, out_dir) -> list:
  """Writes `<out_dir>/<name>.onnx` -> [its path]."""
  model = translate(exportable)
  out = paths.resolve(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  target = out / (exportable.name + SUFFIX)
  target.write_bytes(model.SerializeToString())
  return [target]


def session(model, threads: int = 0):
  """An onnxruntime InferenceSession (CPUExecutionProvider) of a path or ModelProto;
  `threads` > 0 sets the intra-op threads."""
  try:
    import onnxruntime as ort
  except ImportError:
    raise ImportError("running an ONNX artifact (the export's --check) needs onnxruntime: "
                      "pip install onnxruntime==1.32.0 (requirements-dev.txt), or --nocheck"
                      ) from None
  opts = ort.SessionOptions()
  if threads:
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
  if isinstance(model, onnx.ModelProto):
    data = model.SerializeToString()
  else:
    data = paths.resolve(model).read_bytes()
  return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def call(sess, *inputs) -> dict:
  """Runs a session on positional inputs (in the model's input order) -> {name: array}."""
  feed = {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), inputs)}
  names = [o.name for o in sess.get_outputs()]
  return dict(zip(names, sess.run(names, feed)))


def xla_convs(detector):
  """The detector with conv_impl="conv" (XLA convolutions, no CPU shift-add paths) when its
  model config has that field, else unchanged: the network an ONNX export translates."""
  cfg = getattr(detector.model, "config", None)
  if not (dataclasses.is_dataclass(cfg) and any(f.name == "conv_impl"
                                                for f in dataclasses.fields(cfg))):
    return detector
  return dataclasses.replace(detector, model=detector.model.clone(
      config=dataclasses.replace(cfg, conv_impl="conv")))


def detections(detector, cfg, raw: dict, input_hw) -> dict:
  """The library's post-processing of one scale's raw outputs (e.g. an ONNX session's):
  `detector.decode` on the input size `input_hw` (H, W), then the batched NMS of
  `inference.make_predict_fn` with `cfg` (InferenceConfig: threshold, top-k, IoU, K).

  raw: {name: [B, ...]} as the raw artifact returns -> {boxes [B, K, 4], scores [B, K],
  valid [B, K], landmarks [B, K, P, 2] when present}, in the pixels of the input; equal to the
  jitted pipeline on the same images when cfg has one scale (1.0) and no flip.
  """
  import jax.numpy as jnp
  from tinyfaces_jax import inference
  if tuple(float(s) for s in cfg.scales) != (1.0,) or cfg.flip:
    raise ValueError(f"detections: one scale (1.0) without flip; cfg has scales "
                     f"{tuple(cfg.scales)}, flip={cfg.flip}")
  hw = tuple(int(v) for v in input_hw)

  @jax.jit
  def post(outputs):
    d = detector.decode({k: v.astype(jnp.float32) for k, v in outputs.items()}, hw, scale=1.0)
    return inference.select(d["boxes"], d["scores"], d.get("landmarks"), cfg, cfg.pre_nms_top_k)

  return jax.device_get(post({k: jnp.asarray(v) for k, v in raw.items()}))
