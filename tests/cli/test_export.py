"""Export (export/, cli/export.py): every artifact reloaded and run equals the jitted function
(raw outputs within 1e-4, the same detections), with a symbolic batch; StableHLO for every
family, SavedModel through jax2tf, ONNX (raw networks, export/onnx_graph.py) in onnxruntime;
the command's records and its errors."""

import json

import jax
import numpy as np
import pytest

from configs import hr_res101, mtcnn as mtcnn_config, s3fd_vgg16, ssh_vgg16
from configs import retinaface_mnet025
from tinyfaces_jax.cli import export as export_cli
from tinyfaces_jax.data import image_files
from tinyfaces_jax.export import functions, onnx_graph, savedmodel, stablehlo
from tinyfaces_jax.training import train


def _outputs(fn, args):
  return {k: np.asarray(v) for k, v in jax.device_get(jax.jit(fn)(*args)).items()}


def _same_raw(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.abs(want[k]).max())), err_msg=k)


# S3FD, SSH and HR with random weights at 64 x 96 (HR: two pyramid scales), slow: compiles.
RANDOM_NETWORKS = [
    pytest.param(lambda: s3fd_vgg16.get_config("backbone=mnet025,test"), (1.0,),
                 marks=pytest.mark.slow),
    pytest.param(lambda: ssh_vgg16.get_config("backbone=mnet025,test"), (1.0,),
                 marks=pytest.mark.slow),
    pytest.param(lambda: hr_res101.get_config("backbone=mnet025,test"), (0.5, 1.0),
                 marks=pytest.mark.slow)]
@pytest.mark.parametrize("config,scales", RANDOM_NETWORKS)
def test_raw_stablehlo_of_random_networks(config, scales, tmp_path, shared_dir):
  """S3FD, SSH and HR (random weights; HR one artifact per pyramid scale) at 64 x 96: the
  reloaded artifact on a batch of 3 (the export's batch is symbolic) equals the jitted
  network."""
  c = config()
  with c.unlocked():
    c.eval.scales = scales
  spec = train.RunSpec.from_config(c)
  variables = jax.jit(lambda: spec.detector.init_variables((64, 96)))()
  items = functions.exportables(spec.detector, variables, spec.inference, [(64, 96)], "raw")
  assert len(items) == len(scales)
  for item, s in zip(items, scales):
    assert item.inputs[0][1] == (None, round(64 * s), round(96 * s), 3)
    (path,) = stablehlo.save(item, tmp_path)
    loaded = stablehlo.load(path)
    args = functions.example_inputs(item, 3)
    _same_raw(loaded.call(*args), _outputs(item.fn, args))


@pytest.mark.parametrize("config,scales", RANDOM_NETWORKS)
def test_raw_onnx_of_random_networks(config, scales, tmp_path):
  """S3FD, SSH and HR (random weights, the parameters perturbed so that no head is all zeros;
  HR one artifact per pyramid scale) at 64 x 96 as ONNX (conv_impl="conv"): onnxruntime on a
  batch of 3 (symbolic batch) equals the jitted network (the default conv_impl)."""
  c = config()
  with c.unlocked():
    c.eval.scales = scales
  spec = train.RunSpec.from_config(c)

  @jax.jit
  def init():
    v = spec.detector.init_variables((64, 96))
    leaves, tree = jax.tree.flatten(v["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return {**v, "params": jax.tree.unflatten(tree, noisy)}

  variables = init()
  items = functions.exportables(spec.detector, variables, spec.inference, [(64, 96)], "raw")
  convs = functions.exportables(onnx_graph.xla_convs(spec.detector), variables,
                                spec.inference, [(64, 96)], "raw")
  assert len(convs) == len(scales)
  for item, conv in zip(items, convs):
    (path,) = onnx_graph.save(conv, tmp_path)
    assert path.name == item.name + ".onnx"
    args = functions.example_inputs(item, 3)
    want = _outputs(item.fn, args)
    assert all(np.abs(v).max() > 1e-3 for v in want.values())
    _same_raw(onnx_graph.call(onnx_graph.session(path), *args), want)


@pytest.fixture(scope="module")
def photo(shared_dir):
  return image_files.load_image(shared_dir / "reference/images/t1.jpg")


@pytest.fixture(scope="module")
def released(shared_dir):
  """The released RetinaFace-mnet: (config, weights path, RunSpec, variables)."""
  from tinyfaces_jax.training import checkpointing
  c = retinaface_mnet025.get_config()
  weights = shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"
  spec = train.RunSpec.from_config(c)
  variables, _ = checkpointing.model_variables(spec.detector, str(weights))
  return c, weights, spec, variables


@pytest.fixture(scope="module")
def pipeline_320(released, photo):
  """The jitted detections pipeline of the released RetinaFace at 320x240 on a batch of 3 of
  the photo (mirrored in the odd rows): (its Exportable, the inputs, the detections)."""
  _, _, spec, variables = released
  (item,) = functions.exportables(spec.detector, variables, spec.inference, [(240, 320)],
                                  "detections")
  args = functions.example_inputs(item, 3, image=photo)
  want = _outputs(item.fn, args)
  assert want["valid"].sum(1).min() > 3
  return item, args, want


def test_retinaface_detections_both_formats(shared_dir, released, pipeline_320, tmp_path):
  """The command on the released RetinaFace-mnet: StableHLO and SavedModel artifacts keep the
  jitted pipeline's detections on the photo (checked inside, and here on a batch of 3)."""
  c, weights, _, _ = released
  record = export_cli.run(c, str(weights), str(tmp_path), formats=("stablehlo", "savedmodel"),
                          sizes=("320x240",), check_image=shared_dir / "reference/images/t1.jpg",
                          log=lambda m: None)
  assert [a["file"] for a in record["artifacts"]] == [
      "retinaface_320x240_detections.stablehlo", "retinaface_320x240_detections"]
  assert all(a["check"].startswith("same ") and not a["check"].startswith("same 0 ")
             for a in record["artifacts"])
  saved = json.loads((tmp_path / "export.json").read_text())
  assert saved["artifacts"][0]["inputs"] == [
      {"name": "images", "shape": ["B", 240, 320, 3], "dtype": "float32"},
      {"name": "image_hw", "shape": ["B", 2], "dtype": "int32"}]
  assert saved["artifacts"][0]["outputs"]["landmarks"]["shape"] == ["B", 750, 5, 2]
  _, args, want = pipeline_320
  for got in (stablehlo.load(tmp_path / "retinaface_320x240_detections.stablehlo").call(*args),
              savedmodel.load(tmp_path / "retinaface_320x240_detections")(
                  images=np.asarray(args[0]), image_hw=np.asarray(args[1]))):
    got = {k: np.asarray(v) for k, v in got.items()}
    np.testing.assert_array_equal(got["valid"], want["valid"])
    v = want["valid"]
    for k in ("boxes", "scores", "landmarks"):
      np.testing.assert_allclose(got[k][v], want[k][v], atol=1e-3, err_msg=k)


def test_retinaface_onnx_raw_and_detections(released, pipeline_320, tmp_path):
  """The released RetinaFace-mnet's raw network as ONNX at 320x240 (conv_impl="conv", what
  --formats=onnx writes): onnxruntime on a batch of 3 (the batch is symbolic) is within 1e-4
  of the jitted network (default conv_impl), and its raw outputs through the library's decode
  + NMS (onnx_graph.detections) keep the jitted pipeline's detections (score >= 0.5: the same
  count, boxes and landmarks within 1e-3 px)."""
  _, _, spec, variables = released
  det = spec.detector
  (item,) = functions.exportables(det, variables, spec.inference, [(240, 320)], "raw")
  (conv,) = functions.exportables(onnx_graph.xla_convs(det), variables, spec.inference,
                                  [(240, 320)], "raw")
  (path,) = onnx_graph.save(conv, tmp_path)
  assert path.name == "retinaface_320x240_raw.onnx"
  sess = onnx_graph.session(path)
  assert [(i.name, i.shape) for i in sess.get_inputs()] == [("images", ["B", 240, 320, 3])]
  images = pipeline_320[1][0]
  raw = onnx_graph.call(sess, images)
  assert list(raw) == ["conf", "landm", "loc"] and raw["landm"].shape == (3, 3160, 10)
  _same_raw(raw, _outputs(item.fn, [images]))
  got = onnx_graph.detections(det, spec.inference, raw, (240, 320))
  want = pipeline_320[2]
  for b in range(3):
    g, w = got["scores"][b] >= 0.5, want["scores"][b] >= 0.5
    assert g.sum() == w.sum() > 3
    for k in ("boxes", "landmarks"):
      np.testing.assert_allclose(got[k][b][g], want[k][b][w], atol=1e-3, err_msg=k)


@pytest.mark.slow
def test_mtcnn_onnx_nets(shared_dir, tmp_path):
  """MTCNN's three released nets as ONNX (P-Net per size, R-Net and O-Net on crops), each
  checked in onnxruntime on the photo against the jitted net."""
  c = mtcnn_config.get_config()
  raw = export_cli.run(c, str(shared_dir / "weights/mtcnn"), str(tmp_path), formats=("onnx",),
                       outputs="raw", sizes=("160x120",),
                       check_image=str(shared_dir / "reference/images/t1.jpg"),
                       log=lambda m: None)
  assert [a["file"] for a in raw["artifacts"]] == [
      "mtcnn_pnet_160x120_raw.onnx", "mtcnn_rnet_raw.onnx", "mtcnn_onet_raw.onnx"]
  assert all(a["check"].startswith("raw outputs within") for a in raw["artifacts"])


@pytest.mark.slow
def test_mtcnn_nets_and_cascade(shared_dir, photo, tmp_path):
  """MTCNN: the three released nets as raw artifacts (P-Net per size, R-Net and O-Net on
  crops) and the whole cascade as one detections artifact, each checked on the photo."""
  c = mtcnn_config.get_config()
  weights = str(shared_dir / "weights/mtcnn")
  image = str(shared_dir / "reference/images/t1.jpg")
  raw = export_cli.run(c, weights, str(tmp_path / "raw"), outputs="raw", sizes=("160x120",),
                       check_image=image, log=lambda m: None)
  assert [a["file"] for a in raw["artifacts"]] == [
      "mtcnn_pnet_160x120_raw.stablehlo", "mtcnn_rnet_raw.stablehlo",
      "mtcnn_onet_raw.stablehlo"]
  assert raw["artifacts"][2]["outputs"]["landmarks"]["shape"] == ["B", 10]
  cascade = export_cli.run(c, weights, str(tmp_path / "det"), sizes=("320x240",),
                           check_image=image, log=lambda m: None)
  (art,) = cascade["artifacts"]
  assert art["check"].startswith("same ") and not art["check"].startswith("same 0 ")


def test_errors_name_what_is_wrong(tmp_path, shared_dir):
  with pytest.raises(ValueError, match=r"size '640-480': expected WIDTHxHEIGHT"):
    functions.parse_size("640-480")
  c = retinaface_mnet025.get_config()
  weights = str(shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth")
  with pytest.raises(ValueError, match=r"--formats \['tflite'\]: known formats"):
    export_cli.run(c, weights, str(tmp_path), formats=("tflite",), log=lambda m: None)
  with pytest.raises(ValueError, match=r"onnx: only --outputs=raw; the detections pipeline"):
    export_cli.run(c, weights, str(tmp_path), formats=("onnx",), outputs="detections",
                   log=lambda m: None)
  bad = tmp_path / "x.stablehlo"
  bad.write_bytes(b"not a flatbuffer at all")
  with pytest.raises(ValueError, match=r"x.stablehlo: not a serialized jax.export artifact"):
    stablehlo.load(bad)
