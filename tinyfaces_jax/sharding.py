"""Device mesh, shardings, and host batches -> global jax.Arrays (data parallel).

One mesh axis, "data", over every device of every host. A host feeds its local batch
(leading dim = global batch / process_count) and `host_to_global` assembles the global array
sharded along "data" (`jax.make_array_from_process_local_data`); parameters are replicated.
Non-numeric fields (file names) stay on the host.
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ("data",) over all devices (or the given ones), Auto axis types."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Returns the host-local batch size; a clear error when it does not divide evenly."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f"global batch size {global_batch} is not divisible by the "
                     f"{n_dev} devices of the mesh")
  return global_batch // n_proc


def split_host_fields(batch: dict) -> tuple[dict, dict]:
  """-> (numeric fields for devices, host-only fields such as strings)."""
  dev, host = {}, {}
  for k, v in batch.items():
    arr = np.asarray(v)
    (host if arr.dtype.kind in "OSU" else dev)[k] = arr
  return dev, host


def host_to_global(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch {name: [b, ...]} -> global jax.Arrays [B, ...] sharded on "data"."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def prefetch_to_mesh(batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[tuple]:
  """Yields (global device batch, host-only fields), `size` batches ahead of the consumer."""
  queue = collections.deque()

  def enqueue(n):
    for b in itertools.islice(batches, n):
      dev, host = split_host_fields(b)
      queue.append((host_to_global(dev, mesh), host))

  it = iter(batches)
  batches = it
  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
