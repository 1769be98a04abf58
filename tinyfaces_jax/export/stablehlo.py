"""StableHLO artifacts: `jax.export` of an Exportable with a symbolic batch dimension, written
as the serialized `jax.export.Exported` (StableHLO bytecode plus the calling convention;
`<name>.stablehlo`) and, beside it, its MLIR text when asked (`<name>.mlir`).

Load with `load(path)` -> a jax.export.Exported; `exported.call(*inputs)` runs it in JAX on any
platform it was exported for (`platforms`, default: this one), and its `mlir_module()` is the
StableHLO program for other runtimes (IREE, XLA's PJRT)."""

from __future__ import annotations

import jax
from jax import export

from tinyfaces_jax import paths

SUFFIX = ".stablehlo"


def export_one(exportable, platforms=None) -> export.Exported:
  """The Exportable with its batch dimension symbolic ("b")."""
  (b,) = export.symbolic_shape("b")
  specs = [jax.ShapeDtypeStruct((b,) + tuple(shape[1:]), dtype)
           for _, shape, dtype in exportable.inputs]
  return export.export(jax.jit(exportable.fn), platforms=platforms)(*specs)


def save(exportable, out_dir, *, platforms=None, mlir: bool = False) -> list:
  """Writes `<out_dir>/<name>.stablehlo` (and `.mlir`) -> the written paths."""
  exp = export_one(exportable, platforms)
  out = paths.resolve(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  target = out / (exportable.name + SUFFIX)
  target.write_bytes(bytes(exp.serialize()))
  written = [target]
  if mlir:
    (out / (exportable.name + ".mlir")).write_text(exp.mlir_module())
    written.append(out / (exportable.name + ".mlir"))
  return written


def load(path) -> export.Exported:
  """A `.stablehlo` file -> jax.export.Exported (ValueError naming the file if it is not one)."""
  data = paths.resolve(path).read_bytes()
  try:
    return export.deserialize(bytearray(data))
  except Exception as e:  # flatbuffers raise assorted errors on foreign bytes
    raise ValueError(f"{path}: not a serialized jax.export artifact ({type(e).__name__}: "
                     f"{e})") from None
