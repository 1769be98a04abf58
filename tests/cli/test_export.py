"""Export (export/, cli/export.py): every artifact reloaded and run equals the jitted function
(raw outputs within 1e-4, the same detections), with a symbolic batch; StableHLO for every
family, SavedModel through jax2tf; the command's records and its errors."""

import json

import jax
import numpy as np
import pytest

from configs import hr_res101, mtcnn as mtcnn_config, s3fd_vgg16, ssh_vgg16
from configs import retinaface_mnet025
from tinyfaces_jax.cli import export as export_cli
from tinyfaces_jax.data import image_files
from tinyfaces_jax.export import functions, savedmodel, stablehlo
from tinyfaces_jax.training import train


def _outputs(fn, args):
  return {k: np.asarray(v) for k, v in jax.device_get(jax.jit(fn)(*args)).items()}


def _same_raw(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.abs(want[k]).max())), err_msg=k)


@pytest.mark.parametrize("config,scales", [
    pytest.param(lambda: s3fd_vgg16.get_config("backbone=mnet025,test"), (1.0,),
                 marks=pytest.mark.slow),
    pytest.param(lambda: ssh_vgg16.get_config("backbone=mnet025,test"), (1.0,),
                 marks=pytest.mark.slow),
    pytest.param(lambda: hr_res101.get_config("backbone=mnet025,test"), (0.5, 1.0),
                 marks=pytest.mark.slow)])
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


@pytest.fixture(scope="module")
def photo(shared_dir):
  return image_files.load_image(shared_dir / "reference/images/t1.jpg")


def test_retinaface_detections_both_formats(shared_dir, photo, tmp_path):
  """The command on the released RetinaFace-mnet: StableHLO and SavedModel artifacts keep the
  jitted pipeline's detections on the photo (checked inside, and here on a batch of 3)."""
  c = retinaface_mnet025.get_config()
  weights = shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"
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
  spec = train.RunSpec.from_config(c)
  from tinyfaces_jax.training import checkpointing
  variables, _ = checkpointing.model_variables(spec.detector, str(weights))
  (item,) = functions.exportables(spec.detector, variables, spec.inference, [(240, 320)],
                                  "detections")
  args = functions.example_inputs(item, 3, image=photo)
  want = _outputs(item.fn, args)
  assert want["valid"].sum(1).min() > 3
  for got in (stablehlo.load(tmp_path / "retinaface_320x240_detections.stablehlo").call(*args),
              savedmodel.load(tmp_path / "retinaface_320x240_detections")(
                  images=np.asarray(args[0]), image_hw=np.asarray(args[1]))):
    got = {k: np.asarray(v) for k, v in got.items()}
    np.testing.assert_array_equal(got["valid"], want["valid"])
    v = want["valid"]
    for k in ("boxes", "scores", "landmarks"):
      np.testing.assert_allclose(got[k][v], want[k][v], atol=1e-3, err_msg=k)


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
  with pytest.raises(ValueError, match=r"--formats \['onnx'\]: known formats"):
    export_cli.run(c, weights, str(tmp_path), formats=("onnx",), log=lambda m: None)
  bad = tmp_path / "x.stablehlo"
  bad.write_bytes(b"not a flatbuffer at all")
  with pytest.raises(ValueError, match=r"x.stablehlo: not a serialized jax.export artifact"):
    stablehlo.load(bad)
