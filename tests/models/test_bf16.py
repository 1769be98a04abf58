"""bf16 mixed precision in the real train step: the lowered StableHLO's convolutions and
dot_generals by operand element type and by whether they belong to the model, float32
state after a bf16 step, and the bf16 loss next to the float32 one.

The step is `train_step.make_train_step` (a `jax.jit` with in/out shardings), lowered with
`.lower(state, batch, key)` on the 8 virtual CPU devices. `.lower` needs only the arguments'
shapes and dtypes (the shardings come from the jit), so the lowering test passes the state
abstractly (`jax.ShapeDtypeStruct`s of `TrainState.create` on the model's init, replicated:
what `create_train_state` builds, without compiling its init, ~11 s for RetinaFace on 2
cores) and the batch placed by `sharding.host_to_global`. The slow `test_one_bf16_step`
builds the state with `create_train_state`, compiles and runs the steps.
An op is the model's when its location's name stack (`as_text(debug_info=True)`) contains
"(RetinaFace)" / "(HybridResolution)" (forward: "jvp(Model)", backward:
"transpose(jvp(Model))"); everything else (preprocess, matching, OHEM, loss, box math,
optimizer) is outside it and may use float32 dots (today it has no convs or dots at all).
"""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from tinyfaces_jax import detectors
from tinyfaces_jax.training import optim, sharding, train_step
from tinyfaces_jax.training.train_state import TrainState

HW, BATCH, SLOTS = 64, 8, 4
OP = re.compile(r"stablehlo\.(convolution|dot_general)\b.*?: \((tensor<[^)]*)\) -> "
                r"(tensor<\S*?>) loc\((#loc\d+)\)")
LOC = re.compile(r"^(#loc\d+) = loc\(\"([^\"]*)\"", re.M)
ELEMENT = re.compile(r"x(f32|bf16|f16|f64)>")


def hr_templates(path) -> str:
  """A small HR template file (8 square templates, sigma 1) in the .mat layout."""
  w = np.float32([8, 12, 16, 24, 32, 48, 64, 96])
  h = (w - 1) / 2
  scipy.io.savemat(str(path), {"clusters": np.stack([-h, -h, h, h, np.ones_like(w)], 1)})
  return str(path)


def model_section(family: str, tmp_path, conv_impl: str) -> dict:
  if family == "retinaface":
    return {"preset": "mnet025", "conv_impl": conv_impl}
  # configs/hr_res101.py:backbone=mnet025,test (MobileNet0.25 trunk), small templates.
  return {"backbone": "mobilenet0.25", "activation": "leaky_relu", "conv_impl": conv_impl,
          "templates": hr_templates(tmp_path / "templates.mat"),
          "allscale_templates": (1, 2, 3, 4, 5), "onescale_templates": (6, 7, 8)}


def synthetic_batch(family: str, seed: int = 0) -> dict:
  """RGB 0..255 images [B, 64, 64, 3] with 4 faces each (+ landmarks / valid_region)."""
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, HW / 2, (BATCH, SLOTS, 2))
  wh = rng.uniform(10, HW / 2, (BATCH, SLOTS, 2))
  out = {"image": rng.uniform(0, 255, (BATCH, HW, HW, 3)).astype(np.float32),
         "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
         "box_mask": np.ones((BATCH, SLOTS), bool)}
  if family == "retinaface":
    out["landmarks"] = (xy[:, :, None] + rng.uniform(0.2, 0.8, (BATCH, SLOTS, 5, 2))
                        * wh[:, :, None]).astype(np.float32)
    out["landmarks_present"] = np.ones((BATCH, SLOTS), bool)
  else:
    out["valid_region"] = np.tile(np.float32([0, 0, HW, HW]), (BATCH, 1))
  return out


def setup(family: str, tmp_path, conv_impl: str = "auto", abstract: bool = False):
  """(float32 detector, mesh, state, global batch) for the family; `abstract`: the state as
  replicated ShapeDtypeStructs (enough for `.lower`), else `create_train_state`'s."""
  det = detectors.build_detector(family, model_section(family, tmp_path, conv_impl), {})
  mesh = sharding.make_mesh()
  shapes = jax.eval_shape(lambda: det.init_variables((HW, HW)))
  tx = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3), shapes["params"])
  if abstract:
    rep = sharding.replicated(mesh)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                         jax.eval_shape(lambda: TrainState.create(
                             shapes["params"], shapes.get("batch_stats", {}), tx)))
  else:
    state = train_step.create_train_state(det.model, tx, (HW, HW, 3), jax.random.key(0),
                                          mesh)
  return det, mesh, state, sharding.host_to_global(synthetic_batch(family), mesh)


def make_step(det, mesh, bf16: bool, **kw):
  """The train step as training builds it: the bf16 model (`with_dtype`) with bf16 on."""
  model = det.with_dtype(jnp.bfloat16).model if bf16 else det.model
  return train_step.make_train_step(model, det.loss, mesh, bf16=bf16,
                                    preprocess=det.preprocess, **kw)


def count_ops(text: str, model_name: str) -> collections.Counter:
  """{(op, element types of operands and result, "model" | "other"): count} of a lowered
  program's StableHLO text with debug info."""
  names = dict(LOC.findall(text))
  counts = collections.Counter()
  for op, operands, result, loc in OP.findall(text):
    types = ",".join(ELEMENT.findall(operands) + ELEMENT.findall(result))
    where = "model" if f"({model_name})" in names.get(loc, "") else "other"
    counts[(op, types, where)] += 1
  return counts


@pytest.mark.parametrize("family,conv_impl", [("retinaface", "auto"), ("retinaface", "conv"),
                                              ("hr", "auto")])
def test_bf16_step_has_no_float32_convs_or_dots(family, conv_impl, tmp_path):
  """bf16 on: every conv / dot of the model's forward and backward has bf16 operands and
  result, and no convolution in the whole step is float32 (dots outside the model may be);
  bf16 off: none is bf16. conv_impl "auto" lowers the CPU fast paths (shift-add depthwise,
  1x1 dots), "conv" the GPU/TPU path (XLA convolutions, grouped for the depthwise layers).
  The bf16 step's new state (abstract: `Lowered.out_info`) is float32 as the old one."""
  det, mesh, state, batch = setup(family, tmp_path, conv_impl, abstract=True)
  model_name = type(det.model).__name__
  key = jax.random.key(1)
  per_mode = {}
  for bf16 in (False, True):
    lowered = make_step(det, mesh, bf16).lower(state, batch, key)
    per_mode[bf16] = count_ops(lowered.as_text(debug_info=True), model_name)
  assert_float32(lowered.out_info[0])          # the bf16 step's new state, abstract
  f32, bf = per_mode[False], per_mode[True]
  print(f"{family} {conv_impl}: float32 {dict(f32)}; bf16 {dict(bf)}")
  n_model = sum(v for (_, _, where), v in f32.items() if where == "model")
  assert n_model > 0 and sum(v for k, v in f32.items() if "bf16" in k[1]) == 0, f32
  assert sum(v for (_, t, w), v in bf.items() if w == "model" and t == "bf16,bf16,bf16") \
      == n_model, bf
  assert not any("f32" in t for (op, t, w) in bf if w == "model" or op == "convolution"), bf
  convs = sum(v for (op, _, w), v in f32.items() if op == "convolution" and w == "model")
  assert convs > 0 and convs == sum(v for (op, t, w), v in bf.items()
                                    if op == "convolution" and w == "model" and "bf16" in t)


def assert_float32(state) -> None:
  """Every floating leaf of params, batch_stats and opt_state is float32."""
  for tree in (state.params, state.batch_stats, state.opt_state):
    dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes


def check_one_bf16_step(family, tmp_path, rtol):
  """One bf16 and one float32 step from the same state; prints both losses."""
  det, mesh, state, batch = setup(family, tmp_path)
  if family == "hr":   # the released zero init of the score convs: outputs 0 in any dtype
    keys = iter(jax.random.split(jax.random.key(2), 2))
    params = dict(state.params, **{
        k: dict(state.params[k], kernel=0.01 * jax.random.normal(
            next(keys), state.params[k]["kernel"].shape)) for k in ("score_res3", "score_res4")})
    state = state.replace(params=jax.device_put(params, sharding.replicated(mesh)))
  key = jax.random.key(1)
  new, m16 = make_step(det, mesh, True, donate=False)(state, batch, key)
  _, m32 = make_step(det, mesh, False, donate=False)(state, batch, key)
  assert_float32(new)
  assert int(new.step) == 1
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new.params),
                                                          jax.tree.leaves(state.params))]
  assert max(moved) > 0
  l16, l32 = float(m16["loss"]), float(m32["loss"])
  print(f"{family}: bf16 loss {l16:.6f}, float32 loss {l32:.6f}, relative difference "
        f"{abs(l16 - l32) / abs(l32):.2e}")
  assert np.isfinite(l16) and bool(m16["finite"]) and np.isfinite(float(m16["grad_norm"]))
  np.testing.assert_allclose(l16, l32, rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["retinaface", "hr"])
def test_one_bf16_step(family, tmp_path):
  """After one bf16 step (two steps compiled: ~50-90 s per family on 2 CPU cores): params,
  batch_stats, opt_state float32, parameters moved; the bf16 loss finite and within 5% of
  the float32 loss of the same state, batch and key (measured at 64x64, batch 8:
  RetinaFace-MobileNet0.25 32.242 vs 32.327, 0.26%; HR-MobileNet0.25 with its score convs
  set to N(0, 0.01) 83.704 vs 83.684, 0.02%)."""
  check_one_bf16_step(family, tmp_path, rtol=0.05)
