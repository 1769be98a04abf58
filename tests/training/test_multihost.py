"""Real multi-process runs: 2 processes x 4 CPU devices on 127.0.0.1 with gloo collectives,
each `tests/training/multihost_worker.py` (or the real CLI) started as its own OS process.

  python -m pytest -m multihost          (about 4 minutes on 2 cores)

Covered: an uninterrupted 2-host run on a fresh shared data_dir (the embedded TFDS dataset is
built once, by host 0, while host 1 waits); SIGTERM at different steps on the two hosts (both
save the same agreed step and exit 0; the resumed run's parameters equal the uninterrupted
run's); SIGTERM during an evaluation (honoured between eval batches, the step saved);
SIGTERM during the train step's compile (abandoned, both exit 0 within a second); a workdir
that is not shared and a config that differs (both hosts stop within seconds naming it,
through `python -m tinyfaces_jax.main --coordinator_address ...`).
Every process has a hard timeout (faulthandler in the worker dumps its stacks; the test kills
what is left and shows its output), so a hang fails in minutes, never blocks CI.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.multihost

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "training" / "multihost_worker.py"
TIMEOUT = 300.0   # per process; a normal run here takes 60-110 s


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env() -> dict:
  """The parent's environment with 4 CPU devices per process and no GPU."""
  e = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4", TF_CPP_MIN_LOG_LEVEL="2",
           CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
  e.pop("XLA_FLAGS", None)   # conftest's 8 forced devices: the workers set 4 each
  return e


def run_processes(commands: list, timeout: float = TIMEOUT) -> list:
  """Starts every command at once; -> [(returncode, output, seconds)] in order. A process
  still running after `timeout` s is killed and fails the test with every output."""
  t0 = time.time()
  procs = [subprocess.Popen(c, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  out = []
  for p in procs:
    try:
      text, _ = p.communicate(timeout=max(1.0, timeout - (time.time() - t0)))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      texts = [q.communicate()[0] for q in procs]
      pytest.fail(f"process hung (> {timeout:.0f} s); outputs:\n"
                  + "\n".join(f"--- process {i}\n{t[-6000:]}" for i, t in enumerate(texts)))
    out.append((p.returncode, text, time.time() - t0))
  return out


def workers(tmp, name: str, data_dir, **flags) -> list:
  """Runs the 2 worker processes of one run -> [(result dict, output, seconds)] per host;
  flags: {flag: value} for both, or {flag: (host 0 value, host 1 value)}."""
  port = free_port()
  cmds = []
  for i in range(2):
    cmd = [sys.executable, str(WORKER), f"--process_id={i}", "--num_processes=2",
           f"--port={port}", f"--workdir={tmp / name}", f"--data_dir={data_dir}",
           f"--result={tmp / f'{name}_{i}.json'}", f"--timeout={TIMEOUT - 20}"]
    for k, v in flags.items():
      cmd.append(f"--{k}={v[i] if isinstance(v, tuple) else v}")
    cmds.append(cmd)
  results = []
  for i, (rc, text, seconds) in enumerate(run_processes(cmds)):
    print(f"[{name}] host {i}: exit {rc} after {seconds:.0f} s")
    assert rc == 0, f"{name} host {i} exited {rc}:\n{text[-8000:]}"
    results.append((json.loads((tmp / f"{name}_{i}.json").read_text()), text, seconds))
  return results


def params(tmp, name: str, host: int) -> list:
  with np.load(tmp / f"{name}_{host}.json.npz") as z:
    return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]


def checkpoints(tmp, name: str) -> list:
  folder = tmp / name / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def uninterrupted(tmp):
  """6 steps, checkpoints every 2, on a data_dir neither host has seen."""
  return workers(tmp, "full", tmp / "tfds_fresh", steps=6, checkpoint_every=2)


def test_uninterrupted_two_hosts_and_dataset_built_once(tmp, uninterrupted):
  (r0, out0, _), (r1, out1, _) = uninterrupted
  assert r0["step"] == r1["step"] == 6 and not r0["preempted"] and not r1["preempted"]
  assert checkpoints(tmp, "full") == [2, 4, 6]
  # The final evaluation: every host predicts its share, host 0 scores all 8 images.
  assert [e["step"] for e in r0["evals"]] == [e["step"] for e in r1["evals"]] == [6]
  assert r0["evals"][0]["num_images"] == 8 and set(r0["evals"][0]["scalars"]) == {
      "wider/ap_easy", "wider/ap_medium", "wider/ap_hard"}
  builds = (out0 + out1).count("building the embedded dataset")
  assert builds == 1, f"the dataset was built {builds} times"
  assert "building the embedded dataset" in out0 and "FileExistsError" not in out0 + out1
  for a, b in zip(params(tmp, "full", 0), params(tmp, "full", 1)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_at_different_steps_then_resume_equals_uninterrupted(tmp, uninterrupted):
  """Host 0 gets SIGTERM after step 2, host 1 after step 3: JAX's preemption sync point
  makes both save the same step and exit 0; rerunning finishes the 6 steps with the
  uninterrupted run's parameters."""
  data_dir = tmp / "tfds_fresh"
  (p0, out0, s0), (p1, _, s1) = workers(tmp, "preempt", data_dir, steps=6, checkpoint_every=2,
                                        kill_at=(2, 3))
  assert p0["preempted"] and p1["preempted"], out0[-3000:]
  assert p0["step"] == p1["step"]
  saved = p0["step"]
  print(f"host 0 SIGTERM after step 2, host 1 after step 3: both saved step {saved}")
  assert 2 <= saved <= 4 and checkpoints(tmp, "preempt")[-1] == saved
  assert f"preemption: every host saved step {saved}" in out0
  (r0, _, _), (r1, _, _) = workers(tmp, "preempt", data_dir, steps=6, checkpoint_every=2)
  assert r0["step"] == r1["step"] == 6 and not r0["preempted"]
  for a, b in zip(params(tmp, "preempt", 0), params(tmp, "full", 0)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_sigterm_during_evaluation_saves_and_stops(tmp, uninterrupted):
  """SIGTERM on host 0 right after step 2 with an evaluation due at step 2: the evaluation
  stops between batches, every host saves step 2 and exits 0."""
  (p0, out0, _), (p1, _, _) = workers(tmp, "eval_preempt", tmp / "tfds_fresh", steps=6,
                                      checkpoint_every=100, eval_every=2, kill_at=(2, 0),
                                      kill_sleep=0)
  assert p0["preempted"] and p1["preempted"] and p0["step"] == p1["step"] == 2, out0[-3000:]
  assert checkpoints(tmp, "eval_preempt") == [2]
  assert "preemption during evaluation: saved step 2" in out0
  # Only the evaluation at step 0 (eval_every runs one before training) finished.
  assert [e["step"] for e in p0["evals"]] == [e["step"] for e in p1["evals"]] == [0]


def test_sigterm_during_the_compile_stops_within_seconds(tmp, uninterrupted):
  """SIGTERM on host 0 one second into the train step's compile (a fresh workdir, so a cold
  compilation cache): both hosts abandon the compile, save nothing (there is no step yet)
  and exit 0 within seconds instead of waiting for the compile."""
  (p0, out0, _), (p1, out1, _) = workers(tmp, "compile_preempt", tmp / "tfds_fresh",
                                         steps=6, kill_in_compile=(1.0, 0))
  assert p0["preempted"] and p1["preempted"] and p0["step"] == p1["step"] == 0, out0[-3000:]
  assert "SIGTERM during the compile" in out0   # host 0 logs for the run
  assert all("leaving 1 abandoned call(s) behind" in o for o in (out0, out1))
  assert "compiled in" not in out0 + out1
  assert not (tmp / "compile_preempt" / "checkpoints").exists() or \
      checkpoints(tmp, "compile_preempt") == []
  print(f"SIGTERM 1 s into the compile: host 0 returned {p0['after_sigterm_s']:.1f} s after "
        f"it (runs took {p0['seconds']:.0f} / {p1['seconds']:.0f} s)")
  assert p0["after_sigterm_s"] < 10


def test_workdir_not_shared_fails_fast_naming_it(tmp, uninterrupted):
  """Each host given its own workdir (what a local path on a pod gives): both processes of
  the real CLI stop within 30 s of start-up with a message saying the workdir is not shared."""
  port = free_port()
  cmds = [[sys.executable, "-m", "tinyfaces_jax.main", "--config=configs/test.py",
           f"--config.data.data_dir={tmp / 'tfds_fresh'}", f"--workdir={tmp / f'own_{i}'}",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"] for i in range(2)]
  results = run_processes(cmds, timeout=120)
  for i, (rc, text, seconds) in enumerate(results):
    print(f"host {i}: exit {rc} after {seconds:.0f} s")
    assert rc != 0, text[-4000:]
    assert "not shared" in text, text[-4000:]
  starts = [next(line for line in text.splitlines() if "not shared" in line)
            for _, text, _ in results]
  print("\n".join(starts))
  assert max(s for _, _, s in results) < 30 + 25, "slower than 30 s after start-up (~20 s)"


def test_config_disagreement_fails_fast_naming_the_key(tmp, uninterrupted):
  """One host given another num_steps (a stale launch script on one worker): both stop
  before anything collective with the key and both values named."""
  port = free_port()
  cmds = [[sys.executable, "-m", "tinyfaces_jax.main", "--config=configs/test.py",
           f"--config.data.data_dir={tmp / 'tfds_fresh'}", f"--workdir={tmp / 'disagree'}",
           f"--config.train.num_steps={4 + i}", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"] for i in range(2)]
  for i, (rc, text, seconds) in enumerate(run_processes(cmds, timeout=120)):
    print(f"host {i}: exit {rc} after {seconds:.0f} s")
    assert rc != 0 and "train.num_steps = 4 (host 0), 5 (host 1)" in text, text[-4000:]
    assert seconds < 55
