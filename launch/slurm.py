"""Writes and submits an sbatch script for a multi-node GPU training (one task per node).

  python launch/slurm.py --config=configs/<name>.py[:args] --workdir=DIR --nodes=N \
      [--gpus_per_node=8] [--cpus_per_task=16] [--time=24:00:00] [--partition=P] [--account=A] \
      [--prepare] [--requeue [--num_steps=STEPS]] [--install] [--dry_run] [--config.x=y ...]

The script activates --venv (which must hold `jax[cuda12]==<the jax pin of requirements.txt>`;
--install creates / fills it first), exports the quiet-TensorFlow variables, JAX_PLATFORMS=cuda
(no silent CPU fallback) and JAX_LOCAL_DEVICE_IDS=0..G-1 (JAX's SLURM detection would otherwise
give each task only the GPU numbered by its local task id), optionally prepares the dataset on
one task (`srun --nodes=1 --ntasks=1 ... --mode=prepare`, CPU only), then runs `srun python -m
tinyfaces_jax.main --config --workdir --multihost ...` on every node (JAX reads the cluster from
SLURM's variables). `#SBATCH --signal=TERM@<signal_s>` sends SIGTERM to the tasks before the
time limit: every host saves the same step and exits 0. --requeue adds `#SBATCH --requeue`
(preemptible partitions: the scheduler requeues the job, which resumes from the same workdir)
and, with --num_steps (or --done_path), requeues the job itself after a time-limit stop until
`<workdir>/eval/step_<num_steps>/summary.json` (the final evaluation) exists. --dry_run prints the
script and the sbatch command; otherwise the script is written to --script and submitted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tpu_vm  # noqa: E402  (jax_pin, LaunchError, Runner, QUIET_ENV)

REPO_ROOT = tpu_vm.REPO_ROOT
_EXISTS = "import sys; from etils import epath; sys.exit(not epath.Path(sys.argv[1]).exists())"


def _abs(path: str) -> str:
  """Local paths absolute (the script runs from the repository root), URLs unchanged."""
  return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def main_argv(a, mode: str | None = None) -> list:
  """`python -m tinyfaces_jax.main ...` of the training (or of `mode`, e.g. prepare)."""
  cmd = ["python", "-m", "tinyfaces_jax.main"] + ([f"--mode={mode}"] if mode else [])
  hosts = [] if mode == "prepare" else [f"--workdir={_abs(a.workdir)}", "--multihost"]
  return cmd + [f"--config={a.config}"] + hosts + list(a.extra)


def done_path(a) -> str | None:
  """What exists once the run is finished (the final evaluation's summary.json), if known."""
  if a.done_path or not a.num_steps:
    return a.done_path
  return f"{_abs(a.workdir).rstrip('/')}/eval/step_{a.num_steps}/summary.json"


def check(a) -> None:
  """Arguments that cannot work: a global batch the GPUs do not divide, odd sizes."""
  if a.nodes < 1 or a.gpus_per_node < 1 or a.cpus_per_task < 1:
    raise tpu_vm.LaunchError("--nodes, --gpus_per_node and --cpus_per_task must be >= 1")
  n = a.nodes * a.gpus_per_node
  for item in a.extra:
    if item.startswith("--config.train.batch_size="):
      batch = item.partition("=")[2]
      if not batch.isdigit() or int(batch) % n:
        raise tpu_vm.LaunchError(f"{item}: the global batch must divide by the {n} GPUs "
                                 f"({a.nodes} nodes x {a.gpus_per_node})")
  if a.requeue and not done_path(a):
    print("note: --requeue without --num_steps: a preempted job is requeued by the scheduler, "
          "but a job stopped by its time limit is not resubmitted", file=sys.stderr)


def build_script(a) -> str:
  """The sbatch script's text."""
  check(a)
  pin, venv, g = tpu_vm.jax_pin(), _abs(a.venv), a.gpus_per_node
  jax_req = shlex.quote(f"jax[cuda12]=={pin}")
  sbatch = [f"--job-name={a.job_name}", f"--nodes={a.nodes}", "--ntasks-per-node=1",
            f"--gpus-per-node={g}", f"--cpus-per-task={a.cpus_per_task}", f"--time={a.time}",
            f"--output={a.output}", "--open-mode=append"]
  sbatch += [f"--partition={a.partition}"] if a.partition else []
  sbatch += [f"--account={a.account}"] if a.account else []
  sbatch += [f"--signal=TERM@{a.signal_s}"] if a.signal_s else []
  sbatch += ["--requeue"] if a.requeue else []
  env = {**tpu_vm.QUIET_ENV, "JAX_PLATFORMS": "cuda",
         "JAX_LOCAL_DEVICE_IDS": ",".join(map(str, range(g)))}
  for item in a.env:
    key, sep, value = item.partition("=")
    if not sep or not key.isidentifier():
      raise tpu_vm.LaunchError(f"--env {item!r}: expected KEY=VALUE")
    env[key] = value
  lines = ["#!/bin/bash"] + [f"#SBATCH {s}" for s in sbatch] + [
      "# Written by launch/slurm.py: one task per node drives the node's GPUs; --multihost lets",
      "# JAX read the cluster from SLURM. SIGTERM (preemption, or --signal before the time",
      "# limit): every host saves the same step and exits 0; rerunning resumes from the workdir.",
      "set -euo pipefail",
      f"cd {shlex.quote(REPO_ROOT)}"]
  if a.install:
    lines += [f"[ -x {shlex.quote(venv)}/bin/python ] || python3 -m venv {shlex.quote(venv)}",
              f"{shlex.quote(venv)}/bin/pip install -q -r requirements.txt {jax_req}"]
  lines += [
      f"source {shlex.quote(venv)}/bin/activate",
      f"python -c 'import sys, jax, jax_cuda12_plugin; sys.exit(jax.__version__ != \"{pin}\")' "
      f"|| {{ echo \"tinyfaces: {venv} lacks jax[cuda12]=={pin}: pip install -r requirements.txt "
      f"{jax_req} (or pass --install)\" >&2; exit 1; }}",
      "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
      "echo \"=== $(date -u +%FT%TZ) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on "
      "$SLURM_JOB_NODELIST\""]
  if a.prepare:
    lines.append("JAX_PLATFORMS=cpu srun --nodes=1 --ntasks=1 "
                 f"--cpus-per-task={a.cpus_per_task} {shlex.join(main_argv(a, 'prepare'))}")
  lines.append(f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 --gpus-per-node={g} "
               f"--cpus-per-task={a.cpus_per_task} {shlex.join(main_argv(a))}")
  done = done_path(a)
  if a.requeue and done:
    lines += [f"if ! python -c {shlex.quote(_EXISTS)} {shlex.quote(done)}; then",
              "  echo \"tinyfaces: not finished (stopped early): requeueing $SLURM_JOB_ID\"",
              "  scontrol requeue \"$SLURM_JOB_ID\"",
              "fi"]
  return "\n".join(lines) + "\n"


def parse_args(argv):
  """The flags; unknown --config.* flags (and everything after `--`) go to main."""
  cut = argv.index("--") if "--" in argv else len(argv)
  p = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="configs/<name>.py[:args], repo-relative")
  p.add_argument("--workdir", required=True, help="shared by every node (NFS, Lustre, gs://)")
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--cpus_per_task", type=int, default=16, help="input pipeline threads")
  p.add_argument("--time", default="24:00:00", help="the job's time limit")
  p.add_argument("--job_name", default="tinyfaces")
  p.add_argument("--output", default="slurm-%x-%j.out", help="the job's log (%%x name, %%j id)")
  p.add_argument("--partition", default=None)
  p.add_argument("--account", default=None)
  p.add_argument("--venv", default=os.path.join(REPO_ROOT, ".venv"),
                 help="a venv with jax[cuda12] (on a filesystem every node reads)")
  p.add_argument("--install", action="store_true", help="create / fill --venv in the job")
  p.add_argument("--prepare", action="store_true", help="prepare the dataset first (1 task)")
  p.add_argument("--requeue", action="store_true", help="preemptible partitions: requeue")
  p.add_argument("--signal_s", type=int, default=300, help="SIGTERM this early (0: none)")
  p.add_argument("--num_steps", type=int, default=None, help="train.num_steps (for --requeue)")
  p.add_argument("--done_path", default=None, help="default: <workdir>/eval/step_<N>/summary.json")
  p.add_argument("--env", action="append", default=[], help="KEY=VALUE for every task")
  p.add_argument("--script", default=None, help="where to write it (default: <job_name>.sbatch)")
  p.add_argument("--dry_run", action="store_true", help="print script and command, submit none")
  a, unknown = p.parse_known_args(argv[:cut])
  bad = [u for u in unknown if not u.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)}")
  a.extra = unknown + argv[cut + 1:]
  steps = [x.partition("=")[2] for x in a.extra if x.startswith("--config.train.num_steps=")]
  if a.num_steps is None and steps and steps[-1].isdigit():
    a.num_steps = int(steps[-1])
  return a


def main(argv=None) -> int:
  """Builds the script; prints it (--dry_run) or writes and submits it. The exit status."""
  a = parse_args(sys.argv[1:] if argv is None else list(argv))
  path = a.script or f"{a.job_name}.sbatch"
  try:
    script = build_script(a)
    if a.dry_run:
      print(f"# {path}\n{script}# submit:\n{shlex.join(['sbatch', path])}", flush=True)
      return 0
    with open(path, "w") as f:
      f.write(script)
    print(f"wrote {path}", flush=True)
    tpu_vm.Runner()([["sbatch", path]])
  except (tpu_vm.LaunchError, OSError) as e:
    print(f"launch/slurm.py: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
