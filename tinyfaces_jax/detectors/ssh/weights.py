"""Importer of the released SSH weights (mahyarnajibi/SSH `data/SSH_models/SSH.caffemodel`),
read without Caffe (pretrained/caffemodel.py).

The file holds 37 convolutions as [weight OIHW, bias] named as the prototxt's layers (conv1_1 ..
conv5_3; conv5_128, conv4_128, conv4_fuse_final; m{1,2,3}@ssh_{3x3, dimred, 5x5, 7x7-1, 7x7,
cls_score, bbox_pred}) and the deconvolution conv5_128_up [128, 1, 4, 4] (no bias): 75 blobs.
The deconvolution is the fixed bilinear upsampling (lr_mult 0), which the network computes as a
constant; the importer checks that the file's filter is that one (a file whose deconvolution
was trained would need a network this one is not) and drops it. The `_ohem` layers of the
training net share these parameters and add none. Layer order in the file does not matter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax.detectors.ssh.model import MODULES, SSH, SSHConfig
from tinyfaces_jax.models.backbones import VGG16_BLOCKS
from tinyfaces_jax.pretrained.backbones_pth import OIHW_TO_HWIO, convert
from tinyfaces_jax.pretrained.caffemodel import read_caffemodel

TRUNK = tuple(f"conv{b}_{j}" for b, (_, n) in enumerate(VGG16_BLOCKS, start=1)
              for j in range(1, n + 1))
FUSION = ("conv5_128", "conv4_128", "conv4_fuse_final")
# Caffe module layer -> ContextModule submodule (models/necks.py).
CONTEXT = {"ssh_3x3": "conv3X3", "ssh_dimred": "conv5X5_1", "ssh_5x5": "conv5X5_2",
           "ssh_7x7-1": "conv7X7_2", "ssh_7x7": "conv7x7_3"}
UPSAMPLE = "conv5_128_up"


def bilinear_filter(k: int = 4) -> np.ndarray:
  """Caffe's bilinear filler for a k x k deconvolution: [k, k] (f = ceil(k / 2),
  c = (2f - 1 - f % 2) / (2f), w(x, y) = (1 - |x / f - c|)(1 - |y / f - c|))."""
  f = int(np.ceil(k / 2))
  c = (2 * f - 1 - f % 2) / (2.0 * f)
  t = 1 - np.abs(np.arange(k) / f - c)
  return np.outer(t, t)


def _conv(key: str, path: tuple) -> list:
  return [(f"{key}.weight", "params", path + ("kernel",), OIHW_TO_HWIO),
          (f"{key}.bias", "params", path + ("bias",), None)]


def entries() -> list:
  """(state-dict key, collection, flax path, permutation) of every imported tensor."""
  out = []
  for name in TRUNK:
    out += _conv(name, ("vgg", name))
  for name in FUSION:
    out += _conv(name, (name, "conv"))
  for m in MODULES:
    for caffe, ours in CONTEXT.items():
      out += _conv(f"{m}@{caffe}", (m, "context", ours, "conv"))
    out += _conv(f"{m}@ssh_cls_score", (m, "cls_score"))
    out += _conv(f"{m}@ssh_bbox_pred", (m, "bbox_pred"))
  return out


def state_dict_from_blobs(blobs: dict, source: str) -> dict:
  """Caffe {layer: [W, b]} -> {'layer.weight', 'layer.bias'}; checks and drops the fixed
  bilinear deconvolution."""
  sd = {}
  for name, arrays in blobs.items():
    if name == UPSAMPLE:
      w = arrays[0]
      want = np.broadcast_to(bilinear_filter(4), (w.shape[0], 1, 4, 4))
      if w.shape != want.shape or not np.allclose(w, want, atol=1e-5) or len(arrays) != 1:
        raise ValueError(f"{source}: {UPSAMPLE} is not the fixed bilinear 2x upsampling "
                         f"(shape {w.shape}, {len(arrays)} blobs); this SSH network computes "
                         "that upsampling as a constant")
      continue
    if len(arrays) != 2:
      raise ValueError(f"{source}: layer {name!r} has {len(arrays)} blobs, expected weight "
                       "and bias")
    sd[f"{name}.weight"], sd[f"{name}.bias"] = arrays
  if UPSAMPLE not in blobs:
    raise ValueError(f"{source}: no {UPSAMPLE} layer: not an SSH caffemodel")
  return sd


def load_ssh_caffemodel(path, cfg: SSHConfig) -> dict:
  """SSH.caffemodel (a path or URL) -> {'params'} of `SSH(cfg)` (the VGG16 network only)."""
  if cfg.backbone != "vgg16":
    raise ValueError(f"{path}: the released SSH weights are the VGG16 network; the model is "
                     f"configured with backbone {cfg.backbone!r}")
  sd = state_dict_from_blobs(read_caffemodel(path), str(path))
  shapes = jax.eval_shape(SSH(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  try:
    return convert(sd, entries(), shapes)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
