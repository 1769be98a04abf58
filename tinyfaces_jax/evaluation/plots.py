"""PR-curve figures in the style of the official WIDER FACE tool (`wider_plot.m`, `plot_pr.m`).

One PNG per setting: our curve beside the official baselines' curves
(`<baselines_dir>/<method>/wider_pr_info_<method>_<setting>_val.mat`, `pr_cruve` [N, 2]
(precision, recall), MATLAB v7 or v7.3/HDF5), legend entries `<name>-<AP>` with the AP cut to 5
characters of MATLAB's num2str (e.g. `HR-0.925`), sorted by AP, recall on x, precision on y.
Uses matplotlib's Agg canvas directly (no pyplot global state, no display needed). Files and
folders may be local paths or URLs (gs://...): everything is read and written through epath.
"""

from __future__ import annotations

import io
import re

import h5py
import numpy as np
import scipy.io
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinyfaces_jax import paths
from tinyfaces_jax.evaluation import wider

_BASELINE_RE = re.compile(r"^wider_pr_info_(.+)_(easy|medium|hard)_val\.mat$")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(data: bytes) -> bool:
  """The HDF5 signature at offset 0 or after a user block (512, 1024, ... bytes; MATLAB v7.3
  files have a 512-byte one), as `h5py.is_hdf5` checks it."""
  offset = 0
  while offset + 8 <= len(data):
    if data[offset:offset + 8] == _HDF5_SIGNATURE:
      return True
    offset = 512 if offset == 0 else 2 * offset
  return False


def _h5_string(ds) -> str:
  """A MATLAB v7.3 char array (uint16 codes) -> str."""
  return "".join(chr(int(c)) for c in np.asarray(ds).ravel())


def load_pr_info(path) -> tuple:
  """Reads one official `wider_pr_info_*.mat` (path or URL) -> (legend name, [N, 2]
  (precision, recall))."""
  path = paths.resolve(path)
  data = path.read_bytes()
  if _is_hdf5(data):
    with h5py.File(io.BytesIO(data), "r") as f:
      curve = np.asarray(f["pr_cruve"], np.float64).T  # HDF5 stores MATLAB arrays transposed
      name = _h5_string(f["legend_name"]) if "legend_name" in f else None
  else:
    m = scipy.io.loadmat(io.BytesIO(data))
    curve = np.asarray(m["pr_cruve"], np.float64)
    name = str(np.asarray(m["legend_name"]).ravel()[0]) if "legend_name" in m else None
  if curve.ndim != 2 or curve.shape[1] != 2:
    raise ValueError(f"{path}: pr_cruve must be [N, 2], got {curve.shape}")
  if name is None:
    name = _BASELINE_RE.match(path.name).group(1) if _BASELINE_RE.match(path.name) else path.stem
  return name, curve


def load_baselines(baselines_dir, setting: str) -> list:
  """All baseline curves of `setting` -> [(name, [N, 2] (precision, recall))], sorted by file."""
  out = []
  root = paths.resolve(baselines_dir)
  for path in sorted(root.glob("*/wider_pr_info_*_val.mat")):
    m = _BASELINE_RE.match(path.name)
    if m and m.group(2) == setting:
      out.append(load_pr_info(path))
  return out


def legend_label(name: str, ap: float) -> str:
  """`wider_plot.m` legend text: name + '-' + num2str(ap) cut to 5 characters."""
  s = f"{ap:.5g}"  # num2str of a scalar in (0.1, 1): 5 significant digits
  return f"{name}-{s[:5]}"


def plot_pr_curves(curves: list, out_path, title: str = "", highlight: str | None = None) -> None:
  """Draws PR curves into a PNG.

  Args:
    curves: [(name, [N, 2] (precision, recall))]; AP of each is computed with `voc_ap`.
    out_path: PNG path or URL (parent folders are created).
    title: figure title, e.g. "WIDER FACE val - hard".
    highlight: name of our method, drawn black and on top.
  """
  items = []
  for name, c in curves:
    c = np.asarray(c, np.float64)
    items.append((wider.voc_ap(c[:, 1], c[:, 0]), name, c))
  items.sort(key=lambda t: -t[0])
  fig = Figure(figsize=(7.5, 6.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  colors = colormaps["hsv"](np.linspace(0.0, 1.0, max(1, len(items)), endpoint=False))
  for k, (ap, name, c) in enumerate(items):
    ours = name == highlight
    ax.plot(c[:, 1], c[:, 0], color="k" if ours else colors[k], lw=3.5 if ours else 2.0,
            zorder=3 if ours else 2, label=legend_label(name, ap))
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("Recall", fontsize=13, fontweight="bold")
  ax.set_ylabel("Precision", fontsize=13, fontweight="bold")
  ax.grid(True, alpha=0.5)
  if title:
    ax.set_title(title, fontsize=13, fontweight="bold")
  ax.legend(loc="lower right", fontsize=8 if len(items) > 12 else 10, ncol=2 if len(items) > 12
            else 1, framealpha=0.9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  out_path = paths.resolve(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_bytes(buf.getvalue())


def plot_ced(curves: list, out_path, title: str = "", failure_threshold: float = 0.1) -> None:
  """Cumulative error distributions into a PNG: curves [(name, thresholds [S], fraction of
  faces with error <= threshold [S])], a dashed line at the failure threshold."""
  fig = Figure(figsize=(7.0, 5.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, t, frac in curves:
    ax.plot(t, frac, lw=2.5, label=name)
  ax.axvline(failure_threshold, color="grey", ls="--", lw=1)
  ax.set_xlim(0, float(max(np.max(t) for _, t, _ in curves)) if curves else 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("normalised mean error", fontsize=12, fontweight="bold")
  ax.set_ylabel("fraction of faces", fontsize=12, fontweight="bold")
  ax.grid(True, alpha=0.5)
  if title:
    ax.set_title(title, fontsize=12, fontweight="bold")
  ax.legend(loc="lower right", fontsize=10, framealpha=0.9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  out_path = paths.resolve(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_bytes(buf.getvalue())


def plot_result(result, out_dir, method_name: str, baselines_dir=None) -> list:
  """One PNG per setting: `<out_dir>/wider_pr_curve_<setting>_val.png` (`out_dir` a path or
  URL); returns their paths."""
  out = []
  for setting, curve in result.pr_curves.items():
    curves = [(method_name, curve)]
    if baselines_dir is not None:
      curves += [(n, c) for n, c in load_baselines(baselines_dir, setting) if n != method_name]
    path = paths.resolve(out_dir) / f"wider_pr_curve_{setting}_val.png"
    plot_pr_curves(curves, path, f"WIDER FACE val - {setting}", highlight=method_name)
    out.append(path)
  return out
