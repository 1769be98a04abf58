"""HR / Tiny Faces training recipe (peiyunh/tiny `cnn_get_batch_hardmine.m` + `cnn_widerface.m`):
`transform(example, seed, **options)` for data/pipeline.train_dataset (the example contract of
data/transforms.py), and the release's colour statistics.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tinyfaces_jax.data import transforms as T
from tinyfaces_jax.detectors.hr.model import TINY_RGB_MEAN

# Values read from peiyunh/tiny data/widerface/imageStats.mat (our copy:
# shared/data/tinyfaces/imageStats.mat; tests/data/test_transforms.py re-reads the file and checks
# these). `rgbMean` (TINY_RGB_MEAN, model.py: the model's input mean too) is the RGB mean in
# 0..255; `rgbCovariance` the 3x3 RGB pixel covariance.
TINY_RGB_COVARIANCE = ((6093.8535, 5534.6396, 4858.425),
                       (5534.6396, 6098.877, 5676.961),
                       (4858.425, 5676.961, 6443.17))
# eig(rgbCovariance), eigenvalues ascending (MATLAB `eig` / numpy `eigh` order); the columns of
# TINY_EIGVECS are the eigenvectors (sign is arbitrary and irrelevant to the noise law).
TINY_EIGVALS = (295.6025516167, 1407.9336321445, 16932.3642068638)
TINY_EIGVECS = ((0.4316588887, -0.7060300105, -0.5614198323),
                (-0.8066350381, -0.0235508467, -0.5905804543),
                (0.4037456119, 0.7077902104, -0.5796744767))
# cnn_widerface.m: `[v,d] = eig(rgbCovariance); rgbVariance = 0.1*sqrt(d)*v'`, and
# cnn_get_batch_hardmine.m subtracts `averageImage + rgbVariance * randn(3,1)` per image.
TINY_PCA_SCALE = 0.1


def tiny_rgb_variance() -> np.ndarray:
  """The release's `rgbVariance` matrix [3, 3] = 0.1 * sqrt(D) @ V^T."""
  return TINY_PCA_SCALE * np.diag(np.sqrt(TINY_EIGVALS)) @ np.asarray(TINY_EIGVECS).T


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, mode: str = "release"):
  """AlexNet-style PCA lighting noise with the Tiny Faces WIDER statistics.

  image: float32 [H, W, 3] RGB 0..255. Returns (image - offset, offset [3]), offset per image:
    mode 'release': offset = rgbVariance @ z, rgbVariance = 0.1 sqrt(D) V^T, z ~ N(0, I3),
      exactly as cnn_get_batch_hardmine.m (note: since V^T z ~ N(0, I) the shift is
      N(0, 0.01 D) per RGB channel, i.e. NOT along the eigenvectors -- the release's quirk).
    mode 'alexnet': offset = V @ (0.1 sqrt(d) * z), covariance 0.01 V D V^T (Krizhevsky 2012).
  No clipping (the release does not clip).
  """
  z = tf.random.stateless_normal([3], seed)
  if mode == "release":
    offset = tf.linalg.matvec(tf.constant(tiny_rgb_variance(), tf.float32), z)
  elif mode == "alexnet":
    vecs = tf.constant(TINY_EIGVECS, tf.float32)
    offset = tf.linalg.matvec(vecs, TINY_PCA_SCALE * tf.sqrt(tf.constant(TINY_EIGVALS,
                                                                         tf.float32)) * z)
  else:
    raise ValueError(f"unknown PCA lighting mode {mode!r}")
  return image - offset[None, None, :], offset


def tiny_sample_geometry(hw: tf.Tensor, seed: tf.Tensor, *, size: int = 500,
                         scales=(0.5, 1.0, 2.0)) -> dict:
  """Random geometry of one Tiny Faces sample for an image of size hw [2] (int32 [H, W]):
  factor [] (uniform over scales), scaled_hw [2] = ceil(hw * factor), crop_hw [2] =
  min(scaled_hw, size), crop_yx [2] uniform in [0, scaled_hw - crop_hw] (top-left of the crop
  in the scaled image), paste_yx [2] uniform in [0, size - crop_hw] (where it lands)."""
  s = T.split_seed(seed, 3)
  factor = tf.gather(tf.constant(scales, tf.float32), T.randrange(s[0], len(scales)))
  scaled_hw = tf.cast(tf.math.ceil(tf.cast(hw, tf.float32) * factor), tf.int32)
  crop_hw = tf.minimum(scaled_hw, size)
  return {"factor": factor, "scaled_hw": scaled_hw, "crop_hw": crop_hw,
          "crop_yx": T.randrange(s[1], scaled_hw - crop_hw + 1, [2]),
          "paste_yx": T.randrange(s[2], size - crop_hw + 1, [2])}


def transform(ex: dict, seed: tf.Tensor, *, size: int = 500,
                         scales=(0.5, 1.0, 2.0), min_visible: float = 0.3,
                         flip_prob: float = 0.5, color_jitter: str | None = "release") -> dict:
  """Tiny Faces / HR training augmentation (cnn_get_batch_hardmine.m + cnn_widerface.m).

  1. rescale the whole image by a factor drawn uniformly from `scales` (release: 0.5 if
     rand < 1/3, 2 if rand > 2/3, else 1; bilinear imresize, new size ceil(H*s) x ceil(W*s));
  2. crop a window of min(size, Hs) x min(size, Ws) at a uniform position inside the rescaled
     image and paste it at a uniform position on a size x size canvas of the RGB mean;
  3. drop faces with less than `min_visible` (release: negThresh 0.3) of their area inside the
     crop window; kept boxes are clipped to it (= the pasted region, `valid_region`);
  4. horizontal flip with p = flip_prob (release: 'f5' transformation set, half flipped);
  5. PCA lighting noise (`T.pca_lighting`, mode color_jitter; None disables) on the whole
     canvas, padding included (the release subtracts averageImage + noise from the buffer).
  Returns image float32 [size, size, 3] (0..255 RGB, not mean-subtracted).
  """
  s = T.split_seed(seed, 3)
  image = tf.cast(ex["image"], tf.float32)
  g = tiny_sample_geometry(tf.shape(image)[:2], s[0], size=size, scales=scales)
  factor, crop_yx, crop_hw, paste_yx = g["factor"], g["crop_yx"], g["crop_hw"], g["paste_yx"]
  # 1. rescale
  image = tf.cond(tf.equal(factor, 1.0), lambda: image,
                  lambda: tf.image.resize(image, g["scaled_hw"], "bilinear", antialias=True))
  # 2. crop + paste
  crop = tf.slice(image, tf.concat([crop_yx, [0]], 0), tf.concat([crop_hw, [3]], 0))
  canvas = T.paste(crop, paste_yx[0], paste_yx[1], size, size, TINY_RGB_MEAN)
  # 3. faces: >= min_visible of the area inside the crop window, clipped to it
  c_xy = tf.cast(tf.reverse(crop_yx, [0]), tf.float32)
  p_xy = tf.cast(tf.reverse(paste_yx, [0]), tf.float32)
  wh = tf.cast(tf.reverse(crop_hw, [0]), tf.float32)
  window = tf.concat([c_xy, c_xy + wh], 0)
  boxes = ex["boxes"] * factor
  frac = T.visible_fraction(boxes, window)
  shift = tf.tile(p_xy - c_xy, [2])
  boxes = T.clip_boxes(boxes, window) + shift
  keep = (frac >= min_visible) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  out = dict(ex, image=canvas, boxes=boxes,
             landmarks=T.transform_landmarks(ex["landmarks"], ex["landmarks_present"],
                                             factor, p_xy - c_xy),
             valid_region=tf.concat([p_xy, p_xy + wh], 0))
  out = T.mask_faces(out, keep)
  # 4. flip, 5. colour
  out = T.random_hflip(out, s[1], flip_prob)
  if color_jitter is not None:
    out["image"], _ = pca_lighting(out["image"], s[2], color_jitter)
  return T.finish(out, size)
