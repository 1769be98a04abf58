"""Tests of launch/sweep.py (sweep launcher), tinyfaces_jax/analysis/scale_sweep.py (per-size AP
across a sweep) and notebooks/scale_sweep.ipynb. Nothing trains: the run loop gets a stand-in
runner; the commands are checked by parsing them with ml_collections' own config_flags."""

import csv
import importlib.util
import io
import json
import pathlib
import shlex
import sys
import types

import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from tests.support import url_fs
from tinyfaces_jax.analysis import scale_sweep
from tinyfaces_jax.evaluation import size_bins

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("launch_sweep", ROOT / "launch" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

FAKE_CONFIG = '''
import ml_collections
from configs import common

SWEEPS = {"res": "templates at 0.5x, 1x, 2x", "one": "a single run"}


def get_config(arg=None):
  a = common.parse_arg(arg, small=False)
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({"scale": 1.0, "sizes": (8, 16), "name": "hr"})
  c.train = ml_collections.ConfigDict({"num_steps": 10 if a.small else 1000, "bf16": False})
  return c


def get_sweep(name):
  if name == "res":
    return [{"name": f"res{s}x", "overrides": {"model.scale": s, "model.sizes": sizes,
                                             "train.bf16": s > 1, "model.name": f"hr_{s}"}}
            for s, sizes in ((0.5, (4,)), (1.0, (8, 16)), (2.0, (16, 32, 64)))]
  if name == "one":
    return [{"name": "only", "overrides": {"train.num_steps": 7}}]
  if name == "typo":
    return [{"name": "a", "overrides": {"model.scael": 2.0}}]
  if name == "badtype":
    return [{"name": "a", "overrides": {"train.num_steps": 1.5}}]
  raise ValueError(f"unknown sweep {name!r}; known: " + ", ".join(SWEEPS))
'''


@pytest.fixture
def config(tmp_path):
  path = tmp_path / "fake_cfg.py"
  path.write_text(FAKE_CONFIG)
  return str(path)


def launch(config, base, *more, sweep_name="res", runner=None):
  return sweep.main([f"--config={config}:small", f"--sweep={sweep_name}",
                     f"--base_workdir={base}", *more], runner=runner)


def parse_with_config_flags(cmd):
  """The command's flags, parsed as tinyfaces_jax.main parses them -> the ConfigDict."""
  fv, argv = flags.FlagValues(), ["main"] + cmd[3:]
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  flags.DEFINE_string("mode", "train", "", flag_values=fv)
  fv(argv)
  return fv.config, fv.workdir, fv.mode


def test_dry_run_commands_and_manifest(config, tmp_path, capsys):
  base = tmp_path / "sweeps" / "res"
  assert launch(config, base, "--dry_run", "--", "--mode=eval") == 0
  manifest = json.loads((base / "sweep.json").read_text())
  assert manifest["sweep"] == "res" and manifest["config"] == f"{config}:small"
  assert manifest["extra_flags"] == ["--mode=eval"]
  assert [r["name"] for r in manifest["runs"]] == ["res0.5x", "res1.0x", "res2.0x"]
  first = manifest["runs"][0]
  assert first["overrides"] == {"model.scale": 0.5, "model.sizes": [4], "train.bf16": False,
                                "model.name": "hr_0.5"}
  assert first["workdir"] == str(base / "res0.5x")
  assert first["command"] == [
    sys.executable, "-m", "tinyfaces_jax.main", f"--config={config}:small",
    f"--workdir={base / 'res0.5x'}", "--config.model.scale=0.5", "--config.model.sizes=(4,)",
    "--config.train.bf16=False", "--config.model.name=hr_0.5", "--mode=eval"]
  assert manifest["runs"][2]["command"][5:9] == [
    "--config.model.scale=2.0", "--config.model.sizes=(16,32,64)", "--config.train.bf16=True",
    "--config.model.name=hr_2.0"]
  out = capsys.readouterr().out
  for r in manifest["runs"]:
    assert r["command_line"] == shlex.join(r["command"]) and r["command_line"] in out
  assert not any((base / r["name"]).exists() for r in manifest["runs"])  # nothing ran
  # --only selects by index or name; sweep.json still lists every run.
  assert launch(config, base, "--dry_run", "--only=2,res0.5x") == 0
  out = capsys.readouterr().out
  assert "# 0 res0.5x" in out and "# 2 res2.0x" in out and "res1.0x" not in out


def test_commands_parse_back_to_the_overrides(config, tmp_path):
  assert launch(config, tmp_path, "--dry_run", "--", "--mode=eval") == 0
  for run in json.loads((tmp_path / "sweep.json").read_text())["runs"]:
    cfg, workdir, mode = parse_with_config_flags(run["command"])
    assert workdir == run["workdir"] and mode == "eval"
    assert cfg.train.num_steps == 10  # the :small argument reached get_config
    for key, value in run["overrides"].items():
      section, field = key.split(".")
      got = cfg[section][field]
      assert got == (tuple(value) if isinstance(value, list) else value), key
      assert type(got) is type(tuple(value) if isinstance(value, list) else value), key


def test_config_errors_are_clear(config, tmp_path, capsys):
  assert launch(config, tmp_path / "a", "--dry_run", sweep_name="nope") == 2
  err = capsys.readouterr().err
  assert "fake_cfg.py: get_sweep('nope') failed (unknown sweep?)" in err
  assert "known: res, one" in err
  assert launch(config, tmp_path / "b", "--dry_run", sweep_name="typo") == 2
  assert "no field 'model.scael' in the config; did you mean 'model.scale'?" in \
    capsys.readouterr().err
  assert launch(config, tmp_path / "c", "--dry_run", sweep_name="badtype") == 2
  assert "train.num_steps=1.5: the field is a int" in capsys.readouterr().err
  plain = tmp_path / "plain_cfg.py"
  plain.write_text("def get_config(arg=None):\n  return None\n")
  assert sweep.main([f"--config={plain}", "--sweep=res", f"--base_workdir={tmp_path}/d"]) == 2
  assert "plain_cfg.py defines no get_sweep(name)" in capsys.readouterr().err
  assert sweep.main([f"--config={tmp_path}/absent.py", "--sweep=res",
                     f"--base_workdir={tmp_path}/e"]) == 2
  assert "config file not found" in capsys.readouterr().err
  assert launch(config, tmp_path / "f", "--dry_run", "--only=5") == 2
  assert "--only: '5' is neither a run index 0..2" in capsys.readouterr().err
  # Another sweep into a base workdir that holds one is refused.
  assert launch(config, tmp_path / "g", "--dry_run") == 0
  assert launch(config, tmp_path / "g", "--dry_run", sweep_name="one") == 2
  assert "already describes another sweep" in capsys.readouterr().err


def test_run_loop_continues_after_a_failure_and_skips_done_runs(config, tmp_path, capsys):
  calls, failing = [], {"[res1.0x] "}

  def runner(cmd, prefix, log_path, env):
    calls.append((cmd, prefix, log_path))
    assert str(ROOT) in env["PYTHONPATH"].split(":") and env["PYTHONUNBUFFERED"] == "1"
    if prefix in failing:
      failing.discard(prefix)  # fails the first time only
      return 3
    return 0

  assert launch(config, tmp_path, runner=runner) == 1  # the middle run fails
  assert [c[1] for c in calls] == ["[res0.5x] ", "[res1.0x] ", "[res2.0x] "]
  assert calls[0][2] == str(tmp_path / "res0.5x" / "launch.log")
  out = capsys.readouterr().out
  assert "res1.0x                  failed (exit 3)" in out and "1 run(s) not completed" in out
  assert [(tmp_path / n / "DONE").is_file() for n in ("res0.5x", "res1.0x", "res2.0x")] == \
    [True, False, True]
  done = json.loads((tmp_path / "res0.5x" / "DONE").read_text())
  assert done["command"] == calls[0][0]
  calls.clear()
  assert launch(config, tmp_path, runner=runner) == 0  # only the failed run goes again
  assert [c[1] for c in calls] == ["[res1.0x] "]
  assert "res0.5x: skipped" in capsys.readouterr().out
  calls.clear()
  assert launch(config, tmp_path, "--force", "--only=0", runner=runner) == 0
  assert [c[1] for c in calls] == ["[res0.5x] "]


def test_stream_command_prefixes_and_logs(tmp_path, capsys):
  log = tmp_path / "run.log"
  code = "import sys; print('step 1'); print('oops', file=sys.stderr); sys.exit(4)"
  assert sweep.stream_command([sys.executable, "-c", code], "[r] ", str(log)) == 4
  out = capsys.readouterr().out
  assert "[r] step 1\n" in out and "[r] oops\n" in out
  assert sorted(log.read_text().splitlines()) == ["oops", "step 1"]
  assert sweep.stream_command([str(tmp_path / "no_such_python")], "[r] ") == 127


# ----------------------------------------------------------------------------------- analysis


BINS_A = [{"lo": 0.0, "hi": 20.0, "num_faces": 30, "ap": 0.25},
          {"lo": 20.0, "hi": 80.0, "num_faces": 50, "ap": 0.6123456789012345},
          {"lo": 80.0, "hi": None, "num_faces": 20, "ap": 0.9}]
BINS_B = [{"lo": 0.0, "hi": 20.0, "num_faces": 30, "ap": 0.4},
          {"lo": 20.0, "hi": 80.0, "num_faces": 50, "ap": 0.55},
          {"lo": 80.0, "hi": None, "num_faces": 20, "ap": None}]


def write_aps(workdir, step, **entries):
  d = workdir / "eval" / f"step_{step}" / "wider"
  d.mkdir(parents=True)
  (d / "aps.json").write_text(json.dumps({"aps": {"easy": 0.9, "medium": 0.8, "hard": 0.5},
                                          **entries}))


@pytest.fixture
def sweep_dir(tmp_path):
  """A sweep copied from elsewhere (recorded workdirs absent): 2 runs with data, 2 without."""
  d = tmp_path / "sweep"
  names = ["res2x", "res1x", "fresh", "old"]
  runs = [{"index": i, "name": n, "overrides": {"model.scale": s, "eval.scales": [1.0]},
           "workdir": f"/elsewhere/{n}"} for i, (n, s) in enumerate(zip(names, (2.0, 1.0, 0.5,
                                                                                0.5)))]
  d.mkdir()
  (d / "sweep.json").write_text(json.dumps({"sweep": "res", "config": "x.py", "runs": runs}))
  write_aps(d / "res2x", 0, ap_by_height=BINS_B)
  write_aps(d / "res2x", 100, ap_by_height=BINS_A)
  write_aps(d / "res1x", 50, ap_by_height=BINS_B)
  (d / "fresh").mkdir()
  write_aps(d / "old", 10)  # aps.json without ap_by_height
  return d


def test_main_writes_png_and_csv_matching_the_json(sweep_dir, capsys):
  assert scale_sweep.main([f"--sweep_dir={sweep_dir}"]) == 0
  out, err = capsys.readouterr()
  png, table = sweep_dir / "scale_sweep.png", sweep_dir / "scale_sweep.csv"
  with Image.open(png) as im:
    assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400  # tight bbox, legend below
  rows = list(csv.DictReader(table.open()))
  assert [r["run"] for r in rows] == ["res2x", "res1x", "fresh", "old"]
  assert list(rows[0])[3:] == ["<20", "20-80", ">=80", "problem"]
  for row, bins, step in ((rows[0], BINS_A, "100"), (rows[1], BINS_B, "50")):
    assert row["step"] == step and row["problem"] == ""
    for b, label in zip(bins, ("<20", "20-80", ">=80")):
      assert (None if row[label] == "" else float(row[label])) == b["ap"]
  assert json.loads(rows[0]["overrides"]) == {"eval.scales": [1.0], "model.scale": 2.0}
  assert "not evaluated yet" in rows[2]["problem"] and "has no 'ap_by_height'" in rows[3]["problem"]
  assert "fresh: no per-size APs" in err and "old: no per-size APs" in err
  assert "0.6123" in out and "2 of 4 runs plotted" in out
  assert out.splitlines()[1].split() == ["faces", "30", "50", "20"]


def test_load_sweep_step_and_missing(sweep_dir, tmp_path, capsys):
  runs = scale_sweep.load_sweep(sweep_dir)
  assert runs[0]["step"] == 100 and runs[0]["workdir"] == str(sweep_dir / "res2x")
  assert runs[0]["ap_by_height"][2]["hi"] == float("inf") and runs[0]["aps"]["hard"] == 0.5
  assert scale_sweep.run_label(runs[0]) == "res2x (model.scale=2, eval.scales=(1,))"
  # Legends name what tells the runs apart: overrides equal in every run are left out.
  same = [dict(r, overrides=dict(r["overrides"], **{"model.templates": "/a/long/path.mat"}))
          for r in runs]
  keys = scale_sweep.varying_keys(same)
  assert "model.templates" not in keys and scale_sweep.varying_keys(same[:1]) >= keys
  assert "long/path" not in scale_sweep.run_label(same[0], keys)
  runs = scale_sweep.load_sweep(sweep_dir, step=0)
  assert runs[0]["step"] == 0 and runs[0]["ap_by_height"][0]["ap"] == 0.4
  assert runs[1]["ap_by_height"] is None and "steps with one: 50" in runs[1]["problem"]
  assert scale_sweep.main([f"--sweep_dir={sweep_dir}", "--step=7"]) == 1  # nobody has step 7
  assert (sweep_dir / "scale_sweep.csv").is_file() and not (sweep_dir / "scale_sweep.png").exists()
  capsys.readouterr()
  assert scale_sweep.main([f"--sweep_dir={tmp_path / 'nothing'}"]) == 2
  assert "sweep.json not found" in capsys.readouterr().err
  with pytest.raises(ValueError, match="no run has ap_by_height"):
    scale_sweep.plot_sweep(runs[2:], tmp_path / "x.png")


def run_notebook(sweep_dir, monkeypatch) -> list:
  """Executes the cells of notebooks/scale_sweep.ipynb that read a sweep folder (tagged
  "sweep_analysis": parameters, imports, load / table, plot) on `sweep_dir` (a stub IPython)
  after checking it is a clean nbformat-4 file -> what they displayed: [(data, format,
  filename)]. The whole notebook runs in tests/notebooks (marker notebooks)."""
  nb = json.loads((ROOT / "notebooks" / "scale_sweep.ipynb").read_text())
  assert nb["nbformat"] == 4 and {c["cell_type"] for c in nb["cells"]} == {"markdown", "code"}
  shown = []
  display = types.ModuleType("IPython.display")
  display.Image = lambda data=None, format=None, filename=None, **_: (data, format, filename)
  display.display = shown.append
  monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
  monkeypatch.setitem(sys.modules, "IPython.display", display)
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setenv("TINYFACES_SWEEP_DIR", str(sweep_dir))
  ns, ran = {}, 0
  for cell in nb["cells"]:
    assert isinstance(cell["source"], list) and set(cell["metadata"]) <= {"tags"}
    if cell["cell_type"] == "code" and "sweep_analysis" in cell["metadata"].get("tags", []):
      exec(compile("".join(cell["source"]), "scale_sweep.ipynb", "exec"), ns)
      ran += 1
  assert ran == 4 and ns["SWEEP_DIR"] == str(sweep_dir)
  return shown


def test_notebook_is_valid_and_runs(sweep_dir, monkeypatch):
  png = sweep_dir / "scale_sweep.png"
  assert run_notebook(sweep_dir, monkeypatch) == [(None, None, str(png))] and png.is_file()


# ------------------------------------------------------------------------------ URL folders


def test_launcher_with_a_url_base_workdir_creates_nothing_locally(config, ram_dir, capsys):
  """A ram:// --base_workdir (the gs:// code path): sweep.json, DONE files and the run
  workdirs are URLs `<base>/<name>`; no `ram:` (or any) folder appears in the cwd."""
  base = f"{ram_dir}/sweeps/res"
  assert launch(config, base, "--dry_run") == 0
  manifest = json.loads((ram_dir / "sweeps" / "res" / "sweep.json").read_text())
  assert manifest["base_workdir"] == base
  assert [r["workdir"] for r in manifest["runs"]] == [f"{base}/res{s}x" for s in (0.5, 1.0, 2.0)]
  assert f"--workdir={base}/res0.5x" in manifest["runs"][0]["command"]
  assert f"wrote {base}/sweep.json" in capsys.readouterr().out
  assert url_fs.local_entries(".") == []
  calls = []
  assert launch(config, base, "--only=0", runner=lambda cmd, prefix, log, env: calls.append(
    log) or 0) == 0
  assert calls == [f"{base}/res0.5x/launch.log"]
  assert json.loads((ram_dir / "sweeps" / "res" / "res0.5x" / "DONE").read_text())["command"]
  assert launch(config, base, "--only=0", runner=None) == 0  # DONE: skipped, nothing runs
  assert "res0.5x: skipped" in capsys.readouterr().out
  assert sweep.stream_command([sys.executable, "-c", "print('hi')"], "[r] ",
                              f"{base}/res0.5x/launch.log") == 0
  assert (ram_dir / "sweeps" / "res" / "res0.5x" / "launch.log").read_text() == "hi\n"
  assert url_fs.local_entries(".") == []


def test_analysis_and_notebook_on_a_url_sweep_dir(sweep_dir, ram_dir, monkeypatch, capsys):
  """scale_sweep and the notebook read a ram:// sweep folder and write the PNG / CSV there."""
  remote = url_fs.copy_tree(sweep_dir, ram_dir / "sweep")
  assert scale_sweep.main([f"--sweep_dir={remote}"]) == 0
  assert "2 of 4 runs plotted" in capsys.readouterr().out
  with Image.open(io.BytesIO((remote / "scale_sweep.png").read_bytes())) as im:
    assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400  # tight bbox, legend below
  rows = list(csv.DictReader((remote / "scale_sweep.csv").read_text().splitlines()))
  assert [r["run"] for r in rows] == ["res2x", "res1x", "fresh", "old"]
  assert rows[0]["step"] == "100" and float(rows[0]["20-80"]) == BINS_A[1]["ap"]
  runs = scale_sweep.load_sweep(str(remote))
  assert runs[0]["workdir"] == f"{remote}/res2x" and runs[1]["step"] == 50
  (remote / "scale_sweep.png").unlink()
  (data, fmt, filename), = run_notebook(remote, monkeypatch)
  assert data == (remote / "scale_sweep.png").read_bytes() and fmt == "png" and filename is None
  assert url_fs.local_entries(".") == []


# ------------------------------------------------------------------------------ CSV read back


def test_read_csv_round_trip_and_committed_results(sweep_dir, tmp_path):
  runs = scale_sweep.load_sweep(sweep_dir)
  path = scale_sweep.write_csv(runs, tmp_path / "sweep.csv")
  back = scale_sweep.read_csv(path, num_faces=[30, 50, 20])
  assert [r["name"] for r in back] == ["res2x", "res1x", "fresh", "old"]
  for r, b in zip(runs, back):
    assert (b["step"], b["overrides"], b["problem"]) == (r["step"], r["overrides"], r["problem"])
    assert b["ap_by_height"] == r["ap_by_height"]  # bins, counts and the APs' exact floats
  assert scale_sweep.format_table(back) == scale_sweep.format_table(runs)
  # Without counts: None, shown as "-" in the table and left out of the plot's ticks.
  plain = scale_sweep.read_csv(path)
  assert [row["num_faces"] for row in plain[0]["ap_by_height"]] == [None] * 3
  assert scale_sweep.format_table(plain).splitlines()[1].split() == ["faces", "-", "-", "-"]
  png = scale_sweep.plot_sweep(plain, tmp_path / "plain.png")
  with Image.open(png) as im:
    assert im.format == "PNG"
  # The committed sweeps of the README read back with its numbers.
  res = {r["name"]: {size_bins.bin_label(b["lo"], b["hi"]): b["ap"]
                     for b in r["ap_by_height"]}
         for r in scale_sweep.read_csv(ROOT / "benchmarks" / "results" /
                                       "hr_resolution_sweep_embedded.csv")}
  assert list(res) == ["res0.5x", "res1x", "res2x"]
  assert round(res["res2x"]["10-20"], 3) == 0.589 and round(res["res0.5x"]["160-320"], 3) == 0.928
  assert round(res["res1x"]["40-80"], 3) == 0.854 and res["res0.5x"][">=320"] > 0


def test_read_csv_errors(tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("a,b\n1,2\n")
  with pytest.raises(ValueError, match="bad.csv: expected the columns run, step, overrides"):
    scale_sweep.read_csv(bad)
  bad.write_text("run,step,overrides,10-x,problem\nr,1,{},0.5,\n")
  with pytest.raises(ValueError, match="'10-x' is not a height-bin label"):
    scale_sweep.read_csv(bad)
  bad.write_text("run,step,overrides,<10,>=10,problem\nr,1,{},0.5,\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: 5 fields, the header has 6"):
    scale_sweep.read_csv(bad)
  bad.write_text("run,step,overrides,<10,>=10,problem\nr,1,{},0.5,x,\n")
  with pytest.raises(ValueError, match=r"bad.csv:2: malformed row"):
    scale_sweep.read_csv(bad)
  bad.write_text("run,step,overrides,<10,>=10,problem\nr,1,{},0.5,0.25,\n")
  with pytest.raises(ValueError, match="2 bins but 3 face counts"):
    scale_sweep.read_csv(bad, num_faces=[1, 2, 3])
  assert scale_sweep.read_csv(bad)[0]["ap_by_height"] == [
    {"lo": 0.0, "hi": 10.0, "ap": 0.5, "num_faces": None},
    {"lo": 10.0, "hi": float("inf"), "ap": 0.25, "num_faces": None}]
