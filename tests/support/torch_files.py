"""Torch checkpoint files written without torch (fake torch globals pickled the way
torch.save lays them out), for the torch-free reader and the importers' synthetic tests."""

import collections
import io
import pickle
import sys
import types
import zipfile

import numpy as np


def fake_torch_pickle(monkeypatch, tensors: dict, storages: dict) -> bytes:
  """Pickles {name: (storage key, offset, size, stride)} the way torch.save does."""
  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

  class FloatStorage:
    pass
  FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called")
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = ("torch._utils",
                                                                   "_rebuild_tensor_v2")
  torch_mod.FloatStorage, utils_mod._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", torch_mod)
  monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

  class Storage:
    def __init__(self, key):
      self.key = key

  class Tensor:
    def __init__(self, key, offset, size, stride):
      self.args = (Storage(key), offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
      return _rebuild_tensor_v2, self.args

  class P(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", FloatStorage, obj.key, "cpu", storages[obj.key].size)
      return None

  buf = io.BytesIO()
  P(buf, protocol=2).dump(collections.OrderedDict(
      (k, Tensor(*v)) for k, v in tensors.items()))
  return buf.getvalue()


def write_state_dict(path, arrays: dict, monkeypatch) -> None:
  """{name: float32 array} -> a zip-format (torch >= 1.6) state dict file at `path`."""
  storages = {str(k): np.ascontiguousarray(v, np.float32).reshape(-1)
              for k, v in enumerate(arrays.values())}
  tensors = {}
  for k, (name, v) in enumerate(arrays.items()):
    shape = tuple(np.shape(v))
    stride = tuple(int(np.prod(shape[d + 1:])) for d in range(len(shape)))
    tensors[name] = (str(k), 0, shape, stride)
  data = fake_torch_pickle(monkeypatch, tensors, storages)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", data)
    for k, v in storages.items():
      zf.writestr(f"archive/data/{k}", v.tobytes())
  monkeypatch.delitem(sys.modules, "torch")
  monkeypatch.delitem(sys.modules, "torch._utils")
