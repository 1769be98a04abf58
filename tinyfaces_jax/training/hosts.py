"""Several processes (hosts) as one run: start-up, agreement checks, host-0-first work.

A pod slice or a multi-node GPU job runs the same command on every host. What can go wrong
there must fail with a message, never hang:
  * `initialize(...)`: `jax.distributed.initialize` from flags, the JAX_* environment or the
    cluster's own (Cloud TPU, SLURM, Open MPI auto-detection), with gloo collectives for CPU
    devices; a missing piece is one clear error.
  * `exchange(name, value)`: every host's string value, through the coordination service's
    key-value store with a timeout (a host that never arrives is named).
  * `check_agreement(items)`: every host compares what it sees (config, devices per host,
    checkpoint steps in the workdir, ...) and, on a difference, every host raises the same
    `HostsDisagree` naming the item and each host's value, within seconds.
  * `check_shared_folder(folder)`: host 0 writes a token file; every other host must read it
    (a workdir that is not shared makes resume hang in orbax otherwise).
  * `host0_first(name, fn)`: host 0 runs `fn` (e.g. preparing a TFDS dataset) while the others
    wait; then the others run it (a no-op when the result is already on shared storage).
  * `preemption_notice()`: whether any host has received a preemption notice (SIGTERM caught by
    JAX's own notifier), for the places where no training step follows soon (compiles, eval).

On one process without `jax.distributed` all of these are local no-ops.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Callable, Optional, Sequence, TypeVar

import jax
import numpy as np

from tinyfaces_jax import paths

T = TypeVar("T")
# The key JAX's preemption sync manager (xla/tsl preemption_sync_manager.cc) sets in the
# coordination service when any task's notifier catches SIGTERM.
_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"
_PREFIX = "tinyfaces_jax"
_sequence = [0]


class HostsDisagree(RuntimeError):
  """The hosts of one run see different things (config, devices, workdir contents)."""


def _client():
  from jax._src import distributed
  return distributed.global_state.client


def is_distributed() -> bool:
  """True once `jax.distributed.initialize` has connected this process to a coordinator."""
  return _client() is not None


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, auto: bool = False) -> bool:
  """Starts multi-process JAX when asked to; -> whether it did.

  Asked to: `auto` (a cluster JAX detects: Cloud TPU VM, SLURM, Open MPI), or any of the
  arguments, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID in the environment.
  Without a cluster to detect, the coordinator (host:port of process 0), the process count
  and this process's id must all be given. CPU devices use gloo collectives. Call it before
  anything touches a JAX backend.
  """
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  given = (coordinator_address, num_processes, process_id)
  if not auto and all(v is None for v in given):
    return False
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if not auto and None in given:
    try:  # a cluster JAX detects fills in what is missing
      jax.distributed.initialize(*given)
    except ValueError:
      missing = [n for n, v in zip(("--coordinator_address", "--num_processes",
                                    "--process_id"), given) if v is None]
      raise ValueError(
          f"multi-process start-up needs {', '.join(missing)} too (or the "
          "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables), or "
          "--multihost on a cluster JAX detects (Cloud TPU VM, SLURM, Open MPI)") from None
    return True
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except ValueError as e:  # auto-detection found nothing
    raise ValueError(f"multi-process start-up failed: {e} (no cluster was detected: pass "
                     "--coordinator_address=HOST:PORT --num_processes=N --process_id=I)") from e
  return True


def _key(name: str) -> str:
  return f"{_PREFIX}/{_sequence[0]}/{name}"


def exchange(name: str, value: str, timeout_s: float = 60.0) -> list[str]:
  """Every host's `value` for the rendezvous `name`, by process index (all hosts call it).

  Raises HostsDisagree naming the host that did not arrive within `timeout_s`.
  """
  if not is_distributed():
    return [value]
  client = _client()
  _sequence[0] += 1
  key = _key(name)
  client.key_value_set(f"{key}/{jax.process_index()}", value)
  deadline = time.time() + timeout_s
  out = []
  for i in range(jax.process_count()):
    left_ms = max(int((deadline - time.time()) * 1000), 1)
    try:
      out.append(client.blocking_key_value_get(f"{key}/{i}", left_ms))
    except Exception as e:  # XlaRuntimeError DEADLINE_EXCEEDED (or the service went away)
      raise HostsDisagree(f"host {i} did not reach '{name}' within {timeout_s:.0f} s (see its "
                          f"log: it may have failed earlier or be stuck): {e}") from None
  return out


def check_agreement(items: dict, timeout_s: float = 60.0) -> None:
  """Every host must see the same value for every item (JSON-able), else HostsDisagree.

  The message names each differing item and every host's value (for dicts, the differing
  keys), so every host stops with the same explanation.
  """
  if not is_distributed():
    return
  mine = json.dumps(items, sort_keys=True, default=str)
  per_host = [json.loads(v) for v in exchange("agreement", mine, timeout_s)]
  problems = []
  for name in items:
    values = [h.get(name) for h in per_host]
    if all(v == values[0] for v in values):
      continue
    if all(isinstance(v, dict) for v in values):
      problems.append(f"{name} differs: " + _dict_differences(values))
    else:
      problems.append(f"{name} differs: " + "; ".join(
          f"host {i}: {json.dumps(v, default=str)}" for i, v in enumerate(values)))
  if problems:
    raise HostsDisagree("the hosts of this run disagree, stopping before anything collective: "
                        + " | ".join(problems))


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _dict_differences(values: Sequence[dict], limit: int = 5) -> str:
  flat = [_flatten(v) for v in values]
  keys = sorted(set().union(*flat))
  diff = [k for k in keys if any(f.get(k, "<missing>") != flat[0].get(k, "<missing>")
                                 for f in flat)]
  parts = []
  for k in diff[:limit]:
    parts.append(f"{k} = " + ", ".join(f"{json.dumps(f.get(k, '<missing>'), default=str)} "
                                       f"(host {i})" for i, f in enumerate(flat)))
  more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
  return "; ".join(parts) + more


def checkpoint_steps(folder) -> list[int]:
  """The committed step folders (`<int>/`) in an orbax checkpoint folder ([] if absent)."""
  folder = paths.resolve(folder)
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def check_shared_folder(folder, what: str = "workdir", timeout_s: float = 60.0) -> None:
  """Host 0 writes a token into `folder`; every host must read it back, else HostsDisagree
  on every host (`folder` is a local disk per host instead of shared storage)."""
  if not is_distributed() or jax.process_count() == 1:
    return
  folder = paths.resolve(folder)
  token = ""
  if jax.process_index() == 0:
    token = secrets.token_hex(8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".shared_check_{token}").write_text(token)
  token = exchange(f"{what} token", token, timeout_s)[0]
  token_file = folder / f".shared_check_{token}"
  try:
    seen = token_file.read_text() == token
  except Exception:  # FileNotFoundError, or the URL backend's own not-found error
    seen = False
  results = exchange(f"{what} shared", "1" if seen else "0", timeout_s)
  if jax.process_index() == 0:
    token_file.unlink()
  blind = [i for i, r in enumerate(results) if r != "1"]
  if blind:
    given = exchange(f"{what} path", str(folder), timeout_s)
    named = (f"{given[0]}" if len(set(given)) == 1 else
             "(" + ", ".join(f"host {i}: {g}" for i, g in enumerate(given)) + ")")
    raise HostsDisagree(
        f"the {what} {named} is not shared: host(s) {blind} cannot read the file host 0 wrote "
        f"there; every host must see the same folder (a gs:// bucket or a shared filesystem)")


def host0_first(name: str, fn: Callable[[], T], timeout_s: float = 24 * 3600.0) -> T:
  """Runs `fn` on host 0 while the other hosts wait, then on the others.

  For work whose result lands on shared storage (preparing a dataset): the others find it
  done. If host 0 fails, every host raises with host 0's error instead of waiting.
  """
  if not is_distributed() or jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    try:
      result = fn()
    except BaseException as e:
      exchange(name, f"error: {type(e).__name__}: {e}", timeout_s)
      raise
    exchange(name, "ok", timeout_s)
    return result
  status = exchange(name, "waiting", timeout_s)[0]
  if status != "ok":
    raise RuntimeError(f"host 0 failed at '{name}': {status[len('error: '):]}")
  return fn()


def preemption_notice() -> bool:
  """Whether any host of the run has received a preemption notice (JAX's SIGTERM notifier
  reports it to the coordination service within about a second). False on one process."""
  if not is_distributed():
    return False
  try:
    _client().key_value_try_get(_NOTICE_KEY)
    return True
  except Exception:  # NOT_FOUND: no notice yet
    return False


def gather_flags(flags: Sequence[bool]) -> np.ndarray:
  """Every host's `flags` -> bool [P, F] by process index (a collective: every host must
  call it the same number of times)."""
  mine = np.asarray([[bool(f) for f in flags]])
  if jax.process_count() == 1:
    return mine
  from jax.experimental import multihost_utils
  out = multihost_utils.process_allgather(mine.astype(np.int32))
  return np.asarray(out).reshape(jax.process_count(), -1).astype(bool)
