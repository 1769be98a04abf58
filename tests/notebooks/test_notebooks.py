"""The notebooks of notebooks/: executed top to bottom with nbclient (marker `notebooks`, run by
`.ci/run` after the default set: `python -m pytest -m notebooks`), and the committed files
checked for their stored figures (default set: reads JSON only).

Execution goes through notebooks/run.py's `execute` (a kernel of this interpreter from a
kernel spec in a temporary folder, cwd notebooks/) on copies: the committed files are only
read. The kernels get a temporary TFDS folder for the embedded dataset, the first 16 embedded
val images and a temporary output folder; ../shared gives the weights, the photos and the
official WIDER files when it is there (the figures expected then); a run with
TINYFACES_SHARED pointing nowhere checks that every section says what it skips, and takes a
family from a training workdir (an untrained S3FD written here)."""

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
SHARED = ROOT.parent / "shared"
MAX_BYTES = 1_500_000

_spec = importlib.util.spec_from_file_location("notebooks_run", NOTEBOOK_DIR / "run.py")
nbrun = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nbrun)

# Image outputs per notebook: with ../shared (weights, photos, WIDER ground truth, baselines)
# and without it.
FIGURES = {
  # photo grid, embedded PR curves, the official figure of each setting | the photo grid and
  # the PR curves of the S3FD workdir
  "quickstart.ipynb": {"shared": 5, "none": 2},
  # the 3 committed sweeps, the RetinaFace test-scale sweep | the committed sweeps only
  "scale_sweep.ipynb": {"shared": 4, "none": 3},
}
TEXT = {  # what the runs without ../shared must say
  "quickstart.ipynb": ["RetinaFace: no weights", "MTCNN: no weights", "HR: no public weights",
                       "SSH: no public weights", "S3FD (s3fd_workdir", "WIDER AP easy",
                       "official ground truth, baselines", "skipped"],
  "scale_sweep.ipynb": ["skipped: no RetinaFace weights", "no sweep to read"],
}
_IMAGE_TYPES = ("image/png", "image/jpeg")


def outputs(nb):
  return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]


def figures(nb) -> int:
  return sum(1 for o in outputs(nb) if any(t in o.get("data", {}) for t in _IMAGE_TYPES))


def text(nb) -> str:
  return "".join(o.get("text", "") for o in outputs(nb))


def test_every_notebook_is_covered():
  assert sorted(FIGURES) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_hold_their_figures(name):
  """The committed files: executed in order (outputs stored), no error output, the figures of
  a run with ../shared, at most 1.5 MB, and the kernel a plain python3 one."""
  path = NOTEBOOK_DIR / name
  assert path.stat().st_size < MAX_BYTES, f"{name}: {path.stat().st_size} bytes"
  nb = json.loads(path.read_text())
  assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
    f"{name} is not executed top to bottom: python notebooks/run.py {name}"
  assert not [o for o in outputs(nb) if o["output_type"] == "error"]
  assert figures(nb) == FIGURES[name]["shared"]


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory):
  """Folders the notebook runs share: the embedded dataset's TFDS cache (built once) and an
  XLA compilation cache."""
  return {"TINYFACES_DATA_DIR": tmp_path_factory.mktemp("tfds"),
          "JAX_COMPILATION_CACHE_DIR": tmp_path_factory.mktemp("jax_cache")}


@pytest.fixture(scope="module")
def s3fd_workdir(tmp_path_factory):
  """A training workdir (checkpoint + config.json) of an untrained S3FD-MobileNet0.25 of the
  tests' size: how the notebooks take a family without public weights."""
  import jax
  from configs import s3fd_vgg16
  from tinyfaces_jax.training import checkpointing, sharding, train
  workdir = tmp_path_factory.mktemp("s3fd_workdir")
  config = s3fd_vgg16.get_config("backbone=mnet025,test")
  spec = train.RunSpec.from_config(config)
  manager = checkpointing.make_manager(workdir / "checkpoints")
  state = train.initial_state(spec, sharding.make_mesh(jax.devices()[:1]), manager)[0]
  checkpointing.save(manager, state.replace(step=state.step + 1), force=True)
  manager.wait_until_finished()
  manager.close()
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  return workdir


def run(name, tmp_path, kernel_dirs, **env):
  env = nbrun.kernel_env(**kernel_dirs, TINYFACES_EVAL_IMAGES=16,
                         TINYFACES_NOTEBOOK_OUT=tmp_path / "out", TINYFACES_SWEEP_DIR=None,
                         **env)
  committed = (NOTEBOOK_DIR / name).read_bytes()
  nb, seconds = nbrun.execute(NOTEBOOK_DIR / name, out_path=tmp_path / name, timeout=300, env=env)
  assert (NOTEBOOK_DIR / name).read_bytes() == committed  # executed a copy
  print(f"{name}: {seconds:.0f} s")
  assert not [o for o in outputs(nb) if o["output_type"] == "error"]
  return nb


@pytest.mark.notebooks
def test_kernel_is_this_interpreter(tmp_path):
  import nbformat
  from nbformat.v4 import new_code_cell, new_notebook
  path = tmp_path / "probe.ipynb"
  nbformat.write(new_notebook(cells=[new_code_cell("import os, sys\nprint(sys.executable)\n"
                                                   "print(os.getcwd())")]), str(path))
  nb, _ = nbrun.execute(path, timeout=60)
  assert text(nb).split() == [sys.executable, str(NOTEBOOK_DIR)]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_shared(name, tmp_path, kernel_dirs):
  if not (SHARED / "weights").is_dir():
    pytest.skip(f"../shared not found at {SHARED}: the run without it is the other test")
  nb = run(name, tmp_path, kernel_dirs)
  assert figures(nb) == FIGURES[name]["shared"]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_without_shared(name, tmp_path, kernel_dirs, s3fd_workdir):
  """No ../shared: the package photos only, no released weights, no official WIDER files;
  the quickstart's one detector is a training workdir's."""
  nb = run(name, tmp_path, kernel_dirs, TINYFACES_SHARED=tmp_path / "no_shared",
           TINYFACES_WEIGHTS=None, TINYFACES_S3FD_WORKDIR=s3fd_workdir)
  assert figures(nb) == FIGURES[name]["none"]
  said = text(nb)
  for phrase in TEXT[name]:
    assert phrase in said, f"{name} without ../shared does not say {phrase!r}"
