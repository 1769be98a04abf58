"""WIDER FACE evaluation I/O: official ground-truth .mat files and submission-layout predictions.

Ground truth (the official `eval_tools/ground_truth` folder): `wider_face_val.mat` holds, per
event (61 cells), `file_list` (image stems), `face_bbx_list` ([G, 4] x y w h boxes) and
`event_list`; `wider_{easy,medium,hard}_val.mat` add `gt_list`, per image the 1-based indices of
the faces that count in that setting (the others are "ignore" faces). Two versions exist: the
current one (int32 boxes) and the pre-2017 one (`ground_truth_2016`, float boxes, same faces).

Predictions (the official submission layout): one file `<event>/<stem>.txt` per image:
  line 1: the image name (the official tool never reads it; we write the stem),
  line 2: K, the number of boxes,
  then K lines `x y w h score`.
Images are keyed project-wide by `"<event>/<stem>"`, e.g. `"0--Parade/0_Parade_Parade_0_102"`.

Folders may be local paths or URLs (`gs://...`): every file goes through `etils.epath`; for a
URL the 3226 small prediction files are read / written by `URL_THREADS` threads (one request
each).
"""

from __future__ import annotations

import dataclasses
import io
from concurrent import futures
from typing import Mapping

import numpy as np
import scipy.io
from etils import epath

from tinyfaces_jax import paths

SETTINGS = ("easy", "medium", "hard")
VERSIONS = ("auto", "current", "2016")
URL_THREADS = 16


class PredictionFormatError(ValueError):
  """A prediction file that does not follow the submission layout (message names file:line)."""


@dataclasses.dataclass(frozen=True)
class WiderGroundTruth:
  """WIDER FACE val ground truth, images in the official (event, file_list) order.

  Attributes:
    keys: N image keys `"<event>/<stem>"`.
    boxes: N arrays [G_i, 4] float64 (x, y, w, h); some boxes have w <= 0 or h <= 0.
    keep: setting -> N bool arrays [G_i]: True for the faces in that setting's `gt_list`.
    version: "current" (integer boxes) or "2016" (float boxes).
  """
  keys: list
  boxes: list
  keep: dict
  version: str

  @property
  def num_images(self) -> int:
    return len(self.keys)

  def num_faces(self, setting: str) -> int:
    """Number of faces that count in `setting` (the official `count_face`)."""
    return int(sum(int(k.sum()) for k in self.keep[setting]))


def _cell_str(cell) -> str:
  """A MATLAB char array read by scipy (nested object arrays) -> str."""
  a = np.asarray(cell)
  while a.dtype == object:
    a = np.asarray(a.ravel()[0])
  return str(a.ravel()[0]) if a.size else ""


def _load_mat(path: epath.Path) -> dict:
  if not path.is_file():
    raise FileNotFoundError(f"ground-truth file not found: {path}")
  return scipy.io.loadmat(io.BytesIO(path.read_bytes()))


def _map(fn, items: list, url: bool) -> list:
  """[fn(x) for x in items]; in `URL_THREADS` threads for URL files (results in order)."""
  if not url or len(items) < 2:
    return [fn(x) for x in items]
  with futures.ThreadPoolExecutor(URL_THREADS) as pool:
    return list(pool.map(fn, items))


def load_ground_truth(gt_dir, version: str = "auto") -> WiderGroundTruth:
  """Reads `wider_face_val.mat` and `wider_{easy,medium,hard}_val.mat` from `gt_dir`.

  Args:
    gt_dir: folder with the four official .mat files (current or 2016 version).
    version: "auto" (integer boxes -> "current", otherwise "2016"), or "current" / "2016" to
      check that the folder holds that version (a mismatch raises ValueError).
  Returns:
    WiderGroundTruth with boxes as float64 [G, 4] x y w h.
  """
  if version not in VERSIONS:
    raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
  gt_dir = paths.resolve(gt_dir)
  full = _load_mat(gt_dir / "wider_face_val.mat")
  events = [_cell_str(e) for e in full["event_list"].ravel()]
  keys, boxes, all_integer = [], [], True
  for e, event in enumerate(events):
    files = full["file_list"].ravel()[e].ravel()
    bbxs = full["face_bbx_list"].ravel()[e].ravel()
    if len(files) != len(bbxs):
      raise ValueError(f"{gt_dir}: event {event}: {len(files)} files but {len(bbxs)} box lists")
    for name, bbx in zip(files, bbxs):
      b = np.asarray(bbx[0] if np.asarray(bbx).dtype == object else bbx)
      all_integer &= np.issubdtype(b.dtype, np.integer)
      keys.append(f"{event}/{_cell_str(name)}")
      boxes.append(b.astype(np.float64).reshape(-1, 4))
  found = "current" if all_integer else "2016"
  if version != "auto" and version != found:
    raise ValueError(f"{gt_dir}: asked for the {version!r} ground truth but the boxes look like "
                     f"the {found!r} version ({'integer' if all_integer else 'float'} boxes)")
  keep = {}
  for setting in SETTINGS:
    mat = _load_mat(gt_dir / f"wider_{setting}_val.mat")
    masks = []
    for e, event in enumerate(events):
      lists = mat["gt_list"].ravel()[e].ravel()
      for j, idx in enumerate(lists):
        i = len(masks)
        idx = np.asarray(idx[0] if np.asarray(idx).dtype == object else idx).ravel()
        idx = idx.astype(np.int64)
        g = len(boxes[i])
        if idx.size and (idx.min() < 1 or idx.max() > g):
          raise ValueError(f"{gt_dir}/wider_{setting}_val.mat: {keys[i]}: gt_list index outside "
                           f"1..{g}")
        m = np.zeros(g, bool)
        m[idx - 1] = True
        masks.append(m)
    if len(masks) != len(keys):
      raise ValueError(f"{gt_dir}/wider_{setting}_val.mat lists {len(masks)} images, "
                       f"wider_face_val.mat {len(keys)}")
    keep[setting] = masks
  return WiderGroundTruth(keys=keys, boxes=boxes, keep=keep, version=found)


def _fail(path, lineno, msg):
  where = f"{path}:{lineno}" if lineno else str(path)
  raise PredictionFormatError(f"{where}: {msg}")


def parse_prediction_text(text: str, path="<string>") -> np.ndarray:
  """Parses one submission file's text -> [K, 5] float64 (x, y, w, h, score), file order.

  Raises PredictionFormatError (naming `path` and the 1-based line number) on a missing or
  non-integer count line, a line without exactly 5 numbers, a count that differs from the
  number of box lines, or non-finite values. Blank lines are skipped.
  """
  lines = text.splitlines()
  if len(lines) < 2:
    _fail(path, len(lines) + 1, "expected an image-name line and a count line")
  try:
    count = int(lines[1].strip())
  except ValueError:
    _fail(path, 2, f"expected the number of boxes, got {lines[1].strip()!r}")
  if count < 0:
    _fail(path, 2, f"negative number of boxes {count}")
  body = [(n, ln.split()) for n, ln in enumerate(lines[2:], start=3) if ln.strip()]
  if len(body) != count:
    _fail(path, 2, f"count mismatch: the count line says {count} boxes but the file has "
          f"{len(body)} box lines")
  for n, fields in body:
    if len(fields) != 5:
      _fail(path, n, f"expected 5 numbers 'x y w h score', got {len(fields)} fields")
  try:
    values = [float(t) for _, fields in body for t in fields]
  except ValueError:
    for n, fields in body:
      for t in fields:
        try:
          float(t)
        except ValueError:
          _fail(path, n, f"not a number: {t!r}")
  dets = np.asarray(values, np.float64).reshape(count, 5)
  bad = ~np.isfinite(dets).all(axis=1)
  if bad.any():
    n = body[int(np.argmax(bad))][0]
    _fail(path, n, f"non-finite value in box or score ({int(bad.sum())} such lines)")
  return dets


def read_prediction_file(path) -> np.ndarray:
  """Reads one `<event>/<stem>.txt` submission file (path or URL) -> [K, 5] float64
  (x, y, w, h, score)."""
  path = paths.resolve(path)
  return parse_prediction_text(path.read_bytes().decode("utf-8"), path)


def read_predictions(pred_dir) -> dict:
  """Reads every `<pred_dir>/<event>/<stem>.txt` (folder path or URL) ->
  {"<event>/<stem>": [K, 5] float64}."""
  pred_dir = paths.resolve(pred_dir)
  if not pred_dir.is_dir():
    raise FileNotFoundError(f"prediction directory not found: {pred_dir}")
  files = []
  for event_dir in sorted(pred_dir.iterdir(), key=lambda p: p.name):
    if event_dir.is_dir():
      files += sorted((p for p in event_dir.iterdir() if p.name.endswith(".txt")),
                      key=lambda p: p.name)
  texts = _map(lambda p: p.read_bytes().decode("utf-8"), files, paths.is_url(pred_dir))
  return {f"{p.parent.name}/{p.name[:-4]}": parse_prediction_text(t, p)
          for p, t in zip(files, texts)}


def _fmt(v: float) -> str:
  """Shortest round-tripping text of a float; integral values without a fraction."""
  return str(int(v)) if v.is_integer() and abs(v) < 2 ** 53 else repr(v)


def format_prediction_text(stem: str, dets) -> str:
  """[K, 5] (x, y, w, h, score) -> submission text (name line, count line, box lines)."""
  dets = np.asarray(dets, np.float64).reshape(-1, 5)
  rows = [" ".join(_fmt(v) for v in row) for row in dets.tolist()]
  return "\n".join([stem, str(len(rows))] + rows) + "\n"


def write_predictions(out_dir, dets_by_image: Mapping[str, np.ndarray]) -> int:
  """Writes `{"<event>/<stem>": [K, 5] x y w h score}` in the submission layout.

  Each image goes to `<out_dir>/<event>/<stem>.txt` (`out_dir` a path or URL); values are
  written so that `read_predictions` gives back the same float64 numbers. Returns the number
  of files written.
  """
  out_dir = paths.resolve(out_dir)
  texts, events = [], set()
  for key, dets in dets_by_image.items():
    event, _, stem = str(key).partition("/")
    if not event or not stem or "/" in stem:
      raise ValueError(f"image key must be '<event>/<stem>', got {key!r}")
    arr = np.asarray(dets, np.float64)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != 5):
      raise ValueError(f"{key}: detections must be [K, 5] x y w h score, got {arr.shape}")
    if not np.isfinite(arr).all():
      raise ValueError(f"{key}: non-finite detection values")
    events.add(event)
    texts.append((out_dir / event / f"{stem}.txt", format_prediction_text(stem, arr)))
  for event in sorted(events):
    (out_dir / event).mkdir(parents=True, exist_ok=True)
  _map(lambda item: item[0].write_text(item[1]), texts, paths.is_url(out_dir))
  return len(dets_by_image)


def check_detections(key: str, dets) -> np.ndarray:
  """Validates an in-memory detection array -> [K, 5] float64 (raises ValueError naming key)."""
  arr = np.asarray(dets, np.float64)
  if arr.size == 0:
    return np.zeros((0, 5), np.float64)
  if arr.ndim != 2 or arr.shape[1] != 5:
    raise ValueError(f"{key}: detections must be [K, 5] x y w h score, got {arr.shape}")
  if not np.isfinite(arr).all():
    bad = int((~np.isfinite(arr).all(axis=1)).sum())
    raise ValueError(f"{key}: {bad} detections with non-finite box or score")
  return arr
