"""Device mesh, shardings, and host batches -> global jax.Arrays (data parallel).

One mesh axis, "data", over every device of every host, in the order of the physical
topology (`jax.experimental.mesh_utils`: the ICI torus within a slice; a hybrid ICI x DCN mesh
over the slices of a multi-slice job, so the gradient all-reduce crosses the slow network
once). A host feeds its local batch (leading dim = global batch / process_count) and
`host_to_global` assembles the global array sharded along "data"
(`jax.make_array_from_process_local_data`); parameters are replicated. Non-numeric fields
(file names) stay on the host. `DevicePrefetcher` does the host-to-device transfer of the
next batches on a background thread, off the training loop.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def ordered_devices(devices=None) -> np.ndarray:
  """The devices [N] in the order of the physical topology (see the module docstring)."""
  from jax.experimental import mesh_utils
  devices = list(jax.devices() if devices is None else devices)
  slices = sorted({getattr(d, "slice_index", 0) or 0 for d in devices})
  try:
    if len(slices) > 1:
      per_slice = len(devices) // len(slices)
      grid = mesh_utils.create_hybrid_device_mesh((per_slice,), (len(slices),), devices)
    else:
      grid = mesh_utils.create_device_mesh((len(devices),), devices)
  except (ValueError, NotImplementedError, AssertionError):  # no topology info: keep order
    grid = np.asarray(devices)
  return np.asarray(grid).reshape(-1)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh ("data",) over all devices (or the given ones) in topology order, Auto axes."""
  return Mesh(ordered_devices(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> int:
  """Returns the host-local batch size; a clear error when it does not divide evenly (every
  micro-batch of B / grad_accum_steps rows must split over the devices)."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  unit = n_dev * grad_accum_steps
  if global_batch % unit:
    ok = [b for b in range(unit, 4 * unit + 1, unit)]
    what = (f"the {n_dev} devices of the mesh" if grad_accum_steps == 1 else
            f"{grad_accum_steps} micro-batches x {n_dev} devices")
    raise ValueError(f"global batch size {global_batch} is not divisible by {what} "
                     f"(config.train.batch_size; e.g. {', '.join(map(str, ok))})")
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


class DevicePrefetcher:
  """Iterator of (global device batch, host-only fields), `size` batches ahead of the
  consumer, filled by a background thread (host input and transfers overlap the step).

  Errors of the input pipeline are re-raised by `next`; `close()` stops the thread.
  """

  _END = object()

  def __init__(self, batches: Iterable[dict], mesh: Mesh, size: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=max(size, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(iter(batches), mesh),
                                    name="tinyfaces_prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, batches: Iterator[dict], mesh: Mesh) -> None:
    try:
      for b in batches:
        dev, host = split_host_fields(b)
        if not self._put((host_to_global(dev, mesh), host)):
          return
    except BaseException as e:  # handed to the consumer
      self._put(e)
      return
    self._put(self._END)

  def __iter__(self) -> "DevicePrefetcher":
    return self

  def __next__(self) -> tuple:
    item: Optional[object] = self._queue.get()
    if item is self._END:
      self._queue.put(item)
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while True:
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
