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
          match=(0.15, 0.5), mask_box=None):
  """Composites `patch` into float `canvas` in place so `patch_box` lands on `target_box`.

  Args:
    canvas: [H, W, 3] float32 image, modified in place.
    patch: [h, w, 3] float32 pixels (already coloured for the scene).
    patch_box: (x1, y1, x2, y2) of the face (or region of interest) inside `patch`.
    target_box: integer (x1, y1, x2, y2) in `canvas` where `patch_box` must land.
    ellipse_scale: semi-axes of the alpha ellipse relative to half the target box size.
    feather: ramp width of the mask (fraction of the radius).
    match: range of the weight pulling the patch's luminance to the background's.
    mask_box: (x1, y1, x2, y2) in `patch` the alpha ellipse is fitted to (default
      `patch_box`; a person cutout's whole region).
  Returns:
    (x1, y1, alpha [h, w]): the mask where it was composited (None when off the canvas).
  """
  height, width = canvas.shape[:2]
  tx1, ty1, tx2, ty2 = (int(v) for v in target_box)
  tw, th = tx2 - tx1, ty2 - ty1
  ox, oy, new_w, new_h = paste_geometry(patch.shape[:2], patch_box, target_box)
  if mask_box is not None:  # the ellipse's box, mapped like the patch
    sx, sy = new_w / patch.shape[1], new_h / patch.shape[0]
    tx1, ty1 = ox + mask_box[0] * sx, oy + mask_box[1] * sy
    tx2, ty2 = ox + mask_box[2] * sx, oy + mask_box[3] * sy
    tw, th = tx2 - tx1, ty2 - ty1
  resized = resize(patch, new_w, new_h)
  # Blur matched to scale: big faces get up to ~0.8 px, tiny ones (already soft) up to ~0.3.
  resized = gaussian_blur(resized, float(rng.uniform(0.0, 0.3 + 0.5 * min(1.0, th / 64.0))))
  # Visible part of the patch inside the canvas.
  x1, y1, x2, y2 = max(0, ox), max(0, oy), min(width, ox + new_w), min(height, oy + new_h)
  if x2 <= x1 or y2 <= y1:
    return None
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
  return x1, y1, alpha


def coverage(box, mask) -> float:
  """Mean of `paste`'s returned alpha over the integer `box` (0 where the mask is absent)."""
  if mask is None:
    return 0.0
  mx, my, alpha = mask
  x1, y1, x2, y2 = box
  area = max(1, (x2 - x1) * (y2 - y1))
  ix1, iy1 = max(x1, mx), max(y1, my)
  ix2, iy2 = min(x2, mx + alpha.shape[1]), min(y2, my + alpha.shape[0])
  if ix2 <= ix1 or iy2 <= iy1:
    return 0.0
  return float(alpha[iy1 - my:iy2 - my, ix1 - mx:ix2 - mx].sum()) / area


def _overlaps(box, boxes, margin: float) -> bool:
  """Whether `box` meets any of `boxes` grown by `margin` x their size on each side."""
  x1, y1, x2, y2 = box
  for bx1, by1, bx2, by2 in boxes:
    mx, my = margin * (bx2 - bx1), margin * (by2 - by1)
    if x1 < bx2 + mx and bx1 - mx < x2 and y1 < by2 + my and by1 - my < y2:
      return True
  return False


def add_distractors(rng: np.random.Generator, canvas: np.ndarray, face_boxes, gray_scene: bool,
                    mean_count: float = 4.0) -> None:
  """Pastes unlabelled non-face patches with the same blending as faces (in place).

  20% are LFW non-face patches (tinted with a skin tone or a random colour), 30% face-free
  crops of the people photos (hands, arms, suits, hair), the rest patches of photos without
  people, 70% of them the hard negatives (`NEGATIVE_FILES`: monkey faces, hands, fruit,
  coins, text, cards, patterns), so neither a blended edge, a skin-coloured blob, a body
  part nor a round or textured object marks a face.
  """
  height, width = canvas.shape[:2]
  non_faces = package_images.non_face_patches()
  plain = [n for n in package_images.available_backgrounds()
           if not package_images.has_faces(n)]
  hard = [n for n in plain if n in package_images.NEGATIVE_FILES]
  people = list(package_images.PEOPLE_FILES)
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
    u = rng.random()
    patch = None
    if 0.2 <= u < 0.5:  # a face-free window of a people photo (None: there is none)
      crop = package_images.photo_crop(rng, people[rng.integers(len(people))], w, size,
                                       min_scale=0.1, without_faces=True)
      patch = None if crop is None else crop[0]
    elif u >= 0.5:
      pool = hard if hard and rng.random() < 0.7 else plain
      patch = package_images.photo_crop(rng, pool[rng.integers(len(pool))], w, size,
                                        min_scale=0.1)[0]
    if patch is not None:
      patch_box = (0.0, 0.0, float(w), float(size))
      if gray_scene:
        patch = np.repeat(luminance(patch)[..., None], 3, -1)
    else:
      gray = non_faces[rng.integers(len(non_faces))]
      if gray_scene:
        patch = np.repeat(gray[..., None] * np.float32(255.0), 3, -1)
      else:
        tone = (package_images.SKIN_TONES[rng.integers(len(package_images.SKIN_TONES))]
                if rng.random() < 0.5 else rng.uniform(40.0, 230.0, size=3).astype(np.float32))
        patch = package_images.tint_gray(gray, tone)
      patch_box = (0.0, 0.0, 25.0, 25.0)
    paste(canvas, patch, patch_box, box, rng, ellipse_scale=(1.06, 1.06),
          feather=float(rng.uniform(0.2, 0.35)))


def motion_blur(pixels: np.ndarray, length: int, horizontal: bool) -> np.ndarray:
  """A box blur of `length` px along one axis (camera shake), with PIL."""
  kernel = np.zeros((5, 5), np.float32)
  length = int(np.clip(length, 2, 5))
  if horizontal:
    kernel[2, :length] = 1.0
  else:
    kernel[:length, 2] = 1.0
  image = Image.fromarray(to_uint8(pixels), "RGB").filter(
      ImageFilter.Kernel((5, 5), kernel.ravel().tolist(), scale=float(length)))
  return np.asarray(image, np.float32)


def finish(rng: np.random.Generator, canvas: np.ndarray, gray_scene: bool):
  """Whole-image photometry -> (uint8 image, JPEG quality 60-95).

  Exposure and gamma (0.75-1.35), contrast, a colour temperature shift; 15% of images are
  dim (x 0.35-0.6, with 2-3x the sensor noise); blur: defocus (Gaussian 0.3-1.6 px, 25%) or
  camera shake (a 2-5 px line, 7%); then sensor noise and JPEG quality.
  """
  pixels = canvas
  if gray_scene:
    pixels = np.repeat(luminance(pixels)[..., None], 3, -1)
  gamma = np.float32(np.exp(rng.uniform(np.log(0.75), np.log(1.35))))
  pixels = np.float32(255.0) * (np.clip(pixels, 0.0, 255.0) / np.float32(255.0)) ** gamma
  contrast = np.float32(rng.uniform(0.8, 1.2))
  mean = np.float32(pixels.mean())
  pixels = (pixels - mean) * contrast + mean
  if not gray_scene:
    warm = np.float32(rng.uniform(-0.08, 0.08))
    pixels = pixels * np.array([1 + warm, 1.0, 1 - warm], np.float32)
  noise_gain = 1.0
  if rng.random() < 0.15:
    pixels = pixels * np.float32(rng.uniform(0.35, 0.6))
    noise_gain = float(rng.uniform(2.0, 3.0))
  u = rng.random()
  if u < 0.25:
    pixels = gaussian_blur(pixels, float(rng.uniform(0.3, 1.6)))
  elif u < 0.32:
    pixels = motion_blur(pixels, int(rng.integers(2, 6)), bool(rng.random() < 0.7))
  sigma = np.float32(rng.uniform(0.0, 3.0) * noise_gain)
  noise = rng.standard_normal(pixels.shape[:2] + ((1,) if gray_scene else (3,)),
                              dtype=np.float32)
  pixels = pixels + noise * sigma
  return to_uint8(pixels), int(rng.integers(60, 96))
