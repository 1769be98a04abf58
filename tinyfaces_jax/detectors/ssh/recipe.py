"""SSH training recipe (mahyarnajibi/SSH `lib/utils/blob.py prep_im_for_blob`, `wider.yml`;
../shared/references/s3fd_ssh.md 2.4): `transform(example, seed, **options)` for
data/pipeline.train_dataset.

Per image: the whole image scaled (bilinear, as cv2.INTER_LINEAR) so its short side is `short`
(1200) unless its long side would then exceed `size` (1600), which caps it; faces scaled with
it; a random horizontal flip (the release doubles the set with flipped copies); no crop, no
photometric change. Static shapes: the scaled image is placed at the top-left of a `size` x
`size` canvas filled with the network's mean colour (zeros after preprocessing), and
`valid_region` is the image's extent inside it, which the loss's border filter measures
against (the release's im_info). The canvas costs compute on the padding (a 1600 x 1200
image in a 1600 x 1600 canvas: a third more), the price of one compiled step.
"""

from __future__ import annotations

import tensorflow as tf

from tinyfaces_jax.data import transforms as T
from tinyfaces_jax.detectors.ssh.model import MEAN_BGR


def transform(ex: dict, seed: tf.Tensor, *, size: int = 1600, short: int = 1200,
              flip_prob: float = 0.5) -> dict:
  """The SSH input of the module docstring: image float32 [size, size, 3] RGB 0..255, faces and
  landmarks in canvas pixels, valid_region [4] the image's extent."""
  image = tf.cast(ex["image"], tf.float32)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.minimum(float(short) / tf.reduce_min(hw), float(size) / tf.reduce_max(hw))
  new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
  new_hw = tf.minimum(new_hw, size)
  image = tf.clip_by_value(tf.image.resize(image, new_hw, "bilinear"), 0.0, 255.0)
  fxy = tf.cast(new_hw[::-1], tf.float32) / hw[::-1]                       # (fx, fy)
  fill = tuple(float(v) for v in MEAN_BGR[::-1])
  canvas = T.paste(image, 0, 0, size, size, fill)
  present = ex["landmarks_present"]
  lm = tf.where(present[:, None, None], ex["landmarks"] * fxy, -tf.ones_like(ex["landmarks"]))
  wh = tf.cast(new_hw[::-1], tf.float32)
  out = dict(ex, image=canvas, boxes=ex["boxes"] * tf.tile(fxy, [2]), landmarks=lm,
             valid_region=tf.concat([tf.zeros([2]), wh], 0))
  out = T.random_hflip(out, seed, flip_prob)
  return T.finish(out, size)
