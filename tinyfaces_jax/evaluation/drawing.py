"""Drawing detections, ground truth and anchors on images (PIL, host side); `save_image`
writes one to a path or URL (gs://...) through etils.epath."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from tinyfaces_jax import paths

LANDMARK_COLOURS = ((255, 0, 0), (0, 255, 255), (255, 0, 255), (0, 255, 0), (0, 0, 255))


def to_pil(image) -> Image.Image:
  """[H, W, 3] uint8 (or float in [0, 255]) array or PIL image -> RGB PIL image (a copy)."""
  if isinstance(image, Image.Image):
    return image.convert("RGB").copy()
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
  return Image.fromarray(arr, "RGB")


def draw_boxes(image, boxes, *, scores=None, landmarks=None, colour=(0, 255, 0),
               width: int = 2, labels: Sequence[str] | None = None) -> Image.Image:
  """Draws boxes (and optional scores / 5-point landmarks) on a copy of `image`.

  Args:
    image: [H, W, 3] RGB array or PIL image.
    boxes: [N, 4] xyxy pixels.
    scores: optional [N] scores written above each box.
    landmarks: optional [N, 10] or [N, 5, 2] points (x, y), drawn as coloured dots.
    colour: RGB outline colour.
    width: outline width in pixels.
    labels: optional per-box text (overrides scores).
  Returns:
    The annotated PIL image.
  """
  img = to_pil(image)
  draw = ImageDraw.Draw(img)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  pts = None if landmarks is None else np.asarray(landmarks, np.float64).reshape(len(boxes),
                                                                                 -1, 2)
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    draw.rectangle([x1, y1, max(x2, x1), max(y2, y1)], outline=tuple(colour), width=width)
    text = labels[i] if labels is not None else (
        f"{float(scores[i]):.2f}" if scores is not None else None)
    if text:
      draw.text((x1, max(y1 - 11, 0)), text, fill=tuple(colour))
    if pts is not None:
      r = max(1.0, width)
      for k, (px, py) in enumerate(pts[i]):
        c = LANDMARK_COLOURS[k % len(LANDMARK_COLOURS)]
        draw.ellipse([px - r, py - r, px + r, py + r], fill=c)
  return img


def save_image(image, path, format: str = "PNG"):
  """Writes `image` ([H, W, 3] array or PIL image) to `path` (local or URL; parent folders
  created) in `format`; returns the path as an epath.Path."""
  buf = io.BytesIO()
  to_pil(image).save(buf, format=format)
  path = paths.resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buf.getvalue())
  return path
