"""Which resolution works best for which face size: WIDER AP per face-height bin across a sweep.

  python -m tinyfaces_jax.analysis.scale_sweep --sweep_dir=DIR [--out=DIR/scale_sweep.png] \
      [--step=latest|K] [--evaluator=wider]

Hu & Ramanan ("Finding Tiny Faces", CVPR 2017) train the same template set applied at
different image resolutions (0.5x, 1x, 2x) and plot the AP on faces of each size against face
size, one curve per resolution: 2x wins on tiny faces, 0.5x on large ones. Here the runs are those
of a sweep launched by `launch/sweep.py` (its `<sweep_dir>/sweep.json`), and the AP of each bin
is read from the `"ap_by_height"` entry of each run's `<workdir>/eval/step_<k>/<evaluator>/aps.json`
(the WIDER evaluator's summary; `--evaluator` names it, default "wider"):

  "ap_by_height": [{"lo": 0.0, "hi": 10.0, "num_faces": 3, "ap": 0.41}, ...,
                   {"lo": 320.0, "hi": null, "num_faces": 393, "ap": 0.93}]

(`evaluation.size_bins.to_json(size_bins.ap_by_height(...))`; hi null = no upper bound, ap null
= a bin without faces). A run's workdir is `<sweep_dir>/<name>` when that folder exists (a sweep
copied from a cluster), else the workdir recorded in sweep.json. Runs without the data (not
evaluated yet, an older aps.json, a missing step) are listed with the reason, not plotted.

Outputs: a PNG (x: face height, log scale, one tick per bin with its face count; y: AP; one line
per run labelled `name (overrides)`), a CSV beside it (one row per run, one column per bin) and
the same table on stdout. Exit status 0 when the plot was written, 1 when no run has the data,
2 when sweep.json is missing or malformed. From a notebook: `load_sweep` then `plot_sweep`;
`read_csv` reads such a CSV back (e.g. the committed benchmarks/results/hr_*_sweep_*.csv).
The sweep folder, the workdirs and the outputs may be local paths or URLs (gs://...): every
file goes through etils.epath.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from typing import Optional

from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tinyfaces_jax import paths
from tinyfaces_jax.evaluation import size_bins

_STEP_RE = re.compile(r"^step_(\d+)$")


def eval_steps(workdir, evaluator: str = "wider") -> list:
  """Steps k with a `<workdir>/eval/step_<k>/<evaluator>/aps.json`, increasing."""
  root = paths.resolve(workdir) / "eval"
  if not root.is_dir():
    return []
  return sorted(int(m.group(1)) for p in root.iterdir()
                if (m := _STEP_RE.match(p.name)) and (p / evaluator / "aps.json").is_file())


def read_manifest(sweep_dir) -> dict:
  """`<sweep_dir>/sweep.json` -> dict (FileNotFoundError / ValueError naming the file)."""
  path = paths.resolve(sweep_dir) / "sweep.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: give the --base_workdir of launch/sweep.py")
  try:
    manifest = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  runs = manifest.get("runs") if isinstance(manifest, dict) else None
  if not isinstance(runs, list) or not all(isinstance(r, dict) and "name" in r for r in runs):
    raise ValueError(f"{path}: expected {{'sweep': ..., 'runs': [{{'name': ..., ...}}]}}")
  return manifest


def _resolve_workdir(sweep_dir: epath.Path, run: dict) -> Optional[epath.Path]:
  """`<sweep_dir>/<name>` if it is a folder, else the recorded workdir if it is one (either may
  be a URL; a recorded URL this machine cannot reach counts as absent), else None."""
  for cand in (sweep_dir / run["name"], run.get("workdir")):
    if not cand:
      continue
    cand = paths.resolve(cand)
    try:
      if cand.is_dir():
        return cand
    except Exception:  # pylint: disable=broad-except  (no credentials / network for its URL)
      continue
  return None


def load_run(sweep_dir, run: dict, step=None, evaluator: str = "wider") -> dict:
  """One run of sweep.json -> dict(name, overrides, workdir, step, ap_by_height, aps, problem).

  ap_by_height: rows {"lo", "hi" (inf for an open bin), "num_faces", "ap" (None: no faces)},
  or None with `problem` saying why (no workdir, no aps.json, no "ap_by_height" key, ...).
  """
  sweep_dir = paths.resolve(sweep_dir)
  out = {"name": run["name"], "overrides": dict(run.get("overrides") or {}), "workdir": None,
         "step": None, "ap_by_height": None, "aps": None, "problem": None}
  workdir = _resolve_workdir(sweep_dir, run)
  if workdir is None:
    out["problem"] = (f"no workdir: neither {sweep_dir / run['name']} nor "
                      f"{run.get('workdir')} exists (not started?)")
    return out
  out["workdir"] = str(workdir)
  steps = eval_steps(workdir, evaluator)
  if not steps:
    out["problem"] = f"no {workdir}/eval/step_<k>/{evaluator}/aps.json (not evaluated yet?)"
    return out
  k = steps[-1] if step in (None, "latest") else int(step)
  if k not in steps:
    out["problem"] = (f"no {workdir}/eval/step_{k}/{evaluator}/aps.json (steps with one: "
                      f"{', '.join(map(str, steps))})")
    return out
  out["step"] = k
  path = workdir / "eval" / f"step_{k}" / evaluator / "aps.json"
  try:
    aps = json.loads(path.read_text())
  except ValueError as e:
    out["problem"] = f"{path}: not valid JSON ({e})"
    return out
  out["aps"] = aps.get("aps") if isinstance(aps, dict) else None
  if not isinstance(aps, dict) or "ap_by_height" not in aps:
    out["problem"] = (f"{path} has no 'ap_by_height' (evaluated before per-size APs were "
                      f"written? `tinyfaces_jax.main --mode=eval` re-evaluates)")
    return out
  try:
    out["ap_by_height"] = size_bins.from_json(aps["ap_by_height"], f"{path}: ap_by_height")
  except ValueError as e:
    out["problem"] = str(e)
  return out


def load_sweep(sweep_dir, step=None, evaluator: str = "wider") -> list:
  """Every run of `<sweep_dir>/sweep.json` with its per-size APs at `step` (None / "latest":
  each run's latest evaluated step) from its `evaluator`'s aps.json -> list of `load_run`
  dicts, in sweep order."""
  manifest = read_manifest(sweep_dir)
  return [load_run(sweep_dir, r, step, evaluator) for r in manifest["runs"]]


def sweep_name(sweep_dir) -> str:
  """The sweep's name recorded in sweep.json ("" when absent)."""
  return str(read_manifest(sweep_dir).get("sweep", ""))


def _value_text(v) -> str:
  if isinstance(v, (list, tuple)):
    return "(" + ",".join(_value_text(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return f"{v:g}" if isinstance(v, float) else str(v)


def run_label(run: dict, keys=None) -> str:
  """`name (path=value, ...)`: the legend entry of a run (only the override `keys` when
  given: what tells the runs of a sweep apart)."""
  def short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 4] + " ...)"

  ov = ", ".join(f"{k}={short(_value_text(v))}" for k, v in run["overrides"].items()
                 if keys is None or k in keys)
  return f"{run['name']} ({ov})" if ov else run["name"]


def varying_keys(runs: list) -> set:
  """The override paths whose values differ between `runs` (all of them for a single run)."""
  keys = {k for r in runs for k in r["overrides"]}
  if len(runs) < 2:
    return keys
  return {k for k in keys
          if len({json.dumps(r["overrides"].get(k), sort_keys=True) for r in runs}) > 1}


def all_bins(runs: list) -> list:
  """The (lo, hi) bins of every run with data, sorted by lo, hi -> [(lo, hi, num_faces)]."""
  bins = {}
  for r in runs:
    for row in r["ap_by_height"] or []:
      bins.setdefault((row["lo"], row["hi"]), row["num_faces"])
  return [(lo, hi, n) for (lo, hi), n in sorted(bins.items())]


def _ap_map(run: dict) -> dict:
  return {(row["lo"], row["hi"]): row["ap"] for row in run["ap_by_height"] or []}


def format_table(runs: list) -> str:
  """Run x bin AP table (text), with a first line of face counts per bin."""
  bins = all_bins(runs)
  width = max([len("faces")] + [len(r["name"]) for r in runs]) + 2
  head = f"{'run':<{width}}{'step':>7}" + "".join(f"{size_bins.bin_label(lo, hi):>9}"
                                                   for lo, hi, _ in bins)
  lines = [head, f"{'faces':<{width}}{'':>7}" + "".join(
      f"{'-' if n is None else n:>9}" for _, _, n in bins)]
  for r in runs:
    if r["ap_by_height"] is None:
      lines.append(f"{r['name']:<{width}}{'-':>7}  no data: {r['problem']}")
      continue
    aps = _ap_map(r)
    cells = [aps.get((lo, hi)) for lo, hi, _ in bins]
    lines.append(f"{r['name']:<{width}}{r['step']:>7d}" + "".join(
      f"{'-' if a is None else f'{a:.4f}':>9}" for a in cells))
  return "\n".join(lines)


def write_csv(runs: list, path) -> epath.Path:
  """CSV at `path` (local or URL): columns run, step, overrides, one AP column per bin label,
  problem; one row per run (APs written with repr, so they read back as the JSON's floats;
  empty = no value). Returns the path."""
  bins = all_bins(runs)
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["run", "step", "overrides"] + [size_bins.bin_label(lo, hi) for lo, hi, _ in bins]
             + ["problem"])
  for r in runs:
    aps = _ap_map(r)
    cells = [aps.get((lo, hi)) for lo, hi, _ in bins]
    w.writerow([r["name"], "" if r["step"] is None else r["step"],
                json.dumps(r["overrides"], sort_keys=True)]
               + ["" if a is None else repr(float(a)) for a in cells] + [r["problem"] or ""])
  path = paths.resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(f.getvalue().encode("utf-8"))
  return path


def _parse_bin_label(label: str) -> tuple:
  """`size_bins.bin_label`'s text back to (lo, hi): "<10" -> (0, 10), "10-20" -> (10, 20),
  ">=320" -> (320, inf); ValueError otherwise."""
  try:
    if label.startswith(">="):
      return float(label[2:]), math.inf
    if label.startswith("<"):
      return 0.0, float(label[1:])
    lo, hi = label.split("-")
    return float(lo), float(hi)
  except ValueError:
    raise ValueError(f"{label!r} is not a height-bin label (<hi, lo-hi or >=lo)") from None


def read_csv(path, num_faces=None) -> list:
  """A CSV `write_csv` wrote (local or URL) -> the runs, as `load_sweep` gives them (name,
  overrides, step, ap_by_height, problem; workdir and aps None), for `format_table` and
  `plot_sweep`.

  The CSV records no face counts: every row's num_faces is None (plots and tables then show
  none), or `num_faces[i]` for the i-th bin column when given (e.g.
  `size_bins.count_by_height(gt)` of the ground truth the sweep was evaluated on). A run with
  a problem and no AP has ap_by_height None. ValueError naming the file when it is malformed.
  """
  path = paths.resolve(path)
  rows = list(csv.reader(io.StringIO(path.read_text())))
  if not rows or rows[0][:3] != ["run", "step", "overrides"] or rows[0][-1] != "problem":
    raise ValueError(f"{path}: expected the columns run, step, overrides, <bins>..., problem "
                     "(a scale_sweep CSV)")
  labels = rows[0][3:-1]
  try:
    bins = [_parse_bin_label(b) for b in labels]
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  if num_faces is not None and len(num_faces) != len(bins):
    raise ValueError(f"{path}: {len(bins)} bins but {len(num_faces)} face counts given")
  runs = []
  for lineno, row in enumerate(rows[1:], start=2):
    if not row:
      continue
    if len(row) != len(rows[0]):
      raise ValueError(f"{path}:{lineno}: {len(row)} fields, the header has {len(rows[0])}")
    try:
      overrides = json.loads(row[2]) if row[2] else {}
      aps = [float(v) if v else None for v in row[3:-1]]
    except ValueError as e:
      raise ValueError(f"{path}:{lineno}: malformed row ({e})") from None
    problem = row[-1] or None
    has_data = not (problem and all(a is None for a in aps))
    runs.append({
        "name": row[0], "overrides": overrides, "workdir": None,
        "step": int(row[1]) if row[1] else None, "aps": None, "problem": problem,
        "ap_by_height": [{"lo": lo, "hi": hi, "ap": ap,
                          "num_faces": None if num_faces is None else int(num_faces[i])}
                         for i, ((lo, hi), ap) in enumerate(zip(bins, aps))]
                        if has_data else None})
  return runs


def _tick_label(lo: float, hi: float, n) -> str:
  return size_bins.bin_label(lo, hi) + ("" if n is None else f"\nn={n}")


def plot_sweep(runs: list, out_path, title: str = "WIDER val AP by face height") -> epath.Path:
  """AP against face height (log x, bins at their geometric centres), one line per run with
  data; writes the PNG at `out_path` (local or URL; parents created) and returns its path."""
  bins = all_bins(runs)
  if not bins:
    raise ValueError("no run has ap_by_height data: nothing to plot (see load_sweep's problems)")
  fig = Figure(figsize=(8.5, 5.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  keys = varying_keys([r for r in runs if r["ap_by_height"] is not None])
  for r in runs:
    if r["ap_by_height"] is None:
      continue
    pts = [(size_bins.bin_centre(row["lo"], row["hi"]), row["ap"]) for row in r["ap_by_height"]
           if row["ap"] is not None]
    ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", lw=2.0,
            label=run_label(r, keys))
  ax.set_xscale("log")
  centres = [size_bins.bin_centre(lo, hi) for lo, hi, _ in bins]
  ax.set_xticks(centres, [_tick_label(lo, hi, n) for lo, hi, n in bins])
  ax.minorticks_off()
  ax.set_xlim(min(centres) / 1.5, max(centres) * 1.5)
  ax.set_ylim(0.0, 1.0)
  ax.set_xlabel("face height (pixels, original image)", fontsize=12)
  ax.set_ylabel("AP on the faces of the bin", fontsize=12)
  ax.grid(True, alpha=0.4)
  ax.set_title(title, fontsize=13, fontweight="bold")
  # Below the axes: long override lists (template id lists) would cover the curves or run
  # off the figure; bbox_inches="tight" keeps them in the PNG.
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, framealpha=0.9)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", bbox_inches="tight")
  out_path = paths.resolve(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  out_path.write_bytes(buf.getvalue())
  return out_path


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m tinyfaces_jax.analysis.scale_sweep",
                              description=__doc__.split("\n")[0])
  p.add_argument("--sweep_dir", required=True, help="a launch/sweep.py --base_workdir")
  p.add_argument("--out", default=None, help="PNG path (default <sweep_dir>/scale_sweep.png); "
                 "the CSV goes beside it")
  p.add_argument("--step", default="latest", help="'latest' (per run) or a step number")
  p.add_argument("--evaluator", default="wider",
                 help="the WIDER evaluator's name in config.eval.evaluators")
  args = p.parse_args(argv)
  if args.step != "latest" and not args.step.isdigit():
    p.error(f"--step must be 'latest' or a step number, got {args.step!r}")
  return args


def main(argv=None) -> int:
  """Loads, prints, writes the CSV and the PNG; returns the exit status (see the module doc)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    name = sweep_name(args.sweep_dir)
    runs = load_sweep(args.sweep_dir, args.step, args.evaluator)
  except (FileNotFoundError, ValueError) as e:
    print(f"scale_sweep: error: {e}", file=sys.stderr)
    return 2
  out = paths.resolve(args.out) if args.out else paths.resolve(args.sweep_dir) / "scale_sweep.png"
  print(format_table(runs))
  missing = [r for r in runs if r["ap_by_height"] is None]
  for r in missing:
    print(f"scale_sweep: {r['name']}: no per-size APs: {r['problem']}", file=sys.stderr)
  csv_path = write_csv(runs, out.with_suffix(".csv"))
  if len(missing) == len(runs):
    print(f"scale_sweep: no run has per-size APs; wrote {csv_path} only", file=sys.stderr)
    return 1
  title = f"{name}: WIDER val AP by face height" if name else "WIDER val AP by face height"
  png = plot_sweep(runs, out, title=title)
  print(f"wrote {png} and {csv_path} ({len(runs) - len(missing)} of {len(runs)} runs plotted)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
