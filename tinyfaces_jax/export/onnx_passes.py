"""The ONNX translator's graph clean-up (export/onnx_graph.py builds the nodes, then calls
`optimize`): per-channel Mul / Add / Sub constants folded into the Conv before them
(BatchNorm), `where(x >= 0, x, a * x)` -> LeakyRelu / PRelu and `max(x, 0)` -> Relu,
Transposes moved above elementwise ops with constants towards the input, a channel reversal
(RGB -> BGR) folded into the first Conv's weights, the nearest Resizes of two spatial axes
merged, and what nothing reads dropped. Works on the node list and initializers in place of
a ModelProto; `optimize` returns the new node list."""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np
from onnx import helper

# ONNX Slice's "to the start" end for a negative step (the int64 minimum).
INT64_MIN = -(2 ** 63)


def optimize(nodes: list, inits: dict, outputs: list) -> list:
  """Folds per-channel constants into Conv, fuses activations, drops dead nodes."""
  changed = True
  while changed:
    changed = False
    producer = {o: n for n in nodes for o in n.output}
    consumers = collections.defaultdict(list)
    for n in nodes:
      for i in n.input:
        consumers[i].append(n)
    for n in nodes:
      if n.op_type == "Conv" and n.output[0] not in outputs:
        use = consumers[n.output[0]]
        if len(use) == 1 and _fold_into_conv(n, use[0], inits):
          nodes.remove(use[0])
          changed = True
          break
      if n.op_type == "Where" and _fuse_leaky(n, producer, consumers, inits, nodes):
        changed = True
        break
      if n.op_type == "Resize" and _merge_resize(n, producer, consumers, inits, nodes):
        changed = True
        break
      if n.op_type == "Max" and len(n.input) == 2:
        c = inits.get(n.input[1])
        if c is not None and c.size == 1 and float(c.reshape(())) == 0.0:
          n.op_type = "Relu"
          del n.input[1:]
          changed = True
          break
  _hoist_transposes(nodes, inits)
  _sink_channel_reversal(nodes, inits)
  # dead code
  live = set(outputs)
  keep = []
  for n in reversed(nodes):
    if any(o in live for o in n.output):
      keep.append(n)
      live.update(i for i in n.input if i)
  keep.reverse()
  for k in [k for k in inits if k not in live]:
    del inits[k]
  return keep


_UNARY = ("Relu", "LeakyRelu", "Neg", "Exp", "Log", "Sigmoid", "Tanh", "Sqrt", "Abs", "Cast",
          "Reciprocal", "Floor", "Ceil", "Sign", "Erf", "Not", "Identity")
_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu", "Equal", "Greater",
           "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or")


def _hoist_transposes(nodes: list, inits: dict) -> None:
  """Moves each Transpose above the elementwise ops with constant operands (and the
  reversals: Slice with step -1) that feed it alone, towards the graph input: the
  preprocessing of an NHWC image then runs on NCHW planes (onnxruntime broadcasts a
  [1, 1, 1, 3] constant over the innermost axis slowly)."""
  changed = True
  while changed:
    changed = False
    producer = {o: n for n in nodes for o in n.output}
    uses = collections.Counter(i for n in nodes for i in n.input)
    for t in nodes:
      if t.op_type != "Transpose":
        continue
      p = producer.get(t.input[0])
      if p is None or uses[t.input[0]] != 1:
        continue
      perm = list(helper.get_attribute_value(t.attribute[0]))
      r = len(perm)
      if p.op_type == "Transpose":   # two transposes: one
        inner = list(helper.get_attribute_value(p.attribute[0]))
        t.input[0] = p.input[0]
        del t.attribute[:]
        t.attribute.append(helper.make_attribute("perm", [inner[q] for q in perm]))
        nodes.remove(p)
        changed = True
        break
      tensors = [i for i in p.input if i not in inits]
      if len(tensors) != 1 or p.input[0] != tensors[0]:
        continue
      if p.op_type in _UNARY:
        new_inputs = list(p.input)
      elif p.op_type in _BINARY:
        new_inputs = [p.input[0]]
        ok = True
        for c in p.input[1:]:
          a = inits[c]
          if a.ndim > r:
            ok = False
            break
          a = a.reshape((1,) * (r - a.ndim) + a.shape)
          name = c + "_t" + "".join(map(str, perm))
          inits[name] = np.ascontiguousarray(np.transpose(a, perm))
          new_inputs.append(name)
        if not ok:
          continue
      elif p.op_type == "Slice" and len(p.input) == 5 and all(i in inits for i in p.input[1:]):
        st, en, ax, sp = (inits[i] for i in p.input[1:])
        if not (np.all(sp == -1) and np.all(st == -1) and np.all(en == INT64_MIN)):
          continue
        name = p.input[3] + "_t" + "".join(map(str, perm))
        inits[name] = np.asarray([perm.index(int(a) % r) for a in ax], np.int64)
        new_inputs = [p.input[0], p.input[1], p.input[2], name, p.input[4]]
      else:
        continue
      moved = helper.make_node("Transpose", [tensors[0]], [t.output[0] + "_in"],
                               name=t.name, perm=perm)
      del p.input[:]
      p.input.extend([moved.output[0]] + new_inputs[1:])
      p.output[0] = t.output[0]
      nodes[nodes.index(t)] = moved
      nodes.remove(p)
      nodes.insert(nodes.index(moved) + 1, p)
      changed = True
      break


def _is_reversal(n, inits) -> bool:
  return (n.op_type == "Slice" and len(n.input) == 5 and all(i in inits for i in n.input[1:])
          and np.all(inits[n.input[4]] == -1) and np.all(inits[n.input[1]] == -1)
          and np.all(inits[n.input[2]] == INT64_MIN))


def _sink_channel_reversal(nodes: list, inits: dict) -> None:
  """A reversal of the channels (x[:, ::-1]: RGB -> BGR) feeding elementwise ops with
  constants and then a Conv (group 1) moves into the Conv's weights (their input channels
  reversed) and the constants (reversed along the channels): exact, one copy less."""
  changed = True
  while changed:
    changed = False
    uses = collections.defaultdict(list)
    for n in nodes:
      for i in n.input:
        uses[i].append(n)
    for sl in nodes:
      if not _is_reversal(sl, inits) or list(inits[sl.input[3]]) != [1]:
        continue
      (nxt,) = uses[sl.output[0]] if len(uses[sl.output[0]]) == 1 else (None,)
      if nxt is None or nxt.input[0] != sl.output[0]:
        continue
      if nxt.op_type == "Conv":
        w = inits.get(nxt.input[1])
        group = [helper.get_attribute_value(a) for a in nxt.attribute if a.name == "group"]
        if w is None or (group and group[0] != 1):
          continue
        name = nxt.input[1] + "_rev"
        inits[name] = np.ascontiguousarray(w[:, ::-1])
        nxt.input[0], nxt.input[1] = sl.input[0], name
        nodes.remove(sl)
        changed = True
        break
      if nxt.op_type in _BINARY and all(i in inits for i in nxt.input[1:]) \
          and sl.output[0] not in nxt.input[1:]:
        consts = [inits[i] for i in nxt.input[1:]]
        if any(c.ndim not in (0, 4) and c.size != 1 for c in consts):
          continue
        new = []
        for i, c in zip(nxt.input[1:], consts):
          if c.ndim == 4:
            inits[i + "_rev"] = np.ascontiguousarray(c[:, ::-1])
            i = i + "_rev"
          new.append(i)
        # x -> Slice -> op -> y  becomes  x -> op' -> Slice -> y
        mid = sl.output[0] + "_pre"
        nxt.input[0] = sl.input[0]
        for k, i in enumerate(new):
          nxt.input[k + 1] = i
        out = nxt.output[0]
        nxt.output[0] = mid
        sl.input[0], sl.output[0] = mid, out
        nodes.remove(sl)
        nodes.insert(nodes.index(nxt) + 1, sl)
        changed = True
        break


def _merge_resize(n, producer, consumers, inits, nodes) -> bool:
  """Resize(Resize(x)) by our nearest integer factors (`_repeat`) -> one Resize."""
  p = producer.get(n.input[0])
  if p is None or p.op_type != "Resize" or len(consumers[p.output[0]]) != 1:
    return False
  if len(p.input) != 3 or len(n.input) != 3 or p.input[2] not in inits \
      or n.input[2] not in inits:
    return False
  attrs = lambda node: {a.name: helper.get_attribute_value(a) for a in node.attribute}  # noqa: E731
  if attrs(p) != attrs(n):
    return False
  name = n.input[2] + "_x" + p.input[2]
  inits[name] = inits[n.input[2]] * inits[p.input[2]]
  n.input[0], n.input[2] = p.input[0], name
  nodes.remove(p)
  return True


def _channel_vector(c: np.ndarray, rank: int, channels: int) -> Optional[np.ndarray]:
  """A constant that broadcasts against [N, C, *spatial] (`rank` dims) per channel -> [C]
  (else None)."""
  if c.ndim > rank:
    return None
  s = (1,) * (rank - c.ndim) + tuple(c.shape)
  if s[0] != 1 or any(v != 1 for v in s[2:]) or s[1] not in (1, channels):
    return None
  return np.broadcast_to(c.reshape(-1), (channels,)).copy()


def _fold_into_conv(conv, n, inits) -> bool:
  if n.op_type not in ("Mul", "Add", "Sub") or conv.input[1] not in inits:
    return False
  other = [i for i in n.input if i != conv.output[0]]
  if len(other) != 1 or other[0] not in inits or len(n.input) != 2:
    return False
  if n.op_type == "Sub" and n.input[0] != conv.output[0]:
    return False
  w = inits[conv.input[1]]
  vec = _channel_vector(inits[other[0]], w.ndim, w.shape[0])
  if vec is None or vec.dtype != w.dtype:
    return False
  bias = inits[conv.input[2]] if len(conv.input) > 2 else np.zeros(w.shape[0], w.dtype)
  if n.op_type == "Mul":
    w = w * vec.reshape((-1,) + (1,) * (w.ndim - 1))
    bias = bias * vec
  elif n.op_type == "Add":
    bias = bias + vec
  else:
    bias = bias - vec
  wname, bname = conv.name + "_W", conv.name + "_B"
  inits[wname] = w.astype(inits[conv.input[1]].dtype)
  inits[bname] = bias.astype(inits[conv.input[1]].dtype)
  conv.input[1] = wname
  if len(conv.input) > 2:
    conv.input[2] = bname
  else:
    conv.input.append(bname)
  conv.output[0] = n.output[0]
  return True


def _fuse_leaky(n, producer, consumers, inits, nodes) -> bool:
  """Where(x >= 0, x, Mul(x, a)) -> LeakyRelu (scalar a) or PRelu (per-channel a)."""
  cond, x, neg = n.input
  ge, mul = producer.get(cond), producer.get(neg)
  if ge is None or mul is None or ge.op_type not in ("GreaterOrEqual", "Greater") \
      or mul.op_type != "Mul" or ge.input[0] != x:
    return False
  zero = inits.get(ge.input[1])
  if zero is None or zero.size != 1 or float(zero.reshape(())) != 0.0:
    return False
  others = [i for i in mul.input if i != x]
  if len(others) != 1 or others[0] not in inits or len(consumers[cond]) != 1 \
      or len(consumers[neg]) != 1:
    return False
  a = inits[others[0]]
  nodes.remove(ge)
  nodes.remove(mul)
  if a.size == 1:
    n.op_type = "LeakyRelu"
    del n.input[:]
    n.input.append(x)
    n.attribute.append(helper.make_attribute("alpha", float(a.reshape(()))))
  else:
    n.op_type = "PRelu"
    del n.input[:]
    n.input.extend([x, others[0]])
  return True
