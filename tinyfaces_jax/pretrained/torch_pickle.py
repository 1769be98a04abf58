"""Read PyTorch checkpoints (`torch.save` output) into numpy WITHOUT importing torch.

Two on-disk formats exist:
  * zip (torch >= 1.6): `<root>/data.pkl` plus one raw little-endian blob per storage at
    `<root>/data/<key>`;
  * legacy (torch < 1.6, e.g. the Pytorch_Retinaface `.pth`/`.tar` files): a stream of pickles
    (magic number, protocol version, sys info, the object, the list of storage keys), followed
    by each storage as an int64 element count and the raw bytes.

Only tensors and ordered dicts are rebuilt: the unpickler resolves `torch._utils.
_rebuild_tensor_v2`, the `torch.*Storage` types and `collections.OrderedDict`, and refuses
every other global with an `UnpicklingError` (a checkpoint cannot run code). Tensors come back
as numpy arrays with the stored dtype, shape, storage offset and strides (copied, contiguous).

A checkpoint may be a local path or a URL (gs://...): it is opened through etils.epath and read
as a file object (zipfile seeks in it; the legacy format is read whole).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from tinyfaces_jax import paths

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_BF16 = "bfloat16"
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _BF16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class StorageType:
  """Stand-in for a `torch.<X>Storage` class found in the pickle."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype is _BF16 else np.dtype(self.dtype).itemsize

  def from_bytes(self, raw: bytes, numel: int) -> np.ndarray:
    """Raw little-endian bytes -> [numel] numpy array (bfloat16 widened to float32)."""
    if self.dtype is _BF16:
      bits = np.frombuffer(raw, "<u2", count=numel).astype(np.uint32) << 16
      return bits.view(np.float32)
    return np.frombuffer(raw, np.dtype(self.dtype).newbyteorder("<"), count=numel)


def rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_unused) -> np.ndarray:
  """`torch._utils._rebuild_tensor_v2` for numpy: a strided view of the storage, copied."""
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if not size:
    return np.array(storage[offset])
  if any(s == 0 for s in size):
    return np.zeros(size, storage.dtype)
  flat = storage[offset:]
  end = 1 + sum((n - 1) * s for n, s in zip(size, stride))
  if end > flat.shape[0]:
    raise pickle.UnpicklingError(f"tensor of size {size} stride {stride} at offset {offset} "
                                 f"overruns its storage of {storage.shape[0]} elements")
  view = np.lib.stride_tricks.as_strided(
      flat, size, tuple(s * flat.itemsize for s in stride), writeable=False)
  return np.ascontiguousarray(view).astype(view.dtype.newbyteorder("="), copy=False)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that only knows tensors, storages and OrderedDict.

  Args:
    file: binary stream positioned at the object pickle.
    persistent_load: callable mapping a persistent id tuple to a storage array.
  """

  def __init__(self, file, persistent_load: Callable[[tuple], Any]):
    super().__init__(file)
    self._persistent = persistent_load

  def find_class(self, module: str, name: str):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return rebuild_tensor
    if module == "torch" and name in STORAGE_DTYPES:
      return StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise pickle.UnpicklingError(
        f"refusing to load global {module}.{name}: only tensors (torch._utils."
        "_rebuild_tensor_v2, torch.*Storage) and collections.OrderedDict are allowed")

  def persistent_load(self, pid):
    return self._persistent(pid)


def _check_storage_pid(pid) -> tuple:
  if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
    raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
  if not isinstance(pid[1], StorageType):
    raise pickle.UnpicklingError(f"persistent id without a storage type: {pid!r}")
  return pid


def _load_zip(fileobj, path) -> Any:
  """The zip format from a seekable binary file object (`path` names it in errors)."""
  with zipfile.ZipFile(fileobj) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
      raise ValueError(f"{path}: expected one data.pkl in the zip, found {pkls}")
    root = pkls[0][:-len("data.pkl")]
    cache: dict[str, np.ndarray] = {}

    def persistent_load(pid):
      _, stype, key, _location, numel = _check_storage_pid(pid)[:5]
      key = str(key)
      if key not in cache:
        raw = zf.read(f"{root}data/{key}")
        cache[key] = stype.from_bytes(raw, len(raw) // stype.itemsize)
      return cache[key]

    with zf.open(pkls[0]) as f:
      return RestrictedUnpickler(io.BytesIO(f.read()), persistent_load).load()


def _load_legacy(data: bytes, path) -> Any:
  """The legacy format from the file's bytes (`path` names it in errors)."""
  f = io.BytesIO(data)
  plain = RestrictedUnpickler(f, lambda pid: None)
  magic = plain.load()
  if magic != LEGACY_MAGIC:
    raise ValueError(f"{path}: neither a zip nor a legacy torch checkpoint (magic {magic!r})")
  protocol, sys_info = plain.load(), plain.load()
  if protocol != 1001:
    raise ValueError(f"{path}: unsupported legacy protocol version {protocol}")
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise ValueError(f"{path}: big-endian checkpoints are not supported")
  obj_start = f.tell()
  # Pass 1: learn the storages (type, element count) the object refers to.
  seen: dict[str, tuple[StorageType, int]] = {}

  def record(pid):
    _, stype, key, _loc, numel = _check_storage_pid(pid)[:5]
    seen[str(key)] = (stype, int(numel))
    return np.zeros(int(numel), stype.dtype if stype.dtype is not _BF16 else np.float32)

  RestrictedUnpickler(f, record).load()
  keys = RestrictedUnpickler(f, lambda pid: None).load()
  storages: dict[str, np.ndarray] = {}
  for key in keys:
    stype, numel = seen[str(key)]
    (count,) = struct.unpack("<q", f.read(8))
    if count != numel:
      raise ValueError(f"{path}: storage {key} holds {count} elements, expected {numel}")
    storages[str(key)] = stype.from_bytes(f.read(count * stype.itemsize), count)

  # Pass 2: rebuild the object on the real storages.
  def persistent_load(pid):
    _, _stype, key, _loc, _numel = pid[:5]
    view = pid[5] if len(pid) > 5 else None
    arr = storages[str(key)]
    if view is not None:
      _view_key, off, size = view
      arr = arr[int(off):int(off) + int(size)]
    return arr

  f.seek(obj_start)
  return RestrictedUnpickler(f, persistent_load).load()


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
  """Loads a `.pth`/`.pt`/`.tar` checkpoint (zip or legacy format; a path or URL) as numpy
  arrays.

  Returns the pickled object (usually an OrderedDict name -> np.ndarray, or a dict holding
  one under 'state_dict') with every tensor replaced by a contiguous numpy array.
  """
  p = paths.resolve(path)
  if not p.is_file():  # before open: a URL's file object only fails at its first read
    raise FileNotFoundError(f"checkpoint not found: {path}")
  with p.open("rb") as f:
    if zipfile.is_zipfile(f):
      return _load_zip(f, path)
    f.seek(0)
    return _load_legacy(f.read(), path)


def checkpoint_format(path: str | os.PathLike) -> str:
  """'zip' or 'legacy' (a path or URL)."""
  with paths.resolve(path).open("rb") as f:
    return "zip" if zipfile.is_zipfile(f) else "legacy"


def state_dict_of(obj: Any, strip_prefix: str = "module.") -> dict[str, np.ndarray]:
  """The state dict inside a loaded checkpoint ('state_dict' entry or the object itself),
  with `strip_prefix` removed from keys that carry it."""
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
  out = {}
  for k, v in obj.items():
    if strip_prefix and k.startswith(strip_prefix):
      k = k[len(strip_prefix):]
    out[k] = v
  return out
