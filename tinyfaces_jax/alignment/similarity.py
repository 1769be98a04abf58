"""5-point face alignment as insightface's `estimate_norm` + `norm_crop` do it, batched, in jit.

`estimate_similarity(src [B, P, 2], dst [P, 2])` is Umeyama's least-squares similarity
(rotation, uniform scale, translation; reflections excluded), skimage's
`SimilarityTransform.estimate`: -> [B, 2, 3] matrices M with dst ~ M @ [x, y, 1].
`arcface_template(size)` is insightface's destination for a size x size crop (multiples of
112: the 112 template scaled; otherwise the 128-based one shifted by 8 * size / 128 in x);
`template("sphereface", size)` the SphereFace / CosFace 96 x 112 one (the ArcFace points 8 px
to the left), scaled by size / 112 for a size x (96 size / 112) crop.
`warp_affine(images [B, H, W, C], M [B, 2, 3], size)` samples output pixel (x, y) at
M^-1 (x, y) with bilinear weights and zero outside the image, as `cv2.warpAffine(img, M,
(w, h), borderValue=0)` (pixel centres at integer coordinates; size = h = w, or (h, w)).
`norm_crop` chains them.
Landmarks from RetinaFace and MTCNN are already in the template's order (image-left eye,
image-right eye, nose, mouth left, mouth right).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ARCFACE_112 = np.asarray([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                          [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


SPHEREFACE_96x112 = np.asarray([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                                [33.5493, 92.3655], [62.7299, 92.2041]], np.float32)
TEMPLATES = ("arcface", "sphereface")


def template(name: str = "arcface", size: int = 112) -> tuple:
  """-> ([5, 2] destination points, (crop height, crop width)) of the named template:
  "arcface" (size x size, arcface_template) or "sphereface" (96 x 112 at size 112)."""
  if name == "arcface":
    return arcface_template(size), (size, size)
  if name == "sphereface":
    return SPHEREFACE_96x112 * np.float32(size / 112.0), (size, int(round(96 * size / 112.0)))
  raise ValueError(f"alignment template {name!r}; known: {list(TEMPLATES)}")


def arcface_template(size: int = 112) -> np.ndarray:
  """[5, 2] destination points of a size x size ArcFace crop (insightface estimate_norm)."""
  if size % 112 == 0:
    ratio, diff_x = size / 112.0, 0.0
  else:
    ratio = size / 128.0
    diff_x = 8.0 * ratio
  dst = ARCFACE_112 * np.float32(ratio)
  dst[:, 0] += np.float32(diff_x)
  return dst


def estimate_similarity(src: jnp.ndarray, dst) -> jnp.ndarray:
  """Umeyama similarity from src [B, P, 2] (or [P, 2]) to dst [P, 2] -> [B, 2, 3] (or [2, 3])."""
  single = src.ndim == 2
  src = src[None] if single else src
  src = src.astype(jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  mu_s, mu_d = src.mean(1, keepdims=True), dst.mean(0)
  xs, xd = src - mu_s, dst - mu_d
  cov = jnp.einsum("pi,bpj->bij", xd, xs) / src.shape[1]          # [B, 2, 2] dst x src
  u, s, vt = jnp.linalg.svd(cov)
  det = jnp.linalg.det(u) * jnp.linalg.det(vt)
  d = jnp.stack([jnp.ones_like(det), jnp.where(det < 0, -1.0, 1.0)], -1)   # [B, 2]
  rot = jnp.einsum("bij,bj,bjk->bik", u, d, vt)
  var_s = jnp.sum(xs ** 2, axis=(1, 2)) / src.shape[1]
  scale = jnp.sum(s * d, -1) / jnp.maximum(var_s, 1e-12)
  lin = scale[:, None, None] * rot
  t = mu_d[None] - jnp.einsum("bij,bj->bi", lin, mu_s[:, 0])
  m = jnp.concatenate([lin, t[..., None]], -1)
  return m[0] if single else m


def warp_affine(images: jnp.ndarray, m: jnp.ndarray, size) -> jnp.ndarray:
  """images [B, H, W, C], M [B, 2, 3] (input -> output pixels), size = S or (h, w) -> [B, h,
  w, C] float32."""
  b, h, w, c = images.shape
  out_h, out_w = (size, size) if np.ndim(size) == 0 else size
  lin, t = m[:, :, :2], m[:, :, 2]
  inv = jnp.linalg.inv(lin)
  ys, xs = jnp.meshgrid(jnp.arange(out_h, dtype=jnp.float32),
                        jnp.arange(out_w, dtype=jnp.float32), indexing="ij")
  out_xy = jnp.stack([xs, ys], -1).reshape(-1, 2)                   # [S*S, 2]
  src = jnp.einsum("bij,bnj->bni", inv, out_xy[None] - t[:, None])  # [B, S*S, 2]

  def sample(image, xy):
    x, y = xy[:, 0], xy[:, 1]
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    out = 0.0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
      for dx, wx in ((0, 1.0 - fx), (1, fx)):
        xi, yi = (x0 + dx).astype(jnp.int32), (y0 + dy).astype(jnp.int32)
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        v = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
        out = out + jnp.where(ok[:, None], v, 0.0) * (wx * wy)[:, None]
    return out

  out = jax.vmap(sample)(images.astype(jnp.float32), src)
  return out.reshape(b, out_h, out_w, c)


def norm_crop(images: jnp.ndarray, landmarks: jnp.ndarray, size: int = 112,
              template_name: str = "arcface") -> jnp.ndarray:
  """Aligned crops: images [B, H, W, C], landmarks [B, 5, 2] -> [B, h, w, C] float32 (ArcFace:
  size x size; SphereFace: size x 96 size / 112)."""
  dst, hw = template(template_name, size)
  return warp_affine(images, estimate_similarity(landmarks, dst), hw)
