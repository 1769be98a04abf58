"""eval_loop.py host-side pieces: the multi-host merge of detections (with a stand-in for the
cross-host all-gather), and the eval section split into inference + loop settings."""

import numpy as np
import pytest

from tinyfaces_jax import settings
from tinyfaces_jax.training import eval_loop


def test_allgather_merges_every_hosts_detections(monkeypatch):
  """Two hosts with different images and sizes: every host ends with the union, rows intact."""
  from jax.experimental import multihost_utils
  host_a = {"0--A/a1": np.arange(10, dtype=np.float64).reshape(2, 5),
            "0--A/a2": np.zeros((0, 5))}
  host_b = {"1--B/b1": np.full((3, 5), 7.5)}

  def fake_allgather(x):
    x = np.asarray(x)
    if x.dtype == np.int64:                        # the size exchange comes first
      other = eval_loop.pack_detections(host_b).size
      return np.stack([x, np.asarray([other], np.int64)])
    other = eval_loop.pack_detections(host_b)
    padded = np.zeros_like(x)
    padded[:other.size] = other
    return np.stack([x, padded])

  monkeypatch.setattr("jax.process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  merged = eval_loop._allgather(host_a)
  assert sorted(merged) == ["0--A/a1", "0--A/a2", "1--B/b1"]
  np.testing.assert_array_equal(merged["0--A/a1"], host_a["0--A/a1"])
  assert merged["0--A/a2"].shape == (0, 5)
  np.testing.assert_array_equal(merged["1--B/b1"], host_b["1--B/b1"])


def test_eval_section_split_and_typos():
  inf, loop = eval_loop.split_eval_section({"scales": [0.5, 1.0], "flip": True,
                                            "batch_size": 0, "gt_dir": "x"})
  assert inf.scales == (0.5, 1.0) and inf.flip and loop.batch_size == 0 and loop.gt_dir == "x"
  with pytest.raises(settings.ConfigError, match=r"config.eval.flipp \(did you mean "
                                                 r"config.eval.flip\?\)"):
    eval_loop.split_eval_section({"flipp": True})
