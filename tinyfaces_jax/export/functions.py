"""The functions an export writes, one per artifact, with the weights inside (constants).

`outputs="raw"`: the networks themselves on float32 RGB 0..255 images (preprocessing inside):
one artifact per size and test scale (`images [B, round(H s), round(W s), 3]`, s in
config.eval.scales: HR's pyramid is one artifact per scale) returning the model's raw output
dict (RetinaFace {loc, conf, landm}, HR's score maps, S3FD / SSH heads, ...); a family may name
other networks (`Detector.raw_exports`: MTCNN's P-Net per size, R-Net on [B, 24, 24, 3] and
O-Net on [B, 48, 48, 3] crops).
`outputs="detections"`: the whole test-time pipeline of `inference.make_predict_fn` (the
config's scales, flip, decoding, NMS; a family's own predictor such as MTCNN's cascade) per
size: (images [B, H, W, 3] float32 RGB 0..255, image_hw [B, 2] int32 each image's size inside
the padded input) -> {boxes [B, K, 4], scores [B, K], valid [B, K], landmarks [B, K, 5, 2]}.
Every artifact has a symbolic batch B.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from tinyfaces_jax import inference
from tinyfaces_jax.detectors import Detector

OUTPUTS = ("raw", "detections")


@dataclasses.dataclass(frozen=True)
class Exportable:
  """One artifact: `fn(*inputs) -> {name: array}`; `inputs` = ((name, shape with None for the
  batch, dtype name), ...); `name` is its file stem."""
  name: str
  fn: Callable
  inputs: tuple
  info: dict


def parse_size(text: str) -> tuple[int, int]:
  """"640x480" (width x height) -> (height, width)."""
  try:
    w, h = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
  if w < 1 or h < 1:
    raise ValueError(f"size {text!r}: both sides must be positive")
  return h, w


def _raw(detector: Detector, variables, method=None) -> Callable:
  def fn(images):
    kwargs = {"method": method} if method else {"train": False}
    out = detector.model.apply(variables, detector.preprocess(images), **kwargs)
    return {k: v for k, v in out.items()}
  return fn


def exportables(detector: Detector, variables, cfg: inference.InferenceConfig, sizes,
                outputs: str) -> list:
  """The artifacts of `detector` (with `variables`) for `sizes` [(H, W)] -> [Exportable]."""
  if outputs not in OUTPUTS:
    raise ValueError(f"outputs {outputs!r}; known: {list(OUTPUTS)}")
  name = detector.name
  out = []
  if outputs == "detections":
    predict = inference.make_predict_fn(detector, cfg)
    for h, w in sizes:
      out.append(Exportable(
          f"{name}_{w}x{h}_detections",
          lambda images, image_hw: dict(predict(variables, images, image_hw)),
          (("images", (None, h, w, 3), "float32"), ("image_hw", (None, 2), "int32")),
          {"size_hw": [h, w], "outputs": outputs, "scales": list(cfg.scales),
           "flip": cfg.flip, "max_output": cfg.max_output}))
    return out
  if detector.raw_exports is not None:
    for suffix, method, shape in detector.raw_exports(sizes):
      out.append(Exportable(f"{name}_{suffix}_raw", _raw(detector, variables, method),
                            (("images", (None,) + tuple(shape) + (3,), "float32"),),
                            {"outputs": outputs, "network": method, "input_hw": list(shape)}))
    return out
  for h, w in sizes:
    for s in cfg.scales:
      sh, sw = max(1, round(h * s)), max(1, round(w * s))
      tag = f"{w}x{h}" + (f"_scale{s:g}" if len(cfg.scales) > 1 or s != 1.0 else "")
      out.append(Exportable(f"{name}_{tag}_raw", _raw(detector, variables),
                            (("images", (None, sh, sw, 3), "float32"),),
                            {"size_hw": [h, w], "scale": s, "input_hw": [sh, sw],
                             "outputs": outputs}))
  return out


def example_inputs(exportable: Exportable, batch: int, seed: int = 0, image=None) -> list:
  """Inputs of the artifact's shapes with `batch` rows: `image` ([h, w, 3] uint8, e.g. a
  photo) resized to the input size, mirrored in the odd rows, else uniform noise
  (uint8-valued); image_hw the full size."""
  args = []
  for name, shape, dtype in exportable.inputs:
    shape = (batch,) + tuple(shape[1:])
    if name == "image_hw":
      args.append(jnp.tile(jnp.asarray([exportable.inputs[0][1][1:3]], jnp.int32), (batch, 1)))
    elif image is not None:
      x = jax.image.resize(jnp.asarray(image, jnp.float32), shape[1:], "linear")
      rows = [x if i % 2 == 0 else x[:, ::-1] for i in range(batch)]
      args.append(jnp.round(jnp.clip(jnp.stack(rows), 0, 255)))
    else:
      args.append(jnp.floor(jax.random.uniform(jax.random.key(seed), shape, jnp.float32,
                                               0, 256)))
  return args
