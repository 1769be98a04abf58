"""Face crops and background photos that pip packages ship, for the embedded dataset.

Every input comes from an installed package's own data files (never from the network, never
from a file only one machine has):

* scikit-image (BSD-3-Clause code; data files with their own terms, see
  `skimage/data/README.txt` and the scikit-image docs):
  - `lfw_subset.npy`: 100 LFW face crops + 100 LFW non-face patches, 25x25 grayscale in [0, 1]
    (Labeled Faces in the Wild, Huang et al. 2007; released for research use, redistributed
    by scikit-image). Faces are tight crops, brows/forehead to chin, cheek to cheek.
  - `astronaut.png` (NASA, public domain; Eileen Collins: one real face),
    `camera.png` (cameraman, scikit-image's licence; one real face in profile, grayscale),
    `coffee.png`, `chelsea.png` (CC0), `rocket.jpg` (NASA, public domain),
    `motorcycle_left.png` / `motorcycle_right.png` (Middlebury stereo 2014),
    `brick.png`, `grass.png`, `gravel.png` (CC0 textures), `hubble_deep_field.jpg`
    (NASA/ESA, public domain), `color.png`, `coins.png`, `moon.png`, `page.png`, `text.png`,
    `clock_motion.png` (scikit-image's licence / public domain).
* matplotlib (optional; PSF-style licence): `sample_data/grace_hopper.jpg` (US Navy photo,
  public domain; one real face).

The real face boxes below were annotated by hand (forehead to chin, cheek to cheek, as WIDER
annotators do) on the files of scikit-image 0.25.2 and matplotlib 3.11.2.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import pathlib

import numpy as np
from PIL import Image

# Hand-annotated face boxes (x1, y1, x2, y2), inclusive-exclusive pixels of the source file.
REAL_FACE_BOXES = {
  "skimage:astronaut.png": ((172, 68, 275, 158),),
  "skimage:camera.png": ((180, 112, 256, 192),),
  "matplotlib:grace_hopper.jpg": ((166, 142, 364, 328),),
}

# Photos used as backgrounds (those in REAL_FACE_BOXES carry their real faces along).
BACKGROUND_FILES = (
  "skimage:astronaut.png", "skimage:camera.png", "skimage:coffee.png", "skimage:chelsea.png",
  "skimage:rocket.jpg", "skimage:motorcycle_left.png", "skimage:motorcycle_right.png",
  "skimage:brick.png", "skimage:grass.png", "skimage:gravel.png",
  "skimage:hubble_deep_field.jpg", "skimage:color.png", "skimage:coins.png",
  "skimage:moon.png", "skimage:page.png", "skimage:text.png", "skimage:clock_motion.png",
  "matplotlib:grace_hopper.jpg",
)

# Skin tones (sRGB, 0-255) from light to dark, used to colour the grayscale LFW crops.
SKIN_TONES = np.array([
  (255, 224, 196), (241, 194, 160), (224, 172, 138), (198, 134, 100), (170, 110, 76),
  (141, 85, 56), (110, 66, 44), (82, 50, 34), (236, 188, 150), (210, 160, 120),
], np.float32)


@dataclasses.dataclass(frozen=True)
class Photo:
  """A source photo: RGB uint8 pixels, whether it was grayscale, and its real face boxes."""
  name: str
  pixels: np.ndarray  # [H, W, 3] uint8
  gray: bool
  faces: tuple  # ((x1, y1, x2, y2), ...) float pixels


@dataclasses.dataclass(frozen=True)
class FaceCrop:
  """A face to paste: float32 RGB in [0, 255], the face box inside the crop, gray or not."""
  name: str
  pixels: np.ndarray  # [h, w, 3] float32
  box: tuple  # (x1, y1, x2, y2) of the face inside `pixels`
  gray: bool


def _package_file(spec: str):
  """`"pkg:file"` -> pathlib.Path of the package's data file (None if the package is absent).

  Found with `importlib.util.find_spec`, so the packages are not imported.
  """
  package, filename = spec.split(":")
  sub = {"skimage": ("data",), "matplotlib": ("mpl-data", "sample_data")}.get(package)
  if sub is None:
    raise ValueError(f"unknown package in {spec!r}")
  found = importlib.util.find_spec(package)
  if found is None or not found.submodule_search_locations:
    return None
  return pathlib.Path(list(found.submodule_search_locations)[0], *sub, filename)


def package_versions() -> dict:
  """Versions of the packages whose bytes enter the dataset (None: not installed)."""
  out = {}
  for dist in ("numpy", "pillow", "scikit-image", "matplotlib"):
    try:
      out[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      out[dist] = None
  return out


def available_backgrounds() -> tuple:
  """Names of the background photos present in this environment (scikit-image required)."""
  if _package_file("skimage:astronaut.png") is None:
    raise ModuleNotFoundError(
        "the embedded dataset needs scikit-image (pip install scikit-image==0.25.2)")
  return tuple(s for s in BACKGROUND_FILES if _package_file(s) is not None
               and _package_file(s).is_file())


@functools.lru_cache(maxsize=None)
def load_photo(spec: str) -> Photo:
  """Loads one background photo as RGB uint8 with its hand-annotated faces."""
  with _package_file(spec).open("rb") as f:
    image = Image.open(f)
    image.load()
  gray = image.mode in ("L", "I", "F", "1", "LA")
  if image.mode == "RGBA":  # composite on white
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=image.split()[3])
    image = canvas
  pixels = np.asarray(image.convert("RGB"), np.uint8)
  faces = tuple(tuple(float(v) for v in b) for b in REAL_FACE_BOXES.get(spec, ()))
  return Photo(spec, pixels, gray, faces)


@functools.lru_cache(maxsize=None)
def lfw_subset() -> tuple:
  """(faces [100, 25, 25], non_faces [100, 25, 25]) float32 in [0, 1] from scikit-image."""
  with _package_file("skimage:lfw_subset.npy").open("rb") as f:
    data = np.load(f).astype(np.float32)
  if data.shape != (200, 25, 25):
    raise ValueError(f"unexpected lfw_subset shape {data.shape}")
  return data[:100], data[100:]


def tint_gray(gray: np.ndarray, tone: np.ndarray) -> np.ndarray:
  """Colours a [h, w] luminance in [0, 1] with a skin tone -> [h, w, 3] float32 in [0, 255].

  The tone sets the hue and the mean brightness; the gray image's relative luminance (its
  shading, eyes, hair) is kept: pixel = tone * lum / mean(lum), soft-clipped at 255.
  """
  lum = gray.astype(np.float32)
  lum = lum / max(float(lum.mean()), 1e-3)
  out = lum[..., None] * tone[None, None, :].astype(np.float32)
  return np.clip(out, 0.0, 255.0)


@functools.lru_cache(maxsize=None)
def face_crops() -> tuple:
  """All pasteable faces: the 100 LFW crops (gray) and the real photos' faces (with context).

  Real faces are cropped with a 25% margin around the box (hair, ears and background come
  along and are feathered away by the blending mask).
  """
  faces, _ = lfw_subset()
  crops = [FaceCrop(f"lfw:{i}", (f * 255.0)[..., None].repeat(3, -1), (0.0, 0.0, 25.0, 25.0),
                    True) for i, f in enumerate(faces)]
  for spec, boxes in REAL_FACE_BOXES.items():
    if _package_file(spec) is None or not _package_file(spec).is_file():
      continue
    photo = load_photo(spec)
    height, width = photo.pixels.shape[:2]
    for k, (x1, y1, x2, y2) in enumerate(boxes):
      mx, my = 0.25 * (x2 - x1), 0.25 * (y2 - y1)
      cx1, cy1 = max(0, int(x1 - mx)), max(0, int(y1 - my))
      cx2, cy2 = min(width, int(x2 + mx)), min(height, int(y2 + my))
      pixels = photo.pixels[cy1:cy2, cx1:cx2].astype(np.float32)
      crops.append(FaceCrop(f"{spec}#{k}", pixels, (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1),
                            photo.gray))
  return tuple(crops)


def non_face_patches() -> np.ndarray:
  """The 100 LFW non-face patches [100, 25, 25] in [0, 1] (pasted as unlabelled distractors)."""
  return lfw_subset()[1]


def _resize_rgb(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
  """uint8 [h, w, 3] -> float32 [height, width, 3] with PIL (Lanczos down, bicubic up)."""
  image = Image.fromarray(pixels, "RGB")
  shrink = width < image.width or height < image.height
  method = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
  return np.asarray(image.resize((width, height), method), np.float32)


def _crop_window(rng, photo: Photo, aspect: float, min_scale: float):
  """A random crop (x0, y0, cw, ch) of `photo` with aspect cw/ch ~ `aspect`.

  When the photo has real faces the window contains all of them (never cuts one).
  """
  ph, pw = photo.pixels.shape[:2]
  full_w = min(pw, ph * aspect)
  for _ in range(20):
    cw = full_w * rng.uniform(min_scale, 1.0)
    ch = min(ph, cw / aspect)
    cw = ch * aspect
    lo_x, hi_x, lo_y, hi_y = 0.0, pw - cw, 0.0, ph - ch
    for x1, y1, x2, y2 in photo.faces:
      lo_x, hi_x = max(lo_x, x2 - cw), min(hi_x, x1)
      lo_y, hi_y = max(lo_y, y2 - ch), min(hi_y, y1)
    if lo_x <= hi_x and lo_y <= hi_y:
      return int(rng.uniform(lo_x, hi_x)), int(rng.uniform(lo_y, hi_y)), int(cw), int(ch)
    min_scale = min(1.0, min_scale + 0.1)
  ch = min(ph, int(full_w / aspect))
  return 0, 0, int(ch * aspect), ch


def photo_crop(rng, spec: str, width: int, height: int, min_scale: float = 0.35):
  """A random flipped, colour-jittered crop of one photo resized to (width, height).

  Returns (float32 [height, width, 3], gray, faces as integer (x1, y1, x2, y2) in the output).
  """
  photo = load_photo(spec)
  x0, y0, cw, ch = _crop_window(rng, photo, width / height, min_scale)
  pixels = _resize_rgb(photo.pixels[y0:y0 + ch, x0:x0 + cw], width, height)
  flip = rng.random() < 0.5
  if flip:
    pixels = pixels[:, ::-1]
  gain = rng.uniform(0.7, 1.2) * (1.0 if photo.gray else rng.uniform(0.92, 1.08, size=3))
  pixels = np.clip(pixels * np.asarray(gain, np.float32), 0.0, 255.0)
  sx, sy = width / cw, height / ch
  faces = []
  for x1, y1, x2, y2 in photo.faces:
    fx1, fx2 = (x1 - x0) * sx, (x2 - x0) * sx
    if flip:
      fx1, fx2 = width - fx2, width - fx1
    box = (int(round(fx1)), int(round((y1 - y0) * sy)), int(round(fx2)),
           int(round((y2 - y0) * sy)))
    faces.append(tuple(int(np.clip(v, 0, lim)) for v, lim in zip(box, (width, height) * 2)))
  return np.ascontiguousarray(pixels), photo.gray, faces


def background(rng, width: int, height: int, *, allow_real: bool):
  """The scene: one photo crop (80%) or a mosaic of 2-4 crops.

  With `allow_real`, 15% of scenes are a photo with a real face, which is returned annotated.
  70% of gray photos are colour-toned (random channel gains); the rest, plus 5% of colour
  scenes, make a gray scene (faces are then pasted gray).
  Returns (float32 [height, width, 3] canvas, gray_scene, real faces as dicts).
  """
  names = available_backgrounds()
  real = [n for n in names if n in REAL_FACE_BOXES]
  plain = [n for n in names if n not in REAL_FACE_BOXES]
  real_faces = []
  if allow_real and rng.random() < 0.15:
    spec = real[rng.integers(len(real))]
    canvas, gray, boxes = photo_crop(rng, spec, width, height, min_scale=0.5)
    pose = 1 if spec == "skimage:camera.png" else 0
    real_faces = [{"xyxy": b, "blur": 0, "pose": pose, "real": True} for b in boxes]
  elif rng.random() < 0.8:
    canvas, gray, _ = photo_crop(rng, plain[rng.integers(len(plain))], width, height)
  else:
    canvas = np.zeros((height, width, 3), np.float32)
    cut_x = int(width * rng.uniform(0.3, 0.7)) if rng.random() < 0.7 else width
    cut_y = int(height * rng.uniform(0.3, 0.7)) if rng.random() < 0.7 else height
    grays = []
    for x0, x1 in ((0, cut_x), (cut_x, width)):
      for y0, y1 in ((0, cut_y), (cut_y, height)):
        if x1 > x0 and y1 > y0:
          tile, tile_gray, _ = photo_crop(rng, plain[rng.integers(len(plain))], x1 - x0, y1 - y0)
          canvas[y0:y1, x0:x1] = tile
          grays.append(tile_gray)
    gray = all(grays)
  if gray and rng.random() < 0.7:  # most gray photos become colour-toned scenes
    canvas = np.clip(canvas * rng.uniform(0.7, 1.15, size=3).astype(np.float32), 0.0, 255.0)
    gray = False
  gray = gray or rng.random() < 0.05
  if gray:
    canvas = np.repeat((canvas @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
  return canvas, gray, real_faces
