"""Writes a tiny generated WIDER FACE release in the official layout, with its quirks.

`write_wider_release(root)` creates under `root`:
  WIDER_{train,val,test}/images/<event>/<name>.jpg   small random JPEGs of varied sizes
  wider_face_split/wider_face_{train,val}_bbx_gt.txt, wider_face_test_filelist.txt
  (zipped=True: WIDER_*.zip and wider_face_split.zip instead, each holding its folder)
  retinaface_gt_v1.1/train/label.txt                (labels=True)
  eval_tools/ground_truth/wider_{face,easy,medium,hard}_val.mat   (eval_mats=True)
and returns the truth: {split: [ImageTruth]} with everything a reader should give back.

Quirks reproduced: trailing spaces on face lines; a 0-face image written as `0` plus one dummy
`0 0 0 0 0 0 0 0 0 0` line (train and val); an all-zero box that IS a face (count 1); boxes with
w <= 0 or h <= 0 (0 and negative); invalid faces (never in any eval setting); a grayscale JPEG;
label.txt faces with -1 landmarks, a 0-face header with no lines, an image missing from it; eval
.mat cell arrays as scipy.io.loadmat returns the official ones (`gt_list` 1-based, (K, 1)).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import zipfile

import numpy as np

EVENTS = ("0--Parade", "1--Handshaking", "12--Group")
SETTINGS = ("easy", "medium", "hard")


@dataclasses.dataclass
class ImageTruth:
  """Truth of one generated image: boxes [N, 4] xywh float32, attributes [N, 6] int32
  (blur expression illumination invalid occlusion pose), landmarks [N, 5, 2], present [N],
  settings {easy|medium|hard: [N] bool}, the encoded bytes and (height, width)."""
  name: str
  event: str
  boxes: np.ndarray
  attributes: np.ndarray
  landmarks: np.ndarray
  landmarks_present: np.ndarray
  settings: dict
  jpeg: bytes
  shape: tuple


def _jpeg(rng: np.random.Generator, height: int, width: int, gray: bool = False) -> bytes:
  import io

  from PIL import Image

  pixels = rng.integers(0, 256, size=(height, width) if gray else (height, width, 3))
  buf = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def _faces(rng, n, height, width, special=()):
  """n random faces; `special` rows (xywh + 6 attributes) are appended verbatim."""
  x = rng.integers(0, width - 4, n)
  y = rng.integers(0, height - 4, n)
  w = rng.integers(1, 30, n)
  h = rng.integers(1, 30, n)
  boxes = np.stack([x, y, w, h], 1).astype(np.float32).reshape(-1, 4)
  attrs = np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n),
                    np.zeros(n, int), rng.integers(0, 3, n), rng.integers(0, 2, n)], 1)
  attrs = attrs.astype(np.int32).reshape(-1, 6)
  for row in special:
    boxes = np.concatenate([boxes, np.asarray([row[:4]], np.float32)])
    attrs = np.concatenate([attrs, np.asarray([row[4:]], np.int32)])
  return boxes, attrs


def _images(rng, split: str, count: int, with_faces: bool) -> list[ImageTruth]:
  out = []
  for k in range(count):
    event = EVENTS[k % len(EVENTS)]
    name = f"{event}/{event.split('--')[0]}_{event.split('--')[1]}_{split}_{k}.jpg"
    height, width = int(rng.integers(24, 90)), int(rng.integers(24, 90))
    jpeg = _jpeg(rng, height, width, gray=(k == 1))
    if not with_faces:
      boxes, attrs = np.zeros([0, 4], np.float32), np.zeros([0, 6], np.int32)
    elif k == 0:  # the 0-face image (written with its dummy line)
      boxes, attrs = _faces(rng, 0, height, width)
    elif k == 2:  # degenerate boxes, an invalid face, an all-zero face
      boxes, attrs = _faces(rng, 2, height, width, special=[
          (7, 5, 0, 6, 2, 0, 0, 0, 1, 0), (9, 3, -2, 8, 1, 0, 0, 0, 0, 0),
          (4, 4, 12, 10, 0, 1, 1, 1, 2, 1), (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)])
    elif k == 3:  # a lone all-zero face: count 1, and the line is a face, not a dummy
      boxes, attrs = _faces(rng, 0, height, width, special=[(0,) * 10])
    else:
      boxes, attrs = _faces(rng, int(rng.integers(1, 7)), height, width)
    n = boxes.shape[0]
    out.append(ImageTruth(
        name=name, event=event, boxes=boxes, attributes=attrs,
        landmarks=np.full([n, 5, 2], -1.0, np.float32), landmarks_present=np.zeros([n], bool),
        settings={s: np.zeros([n], bool) for s in SETTINGS}, jpeg=jpeg, shape=(height, width)))
  return out


def _bbx_text(images: list[ImageTruth]) -> str:
  lines = []
  for im in images:
    lines += [im.name, str(im.boxes.shape[0])]
    if im.boxes.shape[0] == 0:
      lines.append("0 0 0 0 0 0 0 0 0 0 ")
    for b, a in zip(im.boxes.astype(int), im.attributes):
      lines.append(" ".join(str(v) for v in [*b, *a]) + " ")
  return "\n".join(lines) + "\n"


def _add_landmarks(rng, images: list[ImageTruth], skip: str) -> str:
  """Fills truth landmarks of the train images and returns the label.txt text."""
  lines = []
  for im in images:
    if im.name == skip:  # not in label.txt: every face reads back without landmarks
      continue
    lines.append(f"# {im.name}")
    for i, box in enumerate(im.boxes.astype(int)):
      if i % 3 == 1:  # no landmarks: the -1 convention
        values = [-1.0] * 15 + [0.2]
      else:
        pts = (rng.integers(0, 800, (5, 2)) / 8.0).astype(np.float32)  # exact in float32
        im.landmarks[i], im.landmarks_present[i] = pts, True
        values = [v for p in pts for v in (float(p[0]), float(p[1]), 0.0)] + [0.82]
      lines.append(" ".join(str(v) for v in [*box]) + " " + " ".join(repr(v) for v in values))
  return "\n".join(lines) + "\n"


def _cell(items) -> np.ndarray:
  cell = np.empty((len(items), 1), dtype=object)
  for i, item in enumerate(items):
    cell[i, 0] = item
  return cell


def _write_mats(rng, images: list[ImageTruth], out_dir: pathlib.Path) -> None:
  """Draws nested easy ⊂ medium ⊂ hard memberships (never invalid faces) into the truth and
  writes the four eval_tools .mat files in the official cell-array structure."""
  import scipy.io

  for im in images:
    n = im.boxes.shape[0]
    level = rng.integers(0, 4, n)  # 0 none, 1 hard only, 2 medium+hard, 3 all
    level[im.attributes[:, 3] != 0] = 0
    for j, s in enumerate(SETTINGS):
      im.settings[s] = level >= 3 - j
  by_event = {e: [im for im in images if im.event == e] for e in EVENTS}
  events = [e for e in EVENTS if by_event[e]]
  base = {
      "event_list": _cell([e for e in events]),
      "file_list": _cell([_cell([im.name.split("/")[1][:-4] for im in by_event[e]])
                          for e in events]),
      "face_bbx_list": _cell([_cell([im.boxes.astype(np.float64) for im in by_event[e]])
                              for e in events]),
      "invalid_label_list": _cell([_cell([im.attributes[:, 3:4].astype(np.float64)
                                          for im in by_event[e]]) for e in events]),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(out_dir / "wider_face_val.mat", base)
  for s in SETTINGS:
    gt = _cell([_cell([(np.flatnonzero(im.settings[s]) + 1).astype(np.float64).reshape(-1, 1)
                       for im in by_event[e]]) for e in events])
    scipy.io.savemat(out_dir / f"wider_{s}_val.mat", {**base, "gt_list": gt})


def _zip_dir(folder: pathlib.Path) -> None:
  """folder -> folder.zip holding `folder.name/...` (the official layout); removes folder."""
  with zipfile.ZipFile(f"{folder}.zip", "w", zipfile.ZIP_STORED) as zf:
    for path in sorted(folder.rglob("*")):
      zf.write(path, path.relative_to(folder.parent).as_posix())
  shutil.rmtree(folder)


def write_wider_release(root, *, zipped: bool = False, labels: bool = True,
                        eval_mats: bool = True, seed: int = 0) -> dict[str, list[ImageTruth]]:
  """Writes the release under `root` (see the module docstring) and returns its truth."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  truth = {"train": _images(rng, "train", 7, True), "validation": _images(rng, "val", 6, True),
           "test": _images(rng, "test", 4, False)}
  parts = {"train": "WIDER_train", "validation": "WIDER_val", "test": "WIDER_test"}
  for split, images in truth.items():
    for im in images:
      path = root / parts[split] / "images" / im.name
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(im.jpeg)
  split_dir = root / "wider_face_split"
  split_dir.mkdir(parents=True, exist_ok=True)
  (split_dir / "wider_face_train_bbx_gt.txt").write_text(_bbx_text(truth["train"]))
  # the val file ends without a final newline
  (split_dir / "wider_face_val_bbx_gt.txt").write_text(_bbx_text(truth["validation"]).rstrip())
  (split_dir / "wider_face_test_filelist.txt").write_text(
      "".join(f"{im.name}\n" for im in truth["test"]))
  if labels:
    label_dir = root / "retinaface_gt_v1.1" / "train"
    label_dir.mkdir(parents=True, exist_ok=True)
    text = _add_landmarks(rng, truth["train"], skip=truth["train"][-1].name)
    (label_dir / "label.txt").write_text(text)
  if eval_mats:
    _write_mats(rng, truth["validation"], root / "eval_tools" / "ground_truth")
  if zipped:
    for stem in (*parts.values(), "wider_face_split"):
      _zip_dir(root / stem)
  return truth


def corrupt_copy(src, dst, *, image: str | None = None, part: str = "WIDER_val",
                 remove: bool = False, bbx_lines: dict[int, str] | None = None) -> pathlib.Path:
  """Copies an extracted release and damages it: truncates (or removes) `image` of `part`, and/or
  replaces 1-based lines of wider_face_val_bbx_gt.txt by `bbx_lines`. Returns the image path."""
  shutil.copytree(src, dst)
  dst = pathlib.Path(dst)
  target = dst / part / "images" / image if image else dst
  if image and remove:
    os.remove(target)
  elif image:
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 3])
  if bbx_lines:
    gt = dst / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    lines = gt.read_text().splitlines()
    for lineno, text in bbx_lines.items():
      lines[lineno - 1] = text
    gt.write_text("\n".join(lines) + "\n")
  return target
