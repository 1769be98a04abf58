"""WIDER FACE val evaluation CLI: APs (easy / medium / hard) and PR-curve figures.

  tinyfaces-evaluate --pred_dir DIR --gt_dir DIR [--out_dir DIR]
      [--method_name NAME] [--baselines_dir DIR] [--version auto|current|2016] [--quiet]

`--pred_dir` holds `<event>/<stem>.txt` files in the official submission layout; `--gt_dir` the
official `wider_face_val.mat` and `wider_{easy,medium,hard}_val.mat`. With `--out_dir`, writes:
  * `wider_pr_curve_<setting>_val.png`: our curve (black) beside the official baselines;
  * `<method>/wider_pr_info_<method>_<setting>_val.mat`: our curve in the official layout
    (`pr_cruve` [1000, 2] (precision, recall), `legend_name`), usable as a baseline later;
  * `aps.json`: APs, face counts, timings.
Every folder may be a local path or a URL (gs://...); files go through etils.epath.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
import scipy.io

from tinyfaces_jax import cli as cli_lib, paths
from tinyfaces_jax.evaluation import plots, wider, wider_io


def parse_args(argv=None) -> argparse.Namespace:
  """Command-line flags -> Namespace."""
  p = argparse.ArgumentParser(prog="tinyfaces-evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--pred_dir", required=True, help="predictions, <event>/<stem>.txt files")
  p.add_argument("--gt_dir", required=True, help="folder of the official ground-truth .mat")
  p.add_argument("--out_dir", default=None, help="where PNGs, .mat curves and aps.json go")
  p.add_argument("--method_name", default="ours", help="legend name of the evaluated method")
  p.add_argument("--baselines_dir", default=None,
                 help="official baselines: <method>/wider_pr_info_<method>_<setting>_val.mat")
  p.add_argument("--version", default="auto", choices=wider_io.VERSIONS,
                 help="ground-truth version check (current: 2017+, 2016: float boxes)")
  p.add_argument("--quiet", action="store_true", help="print only the APs")
  return p.parse_args(argv)


def save_pr_info(result: wider.WiderResult, out_dir, method_name: str) -> list:
  """Writes `<out_dir>/<method>/wider_pr_info_<method>_<setting>_val.mat` (MATLAB v5; `out_dir`
  a path or URL); returns their paths."""
  folder = paths.resolve(out_dir) / method_name
  folder.mkdir(parents=True, exist_ok=True)
  out = []
  for setting, curve in result.pr_curves.items():
    path = folder / f"wider_pr_info_{method_name}_{setting}_val.mat"
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"pr_cruve": np.asarray(curve, np.float64),
                           "legend_name": method_name})
    path.write_bytes(buf.getvalue())
    out.append(path)
  return out


def main(argv=None) -> int:
  """Runs the evaluation; prints the APs; returns the exit code."""
  args = parse_args(argv)
  result = wider.evaluate(args.pred_dir, args.gt_dir, version=args.version,
                          verbose=not args.quiet)
  print("==================== WIDER FACE val ====================")
  for setting in wider_io.SETTINGS:
    print(f"{setting.capitalize():<7}Val AP: {result.aps[setting]!r}")
  print("========================================================")
  if args.out_dir:
    out = paths.resolve(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pr_info(result, out, args.method_name)
    pngs = plots.plot_result(result, out, args.method_name, args.baselines_dir)
    summary = {"method": args.method_name, "aps": result.aps, "num_faces": result.num_faces,
               "num_detections": result.num_detections, "missing": len(result.missing),
               "extra": len(result.extra), "timings": result.timings}
    (out / "aps.json").write_text(json.dumps(summary, indent=2))
    if not args.quiet:
      print("wrote " + ", ".join(str(p) for p in pngs))
  return 0


def cli() -> None:
  """Console script `tinyfaces-evaluate`."""
  sys.exit(cli_lib.run(main, name="tinyfaces-evaluate"))


if __name__ == "__main__":
  cli()
