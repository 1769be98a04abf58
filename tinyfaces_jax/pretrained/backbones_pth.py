"""ImageNet backbone checkpoints (torchvision layout) for detectors that use part of a trunk.

`load_trunk(path, backbone, last_stage)` reads a torchvision state dict (ResNet-50/101/152:
`resnet101-*.pth`; VGG16: `vgg16-*.pth` with `features.N`; MobileNetV1-0.25: the Pytorch_
Retinaface `mobilenetV1X0.25_pretrain.tar`) into the variables of the backbone module as
the detector builds it. Keys of the stages the detector drops (e.g. ResNet `layer4.*` for HR,
which stops at res4) and the classifier (`fc.*`, `classifier.*`) are ignored explicitly;
every other key must be used and every variable filled (else a ValueError lists them).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from tinyfaces_jax.models.backbones import VGG16_BLOCKS, MobileNetV1, ResNet, VGG16
from tinyfaces_jax.pretrained.retinaface_pth import (_OIHW_TO_HWIO, backbone_entries, convert)
from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of


def vgg16_entries(last_block: int = 5) -> list:
  """torchvision `vgg16().features` conv entries -> VGG16 conv{b}_{j} kernels and biases."""
  out, index = [], 0
  for b, (_, n) in enumerate(VGG16_BLOCKS[:last_block], start=1):
    for j in range(1, n + 1):
      out += [(f"features.{index}.weight", "params", (f"conv{b}_{j}", "kernel"),
               _OIHW_TO_HWIO),
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
