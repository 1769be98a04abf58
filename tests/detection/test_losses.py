"""multibox_loss against a numpy statement of Pytorch_Retinaface's MultiBoxLoss."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from tests.reference import losses as losses_ref
from tinyfaces_jax.detection import multibox_loss
from tinyfaces_jax.detection import anchors as anchors_lib


def test_multibox_loss_matches_numpy_reference():
  rng = np.random.default_rng(0)
  hw = (64, 96)
  anchors = anchors_lib.anchor_grid(anchors_lib.RETINAFACE, hw)
  a = len(anchors)
  b, m = 3, 6
  xy = rng.uniform(0, 60, (b, m, 2))
  wh = rng.uniform(8, 60, (b, m, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  boxes[1, 2] = [10, 10, 10, 30]                         # degenerate: never a target
  mask = rng.uniform(size=(b, m)) < 0.8
  mask[2] = False                                        # an image without faces
  lms = rng.uniform(0, 90, (b, m, 5, 2)).astype(np.float32)
  lm_ok = rng.uniform(size=(b, m)) < 0.6
  loc = rng.normal(size=(b, a, 4)).astype(np.float32)
  conf = rng.normal(size=(b, a, 2)).astype(np.float32)
  landm = rng.normal(size=(b, a, 10)).astype(np.float32)
  batch = {"boxes": boxes, "box_mask": mask, "landmarks": lms, "landmarks_present": lm_ok}
  out = {"loc": loc, "conf": conf, "landm": landm}
  loss, metrics = jax.jit(lambda o, bt: multibox_loss.multibox_loss(o, bt, jnp.asarray(anchors)))(
      out, batch)
  want, n_pos = losses_ref.multibox_loss(loc, conf, landm, boxes, mask, lms, lm_ok, anchors)
  assert metrics["num_pos"] == n_pos > 0
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def test_gradients_finite_with_degenerate_and_empty():
  anchors = jnp.asarray(anchors_lib.anchor_grid(anchors_lib.RETINAFACE, (32, 32)))
  a = anchors.shape[0]
  batch = {"boxes": jnp.array([[[5, 5, 5, 20], [0, 0, 0, 0]]], jnp.float32),
           "box_mask": jnp.array([[True, False]])}
  out = {"loc": jnp.zeros((1, a, 4)), "conf": jnp.zeros((1, a, 2))}
  g = jax.grad(lambda o: multibox_loss.multibox_loss(o, batch, anchors)[0])(out)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


def test_config_typo_is_rejected():
  with pytest.raises(ValueError, match="matcher"):
    multibox_loss.MultiboxLossConfig(matcher="s3df")
