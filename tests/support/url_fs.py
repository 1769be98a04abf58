"""A URL filesystem for tests: `ram://` (TensorFlow's in-memory filesystem) made an epath
scheme, so a `ram://bucket/run` workdir goes through the same URL code paths as `gs://`
(epath's TensorFlow backend, tf.summary writers) without a network. In-process only: two
processes do not share it. orbax's arrays (tensorstore) cannot be written there. Two fix-ups
make it answer as gs:// does (see `_RamBackend`): rewriting a file replaces it, and a name's
prefix is not a folder."""

import contextlib
import os
import uuid

import pytest
from etils import epath
from etils.epath import backend as backend_lib, gpath, register

SCHEME = "ram"


class _RamBackend(backend_lib._TfBackend):  # pylint: disable=protected-access
  """epath's TensorFlow backend with two fix-ups that make TensorFlow's RAM filesystem answer
  as gs:// does: opening a file for writing replaces it (RAM appends), and a folder exists
  only if it was made or holds something (RAM calls every prefix of a name a folder:
  `x/WIDER_val` "exists" next to `x/WIDER_val.zip`)."""

  @contextlib.contextmanager
  def open(self, path, mode: str):
    if "w" in mode and self.exists(path) and not self.isdir(path):
      self.gfile.remove(path)
    with super().open(path, mode) as f:
      yield f

  def _stat_is_dir(self, path):
    """True / False for a folder / file entry, None when nothing matches."""
    try:
      return self.gfile.stat(path).is_directory
    except self.tf.errors.NotFoundError:
      return None

  def isdir(self, path) -> bool:
    path = os.fspath(path).rstrip("/")
    if not self._stat_is_dir(path):
      return False
    if self.gfile.glob(path + "/*"):
      return True
    parent, name = path.rsplit("/", 1)
    return name in self.gfile.listdir(parent + "/" if parent.endswith(":/") else parent)

  def exists(self, path) -> bool:
    kind = self._stat_is_dir(os.fspath(path))
    return kind is False or (kind is True and self.isdir(path))


_RAM_BACKEND = _RamBackend()


class _RamPath(gpath.PosixGPath):
  """A `ram://` path: always on `_RAM_BACKEND` (epath picks its TF backend for any scheme)."""

  @property
  def _backend(self):
    return _RAM_BACKEND


def register_ram_scheme() -> None:
  """Makes `epath.Path("ram://...")` a URL path on TensorFlow's RAM filesystem (idempotent)."""
  prefix = f"{SCHEME}://"
  if prefix in gpath._URI_PREFIXES:
    return
  gpath._URI_PREFIXES = gpath._URI_PREFIXES + (prefix,)
  gpath._URI_SCHEMES = gpath._URI_SCHEMES | {SCHEME}
  gpath._URI_MAP_ROOT[prefix] = f"/{SCHEME}/"
  gpath._PREFIX_TO_BACKEND[SCHEME] = _RAM_BACKEND
  register._URI_PREFIXES_TO_CLS[prefix] = _RamPath


def local_entries(folder) -> list:
  """Every file and folder under `folder` on the local disk (to show nothing leaked there)."""
  out = []
  for root, dirs, files in os.walk(folder):
    out += [os.path.relpath(os.path.join(root, n), folder) for n in dirs + files]
  return sorted(out)


def copy_tree(src, dst) -> epath.Path:
  """Copies a local file, or a folder with everything under it, to `dst` (a URL such as
  `ram://bucket/x`, through epath) and returns `dst` as an epath.Path."""
  src, dst = epath.Path(src), epath.Path(dst)
  if src.is_file():
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst
  for root, _, files in os.walk(src):
    rel = os.path.relpath(root, src)
    folder = dst if rel == "." else dst / rel
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
      (folder / name).write_bytes((epath.Path(root) / name).read_bytes())
  return dst


@pytest.fixture
def ram_dir(tmp_path, monkeypatch):
  """A fresh, empty `ram://...` folder (epath.Path) for one test, whose working directory is
  an empty local folder (`tmp_path / "cwd"`, for `local_entries`); tests/conftest.py
  makes it available to every test."""
  register_ram_scheme()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  return epath.Path(f"{SCHEME}://{tmp_path.name}-{uuid.uuid4().hex[:8]}")
