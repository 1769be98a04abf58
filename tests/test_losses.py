"""multibox_loss against a numpy statement of Pytorch_Retinaface's MultiBoxLoss."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

import numpy_matching_ref as mref
import numpy_sampling_ref as sref
from tinyfaces_jax import losses
from tinyfaces_jax.detection import anchors as anchors_lib


def np_smooth_l1(x):
  ax = np.abs(x)
  return np.where(ax < 1, 0.5 * x * x, ax - 0.5)


def np_multibox(loc, conf, landm, boxes, mask, lms, lm_ok, anchors, ratio=7.0):
  """Per image: match (numpy ref), encode as Pytorch_Retinaface `encode`/`encode_landm`,
  Smooth L1 sums over positives, CE over positives + hard negatives; batch normalisation."""
  tot_l = tot_c = tot_lm = 0.0
  n_pos = n_lm = 0
  ac = (anchors[:, :2] + anchors[:, 2:]) / 2
  awh = anchors[:, 2:] - anchors[:, :2]
  for b in range(len(loc)):
    labels, matched, _ = mref.match_anchors(anchors, boxes[b], mask[b], 0.35,
                                            force_min_iou=0.2)
    pos = labels == 1
    g = boxes[b][matched]
    t = np.concatenate([((g[:, :2] + g[:, 2:]) / 2 - ac) / (0.1 * awh),
                        np.log(np.maximum(g[:, 2:] - g[:, :2], 1e-3) / awh) / 0.2], 1)
    tot_l += np_smooth_l1(loc[b] - t)[pos].sum()
    z = conf[b] - conf[b].max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    bg = -logp[:, 0]
    neg = sref.hard_negative_mask_ref(np.where(pos, 0, bg), labels, ratio)
    tot_c += (-logp[pos, 1]).sum() + bg[neg].sum()
    n_pos += pos.sum()
    lm = lms[b].reshape(len(boxes[b]), 5, 2)[matched]
    lt = ((lm - ac[:, None]) / (0.1 * awh[:, None])).reshape(-1, 10)
    has = pos & lm_ok[b][matched]
    tot_lm += np_smooth_l1(landm[b] - lt)[has].sum()
    n_lm += has.sum()
  n = max(n_pos, 1)
  return 2 * tot_l / n + tot_c / n + tot_lm / max(n_lm, 1), n_pos


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
  loss, metrics = jax.jit(lambda o, bt: losses.multibox_loss(o, bt, jnp.asarray(anchors)))(
      out, batch)
  want, n_pos = np_multibox(loc, conf, landm, boxes, mask, lms, lm_ok, anchors)
  assert metrics["num_pos"] == n_pos > 0
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)


def test_gradients_finite_with_degenerate_and_empty():
  anchors = jnp.asarray(anchors_lib.anchor_grid(anchors_lib.RETINAFACE, (32, 32)))
  a = anchors.shape[0]
  batch = {"boxes": jnp.array([[[5, 5, 5, 20], [0, 0, 0, 0]]], jnp.float32),
           "box_mask": jnp.array([[True, False]])}
  out = {"loc": jnp.zeros((1, a, 4)), "conf": jnp.zeros((1, a, 2))}
  g = jax.grad(lambda o: losses.multibox_loss(o, batch, anchors)[0])(out)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))


def test_config_typo_is_rejected():
  with pytest.raises(ValueError, match="matcher"):
    losses.MultiboxLossConfig(matcher="s3df")
