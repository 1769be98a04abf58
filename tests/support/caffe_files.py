"""Caffe `.caffemodel` files written without Caffe or protobuf (a protobuf wire-format
encoder of its own, independent of tinyfaces_jax.pretrained.caffemodel), for the reader's
and the Caffe importers' synthetic tests; plus SSH_CAFFE_SHAPES, the blob shapes of the
public SSH.caffemodel (VGG16 trunk + three detection modules)."""

from __future__ import annotations

import collections
import struct

import numpy as np
from etils import epath

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# V1LayerParameter.LayerType values (caffe.proto) for the types the tests name.
V1_TYPES = {"Convolution": 4, "Data": 5, "Deconvolution": 39, "InnerProduct": 14,
            "Pooling": 17, "ReLU": 18, "Softmax": 20}


def varint(value: int) -> bytes:
  """An unsigned varint; a negative value as its 64-bit two's complement (10 bytes)."""
  value &= (1 << 64) - 1
  out = bytearray()
  while True:
    b, value = value & 0x7F, value >> 7
    if value:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def key(field: int, wire: int) -> bytes:
  return varint(field << 3 | wire)


def f_varint(field: int, value: int) -> bytes:
  return key(field, VARINT) + varint(value)


def f_bytes(field: int, payload: bytes) -> bytes:
  """A length-delimited field (string, embedded message or packed run)."""
  return key(field, LENGTH) + varint(len(payload)) + payload


def f_fixed32(field: int, raw4: bytes) -> bytes:
  return key(field, FIXED32) + raw4


def f_fixed64(field: int, raw8: bytes) -> bytes:
  return key(field, FIXED64) + raw8


def unknown_fields(first: int) -> bytes:
  """One field of each wire type (varint, 64-bit, length-delimited, 32-bit) numbered
  first, first+1, ...: numbers caffe.proto does not use where the tests put them."""
  return (f_varint(first, 300) + f_fixed64(first + 1, struct.pack("<d", 2.5))
          + f_bytes(first + 2, b"\x08\x96\x01unknown") + f_fixed32(first + 3, b"\x01\x02\x03\x04"))


def blob_proto(array, *, packed: bool = True, legacy_shape: bool = False,
               shape=None, extra: bytes = b"") -> bytes:
  """A BlobProto holding `array`: float64 arrays as double_data (8), others as float32 data
  (5); the shape as BlobShape (7) or, with legacy_shape, the 4-D num/channels/height/width
  (1-4) with leading 1s for fewer dims. `shape` overrides the array's own (for mismatches);
  `extra` is appended (unknown fields, a diff)."""
  array = np.asarray(array)
  shape = tuple(array.shape if shape is None else shape)
  if legacy_shape:
    if len(shape) > 4:
      raise ValueError(f"legacy shapes are 4-D, got {shape}")
    dims = (1,) * (4 - len(shape)) + shape
    out = b"".join(f_varint(f, d) for f, d in zip((1, 2, 3, 4), dims))
  elif packed:
    out = f_bytes(7, f_bytes(1, b"".join(varint(d) for d in shape)))
  else:
    out = f_bytes(7, b"".join(f_varint(1, d) for d in shape))
  if array.dtype == np.float64:
    field, wire_fn, raw = 8, f_fixed64, array.astype("<f8").tobytes()
    size = 8
  else:
    field, wire_fn, raw = 5, f_fixed32, array.astype("<f4").tobytes()
    size = 4
  if packed:
    out += f_bytes(field, raw)
  else:
    out += b"".join(wire_fn(field, raw[i:i + size]) for i in range(0, len(raw), size))
  return out + extra


def layer_proto(name: str, type_str: str, blobs: list[bytes], *, v1: bool = False,
                extra: bytes = b"") -> bytes:
  """A LayerParameter (name 1, type 2 string, blobs 7) or V1LayerParameter (name 4, type 5
  enum, blobs 6) from encoded BlobProtos; a bottom and a top (3/4, V1: 2/3) like real files."""
  if v1:
    out = (f_bytes(2, b"bottom") + f_bytes(3, name.encode()) + f_bytes(4, name.encode())
           + f_varint(5, V1_TYPES.get(type_str, 0)))
    return out + b"".join(f_bytes(6, b) for b in blobs) + extra
  out = (f_bytes(1, name.encode()) + f_bytes(2, type_str.encode()) + f_bytes(3, b"bottom")
         + f_bytes(4, name.encode()))
  if blobs:  # a ParamSpec (6) per blob and a convolution_param (106) {num_output: 1}
    out += b"".join(f_bytes(6, f_fixed32(3, struct.pack("<f", 1.0))) for _ in blobs)
    out += f_bytes(106, f_varint(1, 1))
  return out + b"".join(f_bytes(7, b) for b in blobs) + extra


def net_proto(layers: list[bytes], *, v1: bool = False, name: str = "synthetic",
              extra: bytes = b"") -> bytes:
  """A NetParameter: its name (1), `extra`, then the encoded layers (100, V1: 2)."""
  field = 2 if v1 else 100
  return f_bytes(1, name.encode()) + extra + b"".join(f_bytes(field, m) for m in layers)


def write_caffemodel(path, layers, *, v1: bool = False, packed: bool = True,
                     legacy_shape: bool = False, unknown: bool = False) -> bytes:
  """Writes a NetParameter with `layers` [(name, type_str, [arrays])] (an empty list: a layer
  without blobs) to `path` (a local path or URL) and returns the bytes. `packed` encodes the
  floats and the shape dims packed or one field per value; `unknown` adds a field of each wire
  type to the net, every layer and every blob (plus a packed diff, field 6, in each blob)."""
  msgs = []
  for name, type_str, arrays in layers:
    blobs = [blob_proto(a, packed=packed, legacy_shape=legacy_shape,
                        extra=(unknown_fields(20) + f_bytes(6, np.ones(np.size(a), "<f4")
                                                            .tobytes())) if unknown else b"")
             for a in arrays]
    msgs.append(layer_proto(name, type_str, blobs, v1=v1,
                            extra=unknown_fields(2000) if unknown else b""))
  data = net_proto(msgs, v1=v1, extra=unknown_fields(50) if unknown else b"")
  epath.Path(path).write_bytes(data)
  return data


def _ssh_shapes() -> collections.OrderedDict:
  conv3 = lambda o, i: [[o, i, 3, 3], [o]]  # noqa: E731
  conv1 = lambda o, i: [[o, i, 1, 1], [o]]  # noqa: E731
  t = collections.OrderedDict()
  for name, o, i in [("conv1_1", 64, 3), ("conv1_2", 64, 64), ("conv2_1", 128, 64),
                     ("conv2_2", 128, 128), ("conv3_1", 256, 128), ("conv3_2", 256, 256),
                     ("conv3_3", 256, 256), ("conv4_1", 512, 256), ("conv4_2", 512, 512),
                     ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
                     ("conv5_3", 512, 512)]:
    t[name] = conv3(o, i)
  t["conv5_128"] = conv1(128, 512)
  t["conv4_128"] = conv1(128, 512)
  t["conv5_128_up"] = [[128, 1, 4, 4]]  # grouped bilinear deconvolution, no bias
  t["conv4_fuse_final"] = conv3(128, 128)
  for m, c_in, c_ctx in [("m1", 128, 64), ("m2", 512, 128), ("m3", 512, 128)]:
    t[f"{m}@ssh_3x3"] = conv3(2 * c_ctx, c_in)
    t[f"{m}@ssh_dimred"] = conv3(c_ctx, c_in)
    t[f"{m}@ssh_5x5"] = conv3(c_ctx, c_ctx)
    t[f"{m}@ssh_7x7-1"] = conv3(c_ctx, c_ctx)
    t[f"{m}@ssh_7x7"] = conv3(c_ctx, c_ctx)
    t[f"{m}@ssh_cls_score"] = conv1(4, 4 * c_ctx)
    t[f"{m}@ssh_bbox_pred"] = conv1(8, 4 * c_ctx)
  return t


# SSH.caffemodel (mahyarnajibi/SSH): blob-carrying layer name -> blob shapes (OIHW weight,
# then bias [O]): 38 layers, 75 blobs (trunk, fusion, then modules m1-m3; the real file's
# layer order may differ).
SSH_CAFFE_SHAPES: collections.OrderedDict = _ssh_shapes()
