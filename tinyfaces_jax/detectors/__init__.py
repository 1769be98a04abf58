"""Detector families, one package each (`detectors/<name>/`: `build(model, loss)` -> a
`base.Detector`, plus the family's model, weights and constants), looked up by module name:
`build_detector("hr", ...)` imports `tinyfaces_jax.detectors.hr` and nothing of the others.

A family's training input comes from its `recipe.py`: either a `transform(example, seed,
**options)` applied to whole images by data/pipeline.train_dataset (RetinaFace, HR), or its
own `train_dataset(builder, split, **kwargs)` returning batches of any fixed shapes (a
cascade's crops); `make_train_dataset` picks whichever the recipe defines. Its prediction is
inference.make_predict_fn's unless the Detector carries its own `make_predict` (a cascade).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable, Optional

from tinyfaces_jax import settings
from tinyfaces_jax.detectors.base import Detector


def known_families() -> list[str]:
  """The family packages under detectors/ (sorted)."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def build_detector(name: str, model: Any = None, loss: Any = None,
                   dtype: Any = None) -> Detector:
  """The detector `name` configured by the `model` and `loss` sections (mappings); `dtype`
  (e.g. jnp.bfloat16) overrides the model's compute dtype (None: the section's `dtype`,
  default float32; see `Detector.with_dtype`)."""
  if name not in known_families():
    raise settings.ConfigError(f"config.detector: unknown detector {name!r}; known: "
                               f"{known_families()}")
  family = importlib.import_module(f"{__name__}.{name}")
  det = family.build(settings.as_dict(model), settings.as_dict(loss))
  return det if dtype is None else det.with_dtype(dtype)


def _recipe(recipe: str):
  with_recipe = [f for f in known_families()
                 if importlib.util.find_spec(f"{__name__}.{f}.recipe") is not None]
  if recipe not in with_recipe:
    raise settings.ConfigError(f"config.data.recipe: unknown recipe {recipe!r}; the families "
                               f"with a training recipe: {with_recipe}")
  return importlib.import_module(f"{__name__}.{recipe}.recipe")


def make_transform(recipe: str, **options) -> Callable:
  """The training augmentation of the family `recipe` (its `recipe.transform`, TensorFlow)
  with its keyword options bound: `(example, seed [2]) -> example` for
  data/pipeline.train_dataset, e.g. make_transform("retinaface", size=840)."""
  module = _recipe(recipe)
  if not hasattr(module, "transform"):
    raise settings.ConfigError(f"config.data.recipe: {recipe!r} makes its own training "
                               "batches (recipe.train_dataset), it has no per-image transform")
  return functools.partial(module.transform, **options)


def make_train_dataset(recipe: str, builder, split: str, *, batch_size: int, size: int,
                       max_boxes: int, seed: int, start_step: int = 0,
                       shuffle_buffer: int = 1024, threads: int = 0, ram_budget_gb: float = 0.0,
                       options: Optional[dict] = None):
  """This host's training batches for the family `recipe` (a tf.data.Dataset of fixed-shape
  numpy-able dicts, `batch_size` per host, resumable at `start_step`): its recipe's own
  `train_dataset` when it defines one (called with every argument here, `options` spread
  as keywords), else data/pipeline.train_dataset with `make_transform(recipe, size=size,
  **options)` (the batch layout of that module's docstring)."""
  module = _recipe(recipe)
  common = dict(batch_size=batch_size, max_boxes=max_boxes, seed=seed, start_step=start_step,
                shuffle_buffer=shuffle_buffer, threads=threads, ram_budget_gb=ram_budget_gb)
  if hasattr(module, "train_dataset"):
    return module.train_dataset(builder, split, size=size, **common, **(options or {}))
  from tinyfaces_jax.data import pipeline
  return pipeline.train_dataset(builder, split, transform=make_transform(
      recipe, size=size, **(options or {})), **common)
