"""Drives a Cloud TPU VM slice through `gcloud`: create, setup, prepare, run, logs, watch, delete.

  python launch/tpu_vm.py SUBCOMMAND --name=NAME --zone=ZONE [--project=P] [--dry_run] ...

Commands are built by pure functions (`*_commands(args) -> [argv, ...]`) and run by `Runner`;
--dry_run prints them (shlex-quoted; polls printed once and assumed to succeed) and runs nothing.
Unknown `--config.*=...` flags and everything after a bare `--` go to tinyfaces_jax.main. What
each subcommand does, and the end-to-end v5e-32 example: launch/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR, REMOTE_VENV, LOGS = "~/tinyfaces_jax", "~/tinyfaces_venv", "~/tinyfaces_logs"
LOG_FILE = f"{LOGS}/worker_$(hostname).log"  # expanded by each worker's shell
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "PYTHONUNBUFFERED": "1"}
RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
            "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
QR = "queued-resources"
RECREATE_STATES = {"PREEMPTED", "SUSPENDING", "SUSPENDED", "FAILED", "MISSING", "TERMINATED"}
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class LaunchError(Exception):
  """A command that failed or arguments that cannot work (one line, naming what)."""


def jax_pin(requirements: str = os.path.join(REPO_ROOT, "requirements.txt")) -> str:
  """The `jax==X` version pinned in requirements.txt (the one place it is written)."""
  with open(requirements) as f:
    m = re.search(r"^jax==([^\s;#]+)", f.read(), re.MULTILINE)
  if m:
    return m.group(1)
  raise LaunchError(f"{requirements} pins no jax==VERSION")


def runtime_version(accelerator_type: str) -> str:
  """The default TPU VM image of a generation (v5litepod-32 -> v2-alpha-tpuv5-lite)."""
  gen = accelerator_type.rpartition("-")[0]
  if gen not in RUNTIMES:
    raise LaunchError(f"no default runtime version for accelerator type {accelerator_type!r}; "
                      f"pass --runtime_version (known generations: {', '.join(RUNTIMES)})")
  return RUNTIMES[gen]


def num_devices(accelerator_type: str) -> int:
  """JAX devices of a slice: v5litepod-32 / v6e-32 -> 32 chips; v4-32 / v5p-32 -> 16."""
  gen, _, n = accelerator_type.rpartition("-")
  if not n.isdigit():
    raise LaunchError(f"accelerator type {accelerator_type!r} is not GENERATION-SIZE")
  return int(n) // 2 if gen in ("v4", "v5p") else int(n)  # those count 2 TensorCores a chip


def _tpu(a, verb: str, group: str = "tpu-vm", *args: str) -> list:
  """`gcloud compute tpus GROUP VERB ARGS --zone [--project]`; ARGS default to the name."""
  return (["gcloud", "compute", "tpus", group, verb, *(args or [a.name]), f"--zone={a.zone}"]
          + ([f"--project={a.project}"] if a.project else []))


def ssh(a, command: str, worker: str = "all") -> list:
  """`gcloud compute tpus tpu-vm ssh NAME --worker=W --command=...` (bash on each worker)."""
  return _tpu(a, "ssh") + [f"--worker={worker}", f"--command={command}"]


def create_commands(a) -> list:
  """The queued resource (one node of the same name; --spot: preemptible capacity)."""
  runtime = a.runtime_version or runtime_version(a.accelerator_type)
  return [_tpu(a, "create", QR) + [f"--node-id={a.name}", f"--accelerator-type="
                                   f"{a.accelerator_type}", f"--runtime-version={runtime}"]
          + (["--spot"] if a.spot else [])]


def describe_command(a) -> list:
  """The queued resource's state: ACCEPTED, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ..."""
  return _tpu(a, "describe", QR) + ["--format=value(state.state)"]


def node_state_command(a) -> list:
  """The node's state: READY, PREEMPTED, TERMINATED, REPAIRING, ..."""
  return _tpu(a, "describe") + ["--format=value(state)"]


def delete_commands(a) -> list:
  """The queued resource; --force deletes its node too, --quiet skips the prompt."""
  return [_tpu(a, "delete", QR) + ["--force", "--quiet"]]


def setup_commands(a) -> list:
  """git archive -> scp to every worker -> unpack and pip install in a venv on every worker."""
  pin, py = jax_pin(), a.python
  tarball = os.path.join(tempfile.gettempdir(), f"tinyfaces_jax_{a.name}.tar.gz")
  remote = " && ".join([
      f"(command -v {py} >/dev/null || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND="
      f"noninteractive apt-get install -y -qq {py} {py}-venv))",
      f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} {LOGS}",
      f"tar -xzf ~/tinyfaces_jax.tar.gz -C {REMOTE_DIR}",
      f"([ -x {REMOTE_VENV}/bin/python ] || {py} -m venv {REMOTE_VENV})",
      f". {REMOTE_VENV}/bin/activate && cd {REMOTE_DIR}",
      "pip install -q --upgrade pip",
      f"pip install -q -r requirements.txt {shlex.quote(f'jax[tpu]=={pin}')}",
      "python -c 'import jax, libtpu; print(\"jax\", jax.__version__, \"with libtpu\")'"])
  return [["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", f"--output={tarball}", a.ref],
          _tpu(a, "scp", "tpu-vm", tarball, f"{a.name}:tinyfaces_jax.tar.gz") + ["--worker=all"],
          ssh(a, remote)]


def _env(a, platforms: str) -> str:
  """`export ...` of the same variables on every worker: quiet TF, JAX_PLATFORMS, --env."""
  bad = [item for item in a.env if not re.match(r"^[A-Za-z_]\w*=", item)]
  if bad:
    raise LaunchError(f"--env {bad[0]!r}: expected KEY=VALUE")
  env = {**QUIET_ENV, "JAX_PLATFORMS": platforms, **dict(e.split("=", 1) for e in a.env)}
  return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def main_argv(a, mode: str | None = None) -> list:
  """`python -m tinyfaces_jax.main ...` as run on a worker (the venv active, in REMOTE_DIR)."""
  cmd = ["python", "-m", "tinyfaces_jax.main"] + ([f"--mode={mode}"] if mode else [])
  hosts = [] if mode == "prepare" else [f"--workdir={a.workdir}", "--multihost"]
  return cmd + [f"--config={a.config}"] + hosts + list(a.extra)


def prepare_commands(a) -> list:
  """The dataset, once, on worker 0 (CPU only: one host alone cannot start a slice's TPUs)."""
  script = (f"set -o pipefail; mkdir -p {LOGS} && cd {REMOTE_DIR} && . {REMOTE_VENV}/bin/"
            f"activate && {_env(a, 'cpu')} && {shlex.join(main_argv(a, 'prepare'))} 2>&1 | "
            f"tee -a {LOG_FILE}")
  return [ssh(a, script, worker="0")]


def run_commands(a) -> list:
  """The training on every worker at once, nohup'd (it outlives ssh), one log per worker."""
  for item in a.extra:  # the global batch is split over every device of the slice
    if a.accelerator_type and item.startswith("--config.train.batch_size="):
      batch, n = item.partition("=")[2], num_devices(a.accelerator_type)
      if not batch.isdigit() or int(batch) % n:
        raise LaunchError(f"{item}: the global batch must divide by the {n} devices of a "
                          f"{a.accelerator_type} slice")
  inner = f"{shlex.join(main_argv(a))}; echo $? > {LOGS}/status"
  pre = (f"mkdir -p {LOGS} && cd {REMOTE_DIR} && . {REMOTE_VENV}/bin/activate && "
         f"{_env(a, 'tpu')} && echo \"=== $(date -u +%FT%TZ) start\" >> {LOG_FILE}")
  guard = (f"if [ -f {LOGS}/pid ] && kill -0 \"$(cat {LOGS}/pid)\" 2>/dev/null; then echo "
           f"\"tinyfaces: already running on $(hostname) (pid $(cat {LOGS}/pid))\" >&2; exit 1; fi")
  return [ssh(a, f"{guard}; {pre} && echo running > {LOGS}/status && {{ nohup bash -c "
                 f"{shlex.quote(inner)} >> {LOG_FILE} 2>&1 < /dev/null & echo $! > {LOGS}/pid; }}")]


def status_command(a) -> list:
  """Worker 0's training: running, an exit status, lost (died unrecorded) or absent."""
  return ssh(a, f"s=$(cat {LOGS}/status 2>/dev/null || echo absent); if [ \"$s\" = running ] && "
                f"! kill -0 \"$(cat {LOGS}/pid 2>/dev/null)\" 2>/dev/null; then s=lost; fi; "
                f"echo \"$s\"", worker="0")


def logs_commands(a) -> list:
  """Every worker's log: copied to --out_dir, or its last --tail lines printed."""
  if a.tail:
    return [ssh(a, f"echo \"== $(hostname)\"; tail -n {int(a.tail)} {LOG_FILE}")]
  out = a.out_dir or os.path.join("tinyfaces_logs", a.name)
  return [["mkdir", "-p", out],
          _tpu(a, "scp", "tpu-vm", f"{a.name}:tinyfaces_logs/worker_*.log", out + "/")
          + ["--worker=all"]]


def done_path(a) -> str:
  """What exists once the run is finished: the final evaluation's summary.json."""
  given = [x.partition("=")[2] for x in a.extra if x.startswith("--config.train.num_steps=")]
  steps = a.num_steps or (int(given[-1]) if given and given[-1].isdigit() else None)
  if not (steps or a.done_path):
    raise LaunchError("watch needs --num_steps (the config's train.num_steps) or --done_path "
                      "to know when the run is finished")
  return a.done_path or f"{a.workdir.rstrip('/')}/eval/step_{steps}/summary.json"


def decide(state: str, worker: str, done: bool, restarts: int, max_restarts: int) -> str:
  """One poll -> "stop" (finished), "wait", "recreate" (slice lost: delete, create, setup,
  run), "rerun" (slice fine, training not running), "fail" (it exited non-zero), "give_up"."""
  if done:
    return "stop"
  if state in RECREATE_STATES:
    return "recreate" if restarts < max_restarts else "give_up"
  if state != "ACTIVE" or worker in ("running", "unknown"):
    return "wait"
  if worker in ("absent", "lost", "0"):
    return "rerun" if restarts < max_restarts else "give_up"
  return "fail"


def plan_watch(observations, max_restarts: int):
  """(action, poll) for each (state, worker, done) poll, lazily, until stop / fail / give_up."""
  restarts = 0
  for obs in observations:
    action = decide(*obs, restarts, max_restarts)
    yield action, obs
    restarts += action in ("recreate", "rerun")
    if action in ("stop", "fail", "give_up"):
      return


@dataclasses.dataclass
class Runner:
  """Runs (or, dry, prints) commands; `query` returns (exit status, stdout, stderr)."""
  dry_run: bool = False

  def __call__(self, cmds: list) -> None:
    for cmd in cmds:
      print(shlex.join(cmd) if self.dry_run else f"+ {shlex.join(cmd)}", flush=True)
      try:
        if not self.dry_run:
          subprocess.run(cmd, check=True)
      except (OSError, subprocess.CalledProcessError) as e:
        why = f"exit {e.returncode}" if hasattr(e, "returncode") else f"{cmd[0]}: {e.strerror}"
        raise LaunchError(f"command failed ({why}): {shlex.join(cmd)}") from None

  def query(self, cmd: list) -> tuple:
    try:
      p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
      return 127, "", f"{cmd[0]}: {e.strerror}"
    return p.returncode, p.stdout.strip(), p.stderr.strip()


def qr_state(a, run: Runner) -> str:
  """The queued resource's state; MISSING when gcloud says it does not exist, else UNKNOWN."""
  rc, out, err = run.query(describe_command(a))
  if rc == 0 and out:
    return out.splitlines()[-1]
  return "MISSING" if rc and ("NOT_FOUND" in err or "not found" in err.lower()) else "UNKNOWN"


def wait_active(a, run: Runner) -> None:
  """Polls the queued resource until ACTIVE; FAILED / SUSPENDED / timeout: LaunchError."""
  if run.dry_run:
    print(f"# poll every {a.poll_s:g} s until ACTIVE (at most {a.timeout_s:g} s):\n"
          f"{shlex.join(describe_command(a))}", flush=True)
    return
  deadline, last = time.time() + a.timeout_s, None
  while True:
    state = qr_state(a, run)
    if state != last:
      print(f"[{time.strftime('%H:%M:%S')}] {a.name}: {state}", flush=True)
      last = state
    if state == "ACTIVE":
      return
    late = time.time() > deadline
    if late or state in ("FAILED", "SUSPENDED", "SUSPENDING", "MISSING"):
      raise LaunchError(f"queued resource {a.name} is {state}" + (f" after {a.timeout_s:g} s"
                        if late else "") + f" (details: {shlex.join(_tpu(a, 'describe', QR))})")
    time.sleep(a.poll_s)


def observe(a, run: Runner, done_cmd: list) -> tuple:
  """(state, worker, done) now: the queued resource (or node) state and worker 0's training."""
  if run.query(done_cmd)[0] == 0:
    return "ACTIVE", "0", True
  state = qr_state(a, run)
  if state != "ACTIVE":
    return state, "unknown", False
  rc, node, _ = run.query(node_state_command(a))
  if rc != 0 or node != "READY":
    return ("PREEMPTED" if node in ("PREEMPTED", "TERMINATED") else f"NODE_{node or 'UNKNOWN'}",
            "unknown", False)
  rc, out, _ = run.query(status_command(a))
  worker = out.splitlines()[-1] if rc == 0 and out else "unknown"
  return "ACTIVE", worker, worker == "0" and run.query(done_cmd)[0] == 0


def resubmit(a, run: Runner) -> None:
  """Delete (unless already gone), create and wait, setup, run: the same workdir resumes."""
  if run.dry_run or qr_state(a, run) != "MISSING":
    run(delete_commands(a))
  run(create_commands(a))
  wait_active(a, run)
  run(setup_commands(a))
  run(run_commands(a))


def watch(a, run: Runner) -> int:
  """Polls until the run is finished, resubmitting / rerunning it; the exit status."""
  if not a.workdir.startswith("gs://"):
    raise LaunchError(f"watch checks the run's files with gcloud storage: --workdir must be "
                      f"gs://..., got {a.workdir!r}")
  done_cmd = ["gcloud", "storage", "ls", done_path(a)]
  if run.dry_run:
    print(f"# poll every {a.poll_s:g} s (finished when the first command succeeds):")
    for cmd in (done_cmd, describe_command(a), node_state_command(a), status_command(a)):
      print(shlex.join(cmd))
    print(f"# on a preemption (<= {a.max_restarts} restarts; an early stop reruns the last only):")
    resubmit(a, run)
    return 0

  def polls():
    while True:
      yield observe(a, run, done_cmd)
      time.sleep(a.poll_s)

  action, restarts = "stop", 0
  for action, (state, worker, _) in plan_watch(polls(), a.max_restarts):
    print(f"[{time.strftime('%H:%M:%S')}] {a.name}: {state}, training {worker} -> {action}",
          flush=True)
    if action in ("recreate", "rerun"):
      restarts += 1
      try:  # e.g. no capacity yet: the next poll sees the state and decides again
        resubmit(a, run) if action == "recreate" else run(  # absent: a node never set up
            (setup_commands(a) if worker == "absent" else []) + run_commands(a))
      except LaunchError as e:
        print(f"launch/tpu_vm.py: restart {restarts} failed: {e}", file=sys.stderr)
  if action == "stop":
    print(f"finished: {done_path(a)} exists")
    return 0
  why = f"training exited with {worker}" if action == "fail" else f"{restarts} restarts used"
  print(f"launch/tpu_vm.py: watch stops ({why}); see launch/tpu_vm.py logs", file=sys.stderr)
  return 1


_NEW, _MAIN = "create resubmit watch", "run prepare resubmit watch"
FLAGS = [  # (subcommands, flag, argparse keywords)
    ("all", "--name", dict(required=True, help="queued resource and node name")),
    ("all", "--zone", dict(required=True)),
    ("all", "--project", dict(default=None, help="default: gcloud's configured project")),
    ("all", "--dry_run", dict(action="store_true", help="print the commands, run nothing")),
    (_NEW, "--accelerator_type", dict(required=True, help="e.g. v5litepod-32 (a v5e-32)")),
    ("run", "--accelerator_type", dict(default=None, help="checks a batch_size override")),
    (_NEW, "--runtime_version", dict(default=None, help="default: per TPU generation")),
    (_NEW, "--spot", dict(action="store_true", help="preemptible (spot) capacity")),
    ("create resubmit", "--poll_s", dict(type=float, default=30.0, help="seconds between polls")),
    ("watch", "--poll_s", dict(type=float, default=300.0, help="seconds between polls")),
    (_NEW, "--timeout_s", dict(type=float, default=3 * 3600.0, help="wait for ACTIVE at most")),
    (_MAIN, "--config", dict(required=True, help="configs/<name>.py[:args], repo-relative")),
    (_MAIN, "--env", dict(action="append", default=[], help="KEY=VALUE on every worker")),
    ("run resubmit watch", "--workdir", dict(required=True, help="shared by all: gs://...")),
    ("setup resubmit watch", "--ref", dict(default="HEAD", help="git revision shipped")),
    ("setup resubmit watch", "--python", dict(default="python3.11", help="workers' Python")),
    ("watch", "--max_restarts", dict(type=int, default=10)),
    ("watch", "--num_steps", dict(type=int, default=None, help="the config's train.num_steps")),
    ("watch", "--done_path", dict(default=None, help="<workdir>/eval/step_<N>/summary.json")),
    ("logs", "--out_dir", dict(default=None, help="default: tinyfaces_logs/<name>")),
    ("logs", "--tail", dict(type=int, default=0, help="print the last N lines instead")),
]


def parse_args(argv):
  """Subcommand and flags; unknown --config.* flags (and all after `--`) go to main."""
  cut = argv.index("--") if "--" in argv else len(argv)
  p = argparse.ArgumentParser(prog="launch/tpu_vm.py", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  for n in "create setup prepare run logs resubmit watch delete".split():
    q = sub.add_parser(n)
    for names, flag, kw in FLAGS:
      if n in names.split() or names == "all":
        q.add_argument(flag, **kw)
  a, unknown = p.parse_known_args(argv[:cut])
  bad = [u for u in unknown if not u.startswith("--config.")]
  if bad or (unknown and not hasattr(a, "config")):
    p.error(f"unrecognized arguments: {' '.join(bad or unknown)}")
  a.extra = unknown + argv[cut + 1:]
  if not _NAME_RE.match(a.name):
    p.error(f"--name={a.name!r}: lowercase letters, digits and hyphens, starting with a letter")
  return a


def main(argv=None) -> int:
  """Parses, builds and runs (or prints) one subcommand's commands; the exit status."""
  a = parse_args(sys.argv[1:] if argv is None else list(argv))
  run = Runner(dry_run=a.dry_run)
  try:
    if a.cmd in ("setup", "resubmit", "watch") and not a.dry_run and run.query(
        ["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"])[1]:
      print(f"warning: uncommitted changes are not shipped (setup copies git archive {a.ref})",
            file=sys.stderr)
    if a.cmd == "create":
      run(create_commands(a))
      wait_active(a, run)
    elif a.cmd == "resubmit":
      resubmit(a, run)
    elif a.cmd == "watch":
      return watch(a, run)
    else:
      run({"setup": setup_commands, "prepare": prepare_commands, "run": run_commands,
           "logs": logs_commands, "delete": delete_commands}[a.cmd](a))
  except LaunchError as e:
    print(f"launch/tpu_vm.py: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
