"""Config sections -> small frozen dataclasses, with errors that name the typo.

The ml_collections config is read once, at the top (training/train.py, cli/detect.py); everything below it
takes these dataclasses or plain arguments. `dataclass_from(cls, values, where)` builds `cls`
from a mapping (a ConfigDict section or a dict), refusing unknown keys with the closest known
names, and turning lists into tuples so the result is hashable (usable as a jit static arg).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping


class ConfigError(ValueError):
  """A config value or key that cannot be used (the message names the config path)."""


def _tupled(v: Any) -> Any:
  if isinstance(v, (list, tuple)):
    return tuple(_tupled(x) for x in v)
  return v


def as_dict(values: Any) -> dict:
  """A ConfigDict / FrozenConfigDict / mapping / None -> plain dict (top level only)."""
  if values is None:
    return {}
  if hasattr(values, "to_dict"):
    return dict(values.to_dict())
  return dict(values)


def check_keys(values: Mapping, known, where: str) -> None:
  """Raises ConfigError for keys of `values` not in `known` (with close matches)."""
  known = sorted(known)
  unknown = sorted(set(values) - set(known))
  if not unknown:
    return
  hints = []
  for k in unknown:
    close = difflib.get_close_matches(k, known, n=1)
    hints.append(f"{where}.{k}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
  raise ConfigError(f"unknown config setting(s): {', '.join(hints)}; known in {where}: "
                    f"{', '.join(known)}")


def partition(values: Any, classes, where: str) -> list:
  """Splits one section among several dataclasses: -> [dict of `values` for each class's
  fields] (a key goes to the first class that has it); a key no class has is a ConfigError
  naming it (with the closest known key)."""
  d = as_dict(values)
  fields = [{f.name for f in dataclasses.fields(c)} for c in classes]
  check_keys(d, set().union(*fields), where)
  out, taken = [], set()
  for names in fields:
    out.append({k: v for k, v in d.items() if k in names and k not in taken})
    taken |= names
  return out


def dataclass_from(cls, values: Any, where: str, **fixed):
  """Builds the frozen dataclass `cls` from `values` (+ `fixed` overrides).

  Args:
    cls: a dataclass type.
    values: ConfigDict section, mapping or None (all defaults).
    where: the config path for error messages, e.g. "config.optim".
    fixed: values that take precedence (set by the caller, not the user).
  Raises:
    ConfigError: unknown keys, or the dataclass refusing a value.
  """
  d = as_dict(values)
  names = {f.name for f in dataclasses.fields(cls)}
  check_keys(d, names, where)
  d = {k: _tupled(v) for k, v in d.items()}
  d.update(fixed)
  try:
    return cls(**d)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: {e}") from e
