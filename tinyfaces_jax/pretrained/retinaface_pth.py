"""Pytorch_Retinaface checkpoints -> Flax variables of `models.retinaface.RetinaFace`.

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
unexpected keys and shape mismatches raise a ValueError listing them.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.models.backbones import (MOBILENET_025_STAGES, RESNET_BLOCKS, make_backbone,
                                            resnet_layers)
from tinyfaces_jax.models.retinaface import RetinaFace, RetinaFaceConfig
from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of

_OIHW_TO_HWIO = (2, 3, 1, 0)
# (torch key, collection, flax path, transpose or None)
Entry = tuple[str, str, tuple, Optional[tuple]]


def _conv_bn(conv: str, bn: str, path: tuple) -> list[Entry]:
  return [(f"{conv}.weight", "params", path + ("conv", "kernel"), _OIHW_TO_HWIO),
          (f"{bn}.weight", "params", path + ("bn", "scale"), None),
          (f"{bn}.bias", "params", path + ("bn", "bias"), None),
          (f"{bn}.running_mean", "batch_stats", path + ("bn", "mean"), None),
          (f"{bn}.running_var", "batch_stats", path + ("bn", "var"), None)]


def mobilenet_entries(tp: str, fp: tuple) -> list[Entry]:
  """MobileNetV1-0.25 entries; tp: torch prefix ('body.' or ''), fp: flax path prefix."""
  out = []
  for stage, layers in MOBILENET_025_STAGES.items():
    for i in range(len(layers)):
      name = fp + (f"{stage}_{i}",)
      if stage == "stage1" and i == 0:
        out += _conv_bn(f"{tp}{stage}.0.0", f"{tp}{stage}.0.1", name)
      else:
        out += _conv_bn(f"{tp}{stage}.{i}.0", f"{tp}{stage}.{i}.1", name + ("dw",))
        out += _conv_bn(f"{tp}{stage}.{i}.3", f"{tp}{stage}.{i}.4", name + ("pw",))
  return out


def resnet_entries(tp: str, fp: tuple, depth: str = "resnet50") -> list[Entry]:
  """torchvision ResNet-50/101/152 entries (no fc)."""
  out = _conv_bn(f"{tp}conv1", f"{tp}bn1", fp + ("stem",))
  for layer, _planes, blocks, _stride in resnet_layers(depth):
    for j in range(blocks):
      t, f = f"{tp}{layer}.{j}", fp + (f"{layer}_{j}",)
      for m in (1, 2, 3):
        out += _conv_bn(f"{t}.conv{m}", f"{t}.bn{m}", f + (f"conv{m}",))
      if j == 0:
        out += _conv_bn(f"{t}.downsample.0", f"{t}.downsample.1", f + ("downsample",))
  return out


def backbone_entries(backbone: str, tp: str, fp: tuple) -> list[Entry]:
  if backbone == "mobilenet0.25":
    return mobilenet_entries(tp, fp)
  if backbone in RESNET_BLOCKS:
    return resnet_entries(tp, fp, backbone)
  raise ValueError(f"no checkpoint layout for backbone {backbone!r}")


def retinaface_entries(config: RetinaFaceConfig) -> list[Entry]:
  """All entries of a Pytorch_Retinaface `RetinaFace` state dict."""
  out = backbone_entries(config.backbone, "body.", ("body",))
  for name in ("output1", "output2", "output3", "merge1", "merge2"):
    out += _conv_bn(f"fpn.{name}.0", f"fpn.{name}.1", ("fpn", name))
  for lvl in (1, 2, 3):
    for br in ("conv3X3", "conv5X5_1", "conv5X5_2", "conv7X7_2", "conv7x7_3"):
      out += _conv_bn(f"ssh{lvl}.{br}.0", f"ssh{lvl}.{br}.1", (f"ssh{lvl}", br))
  for head in ("ClassHead", "BboxHead", "LandmarkHead"):
    for lvl in range(3):
      out += [(f"{head}.{lvl}.conv1x1.weight", "params", (f"{head}_{lvl}", "kernel"),
               _OIHW_TO_HWIO),
              (f"{head}.{lvl}.conv1x1.bias", "params", (f"{head}_{lvl}", "bias"), None)]
  return out


def convert(state_dict: dict, entries: list[Entry], target_shapes: dict,
            ignore_prefixes: Iterable[str] = ()) -> dict:
  """Applies `entries` to a state dict, checked against the flax variable shapes.

  Args:
    state_dict: torch key -> np.ndarray ('module.' already stripped).
    entries: the name map.
    target_shapes: the model's variables (e.g. from `jax.eval_shape(model.init, ...)`).
    ignore_prefixes: torch key prefixes dropped on purpose (e.g. the classifier 'fc.').
  Returns:
    {'params': ..., 'batch_stats': ...} of float32 jnp arrays.
  """
  ignore = tuple(ignore_prefixes)
  used = {k for k in state_dict
          if k.endswith(".num_batches_tracked") or (ignore and k.startswith(ignore))}
  missing = [e[0] for e in entries if e[0] not in state_dict]
  unexpected = sorted(set(state_dict) - used - {e[0] for e in entries})
  if missing or unexpected:
    raise ValueError(f"checkpoint does not match the model: missing keys {missing}, "
                     f"unexpected keys {unexpected}")
  flat_target = tu.flatten_dict(target_shapes)
  flat, mismatched = {}, []
  for key, coll, path, perm in entries:
    value = np.asarray(state_dict[key], np.float32)
    if perm is not None:
      value = value.transpose(perm)
    want = flat_target.get((coll,) + path)
    if want is None or tuple(want.shape) != value.shape:
      mismatched.append(f"{key} {value.shape} -> {'/'.join((coll,) + path)} "
                        f"{None if want is None else tuple(want.shape)}")
      continue
    flat[(coll,) + path] = jnp.asarray(value)
  unfilled = sorted("/".join(k) for k in set(flat_target) - set(flat))
  if mismatched or unfilled:
    raise ValueError(f"shape/name mismatch: {mismatched}; flax variables without a "
                     f"checkpoint value: {unfilled}")
  return tu.unflatten_dict(flat)


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


def load_backbone_pth(path: str | os.PathLike, backbone: str = "mobilenet0.25",
                      activation: str = "leaky_relu") -> dict:
  """Loads an ImageNet backbone checkpoint (a path or URL; e.g. `mobilenetV1X0.25_pretrain.tar`:
  a dict with a 'module.'-prefixed 'state_dict') into the variables of `make_backbone(backbone)`
  used standalone. The classifier ('fc.*') is ignored explicitly; every other key must be used."""
  sd = state_dict_of(load_torch_checkpoint(path))
  model = make_backbone(backbone, activation, module_name=None)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return convert(sd, backbone_entries(backbone, "", ()), shapes, ignore_prefixes=("fc.",))
