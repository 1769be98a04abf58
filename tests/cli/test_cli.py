"""The command-line tools: console scripts declared in pyproject.toml resolve to callables,
user errors are one line naming the file (and line) with exit status 2, and the FDDB command
reproduces the official tool's ROC of the MTCNN fixture (../shared/data/fddb)."""

import pathlib
import subprocess
import sys
import tomllib

import pytest

from tinyfaces_jax import cli
from tinyfaces_jax.cli import evaluate_fddb
from tinyfaces_jax.evaluation import fddb

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_console_scripts_resolve():
  scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert set(scripts) == {"tinyfaces-train", "tinyfaces-detect", "tinyfaces-evaluate",
                          "tinyfaces-evaluate-fddb", "tinyfaces-cluster-templates",
                          "tinyfaces-build-embedded", "tinyfaces-export"}
  for name, target in scripts.items():   # one process each: the absl tools share flag names
    module, _, attr = target.partition(":")
    subprocess.run([sys.executable, "-c", f"import {module} as m; assert callable(m.{attr})"],
                   cwd=ROOT, check=True, timeout=120)


def test_build_embedded_command(tmp_path, capsys):
  """The same bytes as the library call; a complete folder is left alone; bad arguments are
  argparse's usage error."""
  from tinyfaces_jax.cli import build_embedded
  from tinyfaces_jax.data.embedded import build
  out = tmp_path / "emb"
  assert build_embedded.main(["--out", str(out), "--num_train", "3", "--num_val", "1",
                              "--seed", "5", "--workers", "1"]) == 0
  text = capsys.readouterr().out
  assert "train 3 images" in text and "val 1 images" in text, text
  ref = build.build_embedded_wider(tmp_path / "ref", num_train=3, num_val=1, seed=5, workers=1)
  files = sorted(p.relative_to(out) for p in out.rglob("*.jpg"))
  assert len(files) == 4 and files == sorted(p.relative_to(ref) for p in ref.rglob("*.jpg"))
  assert all((out / f).read_bytes() == (ref / f).read_bytes() for f in files)
  stamp = (out / build.MANIFEST).stat().st_mtime_ns
  assert build_embedded.main(["--out", str(out), "--num_train", "3", "--num_val", "1",
                              "--seed", "5", "--workers", "1"]) == 0
  assert (out / build.MANIFEST).stat().st_mtime_ns == stamp
  with pytest.raises(SystemExit):
    build_embedded.main(["--out", str(out), "--num_train", "x"])


def test_fddb_command_reproduces_the_official_mtcnn_roc(shared_dir, tmp_path, capsys):
  """TPR at 500 / 1000 / 2000 FP within 4 of 5171 faces of the official MTCNNDiscROC (the
  bound of test_fddb_eval: no image sizes to clip to); ROC files and the PNG written."""
  out = shared_dir / "data" / "fddb" / "mtcnn_outputs"
  dets = [str(out / f"fold-{i:02d}-out.txt") for i in range(1, 11)]
  rc = cli.run(evaluate_fddb.main, ["--folds_dir", str(shared_dir / "data/fddb/FDDB-folds"),
                                    "--dets", *dets, "--out_dir", str(tmp_path),
                                    "--method_name", "mtcnn",
                                    "--baseline", f"official={out / 'MTCNNDiscROC.txt'}"])
  text = capsys.readouterr().out
  assert rc == 0 and "2845 images, 5171 faces" in text, text
  ours = fddb.read_roc_file(tmp_path / "mtcnnDiscROC.txt")
  official = fddb.read_roc_file(out / "MTCNNDiscROC.txt")
  for f in (500, 1000, 2000):
    assert abs(fddb.roc_at_fp(ours, [f])[0] - fddb.roc_at_fp(official, [f])[0]) * 5171 <= 4.01
  assert "discrete   TPR" in text and "0.8958@1000" in text
  assert (tmp_path / "mtcnnContROC.txt").is_file()
  assert (tmp_path / "fddb_disc_roc.png").read_bytes()[:4] == b"\x89PNG"


def test_user_errors_are_one_line(shared_dir, tmp_path, capsys):
  bad = tmp_path / "bad-out.txt"
  bad.write_text("2002/08/11/big/img_591\n1\n1 2 3 four 0.9\n")
  rc = cli.run(evaluate_fddb.main, ["--folds_dir", str(shared_dir / "data/fddb/FDDB-folds"),
                                    "--dets", str(bad)], name="tinyfaces-evaluate-fddb")
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith(f"tinyfaces-evaluate-fddb: error: {bad}:3:"), err
  assert len(err.strip().splitlines()) == 1
  rc = cli.run(evaluate_fddb.main, ["--folds_dir", str(tmp_path / "nope"), "--dets",
                                    str(bad)], name="x")
  assert rc == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["-m", "tinyfaces_jax.main", "--config=configs/test.py", "--config.train.num_step=3",
      "--workdir=WD"], "tinyfaces-train: error: bad flag: 'num_step' Did you mean "
                       "\"num_steps\" instead of \"num_step\"?"),
    (["-m", "tinyfaces_jax.cli.detect", "--weights=/nope.pth", "--output_dir=WD",
      "IMG"],
     "tinyfaces-detect: error: --weights /nope.pth: no such file or folder"),
])
def test_command_line_errors_without_traceback(argv, message, tmp_path):
  from PIL import Image
  Image.new("RGB", (32, 24)).save(tmp_path / "img.png")
  argv = [a.replace("WD", str(tmp_path / "wd")).replace("IMG", str(tmp_path / "img.png"))
          for a in argv]
  p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 2, p.stderr[-2000:]
  assert p.stderr.strip().splitlines()[-1] == message, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
