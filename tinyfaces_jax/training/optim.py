"""optax chains: SGD-momentum + weight decay, warm-up + step/cosine schedules, per-branch
learning-rate multipliers and frozen parameters.

Parameters are grouped by regular expressions over their '/'-joined path (e.g.
`backbone/stage1/.*`): the first matching rule wins; `frozen` rules get zero updates (no
weight decay either); `lr_multipliers` rules scale the learning rate (HR: res3 at 0.1x of res4);
everything else is the default group. Weight decay is added to the gradient before momentum,
as torch.optim.SGD(weight_decay=...) and MatConvNet do.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimizer settings (read from the config once, in train.py).

  schedule: "step" (multiply by `decay_factor` at each step in `decay_steps`), "cosine"
    (to 0 at total_steps) or "constant"; all after a linear warm-up from 0 over warmup_steps.
  lr_multipliers: ((regex, multiplier), ...) over parameter paths.
  frozen: (regex, ...) of parameter paths that are not trained.
  """
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 5e-4
  nesterov: bool = False
  schedule: str = "step"
  warmup_steps: int = 0
  total_steps: int = 1000
  decay_steps: tuple[int, ...] = ()
  decay_factor: float = 0.1
  lr_multipliers: tuple[tuple[str, float], ...] = ()
  frozen: tuple[str, ...] = ()
  grad_clip_norm: float = 0.0

  def __post_init__(self):
    if self.schedule not in ("step", "cosine", "constant"):
      raise ValueError(f"OptimConfig.schedule must be 'step', 'cosine' or 'constant', got "
                       f"{self.schedule!r}")
    for pattern in list(self.frozen) + [p for p, _ in self.lr_multipliers]:
      re.compile(pattern)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Step -> learning rate (warm-up, then step / cosine / constant)."""
  base = cfg.learning_rate
  if cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(base, max(cfg.total_steps - cfg.warmup_steps, 1))
  elif cfg.schedule == "step":
    bounds = {int(s) - cfg.warmup_steps: cfg.decay_factor for s in cfg.decay_steps
              if s > cfg.warmup_steps}
    main = optax.piecewise_constant_schedule(base, bounds)
  else:
    main = optax.constant_schedule(base)
  if cfg.warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(0.0, base, cfg.warmup_steps)
  return optax.join_schedules([warm, main], [cfg.warmup_steps])


def param_path(path) -> str:
  """A pytree key path -> 'a/b/c'."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_labels(params: Any, cfg: OptimConfig) -> Any:
  """Pytree of group labels: 'frozen', 'mult<i>' (i-th multiplier rule) or 'default'."""
  frozen = [re.compile(p) for p in cfg.frozen]
  mults = [re.compile(p) for p, _ in cfg.lr_multipliers]

  def label(path, _):
    name = param_path(path)
    if any(r.search(name) for r in frozen):
      return "frozen"
    for i, r in enumerate(mults):
      if r.search(name):
        return f"mult{i}"
    return "default"

  return jax.tree_util.tree_map_with_path(label, params)


def _sgd(cfg: OptimConfig, multiplier: float) -> optax.GradientTransformation:
  sched = learning_rate_schedule(cfg)
  return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay),
      optax.sgd(lambda step: multiplier * sched(step), momentum=cfg.momentum or None,
                nesterov=cfg.nesterov))


def make_optimizer(cfg: OptimConfig, params: Any) -> optax.GradientTransformation:
  """The full optax chain for `params` (used only for its tree structure and paths)."""
  labels = param_labels(params, cfg)
  groups = {"default": _sgd(cfg, 1.0), "frozen": optax.set_to_zero()}
  for i, (_, mult) in enumerate(cfg.lr_multipliers):
    groups[f"mult{i}"] = _sgd(cfg, float(mult))
  used = set(jax.tree.leaves(labels))
  tx = optax.multi_transform({k: v for k, v in groups.items() if k in used}, labels)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx
