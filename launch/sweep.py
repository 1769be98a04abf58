"""Launches a sweep of training runs: one `tinyfaces_jax.main` command per variant of a config.

  python launch/sweep.py --config=configs/hr_res101.py[:args] --sweep=NAME --base_workdir=DIR \
      [--dry_run] [--only=i,j] [--force] [--python=PYTHON] [-- extra flags for every run]

The config module defines `get_sweep(name) -> [{"name": str, "overrides": {path: value}}]`
(dotted paths from the config root, e.g. {"model.template_scale": 2.0}); an unknown name raises
ValueError / KeyError (a module-level `SWEEPS` dict, when there is one, is listed too). Every
override is checked against `get_config(args)` first (unknown path: the closest one is named;
wrong type: the field's type), so a typo fails at launch, not after the first run.

Run i gets `<base_workdir>/<name>` and `PYTHON -m tinyfaces_jax.main --config=<config>
--workdir=<workdir> --config.<path>=<value> ... [extra flags]` (values as config_flags parses
them: True/False, tuples "(a,b)", strings as they are). `<base_workdir>/sweep.json` records the
sweep (name, config, per run: name, overrides, workdir, command) for
`tinyfaces_jax.analysis.scale_sweep`. Runs go one after another, output streamed with a
`[<name>] ` prefix and copied to `<workdir>/launch.log`; a run that exits 0 gets
`<workdir>/DONE` and is skipped later (unless --force); a failed run does not stop the sweep
(exit status 1 at the end). SIGTERM is forwarded to the running command (which checkpoints and
exits) and ends the sweep. A base workdir may be a URL (gs://...): every file goes through
etils.epath and the run workdirs are `<base URL>/<name>` URLs; nothing local is created for
them (launch.log is then written once per run attempt, not appended).
See launch/README.md (cluster / Cloud TPU jobs).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import importlib.util
import json
import numbers
import os
import re
import shlex
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # `python launch/sweep.py` puts launch/ first, not the repo
  sys.path.insert(0, REPO_ROOT)

from tinyfaces_jax import paths  # noqa: E402  (etils.epath; TensorFlow only for URLs)

MANIFEST = "sweep.json"
DONE = "DONE"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,=+-]*$")
_STATE = {"proc": None, "stop": False}


class SweepError(Exception):
  """A sweep that cannot be planned or launched (the message names the file / run)."""


def _join(base: str, name: str) -> str:
  """`<base>/<name>` as a string: a URL stays a URL (`paths.resolve`)."""
  return os.fspath(paths.resolve(base) / name)


def _exists(path: str) -> bool:
  return paths.resolve(path).exists()


def _write_text(path: str, text: str) -> None:
  """Writes `text` to `path` (parents created; a local file atomically, by a rename)."""
  p = paths.resolve(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if paths.is_url(p):
    p.write_text(text)
    return
  tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
  tmp.write_text(text)
  tmp.replace(p)


def _remove(path: str) -> None:
  paths.resolve(path).unlink(missing_ok=True)


def load_config_module(path: str):
  """Imports a config file by path (repository root on sys.path, for `configs.common`)."""
  if not os.path.isfile(path):
    raise SweepError(f"config file not found: {path}")
  name = "_sweep_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    raise SweepError(f"{path}: importing the config failed: {type(e).__name__}: {e}") from e
  return module


def get_runs(module, path: str, sweep: str) -> list:
  """Calls `module.get_sweep(sweep)` -> validated [{"name": str, "overrides": dict}]."""
  known = getattr(module, "SWEEPS", None)
  known_txt = f" Known sweeps: {', '.join(map(str, known))}." if known else ""
  get_sweep = getattr(module, "get_sweep", None)
  if not callable(get_sweep):
    raise SweepError(f"{path} defines no get_sweep(name); a config that can be swept returns "
                     f"[{{'name': ..., 'overrides': {{'model.x': ...}}}}, ...] from it."
                     + known_txt)
  try:
    runs = get_sweep(sweep)
  except (ValueError, KeyError) as e:
    msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    more = known_txt if known and any(str(k) not in msg for k in known) else ""
    raise SweepError(f"{path}: get_sweep({sweep!r}) failed (unknown sweep?): {msg}{more}") from None
  if not isinstance(runs, (list, tuple)) or not runs:
    raise SweepError(f"{path}: get_sweep({sweep!r}) must return a non-empty list of "
                     f"{{'name', 'overrides'}} dicts, got {runs!r}")
  out, seen = [], set()
  for i, run in enumerate(runs):
    where = f"{path}: get_sweep({sweep!r})[{i}]"
    if not isinstance(run, dict) or "name" not in run or set(run) - {"name", "overrides"}:
      raise SweepError(f"{where}: expected a dict with keys 'name' and 'overrides', got {run!r}")
    name, overrides = run["name"], dict(run.get("overrides") or {})
    if not isinstance(name, str) or not _NAME_RE.match(name):
      raise SweepError(f"{where}: run name {name!r} must be a folder name of letters, digits "
                       f"and ._,=+- (it becomes <base_workdir>/<name>)")
    if name in seen:
      raise SweepError(f"{where}: duplicate run name {name!r}")
    seen.add(name)
    for key, value in overrides.items():
      if not isinstance(key, str) or not key or key.startswith("."):
        raise SweepError(f"{where} ({name}): override keys are dotted config paths, got {key!r}")
      format_value(value, f"{where} ({name}): {key}")
    out.append({"name": name, "overrides": overrides})
  return out


def _all_paths(cfg, prefix="") -> list:
  """Every dotted field path of a ConfigDict."""
  return [q for k in cfg.keys() for q in [prefix + k] + (
    _all_paths(cfg[k], prefix + k + ".") if hasattr(cfg[k], "keys") else [])]


def _type_ok(default, value) -> bool:
  """Whether `value` suits a config field holding `default` (None: any value)."""
  num = isinstance(value, numbers.Real) and not isinstance(value, bool)
  for kind, ok in ((bool, isinstance(value, bool)),
                   (numbers.Integral, num and isinstance(value, numbers.Integral)),
                   (float, num), (str, isinstance(value, str)),
                   (tuple, isinstance(value, (tuple, list)))):
    if isinstance(default, kind):
      return ok
  return isinstance(value, dict) if hasattr(default, "keys") else True


def check_overrides(cfg, runs: list, where: str) -> None:
  """Every override path exists in the ConfigDict `cfg` and its value has the field's type."""
  known = None
  for run in runs:
    for key, value in run["overrides"].items():
      node, parts = cfg, key.split(".")
      for depth, part in enumerate(parts):
        if not (hasattr(node, "keys") and part in node.keys()):
          known = known or _all_paths(cfg)
          close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
          hint = f"; did you mean {close[0]!r}?" if close else ""
          raise SweepError(f"{where}: run {run['name']!r}: override {key!r}: no field "
                           f"{'.'.join(parts[:depth + 1])!r} in the config{hint}")
        node = node[part]
      if not _type_ok(node, value):
        raise SweepError(f"{where}: run {run['name']!r}: override {key}={value!r}: the field "
                         f"is a {type(node).__name__} ({node!r})")


def _literal(v) -> str:
  if isinstance(v, (tuple, list)):
    return "(" + ",".join(_literal(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  if isinstance(v, dict):
    return "{" + ",".join(f"{_literal(k)}:{_literal(x)}" for k, x in v.items()) + "}"
  if isinstance(v, numbers.Integral) and not isinstance(v, bool):
    return str(int(v))
  if isinstance(v, numbers.Real) and not isinstance(v, bool):
    return repr(float(v))
  if isinstance(v, (bool, str)) or v is None:
    return repr(v)
  raise TypeError(type(v).__name__)


def format_value(value, where: str = "override") -> str:
  """A config value -> the text config_flags parses back to it: True/False, "(a,b)" tuples,
  repr floats, strings unchanged, dicts as literals (ConfigDict fields), None."""
  try:
    if isinstance(value, str):
      return value
    return _literal(value)
  except TypeError as e:
    raise SweepError(f"{where}: value {value!r} of type {e} cannot be passed as "
                     f"--config.<path>=<value> (use bool, int, float, str, tuple, dict)") from None


def build_command(python: str, config: str, workdir: str, overrides: dict,
                  extra=()) -> list:
  """The argv of one run: python -m tinyfaces_jax.main --config --workdir --config.* extra."""
  cmd = [python, "-m", "tinyfaces_jax.main", f"--config={config}", f"--workdir={workdir}"]
  cmd += [f"--config.{k}={format_value(v, k)}" for k, v in overrides.items()]
  return cmd + list(extra)


def plan_sweep(config: str, sweep: str, base_workdir: str, extra=(),
               python: str = sys.executable) -> dict:
  """Loads the config, gets and checks the sweep -> the manifest written as sweep.json."""
  path, sep, arg = config.partition(":")  # configs/x.py:a=1,b as config_flags splits it
  module = load_config_module(path)
  runs = get_runs(module, path, sweep)
  if callable(getattr(module, "get_config", None)):
    try:
      cfg = module.get_config(arg) if sep else module.get_config()
    except Exception as e:
      raise SweepError(f"{config}: get_config failed: {type(e).__name__}: {e}") from e
    check_overrides(cfg, runs, f"{path}: sweep {sweep!r}")
  base = os.fspath(paths.resolve(base_workdir))
  out = []
  for i, run in enumerate(runs):
    workdir = _join(base, run["name"])
    cmd = build_command(python, config, workdir, run["overrides"], extra)
    out.append({"index": i, "name": run["name"], "overrides": run["overrides"],
                "workdir": workdir, "command": cmd, "command_line": shlex.join(cmd)})
  return {"sweep": sweep, "config": config, "base_workdir": base, "extra_flags": list(extra),
          "created": datetime.datetime.now().isoformat(timespec="seconds"), "runs": out}


def _identity(m: dict) -> str:
  return json.dumps([m["sweep"], m["config"], [(r["name"], r["overrides"]) for r in m["runs"]]],
                    sort_keys=True)


def write_manifest(manifest: dict, force: bool = False) -> str:
  """Writes `<base_workdir>/sweep.json`; an existing one of another sweep is an error."""
  path = _join(manifest["base_workdir"], MANIFEST)
  if _exists(path) and not force:
    try:
      old = json.loads(paths.resolve(path).read_text())
      same = _identity(old) == _identity(json.loads(json.dumps(manifest)))
    except (ValueError, KeyError, TypeError):
      same = False
    if not same:
      raise SweepError(f"{path} already describes another sweep (different name, config or "
                       f"runs); use another --base_workdir, or --force to overwrite it")
  _write_text(path, json.dumps(manifest, indent=2) + "\n")
  return path


def _open_log(log_path: str | None):
  """The log file of a run: appended locally, (re)written for a URL, os.devnull for None."""
  if not log_path:
    return open(os.devnull, "a")
  return paths.resolve(log_path).open("w" if paths.is_url(log_path) else "a")


def stream_command(cmd: list, prefix: str, log_path: str | None = None, env=None) -> int:
  """Runs `cmd`, printing each output line with `prefix` (and copying it to `log_path`:
  appended to a local file; a URL is written when the command ends, object stores cannot
  append)."""
  try:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1, env=env)
  except OSError as e:
    print(f"{prefix}cannot start {cmd[0]}: {e}", flush=True)
    return 127
  _STATE["proc"] = proc
  try:
    with _open_log(log_path) as log:
      for line in proc.stdout:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()
        log.write(line)
    return proc.wait()
  except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it stop, then SIGTERM, kill
    _STATE["stop"] = True
    for sig, wait_s in ((None, 10), (signal.SIGTERM, 120), (signal.SIGKILL, None)):
      if sig is not None:
        proc.send_signal(sig)
      try:
        return proc.wait(timeout=wait_s)
      except subprocess.TimeoutExpired:
        continue
  finally:
    _STATE["proc"] = None


def _forward(signum, frame):
  _STATE["stop"] = True
  proc = _STATE["proc"]
  if proc is not None and proc.poll() is None:
    proc.send_signal(signum)


def select_runs(runs: list, only: str | None) -> list:
  """`--only=0,2` (indices) or `--only=name_a,name_b` -> the chosen runs, in sweep order."""
  if not only:
    return list(runs)
  by_name = {r["name"]: r for r in runs}
  chosen = set()
  for item in filter(None, (s.strip() for s in only.split(","))):
    if item in by_name:
      chosen.add(by_name[item]["index"])
    elif item.isdigit() and int(item) < len(runs):
      chosen.add(int(item))
    else:
      raise SweepError(f"--only: {item!r} is neither a run index 0..{len(runs) - 1} nor a run "
                       f"name ({', '.join(by_name)})")
  return [r for r in runs if r["index"] in chosen]


def run_sweep(manifest: dict, runs: list, force: bool = False, runner=None) -> list:
  """Runs `runs` one after another -> [(name, status)], status "done", "skipped", "failed
  (exit N)" or "not started". `runner(cmd, prefix, log_path, env) -> exit code`."""
  runner = runner or stream_command
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  env["PYTHONUNBUFFERED"] = "1"
  _STATE["stop"] = False
  old = signal.signal(signal.SIGTERM, _forward)
  results = []
  try:
    for k, run in enumerate(runs):
      name, workdir = run["name"], run["workdir"]
      done = _join(workdir, DONE)
      if _STATE["stop"]:
        results.append((name, "not started"))
        continue
      if not force and _exists(done):
        print(f"[sweep] {name}: skipped ({done} exists; --force reruns it)", flush=True)
        results.append((name, "skipped"))
        continue
      _remove(done)
      paths.resolve(workdir).mkdir(parents=True, exist_ok=True)
      print(f"[sweep] run {k + 1}/{len(runs)} {name}: {run['command_line']}", flush=True)
      t0 = time.time()
      rc = runner(run["command"], f"[{name}] ", _join(workdir, "launch.log"), env)
      seconds = round(time.time() - t0, 1)
      if rc == 0:
        now = datetime.datetime.now().isoformat(timespec="seconds")
        _write_text(done, json.dumps({"command": run["command"], "seconds": seconds,
                                      "finished": now}, indent=2) + "\n")
        results.append((name, "done"))
      else:
        results.append((name, f"failed (exit {rc})"))
      print(f"[sweep] {name}: {results[-1][1]} after {seconds:.0f}s", flush=True)
  finally:
    signal.signal(signal.SIGTERM, old)
  return results


def parse_args(argv):
  """The launcher's flags; everything after a bare `--` goes to every run as it is."""
  argv = list(argv)
  cut = argv.index("--") if "--" in argv else len(argv)
  p = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="configs/<name>.py[:args]")
  p.add_argument("--sweep", required=True, help="sweep name given to the config's get_sweep")
  p.add_argument("--base_workdir", required=True, help="one <base_workdir>/<name> per run")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--only", default=None, help="comma-separated run indices or names")
  p.add_argument("--force", action="store_true", help="rerun DONE runs; overwrite sweep.json")
  p.add_argument("--python", default=sys.executable, help="interpreter of the commands")
  args = p.parse_args(argv[:cut])
  args.extra = argv[cut + 1:]
  return args


def main(argv=None, runner=None) -> int:
  """Plans, records and (unless --dry_run) runs the sweep; returns the exit status."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    manifest = plan_sweep(args.config, args.sweep, args.base_workdir, args.extra, args.python)
    runs = select_runs(manifest["runs"], args.only)
    path = write_manifest(manifest, force=args.force)
  except SweepError as e:
    print(f"launch/sweep.py: error: {e}", file=sys.stderr)
    return 2
  print(f"[sweep] {args.sweep}: {len(manifest['runs'])} runs of {args.config} "
        f"({len(runs)} selected); wrote {path}", flush=True)
  if args.dry_run:
    for run in runs:
      mark = " (DONE)" if _exists(_join(run["workdir"], DONE)) else ""
      print(f"# {run['index']} {run['name']}{mark}\n{run['command_line']}", flush=True)
    return 0
  results = run_sweep(manifest, runs, force=args.force, runner=runner)
  print("[sweep] summary:")
  for name, status in results:
    print(f"[sweep]   {name:<24} {status}")
  bad = [n for n, s in results if s.startswith("failed") or s == "not started"]
  if bad:
    print(f"[sweep] {len(bad)} run(s) not completed: {', '.join(bad)}", flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
