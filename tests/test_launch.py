"""The multi-host launchers (launch/tpu_vm.py, launch/slurm.py): dry-run commands, the watch
loop's decisions, the runner's errors, and pyproject's pins. No gcloud, SLURM or network."""

import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import slurm  # noqa: E402
import tpu_vm  # noqa: E402

SLICE = ["--name=tf-v5e32", "--zone=us-west4-a", "--project=proj"]
NEW = SLICE + ["--accelerator_type=v5litepod-32", "--spot"]
MAIN = ["--config=configs/retinaface_mnet025.py", "--workdir=gs://bkt/runs/mnet"]
PIN = tpu_vm.jax_pin()


def dry(capsys, *argv) -> list:
  """`launch/tpu_vm.py ARGV --dry_run` in-process -> its command lines (comments dropped)."""
  assert tpu_vm.main(list(argv) + ["--dry_run"]) == 0
  return [shlex.split(l) for l in capsys.readouterr().out.splitlines() if not l.startswith("#")]


def remote(cmd: list) -> str:
  """The --command=... script of a `gcloud ... ssh` argv."""
  return next(x for x in cmd if x.startswith("--command=")).partition("=")[2]


def test_create_is_a_spot_queued_resource_then_a_poll(capsys):
  create, poll = dry(capsys, "create", *NEW)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "tf-v5e32"]
  for flag in ("--node-id=tf-v5e32", "--accelerator-type=v5litepod-32", "--spot",
               "--runtime-version=v2-alpha-tpuv5-lite", "--zone=us-west4-a", "--project=proj"):
    assert flag in create
  assert poll[4:6] == ["describe", "tf-v5e32"] and "--format=value(state.state)" in poll


@pytest.mark.parametrize("accel,runtime,devices", [
    ("v5litepod-32", "v2-alpha-tpuv5-lite", 32), ("v4-32", "tpu-ubuntu2204-base", 16),
    ("v5p-64", "v2-alpha-tpuv5", 32), ("v6e-16", "v2-alpha-tpuv6e", 16)])
def test_runtime_defaults_and_device_counts(accel, runtime, devices):
  assert tpu_vm.runtime_version(accel) == runtime
  assert tpu_vm.num_devices(accel) == devices


def test_runtime_override_and_unknown_generation(capsys):
  (create, _) = dry(capsys, "create", *SLICE, "--accelerator_type=v4-8", "--runtime_version=x")
  assert "--runtime-version=x" in create and "--spot" not in create
  with pytest.raises(tpu_vm.LaunchError, match="runtime_version"):
    tpu_vm.runtime_version("v5e-32")


def test_setup_ships_git_archive_and_installs_the_pinned_tpu_jax(capsys):
  archive, scp, ssh = dry(capsys, "setup", *SLICE)
  assert archive[:2] == ["git", "-C"] and "archive" in archive and archive[-1] == "HEAD"
  tarball = next(x for x in archive if x.startswith("--output=")).partition("=")[2]
  assert scp[3:5] == ["tpu-vm", "scp"] and scp[5] == tarball and "--worker=all" in scp
  assert ssh[3:6] == ["tpu-vm", "ssh", "tf-v5e32"] and "--worker=all" in ssh
  script = remote(ssh)
  assert f"pip install -q -r requirements.txt 'jax[tpu]=={PIN}'" in script
  assert "-m venv ~/tinyfaces_venv" in script and "tar -xzf" in script


def test_prepare_runs_on_worker_0_only_on_the_cpu(capsys):
  (ssh,) = dry(capsys, "prepare", *SLICE, "--config=configs/retinaface_mnet025.py",
               "--config.data.data_dir=gs://bkt/tfds")
  assert "--worker=0" in ssh and "--worker=all" not in ssh
  script = remote(ssh)
  assert ("python -m tinyfaces_jax.main --mode=prepare --config=configs/retinaface_mnet025.py "
          "--config.data.data_dir=gs://bkt/tfds") in script
  assert "JAX_PLATFORMS=cpu" in script and "--multihost" not in script


def test_run_cli_starts_main_on_every_worker_with_a_gs_workdir():
  """The tool itself as a subprocess: one ssh --worker=all, main's argv intact inside."""
  out = subprocess.run(
      [sys.executable, "launch/tpu_vm.py", "run", "--dry_run", *SLICE, *MAIN,
       "--accelerator_type=v5litepod-32", "--config.train.batch_size=64", "--env=FOO=a b",
       "--", "--config.eval.flip=True"],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(out) == 1
  ssh = shlex.split(out[0])
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tf-v5e32"]
  assert "--worker=all" in ssh
  script = remote(ssh)
  assert "nohup bash -c" in script and ">> ~/tinyfaces_logs/worker_$(hostname).log" in script
  assert "export TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 PYTHONUNBUFFERED=1 " \
         "JAX_PLATFORMS=tpu FOO='a b'" in script
  inner = shlex.split(script.split("nohup bash -c ", 1)[1])[0]
  assert shlex.split(inner.split(";")[0]) == [
      "python", "-m", "tinyfaces_jax.main", "--config=configs/retinaface_mnet025.py",
      "--workdir=gs://bkt/runs/mnet", "--multihost", "--config.train.batch_size=64",
      "--config.eval.flip=True"]


def test_run_refuses_a_batch_the_slice_does_not_divide(capsys):
  assert tpu_vm.main(["run", "--dry_run", *SLICE, *MAIN, "--accelerator_type=v5litepod-32",
                      "--config.train.batch_size=48"]) == 1
  assert "divide by the 32 devices" in capsys.readouterr().err


def test_unknown_flags_are_errors(capsys):
  with pytest.raises(SystemExit):
    tpu_vm.main(["run", "--dry_run", *SLICE, *MAIN, "--worker=3"])
  with pytest.raises(SystemExit):
    tpu_vm.main(["delete", "--dry_run", *SLICE, "--config.x=1"])
  assert "unrecognized arguments" in capsys.readouterr().err


def test_logs_and_delete(capsys, tmp_path):
  mkdir, scp = dry(capsys, "logs", *SLICE, f"--out_dir={tmp_path}")
  assert mkdir == ["mkdir", "-p", str(tmp_path)] and not any(tmp_path.iterdir())
  assert scp[5:7] == ["tf-v5e32:tinyfaces_logs/worker_*.log", f"{tmp_path}/"]
  assert "--worker=all" in scp
  (tail,) = dry(capsys, "logs", *SLICE, "--tail=30")
  assert "tail -n 30 ~/tinyfaces_logs/worker_$(hostname).log" in remote(tail)
  (delete,) = dry(capsys, "delete", *SLICE)
  assert delete[3:6] == ["queued-resources", "delete", "tf-v5e32"] and "--force" in delete


def _verbs(cmds: list) -> list:
  """A short name per command: 'qr create', 'scp', 'ssh all', 'git', ..."""
  out = []
  for c in cmds:
    if c[0] != "gcloud" or c[1] == "storage":
      out.append(" ".join(c[:2]) if c[0] == "gcloud" else c[0])
    elif c[3] == "queued-resources":
      out.append(f"qr {c[4]}")
    else:
      w = [x for x in c if x.startswith("--worker=")]
      out.append(c[4] + (f" {w[0][9:]}" if w and c[4] == "ssh" else ""))
  return out


def test_watch_dry_run_polls_then_resubmits_in_order(capsys):
  cmds = dry(capsys, "watch", *NEW, *MAIN, "--config.train.num_steps=500")
  assert cmds[0] == ["gcloud", "storage", "ls", "gs://bkt/runs/mnet/eval/step_500/summary.json"]
  assert _verbs(cmds) == ["gcloud storage", "qr describe", "describe", "ssh 0",  # the poll
                          "qr delete", "qr create", "qr describe", "git", "scp", "ssh all",
                          "ssh all"]
  assert "--spot" in cmds[5] and "--multihost" in remote(cmds[-1])


def test_watch_needs_to_know_when_the_run_is_finished(capsys):
  assert tpu_vm.main(["watch", "--dry_run", *NEW, *MAIN]) == 1
  assert "--num_steps" in capsys.readouterr().err
  assert tpu_vm.main(["watch", "--dry_run", *NEW, MAIN[0], "--workdir=/local",
                      "--num_steps=5"]) == 1
  assert "gs://" in capsys.readouterr().err


def actions(polls, max_restarts=3) -> list:
  return [a for a, _ in tpu_vm.plan_watch(polls, max_restarts)]


def test_watch_decisions():
  assert actions([("ACTIVE", "running", False), ("PREEMPTED", "unknown", False),
                  ("PROVISIONING", "unknown", False), ("ACTIVE", "absent", False),
                  ("ACTIVE", "running", False), ("ACTIVE", "0", True),
                  ("ACTIVE", "running", False)]) == [
      "wait", "recreate", "wait", "rerun", "wait", "stop"]
  assert actions([("SUSPENDED", "unknown", False), ("MISSING", "unknown", False)]) == [
      "recreate", "recreate"]
  assert actions([("ACTIVE", "lost", False), ("ACTIVE", "0", False)]) == ["rerun", "rerun"]
  assert actions([("ACTIVE", "1", False)]) == ["fail"]
  assert actions([("PREEMPTED", "unknown", False)] * 5, max_restarts=2) == [
      "recreate", "recreate", "give_up"]


def test_plan_watch_polls_no_further_than_the_stop():
  def polls():
    yield "ACTIVE", "0", True
    raise AssertionError("polled after the stop")
  assert actions(polls()) == ["stop"]


class FakeRunner(tpu_vm.Runner):
  """Records commands instead of running them; `query` answers from scripted states."""

  def __init__(self, states, statuses=("running",)):
    super().__init__(dry_run=False)
    self.states, self.statuses, self.ran = list(states), list(statuses), []

  def __call__(self, cmds):
    self.ran += cmds

  def query(self, cmd):
    if cmd[1] == "storage":
      return (0 if self.states[0] == "DONE" else 1), "", ""
    if cmd[4] == "ssh":
      return 0, self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0], ""
    if cmd[3] == "tpu-vm":
      return 0, "READY", ""
    state = self.states.pop(0)
    return (1, "", "NOT_FOUND") if state == "MISSING" else (0, state, "")


def test_watch_loop_recreates_a_preempted_slice_then_stops_when_done(capsys):
  run = FakeRunner(["ACTIVE", "SUSPENDED", "SUSPENDED", "PROVISIONING", "ACTIVE", "DONE"])
  a = tpu_vm.parse_args(["watch", *NEW, *MAIN, "--num_steps=9", "--poll_s=0"])
  assert tpu_vm.watch(a, run) == 0
  assert _verbs(run.ran) == ["qr delete", "qr create", "git", "scp", "ssh all", "ssh all"]
  out = capsys.readouterr().out
  assert "SUSPENDED, training unknown -> recreate" in out and "PROVISIONING" in out
  assert "finished: gs://bkt/runs/mnet/eval/step_9/summary.json exists" in out


def test_watch_loop_sets_up_a_fresh_node_and_stops_on_a_failed_training(capsys):
  a = tpu_vm.parse_args(["watch", *NEW, *MAIN, "--num_steps=9", "--poll_s=0"])
  run = FakeRunner(["ACTIVE", "ACTIVE", "DONE"], statuses=["absent", "running"])
  assert tpu_vm.watch(a, run) == 0
  assert _verbs(run.ran) == ["git", "scp", "ssh all", "ssh all"]
  run = FakeRunner(["ACTIVE"], statuses=["2"])
  assert tpu_vm.watch(a, run) == 1 and run.ran == []
  assert "training exited with 2" in capsys.readouterr().err


def test_runner_names_the_failing_command():
  with pytest.raises(tpu_vm.LaunchError, match=r"exit 3.*raise SystemExit\(3\)"):
    tpu_vm.Runner()([[sys.executable, "-c", "raise SystemExit(3)"]])
  with pytest.raises(tpu_vm.LaunchError, match="no-such-gcloud"):
    tpu_vm.Runner()([["no-such-gcloud", "compute"]])


SLURM = ["--config=configs/retinaface_r50.py", "--workdir=gs://bkt/runs/r50", "--nodes=4",
         "--gpus_per_node=8", "--config.train.batch_size=64"]


def test_slurm_dry_run_script(capsys):
  assert slurm.main(SLURM + ["--prepare", "--requeue", "--num_steps=100", "--time=4:00:00",
                             "--partition=gpu", "--dry_run"]) == 0
  out = capsys.readouterr().out
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --cpus-per-task=16", "#SBATCH --time=4:00:00", "#SBATCH --requeue",
               "#SBATCH --signal=TERM@300", "#SBATCH --job-name=tinyfaces",
               "#SBATCH --partition=gpu", "#SBATCH --output=slurm-%x-%j.out"):
    assert f"\n{line}\n" in out
  assert f"jax[cuda12]=={PIN}" in out and "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in out
  assert ("srun --nodes=1 --ntasks=1 --cpus-per-task=16 python -m tinyfaces_jax.main "
          "--mode=prepare --config=configs/retinaface_r50.py") in out
  assert ("python -m tinyfaces_jax.main --config=configs/retinaface_r50.py "
          "--workdir=gs://bkt/runs/r50 --multihost --config.train.batch_size=64\n") in out
  assert "gs://bkt/runs/r50/eval/step_100/summary.json" in out and "scontrol requeue" in out
  assert out.rstrip().endswith("sbatch tinyfaces.sbatch")
  assert out.index("--mode=prepare") < out.index("srun --kill-on-bad-exit=1")


def test_slurm_without_requeue_and_a_bad_batch(capsys):
  script = slurm.build_script(slurm.parse_args(SLURM + ["--signal_s=0"]))
  assert "#SBATCH --requeue" not in script and "#SBATCH --signal" not in script
  assert "--mode=prepare" not in script and "scontrol" not in script
  assert slurm.main(SLURM[:-1] + ["--config.train.batch_size=12", "--dry_run"]) == 1
  assert "divide by the 32 GPUs" in capsys.readouterr().err


def test_slurm_writes_and_submits_the_script(tmp_path, monkeypatch):
  (tmp_path / "sbatch").write_text("#!/bin/sh\necho submitted \"$1\" > \"$1.submitted\"\n")
  (tmp_path / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  path = tmp_path / "job.sbatch"
  assert slurm.main(SLURM + [f"--script={path}"]) == 0
  assert path.read_text().startswith("#!/bin/bash\n#SBATCH --job-name=tinyfaces\n")
  assert (tmp_path / "job.sbatch.submitted").exists()


def test_pyproject_pins_are_requirements_pins():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert project["project"]["dynamic"] == ["dependencies"]
  assert project["tool"]["setuptools"]["dynamic"]["dependencies"] == {
      "file": ["requirements.txt"]}
  extras = project["project"]["optional-dependencies"]
  assert extras["tpu"] == [f"jax[tpu]=={PIN}"] and extras["cuda12"] == [f"jax[cuda12]=={PIN}"]
  dev = [l for l in (ROOT / "requirements-dev.txt").read_text().splitlines()
         if l and not l.startswith(("#", "-r"))]
  assert extras["dev"] == dev
  assert project["tool"]["pytest"]["ini_options"]["addopts"] == (
      "-m 'not slow and not multihost and not notebooks'")
  for text in ((ROOT / "requirements.txt").read_text(), (ROOT / "launch/README.md").read_text()):
    assert set(re.findall(r"jax\[\w+\]==([\w.]+)", text)) <= {PIN}  # comments name the pin
