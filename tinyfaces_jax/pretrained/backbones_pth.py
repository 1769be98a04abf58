"""PyTorch checkpoints -> flax variables: the name-map converter and the ImageNet trunks.

An importer is a list of entries (torch key, collection, flax path, transpose) applied by
`convert`, which checks the state dict against the model's variable shapes (missing /
unexpected keys and mismatched shapes raise a ValueError listing them). Conv weights go OIHW
-> HWIO (a depthwise [C, 1, 3, 3] becomes [3, 3, 1, C]); BatchNorm weight / bias -> params
scale / bias, running_mean / var -> batch_stats mean / var; num_batches_tracked is dropped.
`backbone_entries` names the MobileNetV1-0.25 (Pytorch_Retinaface `body.stage*`) and
torchvision ResNet trunks; the families' whole-model importers build on it
(detectors/<family>/weights.py).

`load_trunk(path, backbone, last_stage)` reads a torchvision state dict (ResNet-50/101/152:
`resnet101-*.pth`; VGG16: `vgg16-*.pth` with `features.N`; MobileNetV1-0.25: the Pytorch_
Retinaface `mobilenetV1X0.25_pretrain.tar`) into the variables of the backbone module as
the detector builds it. Keys of the stages the detector drops (e.g. ResNet `layer4.*` for HR,
which stops at res4) and the classifier (`fc.*`, `classifier.*`) are ignored explicitly;
every other key must be used and every variable filled (else a ValueError lists them).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.models.backbones import (MOBILENET_025_STAGES, RESNET_BLOCKS, VGG16_BLOCKS,
                                            MobileNetV1, ResNet, VGG16, make_backbone,
                                            resnet_layers)
from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of

OIHW_TO_HWIO = (2, 3, 1, 0)
# (torch key, collection, flax path, transpose or None)
Entry = tuple[str, str, tuple, Optional[tuple]]


def conv_bn_entries(conv: str, bn: str, path: tuple) -> list[Entry]:
  """A torch Conv2d (no bias) + BatchNorm2d pair -> a flax ConvBN at `path`."""
  return [(f"{conv}.weight", "params", path + ("conv", "kernel"), OIHW_TO_HWIO),
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
        out += conv_bn_entries(f"{tp}{stage}.0.0", f"{tp}{stage}.0.1", name)
      else:
        out += conv_bn_entries(f"{tp}{stage}.{i}.0", f"{tp}{stage}.{i}.1", name + ("dw",))
        out += conv_bn_entries(f"{tp}{stage}.{i}.3", f"{tp}{stage}.{i}.4", name + ("pw",))
  return out


def resnet_entries(tp: str, fp: tuple, depth: str = "resnet50") -> list[Entry]:
  """torchvision ResNet-50/101/152 entries (no fc)."""
  out = conv_bn_entries(f"{tp}conv1", f"{tp}bn1", fp + ("stem",))
  for layer, _planes, blocks, _stride in resnet_layers(depth):
    for j in range(blocks):
      t, f = f"{tp}{layer}.{j}", fp + (f"{layer}_{j}",)
      for m in (1, 2, 3):
        out += conv_bn_entries(f"{t}.conv{m}", f"{t}.bn{m}", f + (f"conv{m}",))
      if j == 0:
        out += conv_bn_entries(f"{t}.downsample.0", f"{t}.downsample.1", f + ("downsample",))
  return out


def backbone_entries(backbone: str, tp: str, fp: tuple) -> list[Entry]:
  """The entries of a MobileNetV1-0.25 or ResNet trunk (tp / fp: torch / flax prefixes)."""
  if backbone == "mobilenet0.25":
    return mobilenet_entries(tp, fp)
  if backbone in RESNET_BLOCKS:
    return resnet_entries(tp, fp, backbone)
  raise ValueError(f"no checkpoint layout for backbone {backbone!r}")


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


def vgg16_entries(last_block: int = 5) -> list:
  """torchvision `vgg16().features` conv entries -> VGG16 conv{b}_{j} kernels and biases."""
  out, index = [], 0
  for b, (_, n) in enumerate(VGG16_BLOCKS[:last_block], start=1):
    for j in range(1, n + 1):
      out += [(f"features.{index}.weight", "params", (f"conv{b}_{j}", "kernel"),
               OIHW_TO_HWIO),
              (f"features.{index}.bias", "params", (f"conv{b}_{j}", "bias"), None)]
      index += 2                                    # conv, relu
    index += 1                                      # max pool
  return out


def _stage(key: str) -> int:
  """torchvision ResNet key -> its layer number (0 for the stem)."""
  first = key.split(".")[0]
  return int(first[5:]) if first.startswith("layer") else 0


def load_trunk(path: str | os.PathLike, backbone: str, last_stage: int,
               activation: str = "leaky_relu") -> dict:
  """-> {'params', 'batch_stats'} of the backbone module (ResNet with last_layer=last_stage,
  VGG16 with last_block=last_stage, or MobileNetV1) from a torchvision-layout checkpoint (a
  path or URL)."""
  sd = state_dict_of(load_torch_checkpoint(path))
  x = jnp.zeros((1, 64, 64, 3))
  if backbone == "vgg16":
    model, entries = VGG16(last_block=last_stage), vgg16_entries(last_stage)
    ignore = ("classifier.",) + tuple(f"features.{i}." for i in range(
        sum(n * 2 + 1 for _, n in VGG16_BLOCKS[:last_stage]), 64))
  elif backbone == "mobilenet0.25":
    model, entries = MobileNetV1(activation), backbone_entries(backbone, "", ())
    ignore = ("fc.",)
  else:
    model = ResNet(depth=backbone, last_layer=last_stage)
    entries = [e for e in backbone_entries(backbone, "", ()) if _stage(e[0]) <= last_stage]
    ignore = ("fc.",) + tuple(f"layer{i}." for i in range(last_stage + 1, 5))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  return convert(sd, entries, shapes, ignore_prefixes=ignore)


def load_backbone_pth(path: str | os.PathLike, backbone: str = "mobilenet0.25",
                      activation: str = "leaky_relu") -> dict:
  """Loads an ImageNet backbone checkpoint (a path or URL; e.g. `mobilenetV1X0.25_pretrain.tar`:
  a dict with a 'module.'-prefixed 'state_dict') into the variables of `make_backbone(backbone)`
  used standalone. The classifier ('fc.*') is ignored explicitly; every other key must be used."""
  sd = state_dict_of(load_torch_checkpoint(path))
  model = make_backbone(backbone, activation, module_name=None)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return convert(sd, backbone_entries(backbone, "", ()), shapes, ignore_prefixes=("fc.",))
