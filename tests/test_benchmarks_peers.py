"""The PyTorch peers of benchmarks/ compute our networks: benchmarks/torch_s3fd_ssh_peer.py on
our weights gives the forward of our flax S3FD / SSH (skipped where torch is not installed;
requirements-bench.txt brings it)."""

import pathlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_s3fd_ssh_peer as peer  # noqa: E402

from tinyfaces_jax import detectors  # noqa: E402

HW = (66, 98)   # odd maps on the way down: exercises the ceil pools and SSH's deconv crop


def _random_variables(det, seed: int = 0):
  """Random variables of our tree (shapes from jax.eval_shape, values from numpy: faster than
  compiling flax's init): kernels N(0, 1 / fan_in), biases and BatchNorm means N(0, 0.1),
  L2Norm / BatchNorm scales and variances U(0.5, 1.5) (zeros and ones would hide a transposed
  or misplaced copy)."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      return rng.normal(0.0, 1.0 / np.sqrt(np.prod(x.shape[:-1])), x.shape).astype(np.float32)
    if name in ("bias", "mean"):
      return rng.normal(0.0, 0.1, x.shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)   # scale, var
  shapes = jax.eval_shape(lambda: det.init_variables(HW))
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _compare(det, model, load, keys):
  variables = _random_variables(det)
  copied = load(model, variables)
  # every variable, but MobileNet's stage3, which SSH computes nothing from
  expected = sum(int(np.size(x)) for path, x in jax.tree_util.tree_leaves_with_path(variables)
                 if "stage3" not in jax.tree_util.keystr(path))
  assert copied == expected
  image = np.random.default_rng(1).uniform(0, 255, (1,) + HW + (3,)).astype(np.float32)
  x = np.asarray(det.preprocess(image))
  ours = jax.device_get(jax.jit(lambda v, x: det.model.apply(v, x, train=False))(variables, x))
  with torch.no_grad():
    theirs = model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  for k in keys:
    a, b = np.asarray(ours[k]), theirs[k].numpy()
    assert a.shape == b.shape, k
    scale = float(np.abs(a).max())
    assert scale > 0
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * scale, err_msg=k)


def test_s3fd_peer_forward_equals_ours():
  det = detectors.build_detector("s3fd", {"variant": "caffe"}, {})
  model = peer.S3FDTorch.from_config(det.model.config)
  _compare(det, model, peer.load_flax_variables_s3fd, ("loc", "conf"))


@pytest.mark.parametrize("backbone", ["vgg16", "mobilenet0.25"])
def test_ssh_peer_forward_equals_ours(backbone):
  det = detectors.build_detector("ssh", {"backbone": backbone}, {})
  model = peer.SSHTorch.from_config(det.model.config)
  _compare(det, model, peer.load_flax_variables_ssh, ("logits", "deltas"))
