"""Importers of the public S3FD weights (both 65-tensor state dicts, OIHW convs):

  face_alignment  face-alignment / clcarwin `s3fd-*.pth`: keys named as the Caffe layers
                  (`conv1_1.weight`, `fc6.weight`, `conv3_3_norm.weight`,
                  `conv3_3_norm_mbox_conf.weight`, ...); its network is the pad-3 fc6 one.
  yxlijun         S3FD.pytorch `sfd_face.pth` (or a `*_checkpoint.pth` {'epoch', 'weight'}):
                  `vgg.N` (conv1_1..conv5_3, then vgg.31 fc6 with dilation 6, vgg.33 fc7),
                  `L2Norm3_3.weight`, `extras.0..3`, `loc.0..5`, `conf.0..5`.

A file's key layout says which release it is, and so the network geometry and colour order it
needs (`layout_of`); loading it into a model of another variant is an error naming both, so
a file never runs silently in the wrong geometry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tinyfaces_jax.detectors.s3fd.model import S3FD, S3FDConfig, SOURCES
from tinyfaces_jax.models.backbones import VGG16_BLOCKS
from tinyfaces_jax.pretrained.backbones_pth import OIHW_TO_HWIO, convert
from tinyfaces_jax.pretrained.torch_pickle import load_torch_checkpoint, state_dict_of

TRUNK = tuple(f"conv{b}_{j}" for b, (_, n) in enumerate(VGG16_BLOCKS, start=1)
              for j in range(1, n + 1))
EXTRAS = ("conv6_1", "conv6_2", "conv7_1", "conv7_2")


def _conv(key: str, path: tuple) -> list:
  return [(f"{key}.weight", "params", path + ("kernel",), OIHW_TO_HWIO),
          (f"{key}.bias", "params", path + ("bias",), None)]


def _heads() -> list:
  return [f"{s}_norm" if k < 3 else s for k, s in enumerate(SOURCES)]


def face_alignment_entries() -> list:
  out = []
  for name in TRUNK:
    out += _conv(name, ("vgg", name))
  for name in ("fc6", "fc7") + EXTRAS:
    out += _conv(name, (name,))
  for s in SOURCES[:3]:
    out.append((f"{s}_norm.weight", "params", (f"{s}_norm", "scale"), None))
  for head in _heads():
    for kind in ("loc", "conf"):
      out += _conv(f"{head}_mbox_{kind}", (f"{head}_mbox_{kind}",))
  return out


def yxlijun_entries() -> list:
  out, index = [], 0
  for b, (_, n) in enumerate(VGG16_BLOCKS, start=1):
    for j in range(1, n + 1):
      out += _conv(f"vgg.{index}", ("vgg", f"conv{b}_{j}"))
      index += 2                                  # conv, relu
    index += 1                                    # pool
  out += _conv("vgg.31", ("fc6",)) + _conv("vgg.33", ("fc7",))
  for k, name in enumerate(EXTRAS):
    out += _conv(f"extras.{k}", (name,))
  for s in SOURCES[:3]:
    out.append((f"L2Norm{s[4:]}.weight", "params", (f"{s}_norm", "scale"), None))
  for k, head in enumerate(_heads()):
    out += _conv(f"loc.{k}", (f"{head}_mbox_loc",)) + _conv(f"conf.{k}", (f"{head}_mbox_conf",))
  return out


LAYOUTS = {"face_alignment": face_alignment_entries, "yxlijun": yxlijun_entries}


def layout_of(state_dict: dict, source: str = "the file") -> str:
  """The release a state dict comes from (a LAYOUTS name), from its key names."""
  if "conv1_1.weight" in state_dict:
    return "face_alignment"
  if "vgg.0.weight" in state_dict:
    return "yxlijun"
  raise ValueError(f"{source}: not an S3FD state dict of a known release (expected "
                   f"face-alignment's conv1_1.* or S3FD.pytorch's vgg.0.* keys; first keys: "
                   f"{sorted(state_dict)[:4]})")


def load_s3fd_pth(path, cfg: S3FDConfig) -> dict:
  """An S3FD .pth (a path or URL) -> {'params'} of `S3FD(cfg)`; ValueError when the file's
  release is not `cfg.variant` (the message says which variant to configure)."""
  if cfg.backbone != "vgg16":
    raise ValueError(f"{path}: the released S3FD weights are VGG16 networks; the model is "
                     f"configured with backbone {cfg.backbone!r}")
  obj = load_torch_checkpoint(path)
  if isinstance(obj, dict) and "weight" in obj and "epoch" in obj:   # yxlijun checkpoint
    obj = obj["weight"]
  sd = state_dict_of(obj)
  layout = layout_of(sd, str(path))
  if layout != cfg.variant:
    raise ValueError(f"{path}: a {layout} S3FD file (its network geometry and colour order), "
                     f"but the model is the {cfg.variant!r} variant; set "
                     f"config.model.variant={layout!r}")
  shapes = jax.eval_shape(S3FD(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return convert(sd, LAYOUTS[layout](), shapes)
