"""Export a detector: `tinyfaces-export` (or `python -m tinyfaces_jax.cli.export`).

  tinyfaces-export --config=configs/retinaface_mnet025.py --weights=WEIGHTS \
      --output_dir=DIR [--formats=stablehlo,savedmodel,onnx] [--outputs=raw|detections]
      [--sizes=640x480,1024x768] [--mlir] [--check] [--check_image=PHOTO]

WEIGHTS: what `detect` takes (a public checkpoint the family imports, a training workdir or one
of its checkpoints/<step>); without --config a workdir is exported with the config it trained
with. Per size (WIDTHxHEIGHT) it writes one artifact per format (export/functions.py):
  * `--outputs=raw`: the network(s): images [B, h, w, 3] float32 RGB 0..255 (preprocessing
    inside) -> the raw outputs, one artifact per size and config.eval scale (MTCNN: P-Net
    per size, R-Net and O-Net on 24 / 48 px crops);
  * `--outputs=detections`: the whole test-time pipeline (scales, flip, decoding, NMS, a
    cascade): images [B, H, W, 3] and image_hw [B, 2] int32 -> boxes, scores, valid
    (landmarks) with K = config.eval.max_output rows, descending score.
The weights go in with BatchNorm folded into the convolutions (models/layers.fold_batch_norm,
as `detect` runs them). Formats: `stablehlo` (`<name>.stablehlo`, the serialized jax.export
artifact; `--mlir` adds the StableHLO text), `savedmodel` (`<name>/`, a TensorFlow SavedModel via jax2tf, signature
serving_default) and `onnx` (`<name>.onnx`, opset 18, by our jaxpr translator
export/onnx_graph.py; `--outputs=raw` only: the detections pipeline's NMS has no translation;
the network is traced with conv_impl="conv", i.e. plain (depthwise: grouped) Conv nodes, input
"images" NHWC as the others, outputs named by the raw dict's keys). Every artifact has a
symbolic batch. `export.json` lists them (inputs, outputs, shapes, the config). With --check
(default) each artifact is reloaded (ONNX: in onnxruntime, CPUExecutionProvider) and run on a
batch of 2 (`--check_image` and its mirror image, else noise) against the jitted function: raw
outputs within 1e-4 (relative to their scale), detections the same boxes; a mismatch is an
error.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tinyfaces_jax import cli as cli_lib, paths  # noqa: E402

FORMATS = ("stablehlo", "savedmodel", "onnx")


def _max_diff(a, b) -> float:
  import numpy as np
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                      initial=0.0))


def check(exportable, reloaded_outputs: dict, reference: dict) -> str:
  """Compares an artifact's outputs with the jitted function's -> a one-line summary;
  ValueError when they differ (raw: > 1e-4 (relative to the output's scale); detections:
  another valid set or boxes moved > 1e-3 px)."""
  import numpy as np
  if set(reloaded_outputs) != set(reference):
    raise ValueError(f"{exportable.name}: outputs {sorted(reloaded_outputs)} != "
                     f"{sorted(reference)}")
  if "valid" in reference:
    v_ref, v_got = np.asarray(reference["valid"]), np.asarray(reloaded_outputs["valid"])
    if not np.array_equal(v_ref, v_got):
      raise ValueError(f"{exportable.name}: the reloaded artifact keeps "
                       f"{int(v_got.sum())} detections, the jitted function {int(v_ref.sum())}")
    diff = max(_max_diff(np.asarray(reloaded_outputs[k])[v_ref], np.asarray(reference[k])[v_ref])
               for k in reference if k != "valid")
    if diff > 1e-3:
      raise ValueError(f"{exportable.name}: detections differ by {diff:.2e}")
    return f"same {int(v_ref.sum())} detections (max diff {diff:.1e})"
  worst = 0.0
  for k in reference:
    scale = max(1.0, float(np.max(np.abs(np.asarray(reference[k])), initial=0.0)))
    worst = max(worst, _max_diff(reloaded_outputs[k], reference[k]) / scale)
  if worst > 1e-4:
    raise ValueError(f"{exportable.name}: raw outputs differ by {worst:.2e} (relative)")
  return f"raw outputs within {worst:.1e}"


def run(config, weights: str, output_dir: str, *, formats=("stablehlo",),
        outputs: str = "detections", sizes=("640x480",), mlir: bool = False,
        verify: bool = True, check_image=None, log=print) -> dict:
  """Exports (module docstring) -> the export.json record {"artifacts": [...], ...}."""
  import jax
  import numpy as np
  from tinyfaces_jax.export import functions, onnx_graph, savedmodel, stablehlo
  from tinyfaces_jax.models import layers
  from tinyfaces_jax.training import checkpointing, train

  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"--formats {list(formats)}: known formats are {list(FORMATS)}")
  if "onnx" in formats and outputs != "raw":
    raise ValueError("onnx: only --outputs=raw; the detections pipeline (NMS, top-k, MTCNN's "
                     "cascade) has no ONNX translation: export it as stablehlo or savedmodel, "
                     "or the raw networks as onnx and post-process them "
                     "(export.onnx_graph.detections)")
  hw = [functions.parse_size(s) for s in sizes]
  photo = None
  if check_image:
    from tinyfaces_jax.data import image_files
    photo = image_files.load_image(check_image)
  spec = train.RunSpec.from_config(config)
  det = spec.detector
  variables, what = checkpointing.model_variables(det, weights)
  variables = layers.fold_batch_norm(variables)  # inference only: BatchNorm into the convs
  items = functions.exportables(det, variables, spec.inference, hw, outputs)
  # ONNX: the same networks with XLA convolutions (no CPU shift-add paths): Conv nodes
  onnx_items = (functions.exportables(onnx_graph.xla_convs(det), variables, spec.inference, hw,
                                      outputs) if "onnx" in formats else items)
  out = paths.resolve(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  log(f"exporting {det.name} ({what}): {len(items)} artifact(s) x {list(formats)}, "
      f"{outputs}, into {out}")
  record = {"detector": det.name, "weights": str(weights), "outputs": outputs,
            "config": json.loads(config.to_json_best_effort()), "artifacts": []}
  for item, onnx_item in zip(items, onnx_items):
    args = functions.example_inputs(item, 2, image=photo) if verify else None
    reference = jax.device_get(jax.jit(item.fn)(*args)) if verify else None
    out_shapes = jax.eval_shape(item.fn, *functions.example_inputs(item, 1))
    for fmt in formats:
      t0 = time.time()
      if fmt == "stablehlo":
        files = stablehlo.save(item, out, mlir=mlir)
        got = stablehlo.load(files[0]).call(*args) if verify else None
      elif fmt == "onnx":
        files = onnx_graph.save(onnx_item, out)
        got = (onnx_graph.call(onnx_graph.session(files[0]), *args) if verify else None)
      else:
        files = savedmodel.save(item, out)
        got = (savedmodel.load(files[0])(**{n: np.asarray(a) for (n, _, _), a in
                                            zip(item.inputs, args)}) if verify else None)
      note = check(item, {k: np.asarray(v) for k, v in got.items()}, reference) if verify \
          else "not checked"
      rel = [os.path.relpath(str(f), str(out)) for f in files]
      log(f"  {rel[0]} ({fmt}, {time.time() - t0:.1f} s): {note}")
      record["artifacts"].append({
          "file": rel[0], "format": fmt, **item.info,
          "inputs": [{"name": n, "shape": ["B"] + list(s[1:]), "dtype": d}
                     for n, s, d in item.inputs],
          "outputs": {k: {"shape": ["B"] + list(v.shape[1:]), "dtype": str(v.dtype)}
                      for k, v in out_shapes.items()},
          "check": note})
  (out / "export.json").write_text(json.dumps(record, indent=1))
  return record


def define_flags() -> None:
  """The command's flags, defined when it runs rather than on import, so that the library
  function `run` imports beside the other tools, whose flags have the same names."""
  config_flags.DEFINE_config_file("config", "configs/retinaface_mnet025.py",
                                  "Config file (configs/*.py[:args]).", lock_config=True)
  flags.DEFINE_string("weights", None, "Checkpoint file, workdir or checkpoint dir.")
  flags.DEFINE_string("output_dir", None, "Where the artifacts and export.json go.")
  flags.DEFINE_list("formats", ["stablehlo"], f"Any of {list(FORMATS)} (onnx: with "
                    "--outputs=raw only).")
  flags.DEFINE_enum("outputs", "detections", ["raw", "detections"],
                    "raw: the networks; detections: the whole pipeline with NMS.")
  flags.DEFINE_list("sizes", ["640x480"], "Input sizes WIDTHxHEIGHT (one artifact each).")
  flags.DEFINE_bool("mlir", False, "Also write the StableHLO text (<name>.mlir).")
  flags.DEFINE_bool("check", True, "Reload each artifact and compare it with the jitted "
                    "function on a batch of 2.")
  flags.DEFINE_string("check_image", None, "The photo the check runs on (resized to each "
                      "input size, and mirrored); default: noise.")
  flags.mark_flags_as_required(["weights", "output_dir"])


def main(argv):
  return cli_lib.run(_export, argv, name="tinyfaces-export")


def _export(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from tinyfaces_jax.training import checkpointing
  f = flags.FLAGS
  config = f.config
  if not f["config"].present:  # a workdir's own config unless one is given
    saved = checkpointing.saved_config(f.weights)
    if saved is not None:
      config = saved
  run(config, f.weights, f.output_dir, formats=f.formats, outputs=f.outputs, sizes=f.sizes,
      mlir=f.mlir, verify=f.check, check_image=f.check_image)
  return 0


def cli() -> None:
  """Console script `tinyfaces-export`."""
  define_flags()
  cli_lib.run_absl(main, "tinyfaces-export")


if __name__ == "__main__":
  cli()
