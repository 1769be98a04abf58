"""Parsers for the official WIDER FACE annotation files (pure python + numpy, no TensorFlow).

Files understood:
  * `wider_face_{train,val}_bbx_gt.txt` (from `wider_face_split.zip`): a line `<event>/<name>.jpg`,
    a line `<count>`, then `count` lines `x1 y1 w h blur expression illumination invalid occlusion
    pose`. An image with 0 faces is written as `0` followed by ONE dummy line
    (`0 0 0 0 0 0 0 0 0 0`) that is consumed here and yields no face. With count >= 1 an all-zero
    line IS a face (the val ground truth has four), so it is kept.
  * `wider_face_test_filelist.txt`: one `<event>/<name>.jpg` per line.
  * RetinaFace `label.txt` (retinaface_gt_v1.1, the layout read by biubug6/Pytorch_Retinaface
    `data/wider_face.py` there): `# <event>/<name>.jpg`, then per face `x y w h` followed, in the train
    file, by 5 landmarks as `lx ly flag` triples and a confidence (20 values); -1 entries mean the
    face has no landmarks. The val variant has only `x y w h`.
  * the eval_tools ground truth `wider_{easy,medium,hard}_val.mat`: cell arrays `event_list`,
    `file_list`, `face_bbx_list`, `gt_list` (1-based indices of the faces that count per setting).

Boxes stay as in the files: pixel `xywh` float32, including the boxes with w <= 0 or h <= 0
(the evaluation needs them: the hard setting keeps one). `trainable` marks w > 0 and h > 0.
`invalid` is NOT folded into `trainable`: the reference training pipelines keep invalid faces
(peiyunh/tiny `cnn_setup_imdb.m`, mahyarnajibi/SSH `lib/datasets/wider.py`, the RetinaFace
label.txt) and only drop degenerate boxes (SSH: clipped w or h < 1); the evaluation excludes
invalid faces from every setting's `gt_list` (checked on the official val .mat: 0 of 585), i.e.
it ignores them. A training pipeline that prefers to ignore them can use `trainable & ~invalid`.

Files may be local paths or URLs (gs://...), read through etils.epath.
Every malformed input raises `ValueError("<file>:<line>: ...")` with a 1-based line number.
Axis letters: N faces of one image.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterable, Sequence, Union

import numpy as np

from tinyfaces_jax import paths

ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
# Largest legal value of each attribute (WIDER FACE readme: blur/occlusion 0-2, others 0-1).
ATTRIBUTE_MAX = (2, 1, 1, 1, 2, 1)
SETTINGS = ("easy", "medium", "hard")
NUM_LANDMARKS = 5

PathOrLines = Union[str, os.PathLike, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class ImageAnnotation:
  """Ground truth of one image of a `*_bbx_gt.txt` file.

  Attributes:
    name: `<event>/<name>.jpg`, as in the file (the key used everywhere).
    event: `<event>`, e.g. `0--Parade`.
    boxes: [N, 4] float32 pixel (x1, y1, w, h) exactly as in the file.
    attributes: [N, 6] int32 columns in `ATTRIBUTE_NAMES` order
      (blur, expression, illumination, invalid, occlusion, pose).
  """
  name: str
  event: str
  boxes: np.ndarray
  attributes: np.ndarray

  @property
  def num_faces(self) -> int:
    return int(self.boxes.shape[0])

  def attribute(self, key: str) -> np.ndarray:
    """[N] int32 column `key` of `attributes` (one of `ATTRIBUTE_NAMES`)."""
    return self.attributes[:, ATTRIBUTE_NAMES.index(key)]

  @property
  def invalid(self) -> np.ndarray:
    """[N] bool, the file's `invalid` flag."""
    return self.attribute("invalid") != 0

  @property
  def trainable(self) -> np.ndarray:
    """[N] bool, w > 0 and h > 0 (see the module docstring for why `invalid` is not used)."""
    return trainable_mask(self.boxes)


def trainable_mask(boxes_xywh: np.ndarray) -> np.ndarray:
  """[N, 4] xywh -> [N] bool: the box has a positive width and height."""
  b = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
  return (b[:, 2] > 0) & (b[:, 3] > 0)


def _read_lines(path_or_lines: PathOrLines) -> tuple[str, list[str]]:
  """Returns (name for messages, lines without line endings)."""
  if isinstance(path_or_lines, (str, os.PathLike)):
    text = paths.resolve(path_or_lines).read_bytes().decode("utf-8")
    return os.fspath(path_or_lines), text.splitlines()
  return "<lines>", [str(line).rstrip("\r\n") for line in path_or_lines]


def _error(source: str, lineno: int, message: str) -> ValueError:
  return ValueError(f"{source}:{lineno}: {message}")


def _is_image_name(text: str) -> bool:
  return "/" in text and text.lower().endswith((".jpg", ".jpeg", ".png"))


def _parse_face_line(source: str, lineno: int, line: str) -> tuple[list[float], list[int]]:
  fields = line.split()
  if len(fields) != 10:
    raise _error(source, lineno, f"expected 10 fields 'x1 y1 w h blur expression illumination "
                 f"invalid occlusion pose', got {len(fields)}: {line!r}")
  try:
    box = [float(v) for v in fields[:4]]
    attrs = [int(v) for v in fields[4:]]
  except ValueError:
    raise _error(source, lineno, f"non-numeric face line: {line!r}") from None
  if not all(np.isfinite(box)):
    raise _error(source, lineno, f"non-finite box: {line!r}")
  for key, value, vmax in zip(ATTRIBUTE_NAMES, attrs, ATTRIBUTE_MAX):
    if not 0 <= value <= vmax:
      raise _error(source, lineno, f"{key}={value} outside [0, {vmax}]: {line!r}")
  return box, attrs


def parse_bbx_gt(path_or_lines: PathOrLines) -> list[ImageAnnotation]:
  """Parses a `wider_face_{train,val}_bbx_gt.txt` file (a path or its lines).

  Returns:
    one `ImageAnnotation` per image, in file order.
  Raises:
    ValueError naming the file and the 1-based line on: a bad image name, a non-integer or
    negative count, a count that runs past the end of the file, a face line without exactly 10
    numeric fields or with an attribute out of range, a duplicated image.
  """
  source, lines = _read_lines(path_or_lines)
  out: list[ImageAnnotation] = []
  seen: set[str] = set()
  i, n = 0, len(lines)
  while i < n:
    name = lines[i].strip()
    if not name:
      i += 1
      continue
    if not _is_image_name(name):
      raise _error(source, i + 1, f"expected '<event>/<name>.jpg', got {name!r}")
    if name in seen:
      raise _error(source, i + 1, f"image {name!r} listed twice")
    seen.add(name)
    if i + 1 >= n:
      raise _error(source, i + 2, f"missing face count for {name!r} (end of file)")
    count_text = lines[i + 1].strip()
    try:
      count = int(count_text)
    except ValueError:
      raise _error(source, i + 2, f"face count of {name!r} is not an integer: "
                   f"{count_text!r}") from None
    if count < 0:
      raise _error(source, i + 2, f"negative face count {count} for {name!r}")
    count_lineno = i + 2
    i += 2
    boxes, attrs = [], []
    if count == 0:
      # The official files follow a 0 count with one dummy 10-field line: consume it.
      if i < n and len(lines[i].split()) == 10 and not _is_image_name(lines[i].strip()):
        _parse_face_line(source, i + 1, lines[i])
        i += 1
    else:
      if i + count > n:
        raise _error(source, count_lineno, f"{name!r} announces {count} faces, the file ends "
                     f"after {n - i} more lines")
      for k in range(count):
        box, attr = _parse_face_line(source, i + k + 1, lines[i + k])
        boxes.append(box)
        attrs.append(attr)
      i += count
    out.append(ImageAnnotation(
        name=name, event=name.split("/", 1)[0],
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        attributes=np.asarray(attrs, np.int32).reshape(-1, len(ATTRIBUTE_NAMES))))
  return out


def parse_filelist(path_or_lines: PathOrLines) -> list[str]:
  """Parses `wider_face_test_filelist.txt`: [image names `<event>/<name>.jpg`] in file order."""
  source, lines = _read_lines(path_or_lines)
  names, seen = [], set()
  for lineno, line in enumerate(lines, start=1):
    name = line.strip()
    if not name:
      continue
    if not _is_image_name(name) or len(name.split()) != 1:
      raise _error(source, lineno, f"expected '<event>/<name>.jpg', got {name!r}")
    if name in seen:
      raise _error(source, lineno, f"image {name!r} listed twice")
    seen.add(name)
    names.append(name)
  return names


def parse_retinaface_labels(
    path_or_lines: PathOrLines) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Parses a RetinaFace `label.txt`.

  A face line has 4 values (`x y w h`, the val variant), or 19/20 values (`x y w h`, 5 triples
  `lx ly flag`, [confidence]) in the train file. A face has landmarks unless its first landmark
  x is negative (biubug6/Pytorch_Retinaface `data/wider_face.py` marks `label[4] < 0` as "no
  landmarks"; the file writes -1 for all of them).

  Returns:
    name -> (boxes [N, 4] float32 xywh, landmarks [N, 5, 2] float32 pixel (x, y), -1 where
    absent, landmark_present [N] bool).
  """
  source, lines = _read_lines(path_or_lines)
  rows: dict[str, list[list[float]]] = {}
  current = None
  for lineno, line in enumerate(lines, start=1):
    text = line.strip()
    if not text:
      continue
    if text.startswith("#"):
      fields = text[1:].split()
      if not fields or not _is_image_name(fields[0]):
        raise _error(source, lineno, f"expected '# <event>/<name>.jpg', got {text!r}")
      current = fields[0]
      if current in rows:
        raise _error(source, lineno, f"image {current!r} listed twice")
      rows[current] = []
      continue
    if current is None:
      raise _error(source, lineno, f"face line before the first '# <image>' line: {text!r}")
    fields = text.split()
    if len(fields) not in (4, 19, 20):
      raise _error(source, lineno, f"expected 4, 19 or 20 values, got {len(fields)}: {text!r}")
    try:
      values = [float(v) for v in fields]
    except ValueError:
      raise _error(source, lineno, f"non-numeric face line: {text!r}") from None
    if len(values) == 4:
      values += [-1.0] * 15
    rows[current].append(values[:19])
  out = {}
  for name, faces in rows.items():
    v = np.asarray(faces, np.float32).reshape(-1, 19)
    landmarks = v[:, 4:19].reshape(-1, NUM_LANDMARKS, 3)[:, :, :2]
    out[name] = (np.ascontiguousarray(v[:, :4]), np.ascontiguousarray(landmarks),
                 landmarks[:, 0, 0] >= 0)
  return out


def _cell_strings(cell) -> list[str]:
  """A MATLAB cell array of strings (as scipy loads it) -> [str]."""
  return [str(np.asarray(c).ravel()[0]) for c in np.asarray(cell, dtype=object).ravel()]


def _cells(cell) -> list[np.ndarray]:
  return [np.asarray(c) for c in np.asarray(cell, dtype=object).ravel()]


def _load_setting(path) -> dict[str, tuple[int, np.ndarray]]:
  """One `wider_<setting>_val.mat` (path or URL) -> name -> (num faces, [K] 0-based kept face
  indices)."""
  import scipy.io  # pylint: disable=g-import-not-at-top

  mat = scipy.io.loadmat(io.BytesIO(paths.resolve(path).read_bytes()))
  for key in ("event_list", "file_list", "face_bbx_list", "gt_list"):
    if key not in mat:
      raise ValueError(f"{path}: no '{key}' variable (not a WIDER eval_tools ground truth)")
  out = {}
  events = _cell_strings(mat["event_list"])
  files, bbxs, gts = (_cells(mat[k]) for k in ("file_list", "face_bbx_list", "gt_list"))
  for e, event in enumerate(events):
    names, boxes, kept = _cell_strings(files[e]), _cells(bbxs[e]), _cells(gts[e])
    if not len(names) == len(boxes) == len(kept):
      raise ValueError(f"{path}: event {event!r} has {len(names)} files, {len(boxes)} box lists, "
                       f"{len(kept)} gt lists")
    for name, b, g in zip(names, boxes, kept):
      key = f"{event}/{name}.jpg"
      num = b.size // 4
      idx = g.astype(np.int64).ravel() - 1
      if idx.size and (idx.min() < 0 or idx.max() >= num):
        raise ValueError(f"{path}: {key}: gt_list index outside 1..{num}")
      out[key] = (num, idx)
  return out


def load_eval_settings(mat_dir: Union[str, os.PathLike]) -> dict[str, dict[str, np.ndarray]]:
  """Reads `wider_{easy,medium,hard}_val.mat` from `mat_dir` (a path or URL).

  Returns:
    name (`<event>/<name>.jpg`) -> {"easy"|"medium"|"hard": [N] bool}, N the image's face count
    in the .mat files (the same faces, in the same order, as `wider_face_val_bbx_gt.txt`).
  Raises:
    FileNotFoundError for a missing file; ValueError when the three files disagree.
  """
  per_setting = {}
  for setting in SETTINGS:
    path = paths.resolve(mat_dir) / f"wider_{setting}_val.mat"
    if not path.is_file():
      raise FileNotFoundError(f"WIDER eval ground truth not found: {path}")
    per_setting[setting] = _load_setting(path)
  ref = per_setting[SETTINGS[0]]
  out: dict[str, dict[str, np.ndarray]] = {name: {} for name in ref}
  for setting, table in per_setting.items():
    if set(table) != set(ref):
      raise ValueError(f"{mat_dir}: wider_{setting}_val.mat lists other images than "
                       f"wider_{SETTINGS[0]}_val.mat")
    for name, (num, idx) in table.items():
      if num != ref[name][0]:
        raise ValueError(f"{mat_dir}: {name} has {num} faces in wider_{setting}_val.mat, "
                         f"{ref[name][0]} in wider_{SETTINGS[0]}_val.mat")
      mask = np.zeros([num], bool)
      mask[idx] = True
      out[name][setting] = mask
  return out


def count_faces(annotations: Iterable[ImageAnnotation]) -> int:
  """Total number of faces over `annotations`."""
  return sum(a.num_faces for a in annotations)
