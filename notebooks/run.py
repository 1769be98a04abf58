"""Executes the notebooks with this Python (their stored outputs are what the repository keeps).

  .venv/bin/python notebooks/run.py                      # every notebooks/*.ipynb, in place
  .venv/bin/python notebooks/run.py quickstart.ipynb     # one of them
  .venv/bin/python notebooks/run.py --out_dir=/tmp/nb    # executed copies elsewhere

Each notebook runs in a fresh IPython kernel of the interpreter running this script (a kernel
spec written to a temporary folder names `sys.executable`, so neither Jupyter nor a registered
kernel is needed), with notebooks/ as its working directory, under nbclient. A cell that
raises stops the run with the cell's error. The notebooks read their parameters from the
environment (TINYFACES_WEIGHTS, TINYFACES_SHARED, TINYFACES_DATA_DIR, TINYFACES_EVAL_IMAGES,
TINYFACES_SWEEP_DIR, ...: see each notebook's first code cell). tests/notebooks/
test_notebooks.py executes copies with `execute` (marker `notebooks`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile
import time

NOTEBOOKS = pathlib.Path(__file__).resolve().parent
KERNEL_NAME = "tinyfaces-python"


def kernel_env(base=None, **overrides) -> dict:
  """The kernel's environment: `base` (default os.environ) without a forced virtual CPU device
  count (the tests' 8 devices: the notebooks' batch sizes are for one device per host), plus
  `overrides` (None values remove the variable)."""
  env = dict(os.environ if base is None else base)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  if flags.strip():
    env["XLA_FLAGS"] = flags.strip()
  else:
    env.pop("XLA_FLAGS", None)
  for k, v in overrides.items():
    if v is None:
      env.pop(k, None)
    else:
      env[k] = str(v)
  return env


def kernel_manager(spec_dir):
  """An AsyncKernelManager whose kernel is `sys.executable -m ipykernel_launcher`: its kernel
  spec is written under `spec_dir` (only that folder is searched)."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import AsyncKernelManager
  folder = pathlib.Path(spec_dir) / "kernels" / KERNEL_NAME
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": f"Python ({sys.executable})", "language": "python"}))
  ksm = KernelSpecManager(kernel_dirs=[str(folder.parent)])
  return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=ksm)


def execute(path, *, out_path=None, timeout: int = 600, env=None, cwd=NOTEBOOKS):
  """Runs notebook `path` top to bottom in a fresh kernel; -> (executed notebook, seconds).
  Writes it to `out_path` when given (the file `path` itself is only read). Raises
  nbclient's CellExecutionError (the cell's source and traceback) when a cell fails, or
  CellTimeoutError after `timeout` seconds in one cell."""
  import nbformat
  from nbclient import NotebookClient
  nb = nbformat.read(str(path), as_version=4)
  with tempfile.TemporaryDirectory(prefix="tinyfaces_kernel_") as spec_dir:
    km = kernel_manager(spec_dir)
    client = NotebookClient(nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout,
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    t0 = time.time()
    try:
      client.execute(env=kernel_env() if env is None else env, cwd=str(cwd))
    finally:
      if km.has_kernel:
        from jupyter_core.utils import run_sync
        run_sync(km.shutdown_kernel)(now=True)
    seconds = time.time() - t0
  nb.metadata.kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
  if out_path is not None:
    nbformat.write(nb, str(out_path))
  return nb, seconds


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/*.ipynb)")
  p.add_argument("--out_dir", default=None, help="write the executed copies here instead of "
                 "in place")
  p.add_argument("--timeout", type=int, default=900, help="seconds per cell")
  args = p.parse_args(argv)
  paths = [pathlib.Path(n) if pathlib.Path(n).exists() else NOTEBOOKS / n
           for n in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
  for path in paths:
    out = pathlib.Path(args.out_dir) / path.name if args.out_dir else path
    out.parent.mkdir(parents=True, exist_ok=True)
    _, seconds = execute(path, out_path=out, timeout=args.timeout)
    print(f"{path.name}: executed in {seconds:.0f} s -> {out} ({out.stat().st_size / 1e3:.0f} kB)",
          flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
