"""Anchor grids against the reference PriorBox outputs and a numpy loop."""

import numpy as np
import pytest

from tinyfaces_jax.detection import anchors


def np_priorbox_loop(image_hw, strides, sizes):
  """Pytorch_Retinaface PriorBox.forward, stated as loops (pixels, xyxy)."""
  h, w = image_hw
  out = []
  for s, zs in zip(strides, sizes):
    for i in range(int(np.ceil(h / s))):
      for j in range(int(np.ceil(w / s))):
        for z in zs:
          cx, cy = (j + 0.5) * s, (i + 0.5) * s
          out.append([cx - z / 2, cy - z / 2, cx + z / 2, cy + z / 2])
  return np.array(out, np.float32)


@pytest.mark.parametrize("name", ["retinaface", "retinaface_1mb", "s3fd"])
@pytest.mark.parametrize("hw", [(640, 640), (480, 640), (37, 101)])
def test_grid_matches_loop(name, hw):
  spec = anchors.get_spec(name)
  got = anchors.anchor_grid(spec, hw)
  np.testing.assert_allclose(got, np_priorbox_loop(hw, spec.strides, spec.sizes), atol=1e-4)
  slices = anchors.level_slices(spec, hw)
  assert slices[-1].stop == len(got)


def test_ssh_is_py_faster_rcnn_generate_anchors():
  """SSH: the generate_anchors windows of base 16 (centre 7.5, +1 widths) shifted by the
  stride (tests/reference/ssh.py states the release's generator)."""
  from tests.reference import ssh as ssh_ref
  hw = (37, 101)
  got = anchors.anchor_grid(anchors.SSH, hw)
  want = [ssh_ref.anchor_grid(s, ssh_ref.MODULES[m][1], (-(-hw[0] // s), -(-hw[1] // s)))
          for m, s in zip(("m1", "m2", "m3"), (8, 16, 32))]
  np.testing.assert_array_equal(got, np.concatenate(want))


def test_s3fd_count_at_640():
  assert anchors.anchor_grid(anchors.S3FD, (640, 640)).shape == (34125, 4)


@pytest.mark.parametrize("flavour,spec", [("m2man", anchors.RETINAFACE),
                                          ("1mb", anchors.RETINAFACE_1MB)])
def test_priors_equal_reference(shared_dir, flavour, spec):
  ref = np.load(shared_dir / "reference" / f"retinaface_mnet025_{flavour}.npz")
  for img in ["t1", "multiface"]:
    hw = ref[f"{img}_image_rgb"].shape[:2]
    np.testing.assert_allclose(anchors.normalized_priors(spec, hw), ref[f"{img}_priors"],
                               atol=1e-7)
  np.testing.assert_array_equal(np.asarray(spec.sizes), ref["cfg_min_sizes"])
  np.testing.assert_array_equal(np.asarray(spec.strides), ref["cfg_steps"])


def test_bad_specs_raise():
  with pytest.raises(ValueError, match="unknown anchor preset"):
    anchors.get_spec("retinafce")
  with pytest.raises(ValueError, match="size lists"):
    anchors.AnchorSpec(strides=(8, 16), sizes=((16,),))
  with pytest.raises(ValueError, match="feature maps"):
    anchors.anchor_grid(anchors.S3FD, (64, 64), fmap_sizes=[(16, 16)])
