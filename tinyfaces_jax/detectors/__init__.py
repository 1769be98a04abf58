"""Detector families, one package each (`detectors/<name>/`: `build(model, loss)` -> a
`base.Detector`, plus the family's model, weights and constants), looked up by module name:
`build_detector("hr", ...)` imports `tinyfaces_jax.detectors.hr` and nothing of the others.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from typing import Any, Callable

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


def make_transform(recipe: str, **options) -> Callable:
  """The training augmentation of the family `recipe` (its `recipe.transform`, TensorFlow)
  with its keyword options bound: `(example, seed [2]) -> example` for
  data/pipeline.train_dataset, e.g. make_transform("retinaface", size=840)."""
  with_recipe = [f for f in known_families()
                 if importlib.util.find_spec(f"{__name__}.{f}.recipe") is not None]
  if recipe not in with_recipe:
    raise settings.ConfigError(f"config.data.recipe: unknown recipe {recipe!r}; the families "
                               f"with a training recipe: {with_recipe}")
  module = importlib.import_module(f"{__name__}.{recipe}.recipe")
  return functools.partial(module.transform, **options)
