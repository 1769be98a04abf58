"""Read `joblib.dump(obj, "x.lz4")` files (the PyPI `mtcnn` package's Keras weight lists)
into numpy WITHOUT importing joblib and without running code from the file.

The file is an LZ4 frame (magic 04 22 4D 18) holding one pickle stream in which each numpy
array is a `joblib.numpy_pickle.NumpyArrayWrapper` (subclass, shape, order, dtype,
allow_mmap[, numpy_array_alignment_bytes]) whose raw bytes follow its BUILD opcode in the
stream (after a one-byte padding length and that many padding bytes when the wrapper records
an alignment). The unpickler here resolves only that wrapper, `numpy.ndarray` (as the
wrapper's subclass), `numpy.dtype` and the builtin containers; any other global raises
`pickle.UnpicklingError` naming the file. Object arrays are refused.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

from tinyfaces_jax import paths

LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


class _ArrayWrapper:
  """Stand-in for joblib's NumpyArrayWrapper: keeps its state for `_read_array`."""

  def __setstate__(self, state):
    self.state = state


class _Sentinel:
  """Stand-in for `numpy.ndarray` as a wrapper's subclass (only plain arrays are rebuilt)."""


def _read_array(state: dict, stream, source: str) -> np.ndarray:
  dtype = np.dtype(state["dtype"])
  if dtype.hasobject:
    raise pickle.UnpicklingError(f"{source}: object arrays are not read (arbitrary code)")
  if state.get("numpy_array_alignment_bytes") is not None:
    pad = stream.read(1)
    stream.read(int.from_bytes(pad, "little"))
  shape = tuple(int(s) for s in state["shape"])
  count = int(np.prod(shape, dtype=np.int64))
  data = stream.read(count * dtype.itemsize)
  if len(data) != count * dtype.itemsize:
    raise pickle.UnpicklingError(f"{source}: truncated array data (wanted "
                                 f"{count * dtype.itemsize} bytes, got {len(data)})")
  array = np.frombuffer(data, dtype=dtype, count=count)
  array = (array.reshape(shape[::-1]).transpose() if state.get("order") == "F"
           else array.reshape(shape))
  return array.astype(dtype.newbyteorder("="), copy=True)


class _Unpickler(pickle._Unpickler):  # the pure-Python one: its dispatch table is overridable
  def __init__(self, stream, source: str):
    super().__init__(stream)
    self._stream, self._source = stream, source

  def find_class(self, module, name):
    allowed = {("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayWrapper,
               ("numpy", "ndarray"): _Sentinel, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "dtype"): np.dtype}
    if (module, name) in allowed:
      return allowed[(module, name)]
    raise pickle.UnpicklingError(f"{self._source}: refusing the global {module}.{name} (only "
                                 "numpy arrays in joblib's format are read)")

  def load_build(self):
    pickle._Unpickler.load_build(self)
    if isinstance(self.stack[-1], _ArrayWrapper):
      self.stack[-1] = _read_array(self.stack[-1].state, self._stream, self._source)

  dispatch = dict(pickle._Unpickler.dispatch)
  dispatch[pickle.BUILD[0]] = load_build


def read_joblib_lz4(path: str | os.PathLike):
  """A joblib `.lz4` file (path or URL) -> the pickled object with numpy arrays in it.

  Raises ValueError naming the file when it is not an LZ4 frame or the frame is corrupt, and
  pickle.UnpicklingError when the pickle is truncated or names a global that is not numpy's.
  """
  import lz4.frame
  data = paths.resolve(path).read_bytes()
  if data[:4] != LZ4_FRAME_MAGIC:
    raise ValueError(f"{path}: not an LZ4 frame (joblib .lz4 files start with 04 22 4D 18, "
                     f"this one with {data[:4].hex(' ')})")
  try:
    raw = lz4.frame.decompress(data)
  except RuntimeError as e:
    raise ValueError(f"{path}: corrupt LZ4 frame ({e})") from None
  stream = io.BytesIO(raw)
  try:
    return _Unpickler(stream, str(path)).load()
  except (EOFError, IndexError, KeyError, TypeError) as e:
    raise pickle.UnpicklingError(f"{path}: not a readable joblib pickle ({e!r})") from None
