"""FDDB evaluation CLI: the official tool's discrete and continuous ROC of detection files.

  tinyfaces-evaluate-fddb --folds_dir DIR --dets FILE [FILE ...] [--out_dir DIR]
      [--format rect|ellipse] [--folds 1-10] [--method_name NAME] [--baseline NAME=FILE ...]

`--folds_dir` holds the official `FDDB-fold-XX.txt` / `FDDB-fold-XX-ellipseList.txt`; `--dets`
one or more detection files in the FDDB layout (name, count, then `left top width height
score` rows, or 6-field ellipses with --format=ellipse), e.g. the ten `fold-XX-out.txt`. An
image of the folds with no detections counts as detecting nothing (as the tool); detections of
an image outside the folds are an error naming it. Prints the true positive rate at 100 /
500 / 1000 / 2000 false positives; with --out_dir writes `<method>DiscROC.txt` /
`<method>ContROC.txt` in the tool's format and `fddb_disc_roc.png` (beside any
`--baseline NAME=<DiscROC.txt>` curves). No FDDB images exist here, so regions are not
clipped to the image (the tool clips them to its image-sized masks; pass the images' sizes
through `evaluation.fddb.evaluate_fddb(image_sizes=...)` from Python to clip). Paths may be
URLs.
"""

from __future__ import annotations

import argparse
import sys

from tinyfaces_jax import cli as cli_lib, paths

def main(argv=None) -> int:
  """Runs the evaluation; prints TPR at fixed false positives; returns the exit code."""
  p = argparse.ArgumentParser(prog="tinyfaces-evaluate-fddb", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--folds_dir", required=True, help="the official FDDB-folds folder")
  p.add_argument("--dets", required=True, nargs="+", help="FDDB-layout detection file(s)")
  p.add_argument("--format", default="rect", choices=["rect", "ellipse"])
  p.add_argument("--folds", default="1-10", help="which folds, e.g. 1-10 or 1,2")
  p.add_argument("--out_dir", default=None, help="ROC files + PNG go here")
  p.add_argument("--method_name", default="ours")
  p.add_argument("--baseline", action="append", default=[],
                 help="NAME=<DiscROC.txt> drawn beside ours (repeatable)")
  a = p.parse_args(argv)
  from tinyfaces_jax.evaluation import fddb, fddb_io
  names, gt = fddb_io.load_folds(a.folds_dir, fddb_io.parse_folds(a.folds))
  dets = fddb_io.read_detection_folds(a.dets, a.format)
  outside = sorted(set(dets) - set(gt))
  if outside:
    raise ValueError(f"{a.dets[0] if len(a.dets) == 1 else 'the --dets files'}: "
                     f"{len(outside)} image(s) not in the folds, e.g. {outside[0]}")
  disc, cont = fddb.evaluate_fddb(gt, dets, det_format=a.format, image_names=names,
                                  allow_missing=True)
  n_faces = sum(len(v) for v in gt.values())
  print(f"FDDB: {len(names)} images, {n_faces} faces, {sum(len(v) for v in dets.values())} "
        f"detections ({len(set(names) - set(dets))} images without any)")
  for name, roc in (("discrete", disc), ("continuous", cont)):
    tprs = fddb.roc_at_fp(roc, fddb.FP_POINTS)
    print(f"  {name:<10} TPR " + "  ".join(f"{t:.4f}@{f}" for t, f in zip(tprs, fddb.FP_POINTS)))
  if a.out_dir:
    out = paths.resolve(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    disc_p, cont_p = fddb_io.write_roc_files(f"{out}/{a.method_name}", disc, cont)
    curves = {a.method_name: disc}
    for spec in a.baseline:
      label, sep, file = spec.partition("=")
      if not sep:
        raise ValueError(f"--baseline {spec!r}: expected NAME=<DiscROC.txt>")
      curves[label] = fddb_io.read_roc_file(file)
    fddb.plot_roc(out / "fddb_disc_roc.png", curves)
    print(f"wrote {disc_p}, {cont_p}, {out / 'fddb_disc_roc.png'}")
  return 0


def cli() -> None:
  """Console script `tinyfaces-evaluate-fddb`."""
  sys.exit(cli_lib.run(main, name="tinyfaces-evaluate-fddb"))


if __name__ == "__main__":
  cli()
