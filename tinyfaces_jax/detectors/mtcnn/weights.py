"""Importers of the released MTCNN weights into the {pnet, rnet, onet} variables tree.

Two files per network carry the same numbers (../shared/references/mtcnn_alignment.md 0):
  * facenet-pytorch's `pnet.pt` / `rnet.pt` / `onet.pt`: state dicts named as its modules
    (conv1.weight OIHW, prelu1.weight [C], dense4.weight [out, in], ...), tensors stored
    non-contiguous (pretrained/torch_pickle.py honours the strides);
  * the PyPI `mtcnn` package's `pnet.lz4` / `rnet.lz4` / `onet.lz4`: joblib-pickled Keras
    weight lists in layer order (conv kernel HWIO, bias, PReLU alpha [1, 1, C]; dense [in,
    out]; the box head before the class head, O-Net's landmark head between them), read by
    pretrained/joblib_lz4.py.
`load_mtcnn(path)` takes a folder holding the three files of one kind (.pt preferred), any one
of the files (its siblings are read from the same folder), or `PACKAGE` ("pypi:mtcnn"): the
weights inside the installed `mtcnn` package (found without importing it, so without
TensorFlow). A network missing from the folder or a file whose tensors do not fit raises
ValueError / FileNotFoundError naming the file.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from tinyfaces_jax import paths
from tinyfaces_jax.detectors.mtcnn.model import NETS
from tinyfaces_jax.pretrained.backbones_pth import OIHW_TO_HWIO

PACKAGE = "pypi:mtcnn"
SUFFIXES = (".pt", ".lz4")
# Per network: its layers in Keras list order as (flax name, kind); heads as the lists have them.
LAYERS = {
    "pnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4_2", "conv"), ("conv4_1", "conv")],
    "rnet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("dense4", "dense"), ("prelu4", "prelu"),
             ("dense5_2", "dense"), ("dense5_1", "dense")],
    "onet": [("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4", "conv"), ("prelu4", "prelu"),
             ("dense5", "dense"), ("prelu5", "prelu"), ("dense6_2", "dense"),
             ("dense6_3", "dense"), ("dense6_1", "dense")],
}


def package_weights_dir() -> str:
  """The `assets/weights` folder of the installed PyPI `mtcnn` package (not imported)."""
  spec = importlib.util.find_spec("mtcnn")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"--weights {PACKAGE}: the `mtcnn` package is not installed "
                            "(pip install mtcnn==1.0.0, or give the folder of pnet/rnet/onet)")
  folder = os.path.join(list(spec.submodule_search_locations)[0], "assets", "weights")
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"--weights {PACKAGE}: the installed mtcnn package has no "
                            f"{folder}")
  return folder


def locate(path: str) -> str:
  """PACKAGE -> the installed package's weights folder; any other path unchanged."""
  return package_weights_dir() if path == PACKAGE else path


def weight_files(path: str) -> dict:
  """`path` (folder, one of the files, or PACKAGE) -> {net: file path} of one kind."""
  p = paths.resolve(locate(path))
  if p.is_file():
    folder, suffixes = p.parent, (p.suffix,)
    if p.suffix not in SUFFIXES or p.stem not in NETS:
      raise ValueError(f"{path}: an MTCNN weights file is named pnet/rnet/onet with "
                       f"suffix {' or '.join(SUFFIXES)}")
  elif p.is_dir():
    folder, suffixes = p, SUFFIXES
  else:
    raise FileNotFoundError(f"MTCNN weights not found: {path}")
  for suffix in suffixes:
    files = {n: folder / f"{n}{suffix}" for n in NETS}
    if all(f.is_file() for f in files.values()):
      return {n: os.fspath(f) for n, f in files.items()}
  raise FileNotFoundError(f"{path}: MTCNN needs pnet, rnet and onet{' or '.join(suffixes)} "
                          f"side by side in {folder}")


def _from_state_dict(sd: dict, net: str, source: str) -> dict:
  params = {}
  for name, kind in LAYERS[net]:
    if kind == "prelu":
      params[name] = {"weight": sd.pop(f"{name}.weight")}
      continue
    w, b = sd.pop(f"{name}.weight"), sd.pop(f"{name}.bias")
    kernel = np.transpose(w, OIHW_TO_HWIO) if kind == "conv" else w.T
    params[name] = {"kernel": kernel, "bias": b}
  if sd:
    raise ValueError(f"{source}: tensors MTCNN's {net} has not: {sorted(sd)[:5]}")
  return params


def _from_keras_list(arrays: list, net: str, source: str) -> dict:
  want = sum(1 if kind == "prelu" else 2 for _, kind in LAYERS[net])
  if not isinstance(arrays, list) or len(arrays) != want:
    raise ValueError(f"{source}: expected the {want} Keras arrays of MTCNN's {net}, got "
                     f"{len(arrays) if isinstance(arrays, list) else type(arrays).__name__}")
  params, it = {}, iter(arrays)
  for name, kind in LAYERS[net]:
    if kind == "prelu":
      params[name] = {"weight": np.reshape(next(it), (-1,))}
    else:
      params[name] = {"kernel": next(it), "bias": next(it)}
  return params


def load_net(path: str, net: str) -> dict:
  """One network's params from a `.pt` or `.lz4` file -> {layer: {kernel, bias | weight}}."""
  if str(path).endswith(".lz4"):
    from tinyfaces_jax.pretrained.joblib_lz4 import read_joblib_lz4
    params = _from_keras_list(read_joblib_lz4(path), net, path)
  else:
    from tinyfaces_jax.pretrained import torch_pickle
    sd = torch_pickle.state_dict_of(torch_pickle.load_torch_checkpoint(path))
    try:
      params = _from_state_dict(dict(sd), net, path)
    except KeyError as e:
      raise ValueError(f"{path}: not facenet-pytorch's {net} (no tensor {e})") from None
  return {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in params.items()}


def load_mtcnn(path: str) -> dict:
  """{'params': {pnet, rnet, onet}, 'batch_stats': {}} from the files `path` names."""
  files = weight_files(path)
  return {"params": {n: load_net(f, n) for n, f in files.items()}, "batch_stats": {}}
