"""hosts.py without a cluster: start-up errors and the disagreement message (the agreement
itself across real processes is in tests/training/test_multihost.py)."""

import os
import pathlib
import subprocess
import sys
import time

from tinyfaces_jax.training import hosts

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_coordinator_address_alone_is_a_clear_error(tmp_path):
  """JAX_COORDINATOR_ADDRESS without a process count or id (and no cluster to detect): the
  CLI stops at start-up naming what is missing, instead of JAX's own crash or a wait."""
  env = dict(os.environ, JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
    env.pop(k, None)
  t0 = time.time()
  p = subprocess.run([sys.executable, "-m", "tinyfaces_jax.main", "--config=configs/test.py",
                      f"--workdir={tmp_path / 'wd'}"], cwd=ROOT, env=env, text=True,
                     capture_output=True, timeout=120)
  assert p.returncode != 0
  assert ("multi-process start-up needs --num_processes, --process_id too" in p.stderr), \
      p.stderr[-3000:]
  assert time.time() - t0 < 60 and not (tmp_path / "wd").exists()


def test_disagreement_names_each_key_and_host():
  text = hosts._dict_differences([
      {"train": {"num_steps": 6, "batch_size": 8}, "seed": 0},
      {"train": {"num_steps": 4, "batch_size": 8}, "seed": 0, "extra": 1}])
  assert text == ('extra = "<missing>" (host 0), 1 (host 1); '
                  'train.num_steps = 6 (host 0), 4 (host 1)')


def test_one_process_needs_no_agreement():
  assert not hosts.is_distributed()
  assert hosts.exchange("x", "v") == ["v"]
  hosts.check_agreement({"config": {"a": 1}})
  assert hosts.host0_first("work", lambda: 3) == 3
