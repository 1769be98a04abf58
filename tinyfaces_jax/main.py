"""Entry point: `python -m tinyfaces_jax.main --config=configs/<name>.py[:args] --workdir=DIR`.

  --mode=train (default)  train_and_evaluate: trains, resuming from the workdir's checkpoints,
                          evaluating on the configured split along the way and at the end.
  --mode=eval             evaluates the workdir's latest checkpoint (or `config.init`
                          weights) and writes WIDER predictions, APs and PR curves.
  --mode=prepare          prepares the configured TFDS dataset (once, on host 0) and exits.
  --mode=cascade          trains a cascade's stages in sequence (the config module's
                          CASCADE_STAGES, e.g. configs/mtcnn.py:embedded), each in
                          <workdir>/<stage> from the stage before (training/stages.py).
  --config.<path>=<value> overrides any config field (ml_collections).
  --workdir               a local folder or a URL (gs://bucket/run), shared by every host.
Several hosts (a Cloud TPU pod slice, multi-node GPU), the same command on each:
  --multihost             jax.distributed.initialize() with the cluster's auto-detection
                          (Cloud TPU VM, SLURM, Open MPI);
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                          explicit start-up anywhere else (also read from JAX_COORDINATOR_
                          ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); gloo collectives for CPUs.
A preempted run (SIGTERM on any host) saves the step every host agrees on and exits 0;
rerunning the command resumes.

The library is importable from a notebook: `tinyfaces_jax.training.train.train_and_evaluate(config,
workdir)` is what this calls.
"""

from __future__ import annotations

import os

# Quiet TensorFlow before anything imports it (config files are loaded at flag parsing).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder or URL (checkpoints, logs, "
                               "evals); not needed for --mode=prepare.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "prepare", "cascade"],
                          "What to run.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "jax.distributed.initialize() with the "
                               "cluster's auto-detection (Cloud TPU VM, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0's coordinator (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
flags.mark_flags_as_required(["config"])


def main(argv):
  from tinyfaces_jax import cli as cli_lib
  return cli_lib.run(_main, argv, name="tinyfaces-train")


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MODE.value != "prepare" and not _WORKDIR.value:
    raise app.UsageError("--workdir is required (a local folder or a URL such as gs://b/run)")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty
  from tinyfaces_jax.training import hosts  # imports jax: after the flags, so env settings apply
  hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                   auto=_MULTIHOST.value)
  import jax
  from tinyfaces_jax.training import train
  from tinyfaces_jax.data import pipeline
  pipeline.hide_gpus_from_tf()
  if _MODE.value == "prepare":
    builder = train.prepare_data(_CONFIG.value)
    if jax.process_index() == 0:
      print(f"dataset ready: {builder.name} in {builder.data_dir} ("
            + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items()) + ")",
            flush=True)
    return
  from tinyfaces_jax.training import checkpointing
  if _MODE.value == "eval":
    train.evaluate_only(_CONFIG.value, _WORKDIR.value)
  elif _MODE.value == "cascade":
    from tinyfaces_jax.training import stages
    flag = flags.FLAGS["config"]
    stages.train_stages(config_flags.get_config_filename(flag),
                        config_flags.get_override_values(flag), _WORKDIR.value,
                        log=train._log)
  else:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if jax.process_index() == 0:
      print(train.main_summary(result), flush=True)
  checkpointing.exit_if_work_abandoned()  # after a preemption that left a compile running


def cli() -> None:
  """Console script `tinyfaces-train`."""
  from tinyfaces_jax import cli as cli_lib
  cli_lib.run_absl(main, "tinyfaces-train")


if __name__ == "__main__":
  cli()
