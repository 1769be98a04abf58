"""Image files a user gives the tools (detect, export): listing folders, reading one image."""

from __future__ import annotations

import io

from etils import epath

from tinyfaces_jax import paths

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(inputs) -> list[epath.Path]:
  """Files and folders, paths or URLs (their image files, sorted, not recursive) -> image
  paths (`paths.resolve`d)."""
  out = []
  for item in inputs:
    p = paths.resolve(item)
    if p.is_dir():
      out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
      out.append(p)
    else:
      raise FileNotFoundError(f"no such image file or folder: {item}")
  return out


def load_image(path):
  """Image path or URL -> [H, W, 3] uint8 RGB (EXIF orientation applied); ValueError naming
  the file."""
  import numpy as np
  from PIL import Image, ImageOps
  try:
    with Image.open(io.BytesIO(paths.resolve(path).read_bytes())) as im:
      return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"{path}: cannot read the image ({e})") from e
