"""Pasting face crops into photos so their edges and statistics don't give them away.

A pasted patch is resized with PIL (Lanczos down, bicubic up) so that its face box lands exactly
on the integer target box, then composited through a feathered elliptical alpha mask (a
smoothstep ramp in the normalised elliptical radius, no hard edge), after:

* colouring: grayscale LFW crops are tinted with a skin tone (see `package_images.tint_gray`),
  or everything is made gray when the scene is grayscale;
* brightness and colour matching: the face's mean luminance is pulled towards the luminance of
  the background under it (weight 0.15-0.5) and it takes a fraction of the background's colour
  cast (an illumination proxy), with a small contrast jitter;
* blur matched to the scale: a Gaussian blur of radius up to ~0.8 px on large faces, less on
  small ones (they are already soft from the downscale), plus per-patch sensor noise.

Only +, *, sqrt and PIL's integer resamplers touch pixels, so the bytes are reproducible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from tinyfaces_jax.data.embedded import package_images

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def elliptical_alpha(height: int, width: int, centre, axes, feather: float) -> np.ndarray:
  """[height, width] float32 alpha: 1 inside the ellipse core, smoothstep to 0 at its rim.

  Args:
    centre: (cx, cy) of the ellipse in pixel coordinates of the patch.
    axes: (ax, ay) semi-axes in pixels.
    feather: width of the ramp as a fraction of the radius (0 < feather <= 1).
  """
  ys = (np.arange(height, dtype=np.float32) + 0.5 - np.float32(centre[1])) / np.float32(axes[1])
  xs = (np.arange(width, dtype=np.float32) + 0.5 - np.float32(centre[0])) / np.float32(axes[0])
  r = np.sqrt(ys[:, None] * ys[:, None] + xs[None, :] * xs[None, :])
  t = np.clip((np.float32(1.0) - r) / np.float32(feather), 0.0, 1.0)
  return (t * t * (np.float32(3.0) - np.float32(2.0) * t)).astype(np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Rounds and clips float pixels to uint8."""
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """Resizes float [h, w, 3] pixels with PIL (Lanczos when shrinking, bicubic when growing)."""
  image = Image.fromarray(to_uint8(pixels), "RGB")
  shrink = width < image.width or height < image.height
  method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
  return np.asarray(image.resize((width, height), method), np.float32)


def gaussian_blur(pixels: np.ndarray, radius: float) -> np.ndarray:
  """PIL Gaussian blur of float [h, w, 3] pixels (no-op below 0.05 px)."""
  if radius < 0.05:
    return pixels
  image = Image.fromarray(to_uint8(pixels), "RGB").filter(ImageFilter.GaussianBlur(radius))
  return np.asarray(image, np.float32)


def luminance(pixels: np.ndarray) -> np.ndarray:
  """[..., 3] -> [...] luma (BT.601)."""
  return pixels @ LUMA


def prepare_face(crop: package_images.FaceCrop, rng: np.random.Generator, *,
                 gray_scene: bool) -> np.ndarray:
  """Colours one crop for the scene: tinted if the source is gray, gray if the scene is."""
  pixels = crop.pixels
  if gray_scene:
    return np.repeat(luminance(pixels)[..., None], 3, -1)
  if crop.gray:
    tones = package_images.SKIN_TONES
    tone = tones[rng.integers(len(tones))] * np.float32(rng.uniform(0.85, 1.1))
    return package_images.tint_gray(pixels[..., 0] / np.float32(255.0), tone)
  return pixels


def paste_geometry(patch_hw, patch_box, target_box) -> tuple:
  """Where `paste` puts a patch of size `patch_hw` (h, w) so `patch_box` lands on
  `target_box`: (ox, oy, new_w, new_h), the resized patch's origin in the canvas and size. A
  patch point (x, y) (continuous pixel coordinates) lands on (ox + x new_w / w, oy + y new_h
  / h)."""
  tx1, ty1, tx2, ty2 = (int(v) for v in target_box)
  px1, py1, px2, py2 = patch_box
  sx, sy = (tx2 - tx1) / (px2 - px1), (ty2 - ty1) / (py2 - py1)
  new_w = max(1, int(round(patch_hw[1] * sx)))
  new_h = max(1, int(round(patch_hw[0] * sy)))
  return tx1 - int(round(px1 * sx)), ty1 - int(round(py1 * sy)), new_w, new_h


def paste(canvas: np.ndarray, patch: np.ndarray, patch_box, target_box, rng: np.random.Generator,
          *, ellipse_scale=(1.05, 1.05), feather: float = 0.3,
          match=(0.15, 0.5)) -> None:
  """Composites `patch` into float `canvas` in place so `patch_box` lands on `target_box`.

  Args:
    canvas: [H, W, 3] float32 image, modified in place.
    patch: [h, w, 3] float32 pixels (already coloured for the scene).
    patch_box: (x1, y1, x2, y2) of the face (or region of interest) inside `patch`.
    target_box: integer (x1, y1, x2, y2) in `canvas` where `patch_box` must land.
    ellipse_scale: semi-axes of the alpha ellipse relative to half the target box size.
    feather: ramp width of the mask (fraction of the radius).
    match: range of the weight pulling the patch's luminance to the background's.
  """
  height, width = canvas.shape[:2]
  tx1, ty1, tx2, ty2 = (int(v) for v in target_box)
  tw, th = tx2 - tx1, ty2 - ty1
  ox, oy, new_w, new_h = paste_geometry(patch.shape[:2], patch_box, target_box)
  resized = resize(patch, new_w, new_h)
  # Blur matched to scale: big faces get up to ~0.8 px, tiny ones (already soft) up to ~0.3.
  resized = gaussian_blur(resized, float(rng.uniform(0.0, 0.3 + 0.5 * min(1.0, th / 64.0))))
  # Visible part of the patch inside the canvas.
  x1, y1, x2, y2 = max(0, ox), max(0, oy), min(width, ox + new_w), min(height, oy + new_h)
  if x2 <= x1 or y2 <= y1:
    return
  sub = resized[y1 - oy:y2 - oy, x1 - ox:x2 - ox]
  alpha = elliptical_alpha(
      y2 - y1, x2 - x1, ((tx1 + tx2) / 2 - x1, (ty1 + ty2) / 2 - y1),
      (ellipse_scale[0] * tw / 2, ellipse_scale[1] * th / 2), feather)
  background = canvas[y1:y2, x1:x2]
  weight = alpha / max(float(alpha.sum()), 1e-6)
  bg_mean = np.einsum("hw,hwc->c", weight, background)
  fg_mean = np.einsum("hw,hwc->c", weight, sub)
  bg_lum, fg_lum = float(bg_mean @ LUMA), float(fg_mean @ LUMA)
  # Brightness: pull the face's luminance towards the background's (bounded gain).
  m = rng.uniform(*match)
  target_lum = (1.0 - m) * fg_lum + m * bg_lum
  gain = float(np.clip(target_lum / max(fg_lum, 1.0), 0.45, 1.8))
  # Colour cast: a fraction of the background's chroma (illumination colour).
  cast = 1.0 + rng.uniform(0.0, 0.35) * (bg_mean / max(bg_lum, 1.0) - 1.0)
  contrast = rng.uniform(0.8, 1.15)
  mean = fg_lum * gain
  sub = (sub * np.float32(gain) - np.float32(mean)) * np.float32(contrast) + np.float32(mean)
  sub = sub * cast.astype(np.float32)[None, None, :]
  noise_sigma = rng.uniform(0.0, 4.0)
  sub = sub + rng.standard_normal(sub.shape, dtype=np.float32) * np.float32(noise_sigma)
  sub = np.clip(sub, 0.0, 255.0)
  a = alpha[..., None]
  canvas[y1:y2, x1:x2] = background * (np.float32(1.0) - a) + sub * a


def _overlaps(box, boxes, margin: float) -> bool:
  """Whether `box` meets any of `boxes` grown by `margin` x their size on each side."""
  x1, y1, x2, y2 = box
  for bx1, by1, bx2, by2 in boxes:
    mx, my = margin * (bx2 - bx1), margin * (by2 - by1)
    if x1 < bx2 + mx and bx1 - mx < x2 and y1 < by2 + my and by1 - my < y2:
      return True
  return False


def add_distractors(rng: np.random.Generator, canvas: np.ndarray, face_boxes, gray_scene: bool,
                    mean_count: float = 1.5) -> None:
  """Pastes unlabelled non-face patches with the same blending as faces (in place).

  Half are LFW non-face patches (tinted with a skin tone or a random colour), half are patches
  of other photos, so neither a blended edge nor a skin-coloured blob marks a face.
  """
  height, width = canvas.shape[:2]
  non_faces = package_images.non_face_patches()
  plain = [n for n in package_images.available_backgrounds()
           if n not in package_images.REAL_FACE_BOXES]
  for _ in range(int(rng.poisson(mean_count))):
    size = int(np.exp(rng.uniform(np.log(10.0), np.log(max(11.0, 0.4 * min(width, height))))))
    w = max(4, int(size * rng.uniform(0.7, 1.0)))
    box = None
    for _ in range(20):
      x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - size + 1))
      if not _overlaps((x1, y1, x1 + w, y1 + size), face_boxes, 0.25):
        box = (x1, y1, x1 + w, y1 + size)
        break
    if box is None:
      continue
    if rng.random() < 0.5:
      gray = non_faces[rng.integers(len(non_faces))]
      if gray_scene:
        patch = np.repeat(gray[..., None] * np.float32(255.0), 3, -1)
      else:
        tone = (package_images.SKIN_TONES[rng.integers(len(package_images.SKIN_TONES))]
                if rng.random() < 0.5 else rng.uniform(40.0, 230.0, size=3).astype(np.float32))
        patch = package_images.tint_gray(gray, tone)
      patch_box = (0.0, 0.0, 25.0, 25.0)
    else:
      patch, _, _ = package_images.photo_crop(rng, plain[rng.integers(len(plain))], w, size,
                                            min_scale=0.1)
      if gray_scene:
        patch = np.repeat(luminance(patch)[..., None], 3, -1)
      patch_box = (0.0, 0.0, float(w), float(size))
    paste(canvas, patch, patch_box, box, rng, ellipse_scale=(1.06, 1.06),
          feather=float(rng.uniform(0.2, 0.35)))


def finish(rng: np.random.Generator, canvas: np.ndarray, gray_scene: bool):
  """Whole-image sensor noise and occasional blur -> (uint8 image, JPEG quality 75-95)."""
  pixels = canvas
  if gray_scene:
    pixels = np.repeat(luminance(pixels)[..., None], 3, -1)
  if rng.random() < 0.2:
    pixels = gaussian_blur(pixels, float(rng.uniform(0.3, 0.9)))
  sigma = np.float32(rng.uniform(0.0, 3.0))
  noise = rng.standard_normal(pixels.shape[:2] + ((1,) if gray_scene else (3,)),
                              dtype=np.float32)
  pixels = pixels + noise * sigma
  return to_uint8(pixels), int(rng.integers(75, 96))
