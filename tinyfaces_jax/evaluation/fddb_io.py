"""FDDB evaluation I/O: ellipse ground truth, detection files and the official ROC text files.

Formats (FDDB README, section 2-3, and the official tool `evaluation/evaluate.cpp`):

  ground truth `FDDB-fold-XX-ellipseList.txt`, per image:
    <image name>                      e.g. 2002/08/11/big/img_591
    <number of faces n>
    n lines `major_axis_radius minor_axis_radius angle center_x center_y 1`
  detections (`-f 0`, rectangles, the default of the tool), per image:
    <image name>
    <number of detections n>
    n lines `left_x top_y width height detection_score`
  detections (`-f 1`, ellipses): n lines `ra rb angle cx cy detection_score`.

The tool reads the three files (image list, annotations, detections) in lock-step and aborts on
the first image name that differs; every image of the list must be present in both files (an
image without detections is written with count 0).

ROC files (`Results::saveROC`), one line per score threshold, thresholds ascending (so the first
line has the most false positives):
  `<prefix>DiscROC.txt`: `TPDisc/N FP threshold`
  `<prefix>ContROC.txt`: `TPCont/N FP`
numbers written by a default C++ ostream (6 significant digits, `%g`); the last line is the
threshold DBL_MAX (1.79769e+308) with 0 TP, 0 FP when some image has no detection.

Every path may be local or a URL (gs://...): files are read and written through etils.epath.
"""

from __future__ import annotations

import numpy as np

from tinyfaces_jax import paths

ELLIPSE_FIELDS = ("major_axis_radius", "minor_axis_radius", "angle", "center_x", "center_y")
RECT_FIELDS = ("left", "top", "width", "height", "score")


class FddbFormatError(ValueError):
  """A ground-truth or detection file that does not follow the FDDB layout (names file:line)."""


def _read_blocks(path, num_fields: int, allow_fewer: int | None = None) -> dict:
  """Parses `name / count / count rows of floats` blocks -> {name: [count, num_fields] float64}.

  Args:
    path: the text file.
    num_fields: the number of numbers on each region line.
    allow_fewer: if given, region lines may have this many fields (e.g. the ellipse list's
      trailing `1` is optional); missing trailing fields are filled with 1.0.
  """
  path = paths.resolve(path)
  lines = path.read_bytes().decode("utf-8").splitlines()
  out = {}
  i = 0
  n_lines = len(lines)

  def where(k):
    return f"{path}:{k + 1}"

  while i < n_lines:
    name = lines[i].strip()
    if not name:  # blank lines between blocks (and the trailing newline) are tolerated
      i += 1
      continue
    if len(name.split()) != 1:
      raise FddbFormatError(f"{where(i)}: expected an image name, got {lines[i]!r}")
    if name in out:
      raise FddbFormatError(f"{where(i)}: image {name!r} appears twice")
    if i + 1 >= n_lines:
      raise FddbFormatError(f"{where(i)}: image {name!r} has no count line (file truncated)")
    count_s = lines[i + 1].strip()
    try:
      count = int(count_s)
    except ValueError:
      raise FddbFormatError(
        f"{where(i + 1)}: expected the number of regions of {name!r}, got {lines[i + 1]!r}"
      ) from None
    if count < 0:
      raise FddbFormatError(f"{where(i + 1)}: negative region count {count} for {name!r}")
    rows = np.zeros((count, num_fields), np.float64)
    for k in range(count):
      j = i + 2 + k
      if j >= n_lines:
        raise FddbFormatError(
          f"{where(j - 1)}: image {name!r} announces {count} regions but the file ends after {k}")
      parts = lines[j].split()
      if len(parts) != num_fields and not (allow_fewer is not None and len(parts) == allow_fewer):
        raise FddbFormatError(
          f"{where(j)}: expected {num_fields} numbers for region {k + 1}/{count} of {name!r}, "
          f"got {lines[j]!r}")
      try:
        vals = [float(p) for p in parts]
      except ValueError:
        raise FddbFormatError(f"{where(j)}: non-numeric value in {lines[j]!r}") from None
      if not np.all(np.isfinite(vals)):
        raise FddbFormatError(f"{where(j)}: non-finite value in {lines[j]!r}")
      rows[k, :len(vals)] = vals
      rows[k, len(vals):] = 1.0
    out[name] = rows
    i += 2 + count
  return out


def read_ellipse_list(path) -> dict:
  """Reads an FDDB ellipse list -> {image name: [n, 5] float64 (ra, rb, angle, cx, cy)}.

  `ra`, `rb` are the major / minor half axes in pixels, `angle` the major axis orientation in
  radians, (cx, cy) the centre; the trailing `1` of each line is dropped. Image order is the
  file's order (dicts keep insertion order).
  """
  blocks = _read_blocks(path, 6, allow_fewer=5)
  return {k: v[:, :5] for k, v in blocks.items()}


def read_detections(path, det_format: str = "rect") -> dict:
  """Reads an FDDB detection file -> {image name: [n, 5 or 6] float64}.

  Args:
    path: the detection file.
    det_format: "rect" (tool `-f 0`): rows (left, top, width, height, score) [n, 5];
      "ellipse" (`-f 1`): rows (ra, rb, angle, cx, cy, score) [n, 6].
  Raises:
    FddbFormatError: naming file and line for a malformed file.
  """
  if det_format == "rect":
    return _read_blocks(path, 5)
  if det_format == "ellipse":
    return _read_blocks(path, 6)
  raise ValueError(f"det_format must be 'rect' or 'ellipse', got {det_format!r}")


def read_image_list(path) -> list:
  """Reads `FDDB-fold-XX.txt` -> [image names] (whitespace separated, as the tool reads it)."""
  return paths.resolve(path).read_bytes().decode("utf-8").split()


def parse_folds(text: str) -> list:
  """'1-10' / '1,3,5' -> fold numbers."""
  out = []
  for part in str(text).split(","):
    lo, _, hi = part.partition("-")
    try:
      out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
      raise ValueError(f"folds {text!r}: expected e.g. 1-10 or 1,3,5") from None
  if not out or min(out) < 1 or max(out) > 10:
    raise ValueError(f"folds {text!r}: folds are 1..10")
  return out


def load_folds(folds_dir, folds=range(1, 11)) -> tuple:
  """Reads the official folds -> (image names in fold order, {name: [n, 5] ellipses}).

  Checks that each fold's image list and ellipse list hold the same images in the same order.
  """
  folds_dir = paths.resolve(folds_dir)
  names, gt = [], {}
  for f in folds:
    lst = read_image_list(folds_dir / f"FDDB-fold-{f:02d}.txt")
    ell_path = folds_dir / f"FDDB-fold-{f:02d}-ellipseList.txt"
    ell = read_ellipse_list(ell_path)
    if list(ell) != lst:
      raise FddbFormatError(f"{ell_path}: images differ from FDDB-fold-{f:02d}.txt")
    dup = set(lst) & set(gt)
    if dup:
      raise FddbFormatError(f"{ell_path}: images already in an earlier fold: {sorted(dup)[:3]}")
    names += lst
    gt.update(ell)
  return names, gt


def read_detection_folds(paths, det_format: str = "rect") -> dict:
  """Reads several detection files (e.g. `fold-XX-out.txt`) into one {name: rows} dict."""
  out = {}
  for p in paths:
    d = read_detections(p, det_format)
    dup = set(d) & set(out)
    if dup:
      raise FddbFormatError(f"{p}: images already in an earlier file: {sorted(dup)[:3]}")
    out.update(d)
  return out


def write_detections(path, dets: dict, det_format: str = "rect") -> None:
  """Writes {name: [n, 5|6]} in the FDDB detection layout (the inverse of `read_detections`)."""
  width = 5 if det_format == "rect" else 6
  lines = []
  for name, rows in dets.items():
    rows = np.asarray(rows, np.float64).reshape(-1, width)
    lines.append(name)
    lines.append(str(len(rows)))
    lines += [" ".join(f"{v:.6f}" for v in r) for r in rows]
  paths.resolve(path).write_text("\n".join(lines) + "\n")


def _g(x: float) -> str:
  """A number as a default C++ ostream writes it (precision 6, %g)."""
  return f"{float(x):g}"


def write_roc_files(prefix, disc_roc, cont_roc) -> tuple:
  """Writes `<prefix>DiscROC.txt` and `<prefix>ContROC.txt` in the tool's format.

  Args:
    prefix: path prefix (the tool's `-r`), e.g. "out/mtcnn" -> out/mtcnnDiscROC.txt.
    disc_roc: [K, 3] (TPR, FP, threshold), thresholds ascending.
    cont_roc: [K, 2 or 3] (continuous TPR, FP[, threshold]).
  Returns:
    (disc path, cont path).
  """
  prefix = str(prefix)  # "out/" -> out/DiscROC.txt: no path normalisation before the suffix
  disc_p, cont_p = paths.resolve(prefix + "DiscROC.txt"), paths.resolve(prefix + "ContROC.txt")
  disc_roc, cont_roc = np.asarray(disc_roc), np.asarray(cont_roc)
  disc_p.write_text("".join(f"{_g(t)} {_g(f)} {_g(s)}\n" for t, f, s in disc_roc[:, :3]))
  cont_p.write_text("".join(f"{_g(t)} {_g(f)}\n" for t, f in cont_roc[:, :2]))
  return disc_p, cont_p


def read_roc_file(path) -> np.ndarray:
  """Reads a DiscROC.txt [K, 3] (TPR, FP, threshold) or ContROC.txt [K, 2] (TPR, FP)."""
  path = paths.resolve(path)
  rows = []
  for k, line in enumerate(path.read_bytes().decode("utf-8").splitlines()):
    if not line.strip():
      continue
    try:
      rows.append([float(v) for v in line.split()])
    except ValueError:
      raise FddbFormatError(f"{path}:{k + 1}: non-numeric ROC line {line!r}") from None
    if len(rows[-1]) != len(rows[0]) or len(rows[-1]) not in (2, 3):
      raise FddbFormatError(f"{path}:{k + 1}: expected 2 or 3 columns, got {line!r}")
  return np.asarray(rows, np.float64).reshape(len(rows), -1)
