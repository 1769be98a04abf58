"""Training runs in sequence, each started from the one before: a cascade's stages
(`main --mode=cascade`; MTCNN's P-Net, then R-Net on P-Net's hard samples, then O-Net).

A config module declares its stages with `CASCADE_STAGES = ("pnet", "rnet", "onet")` and
accepts the config arguments `stage=<s>` and `previous=<workdir>` (configs/mtcnn.py). For
`--config=configs/x.py:<arg>` and `--workdir=DIR`, stage s trains in `DIR/<s>` with the config
`configs/x.py:<arg>,stage=<s>,previous=DIR/<the stage before>` plus the command line's
`--config.<path>=<value>` overrides (applied to every stage). A stage whose last checkpoint
and final evaluation are already there is skipped, so rerunning the command resumes the
sequence where it stopped (a preempted stage resumes from its checkpoint); a preemption stops
the sequence (exit 0).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import jax

from tinyfaces_jax import paths
from tinyfaces_jax.training import train


def load_config_module(path: str):
  """The config module at `path` (a configs/*.py file), imported by file path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config: no config file {path}")
  spec = importlib.util.spec_from_file_location(
      "_cascade_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def stage_configs(config_arg: str, overrides: dict, workdir) -> list:
  """`configs/x.py[:arg]` + flat overrides -> [(stage, its workdir, its config)] in order."""
  path, _, arg = config_arg.partition(":")
  module = load_config_module(path)
  stages = getattr(module, "CASCADE_STAGES", None)
  if not stages:
    raise ValueError(f"--mode=cascade: {path} declares no CASCADE_STAGES (a cascade's "
                     "config does, e.g. configs/mtcnn.py)")
  if "stage=" in arg or "previous=" in arg:
    raise ValueError(f"--mode=cascade: give the cascade's config ({path}[:embedded]) "
                     "without stage= / previous=: the command sets them per stage")
  out, previous = [], ""
  root = paths.resolve(workdir)
  for stage in stages:
    run = root / stage
    parts = [a for a in (arg, f"stage={stage}", f"previous={previous}" if previous else "")
             if a]
    config = module.get_config(",".join(parts))
    with config.unlocked():
      config.update_from_flattened_dict(dict(overrides))
    out.append((stage, run, config))
    previous = str(run)
  return out


def finished(config, workdir) -> bool:
  """Whether a run has its last step checkpointed and its final evaluation written."""
  steps = config.train.num_steps
  ckpt = paths.resolve(workdir) / "checkpoints"
  done = ckpt.is_dir() and (ckpt / str(steps)).is_dir()
  return done and (paths.resolve(workdir) / "eval" / f"step_{steps}" / "summary.json").exists()


def train_stages(config_arg: str, overrides: dict, workdir,
                 log: Callable[[str], None] = print) -> dict:
  """Trains every stage in turn (module docstring). -> dict(stages: {stage: the
  train_and_evaluate result, or "done" when skipped}, preempted: bool)."""
  results: dict = {}
  runs = stage_configs(config_arg, overrides, workdir)
  for i, (stage, run, config) in enumerate(runs):
    if finished(config, run):
      log(f"stage {i + 1}/{len(runs)} {stage}: already trained in {run}")
      results[stage] = "done"
      continue
    log(f"stage {i + 1}/{len(runs)} {stage}: training in {run}")
    r = train.train_and_evaluate(config, str(run))
    results[stage] = r
    if jax.process_index() == 0:
      log(train.main_summary(r))
    if r["preempted"]:
      log(f"preempted during stage {stage}: rerun the command to resume")
      return {"stages": results, "preempted": True}
  return {"stages": results, "preempted": False}
