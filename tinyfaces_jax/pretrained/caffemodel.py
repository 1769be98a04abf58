"""Read Caffe `.caffemodel` weights into numpy WITHOUT Caffe or the protobuf package.

A `.caffemodel` is one serialized `caffe.NetParameter` protocol buffer (caffe.proto, proto2;
BVLC master and the weiliu89 SSD branch agree on every field read here). The wire format is a
sequence of fields, each a varint tag `field_number << 3 | wire_type` followed by its value:
wire type 0 a varint, 1 eight little-endian bytes, 2 a varint byte length and that many bytes
(strings, embedded messages, packed repeated scalars), 5 four little-endian bytes; 3 and 4
(groups) are not used by caffe.proto and are rejected. Fields may come in any order, a
repeated scalar may be packed (one length-delimited run) or not (one field per element, the
two mixed freely), and every field this reader does not know is skipped by its wire type.

The subset read:

  NetParameter       repeated LayerParameter layer = 100     (current format)
                     repeated V1LayerParameter layers = 2    (old format; not both in one file)
  LayerParameter     string name = 1, repeated BlobProto blobs = 7
  V1LayerParameter   string name = 4, repeated BlobProto blobs = 6  (a V0 `layer = 1` inside
                     it, the pre-2014 format, is refused with a ValueError)
  BlobProto          BlobShape shape = 7 (BlobShape: repeated int64 dim = 1, packed)
                     repeated float data = 5, repeated double double_data = 8 (packed)
                     int32/int64 num = 1, channels = 2, height = 3, width = 4 (legacy 4-D shape)

Everything else (layer types and parameters, bottoms/tops, the gradient fields diff = 6 and
double_diff = 9, the net's name and inputs) is skipped without being decoded. A blob's shape
follows Caffe's `Blob::FromProto`: the legacy (num, channels, height, width) when any of those
four fields is present, else `shape` (no dims: a scalar); its values are `double_data` when
present (narrowed to float32), else `data`, and must number exactly the shape's element count.

Cost: the file is read into memory once; packed payloads become arrays through
`np.frombuffer` at their offsets (no slicing, no Python loop per value), so parsing is linear
in the file size, and each blob is copied once out of the file's bytes into its own writable
native float32 array (peak memory about twice the file). Unpacked values are decoded by numpy
over runs of equal-size records.

Damage is reported as a one-line ValueError naming the file and the byte offset (a length
running past its message or the file, a varint cut off or over 10 bytes, an invalid wire type
or field number). A file cut exactly between two top-level layers is indistinguishable from a
shorter net in this format; anywhere else (inside a layer, i.e. almost every byte of a real
file) a cut is detected.
"""

from __future__ import annotations

import math
import os
from typing import NoReturn

import numpy as np

from tinyfaces_jax import paths

VARINT, FIXED64, LENGTH, GROUP_START, GROUP_END, FIXED32 = 0, 1, 2, 3, 4, 5

NET_LAYER, NET_V1_LAYERS = 100, 2
LAYER_NAME, LAYER_BLOBS = 1, 7
V1_V0_LAYER, V1_NAME, V1_BLOBS = 1, 4, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1

_LEGACY_FIELDS = (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH)
_FLOAT, _DOUBLE = np.dtype("<f4"), np.dtype("<f8")


class _Parser:
  """Wire-format decoding over the whole file's bytes; positions are absolute byte offsets
  and every message is a [start, end) range of the one buffer.

  Args:
    buf: the file's bytes.
    path: the file's name, for error messages.
  """

  def __init__(self, buf: bytes, path: str):
    self.buf, self.path = buf, path

  def fail(self, pos: int, msg: str) -> NoReturn:
    raise ValueError(f"{self.path}: truncated or corrupt caffemodel at byte {pos}: {msg}")

  def varint(self, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at `pos` (within [pos, end)) and the position after it."""
    buf, start, value, shift = self.buf, pos, 0, 0
    while True:
      if pos >= end:
        self.fail(start, "varint cut off" + self._where(end))
      if pos - start == 10:
        self.fail(start, "varint longer than 10 bytes")
      b = buf[pos]
      pos += 1
      value |= (b & 0x7F) << shift
      if b < 0x80:
        return value, pos
      shift += 7

  def signed(self, pos: int, end: int) -> tuple[int, int]:
    """An int32/int64 varint (two's complement over 64 bits) at `pos`."""
    value, pos = self.varint(pos, end)
    value &= (1 << 64) - 1
    return (value - (1 << 64) if value >= 1 << 63 else value), pos

  def tag(self, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position of the value) of the field starting at `pos`."""
    tag, after = self.varint(pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0 or tag >= 1 << 32:
      self.fail(pos, f"invalid field tag {tag}")
    if wire in (GROUP_START, GROUP_END):
      self.fail(pos, f"field {field} is a group (wire type {wire}), not used by caffe.proto")
    if wire not in (VARINT, FIXED64, LENGTH, FIXED32):
      self.fail(pos, f"field {field} has invalid wire type {wire}")
    return field, wire, after

  def length(self, field: int, pos: int, end: int) -> tuple[int, int]:
    """The [start, stop) range of the length-delimited value at `pos` (its length varint)."""
    n, start = self.varint(pos, end)
    if start + n > end:
      self.fail(pos, f"field {field} declares {n} bytes, only {end - start} left"
                + self._where(end))
    return start, start + n

  def skip(self, field: int, wire: int, pos: int, end: int) -> int:
    """The position after the value (of any wire type) at `pos`."""
    if wire == VARINT:
      return self.varint(pos, end)[1]
    if wire == LENGTH:
      return self.length(field, pos, end)[1]
    size = 8 if wire == FIXED64 else 4
    if pos + size > end:
      self.fail(pos, f"field {field} needs {size} bytes, only {end - pos} left"
                + self._where(end))
    return pos + size

  def text(self, start: int, stop: int) -> str:
    try:
      return self.buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
      self.fail(start, "a layer name that is not UTF-8")

  def _where(self, end: int) -> str:
    return " (end of file)" if end == len(self.buf) else f" in its message (ends at byte {end})"

  def fixed_run(self, pos: int, end: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Unpacked fixed-size values: the maximal run of records `tag byte, value` starting at
    `pos` (the first record's one-byte tag), found by doubling chunks (linear in the run)."""
    rec = 1 + dtype.itemsize
    tag, n, step = self.buf[pos], 0, 1
    n_max = (end - pos) // rec
    while n < n_max:
      k = min(step, n_max - n)
      tags = np.frombuffer(self.buf, np.uint8, count=k * rec, offset=pos + n * rec)[::rec]
      bad = np.flatnonzero(tags != tag)
      if bad.size:
        n += int(bad[0])
        break
      n, step = n + k, step * 2
    if n == 0:
      self.fail(pos + 1, f"a {dtype.itemsize}-byte value cut off" + self._where(end))
    records = np.frombuffer(self.buf, np.uint8, count=n * rec, offset=pos).reshape(n, rec)
    return np.ascontiguousarray(records[:, 1:]).view(dtype).reshape(n), pos + n * rec

  def packed(self, start: int, stop: int, dtype: np.dtype) -> np.ndarray:
    """A packed run of fixed-size values occupying [start, stop), as a view of the file."""
    if (stop - start) % dtype.itemsize:
      self.fail(start, f"packed run of {stop - start} bytes is not a whole number of "
                f"{dtype.itemsize}-byte values")
    return np.frombuffer(self.buf, dtype, count=(stop - start) // dtype.itemsize, offset=start)

  def net(self) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """The top-level NetParameter: (name, byte offset, blob ranges) per layer, in file order."""
    pos, end = 0, len(self.buf)
    layers, seen_new, seen_v1 = [], False, False
    while pos < end:
      field, wire, pos = self.tag(pos, end)
      if wire == LENGTH and field in (NET_LAYER, NET_V1_LAYERS):
        start, stop = self.length(field, pos, end)
        v1 = field == NET_V1_LAYERS
        seen_new, seen_v1 = seen_new or not v1, seen_v1 or v1
        layers.append(self.layer(start, stop, v1))
        pos = stop
      else:
        pos = self.skip(field, wire, pos, end)
    if seen_new and seen_v1:
      raise ValueError(f"{self.path}: holds both 'layer' (field 100) and V1 'layers' (field 2)"
                       " entries, which Caffe refuses as inconsistent")
    if not layers:
      raise ValueError(f"{self.path}: not a Caffe NetParameter: no 'layer' (field 100) or "
                       f"'layers' (field 2) entry in its {end} bytes")
    return layers

  def layer(self, pos: int, end: int, v1: bool) -> tuple[str, int, list[tuple[int, int]]]:
    """A (V1)LayerParameter in [pos, end): its name, offset and its blobs' byte ranges."""
    name_field, blobs_field = (V1_NAME, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_BLOBS)
    at, name, blobs = pos, "", []
    while pos < end:
      field, wire, vpos = self.tag(pos, end)
      if wire == LENGTH and field in (name_field, blobs_field):
        start, stop = self.length(field, vpos, end)
        if field == name_field:
          name = self.text(start, stop)
        else:
          blobs.append((start, stop))
        pos = stop
      elif v1 and wire == LENGTH and field == V1_V0_LAYER:
        self.fail(pos, "a V0 layer (V1LayerParameter.layer = 1, the pre-2014 format) is not "
                  "supported: upgrade the file with Caffe's upgrade_net_proto_binary")
      else:
        pos = self.skip(field, wire, vpos, end)
    return name, at, blobs

  def blob(self, pos: int, end: int, layer: str, index: int) -> np.ndarray:
    """A BlobProto in [pos, end) -> float32 array of its shape (a copy, native order)."""
    dims: list[int] = []
    legacy: dict[int, int] = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    while pos < end:
      field, wire, vpos = self.tag(pos, end)
      if field in (BLOB_DATA, BLOB_DOUBLE_DATA) and wire in (LENGTH, FIXED32, FIXED64):
        dtype, out = (_FLOAT, floats) if field == BLOB_DATA else (_DOUBLE, doubles)
        if wire == LENGTH:
          start, pos = self.length(field, vpos, end)
          out.append(self.packed(start, pos, dtype))
          continue
        if (wire == FIXED32) == (dtype is _FLOAT):
          if vpos == pos + 1:  # the usual one-byte tag: decode the whole run of records
            run, pos = self.fixed_run(pos, end, dtype)
          else:  # a tag in a non-minimal varint: this one value
            pos = self.skip(field, wire, vpos, end)
            run = np.frombuffer(self.buf, dtype, count=1, offset=vpos).copy()
          out.append(run)
          continue
      elif field == BLOB_SHAPE and wire == LENGTH:
        start, pos = self.length(field, vpos, end)
        dims += self.shape(start, pos)
        continue
      elif field in _LEGACY_FIELDS and wire == VARINT:
        legacy[field], pos = self.signed(vpos, end)
        continue
      pos = self.skip(field, wire, vpos, end)
    shape = (tuple(legacy.get(f, 0) for f in _LEGACY_FIELDS) if legacy else tuple(dims))
    where = f"{self.path}: layer {layer!r} blob {index}"
    if any(d < 0 for d in shape):
      raise ValueError(f"{where}: negative dimension in shape {shape}")
    parts = doubles or floats
    count = sum(p.shape[0] for p in parts)
    expected = math.prod(shape)
    if count != expected:
      raise ValueError(f"{where}: {count} {'double' if doubles else 'float'} values for shape "
                       f"{shape} ({expected} expected)")
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, _FLOAT)])
    # One part is a view of the file's bytes: copy it out; a concatenation is already new.
    return flat.astype(np.float32, copy=len(parts) == 1).reshape(shape)

  def shape(self, pos: int, end: int) -> list[int]:
    """A BlobShape in [pos, end): its dims (packed or not)."""
    dims = []
    while pos < end:
      field, wire, vpos = self.tag(pos, end)
      if field == SHAPE_DIM and wire == LENGTH:
        start, pos = self.length(field, vpos, end)
        while start < pos:
          d, start = self.signed(start, pos)
          dims.append(d)
      elif field == SHAPE_DIM and wire == VARINT:
        d, pos = self.signed(vpos, end)
        dims.append(d)
      else:
        pos = self.skip(field, wire, vpos, end)
    return dims


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
  """Reads a `.caffemodel` (a local path or a URL etils.epath understands).

  Returns:
    layer name -> its blobs, in file order, for the layers that carry blobs (others, e.g.
    ReLU or pooling layers, are left out). Each blob is a float32 array of the blob's shape:
    convolution weights [O, I, kh, kw] (OIHW) then bias [O]; legacy-shaped blobs keep their
    4-D (num, channels, height, width), e.g. a bias as [1, 1, 1, O].

  Raises:
    ValueError: a truncated or corrupt file (naming the byte offset); a blob whose value count
      is not its shape's element count (naming the layer and the blob index); two
      blob-carrying layers with one name; a file holding no layers at all.
  """
  name = os.fspath(path)
  parser = _Parser(paths.resolve(path).read_bytes(), name)
  out: dict[str, list[np.ndarray]] = {}
  first_at: dict[str, int] = {}
  for layer, at, blob_ranges in parser.net():
    if not blob_ranges:
      continue
    if layer in out:
      raise ValueError(f"{name}: two layers with blobs are named {layer!r} (at bytes "
                       f"{first_at[layer]} and {at})")
    first_at[layer] = at
    out[layer] = [parser.blob(start, stop, layer, i)
                  for i, (start, stop) in enumerate(blob_ranges)]
  return out
