"""Test setup: 8 virtual CPU devices (set before jax is imported) and a quiet TensorFlow.

tests/ mirrors the packages (tests/<package>/test_*.py); tests/reference/ holds the numpy
statements of the reference semantics and tests/support/ the fixtures' helpers (generated
WIDER releases, the ram:// filesystem), both imported as `tests.<name>`."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from tests.support.url_fs import ram_dir  # noqa: E402,F401  (a fixture for every test)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """Path to ../shared (data, weights, reference outputs); skips when it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"../shared not found at {SHARED}: reference data unavailable")
  return SHARED


def pytest_configure(config):
  """Identical XLA programs (the same step compiled by several train runs) compile once."""
  import tempfile
  import jax
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jax_cache_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
