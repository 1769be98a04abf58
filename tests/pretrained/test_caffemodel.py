"""pretrained/caffemodel: the protobuf-free .caffemodel reader, on files from the test writer
(tests/support/caffe_files) and, where the protobuf package is installed, on files serialized
by protobuf itself from a caffe.proto subset."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tinyfaces_jax.pretrained.caffemodel import read_caffemodel
from tests.support import caffe_files as cf


def _net(rng, dtype=np.float32):
  """A small net: conv (weight + bias), a ReLU (no blobs), a conv without bias, an
  InnerProduct, a Pooling (no blobs) and a one-blob scalar-ish layer."""
  r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
  return [("data", "Data", []),
          ("conv1", "Convolution", [r(4, 3, 3, 3), r(4)]),
          ("relu1", "ReLU", []),
          ("up", "Deconvolution", [r(4, 1, 4, 4)]),
          ("pool1", "Pooling", []),
          ("fc", "InnerProduct", [r(10, 36), r(10)]),
          ("scale", "Scale", [r(1)])]


def _expect(layers, legacy=False):
  out = {}
  for name, _, arrays in layers:
    if arrays:
      out[name] = [np.asarray(a, np.float32).reshape((1,) * (4 - a.ndim) + a.shape)
                   if legacy else np.asarray(a, np.float32) for a in arrays]
  return out


def _check(got, want):
  assert list(got) == list(want)
  for name in want:
    assert len(got[name]) == len(want[name]), name
    for g, w in zip(got[name], want[name]):
      assert g.dtype == np.float32 and g.shape == w.shape, (name, g.shape, w.shape)
      assert g.flags.writeable and g.flags.c_contiguous
      np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1_layers"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_round_trip(tmp_path, v1, packed):
  layers = _net(np.random.default_rng(0))
  path = tmp_path / "net.caffemodel"
  cf.write_caffemodel(path, layers, v1=v1, packed=packed)
  got = read_caffemodel(path)
  _check(got, _expect(layers))
  assert "relu1" not in got and "pool1" not in got and "data" not in got  # no blobs: omitted
  got["conv1"][0][0, 0, 0, 0] = 123.0  # an own, writable copy
  assert read_caffemodel(str(path))["conv1"][0][0, 0, 0, 0] != 123.0


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1_layers"])
def test_legacy_shape_kept_4d(tmp_path, v1):
  layers = _net(np.random.default_rng(1))
  path = tmp_path / "legacy.caffemodel"
  cf.write_caffemodel(path, layers, v1=v1, legacy_shape=True)
  got = read_caffemodel(path)
  _check(got, _expect(layers, legacy=True))
  assert got["conv1"][1].shape == (1, 1, 1, 4) and got["fc"][0].shape == (1, 1, 10, 36)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_double_data_narrowed(tmp_path, packed):
  layers = _net(np.random.default_rng(2), dtype=np.float64)
  path = tmp_path / "double.caffemodel"
  cf.write_caffemodel(path, layers, packed=packed)
  _check(read_caffemodel(path), _expect(layers))


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1_layers"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_unknown_fields_of_every_wire_type_skipped(tmp_path, v1, packed):
  layers = _net(np.random.default_rng(3))
  path = tmp_path / "unknown.caffemodel"
  data = cf.write_caffemodel(path, layers, v1=v1, packed=packed, unknown=True)
  assert data != cf.write_caffemodel(tmp_path / "plain", layers, v1=v1, packed=packed)
  _check(read_caffemodel(path), _expect(layers))


def test_mixed_packed_and_unpacked_runs(tmp_path):
  """One blob's values split over packed and unpacked runs (an unknown field between two
  unpacked runs, a non-minimal tag, a diff in the middle), dims half packed half not, two
  shape fields merged (protobuf's merge of a repeated message field)."""
  vals = np.arange(24, dtype="<f4")
  one = lambda v: cf.f_fixed32(5, struct.pack("<f", v))  # noqa: E731
  blob = (cf.f_bytes(7, cf.f_bytes(1, cf.varint(2)) + cf.f_varint(1, 3))
          + cf.f_bytes(5, vals[:5].tobytes())
          + b"".join(one(v) for v in vals[5:12])
          + cf.f_varint(30, 7)
          + b"\xad\x00" + struct.pack("<f", vals[12])  # field 5 tag as a 2-byte varint
          + cf.f_bytes(6, vals.tobytes())
          + cf.f_bytes(7, cf.f_varint(1, 4))
          + cf.f_bytes(5, vals[13:20].tobytes())
          + b"".join(one(v) for v in vals[20:]))
  path = tmp_path / "mixed.caffemodel"
  path.write_bytes(cf.net_proto([cf.layer_proto("w", "Convolution", [blob])]))
  (w,) = read_caffemodel(path)["w"]
  np.testing.assert_array_equal(w, vals.reshape(2, 3, 4))


def test_scalar_blob_without_shape(tmp_path):
  path = tmp_path / "scalar.caffemodel"
  blob = cf.f_bytes(5, np.float32(2.5).tobytes())
  path.write_bytes(cf.net_proto([cf.layer_proto("s", "Scale", [blob])]))
  (s,) = read_caffemodel(path)["s"]
  assert s.shape == () and s == 2.5


def test_legacy_fields_win_over_shape_like_caffe(tmp_path):
  """Blob::FromProto takes (num, channels, height, width) when any of them is present."""
  path = tmp_path / "both.caffemodel"
  data = cf.f_bytes(5, np.arange(6, dtype="<f4").tobytes())
  shape = cf.f_bytes(7, cf.f_bytes(1, cf.varint(6)))
  blob = shape + b"".join(cf.f_varint(f, d) for f, d in zip((1, 2, 3, 4), (1, 1, 2, 3))) + data
  path.write_bytes(cf.net_proto([cf.layer_proto("w", "Convolution", [blob])]))
  (w,) = read_caffemodel(path)["w"]
  assert w.shape == (1, 1, 2, 3)
  # Only height and width given: num and channels default to 0, as in Caffe (0 values).
  blob = shape + cf.f_varint(3, 2) + cf.f_varint(4, 3) + data
  path.write_bytes(cf.net_proto([cf.layer_proto("w", "Convolution", [blob])]))
  with pytest.raises(ValueError, match=r"blob 0: 6 float values for shape \(0, 0, 2, 3\)"):
    read_caffemodel(path)


def test_truncated_file_names_path_and_offset(tmp_path):
  data = cf.write_caffemodel(tmp_path / "full.caffemodel", _net(np.random.default_rng(4)))
  for cut in (len(data) - 1, len(data) // 2, 60, 3, 1):
    path = tmp_path / f"cut{cut}.caffemodel"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=rf"cut{cut}\.caffemodel: .* at byte \d+: ") as e:
      read_caffemodel(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("v1,packed,unknown", [(False, True, False), (True, False, True)],
                         ids=["layer_packed", "v1_unpacked_unknown"])
def test_every_cut_raises_or_is_a_layer_boundary(tmp_path, v1, packed, unknown):
  """Cut anywhere, the reader raises, except exactly between two layers (the format cannot
  tell that from a shorter net), where it returns the complete layers before the cut."""
  rng = np.random.default_rng(11)
  layers = [("data", "Data", []),
            ("conv", "Convolution", [rng.standard_normal((2, 1, 1, 2)), np.ones(2)]),
            ("relu", "ReLU", []), ("fc", "InnerProduct", [rng.standard_normal((2, 3))])]
  data = cf.write_caffemodel(tmp_path / "full.caffemodel", layers, v1=v1, packed=packed,
                             unknown=unknown)
  want, path, whole = _expect(layers), tmp_path / "cut.caffemodel", 0
  for cut in range(len(data)):
    path.write_bytes(data[:cut])
    try:
      got = read_caffemodel(path)
    except ValueError as e:
      assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
      continue
    whole += 1
    _check(got, {k: want[k] for k in list(want)[:len(got)]})
  assert whole <= len(layers) - 1


@pytest.mark.parametrize("garbage", [
    b"", b"\xff" * 64, b"\x0b\x00", b"\x00\x01", b"\x0e\x01", bytes(range(256)),
    np.random.default_rng(5).bytes(4096), b"\x0a\x05abc",
], ids=["empty", "endless_varint", "group", "field0", "wire6", "ramp", "random", "short"])
def test_garbage_raises(tmp_path, garbage):
  path = tmp_path / "garbage.caffemodel"
  path.write_bytes(garbage)
  with pytest.raises(ValueError, match="garbage.caffemodel") as e:
    read_caffemodel(path)
  assert "\n" not in str(e.value)


def test_cut_inside_packed_run_of_blob(tmp_path):
  """A packed data run whose length is not a multiple of 4 (inside an intact blob)."""
  blob = cf.f_bytes(7, cf.f_bytes(1, cf.varint(2))) + cf.f_bytes(5, b"\x00" * 7)
  path = tmp_path / "odd.caffemodel"
  path.write_bytes(cf.net_proto([cf.layer_proto("w", "Convolution", [blob])]))
  with pytest.raises(ValueError, match=r"odd\.caffemodel.* at byte \d+: packed run of 7"):
    read_caffemodel(path)


def test_duplicate_names(tmp_path):
  rng = np.random.default_rng(6)
  path = tmp_path / "dup.caffemodel"
  cf.write_caffemodel(path, [("conv", "Convolution", [rng.standard_normal((2, 1, 1, 1))]),
                             ("conv", "Convolution", [rng.standard_normal((2, 1, 1, 1))])])
  with pytest.raises(ValueError, match=r"dup\.caffemodel.*'conv'"):
    read_caffemodel(path)
  # Blob-less layers may share names (train/test data layers do), also with a weighted one.
  cf.write_caffemodel(path, [("data", "Data", []), ("data", "Data", []),
                             ("x", "Convolution", [np.ones((1, 1, 1, 1))]), ("x", "ReLU", [])])
  assert list(read_caffemodel(path)) == ["x"]


@pytest.mark.parametrize("count,shape", [(5, (2, 3)), (0, (2,)), (7, (1, 1, 1, 6)),
                                         (2, (-1, -2))])
def test_count_shape_mismatch(tmp_path, count, shape):
  path = tmp_path / "bad.caffemodel"
  good = cf.blob_proto(np.ones(3, np.float32))
  bad = cf.blob_proto(np.zeros(count, np.float32), shape=shape)
  path.write_bytes(cf.net_proto([cf.layer_proto("ok", "Scale", [good]),
                                 cf.layer_proto("conv_b", "Convolution", [good, bad])]))
  with pytest.raises(ValueError, match=r"bad\.caffemodel: layer 'conv_b' blob 1: "):
    read_caffemodel(path)


def test_unsupported_layouts(tmp_path):
  path = tmp_path / "x.caffemodel"
  blob = cf.blob_proto(np.ones(2, np.float32))
  new, old = cf.layer_proto("a", "Scale", [blob]), cf.layer_proto("b", "Scale", [blob], v1=True)
  path.write_bytes(cf.f_bytes(1, b"net") + cf.f_bytes(100, new) + cf.f_bytes(2, old))
  with pytest.raises(ValueError, match="both 'layer'"):
    read_caffemodel(path)
  v0 = cf.f_bytes(1, cf.f_bytes(1, b"conv1") + cf.f_bytes(50, blob))  # V1.layer = V0 layer
  path.write_bytes(cf.net_proto([v0], v1=True))
  with pytest.raises(ValueError, match=r"x\.caffemodel.* at byte \d+: a V0 layer"):
    read_caffemodel(path)
  path.write_bytes(cf.f_bytes(1, b"a net without layers"))
  with pytest.raises(ValueError, match="no 'layer'"):
    read_caffemodel(path)
  with pytest.raises(FileNotFoundError):
    read_caffemodel(tmp_path / "missing.caffemodel")


@pytest.mark.slow  # ram:// imports TensorFlow (seconds)
def test_url_path(ram_dir):
  layers = _net(np.random.default_rng(7))
  cf.write_caffemodel(ram_dir / "net.caffemodel", layers)
  _check(read_caffemodel(f"{ram_dir}/net.caffemodel"), _expect(layers))


@pytest.fixture(scope="module")
def ssh_file(tmp_path_factory):
  rng = np.random.default_rng(8)
  layers = [(n, "Convolution", [rng.standard_normal(s, np.float32) for s in shapes])
            for n, shapes in cf.SSH_CAFFE_SHAPES.items()]
  layers.insert(2, ("relu1_1", "ReLU", []))
  layers.append(("m3@ssh_cls_prob", "Softmax", []))
  path = tmp_path_factory.mktemp("ssh") / "SSH.caffemodel"
  cf.write_caffemodel(path, layers)
  return path, layers


def test_ssh_sized_file(ssh_file):
  path, layers = ssh_file
  got = read_caffemodel(path)
  assert len(got) == 38 and sum(len(b) for b in got.values()) == 75
  assert {n: [list(b.shape) for b in bl] for n, bl in got.items()} == dict(cf.SSH_CAFFE_SHAPES)
  assert list(got) == list(cf.SSH_CAFFE_SHAPES)
  _check(got, _expect(layers))


def _protobuf_caffe():
  """Message classes for a caffe.proto subset (field numbers and types as in caffe.proto),
  built with the protobuf package itself."""
  pytest.importorskip("google.protobuf")
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
  F = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe_subset",
                                           syntax="proto2")

  def message(name, *fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, repeated, packed, type_name in fields:
      f = m.field.add(name=fname, number=number, type=ftype,
                      label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
      if type_name:
        f.type_name = f".caffe_subset.{type_name}"
      if packed:
        f.options.packed = True

  message("BlobShape", ("dim", 1, F.TYPE_INT64, True, True, None))
  message("BlobProto", ("shape", 7, F.TYPE_MESSAGE, False, False, "BlobShape"),
          ("data", 5, F.TYPE_FLOAT, True, True, None),
          ("diff", 6, F.TYPE_FLOAT, True, True, None),
          ("double_data", 8, F.TYPE_DOUBLE, True, True, None),
          ("double_diff", 9, F.TYPE_DOUBLE, True, True, None),
          ("num", 1, F.TYPE_INT32, False, False, None),
          ("channels", 2, F.TYPE_INT32, False, False, None),
          ("height", 3, F.TYPE_INT32, False, False, None),
          ("width", 4, F.TYPE_INT32, False, False, None))
  message("LayerParameter", ("name", 1, F.TYPE_STRING, False, False, None),
          ("type", 2, F.TYPE_STRING, False, False, None),
          ("bottom", 3, F.TYPE_STRING, True, False, None),
          ("top", 4, F.TYPE_STRING, True, False, None),
          ("loss_weight", 5, F.TYPE_FLOAT, True, False, None),
          ("blobs", 7, F.TYPE_MESSAGE, True, False, "BlobProto"),
          ("phase", 10, F.TYPE_INT32, False, False, None))
  message("V1LayerParameter", ("bottom", 2, F.TYPE_STRING, True, False, None),
          ("top", 3, F.TYPE_STRING, True, False, None),
          ("name", 4, F.TYPE_STRING, False, False, None),
          ("type", 5, F.TYPE_INT32, False, False, None),  # an enum on the wire
          ("blobs", 6, F.TYPE_MESSAGE, True, False, "BlobProto"),
          ("blobs_lr", 7, F.TYPE_FLOAT, True, False, None))
  message("NetParameter", ("name", 1, F.TYPE_STRING, False, False, None),
          ("input", 3, F.TYPE_STRING, True, False, None),
          ("input_dim", 4, F.TYPE_INT32, True, False, None),
          ("layer", 100, F.TYPE_MESSAGE, True, False, "LayerParameter"),
          ("layers", 2, F.TYPE_MESSAGE, True, False, "V1LayerParameter"))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe_subset.NetParameter"))


def test_reads_protobuf_serialized_files(tmp_path):
  Net = _protobuf_caffe()
  rng = np.random.default_rng(9)
  w, b, d = (rng.standard_normal((3, 2, 1, 1), np.float32), rng.standard_normal(3, np.float32),
             rng.standard_normal((2, 5)))
  net = Net(name="pb", input=["data"], input_dim=[1, 3, 8, 8])
  net.layer.add(name="relu", type="ReLU", bottom=["data"], top=["data"], loss_weight=[0.5])
  conv = net.layer.add(name="conv", type="Convolution", phase=1)
  conv.blobs.add(shape={"dim": list(w.shape)}, data=w.ravel(), diff=np.ones(w.size))
  conv.blobs.add(num=1, channels=1, height=1, width=3, data=b)
  net.layer.add(name="fc", type="InnerProduct").blobs.add(
      shape={"dim": [2, 5]}, double_data=d.ravel(), double_diff=d.ravel())
  path = tmp_path / "pb.caffemodel"
  path.write_bytes(net.SerializeToString())
  got = read_caffemodel(path)
  _check(got, {"conv": [w, b.reshape(1, 1, 1, 3)], "fc": [d.astype(np.float32)]})

  old = Net(name="v1")
  layer = old.layers.add(name="conv", type=4, bottom=["data"], top=["conv"], blobs_lr=[1, 2])
  layer.blobs.add(num=3, channels=2, height=1, width=1, data=w.ravel())
  layer.blobs.add(num=1, channels=1, height=1, width=3, data=b)
  path.write_bytes(old.SerializeToString())
  _check(read_caffemodel(path), {"conv": [w, b.reshape(1, 1, 1, 3)]})


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1_layers"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_writer_output_parses_with_protobuf(tmp_path, v1, packed):
  """The test writer is valid protobuf: the protobuf package reads back its names and blobs."""
  Net = _protobuf_caffe()
  layers = _net(np.random.default_rng(10))
  data = cf.write_caffemodel(tmp_path / "w.caffemodel", layers, v1=v1, packed=packed,
                             unknown=True)
  net = Net.FromString(data)
  assert net.name == "synthetic"
  msgs = net.layers if v1 else net.layer
  assert [m.name for m in msgs] == [n for n, _, _ in layers]
  for m, (_, type_str, arrays) in zip(msgs, layers):
    assert m.type == (cf.V1_TYPES.get(type_str, 0) if v1 else type_str)
    assert len(m.blobs) == len(arrays)
    for blob, a in zip(m.blobs, arrays):
      assert list(blob.shape.dim) == list(a.shape)
      np.testing.assert_array_equal(np.array(blob.data, np.float32), a.ravel())
