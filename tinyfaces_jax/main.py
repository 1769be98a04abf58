"""Entry point: `python -m tinyfaces_jax.main --config=configs/<name>.py[:args] --workdir=DIR`.

  --mode=train (default)  train_and_evaluate: trains, resuming from the workdir's checkpoints,
                          evaluating on the configured split along the way and at the end.
  --mode=eval             evaluates the workdir's latest checkpoint (or `config.init`
                          weights) and writes WIDER predictions, APs and PR curves.
  --config.<path>=<value> overrides any config field (ml_collections).
  --multihost             calls jax.distributed.initialize() first (Cloud TPU pods, multi-node
                          GPU; also done when JAX_COORDINATOR_ADDRESS is set).

The library is importable from a notebook: `tinyfaces_jax.train.train_and_evaluate(config,
workdir)` is what this calls.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (checkpoints, logs, evals).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to run.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize().")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  import jax  # after flags, so platform settings from the environment apply
  if _MULTIHOST.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  from tinyfaces_jax import train
  from tinyfaces_jax.data import pipeline
  pipeline.hide_gpus_from_tf()
  if _MODE.value == "eval":
    train.evaluate_only(_CONFIG.value, _WORKDIR.value)
    return
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(train.main_summary(result), flush=True)


if __name__ == "__main__":
  app.run(main)
