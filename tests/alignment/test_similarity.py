"""alignment/similarity.py against independent implementations: skimage's
SimilarityTransform.estimate (Umeyama) for the matrices, scipy.ndimage.affine_transform
(bilinear, zero outside: cv2.warpAffine's BORDER_CONSTANT sampling) for the crops, and the
template rule of insightface's estimate_norm."""

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage.transform import SimilarityTransform

from tinyfaces_jax.alignment import similarity


def random_faces(rng, n):
  """Template points moved by random similarities plus noise: [n, 5, 2] image points."""
  out = []
  for _ in range(n):
    a, s = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 2.5)
    r = s * np.asarray([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out.append(similarity.ARCFACE_112 @ r.T + rng.uniform(0, 150, 2) + rng.normal(0, 2, (5, 2)))
  return np.asarray(out, np.float32)


def test_estimate_matches_skimage_umeyama():
  rng = np.random.default_rng(0)
  src = random_faces(rng, 16)
  src[3, :, 0] *= -1   # a mirrored face: the best proper rotation, no reflection
  dst = similarity.arcface_template(112)
  got = np.asarray(jax.jit(similarity.estimate_similarity)(src, dst))
  for i in range(len(src)):
    t = SimilarityTransform()
    assert t.estimate(src[i].astype(np.float64), dst.astype(np.float64))
    np.testing.assert_allclose(got[i], t.params[:2], rtol=1e-4, atol=2e-3)
  np.testing.assert_allclose(similarity.estimate_similarity(src[0], dst), got[0], rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("size", [112, 224, 128])
def test_template_follows_estimate_norm(size):
  want = similarity.ARCFACE_112.astype(np.float64) * (size / 112 if size % 112 == 0
                                                       else size / 128)
  if size % 112:
    want[:, 0] += 8.0 * size / 128
  np.testing.assert_allclose(similarity.arcface_template(size), want, rtol=1e-6)


def test_norm_crop_matches_scipy_bilinear_warp():
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 255, (3, 180, 200, 3)).astype(np.float32)
  lm = random_faces(rng, 3) * 0.6 + 20.0
  crops = np.asarray(jax.jit(similarity.norm_crop, static_argnums=2)(images, lm, 112))
  m = np.asarray(similarity.estimate_similarity(lm, similarity.arcface_template(112)))
  assert crops.shape == (3, 112, 112, 3)
  for i in range(3):
    full = np.vstack([m[i], [0, 0, 1]]).astype(np.float64)
    inv = np.linalg.inv(full)
    # scipy works in (row, col): input (y, x) = A (y_out, x_out) + offset.
    a = inv[:2, :2][::-1, ::-1]
    offset = inv[:2, 2][::-1]
    for ch in range(3):
      want = ndimage.affine_transform(images[i, ..., ch].astype(np.float64), a, offset,
                                      output_shape=(112, 112), order=1, mode="grid-constant",
                                      cval=0.0)
      np.testing.assert_allclose(crops[i, ..., ch], want, atol=2e-2)
  # The template points land on the template.
  pts = np.einsum("bij,bpj->bpi", m[:, :, :2], lm) + m[:, None, :, 2]
  np.testing.assert_allclose(pts.mean(0), similarity.arcface_template(112), atol=4.0)


def test_sphereface_template_and_rectangular_crops():
  """The 96 x 112 template is the ArcFace one 8 px to the left; its crops are 112 high and 96
  wide, the scipy warp of the same matrix."""
  dst, hw = similarity.template("sphereface", 112)
  np.testing.assert_allclose(dst, similarity.ARCFACE_112 - [8.0, 0.0], atol=1e-4)
  assert hw == (112, 96) and similarity.template("sphereface", 224)[1] == (224, 192)
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 255, (1, 150, 160, 1)).astype(np.float32)
  lm = random_faces(rng, 1) * 0.5 + 10.0
  crop = np.asarray(similarity.norm_crop(image, lm, 112, "sphereface"))
  m = np.asarray(similarity.estimate_similarity(lm, dst))[0]
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]).astype(np.float64))
  want = ndimage.affine_transform(image[0, ..., 0].astype(np.float64), inv[:2, :2][::-1, ::-1],
                                  inv[:2, 2][::-1], output_shape=(112, 96), order=1,
                                  mode="grid-constant", cval=0.0)
  assert crop.shape == (1, 112, 96, 1)
  np.testing.assert_allclose(crop[0, ..., 0], want, atol=2e-2)
  with pytest.raises(ValueError, match="alignment template 'vgg'"):
    similarity.template("vgg")
