"""Paths as URLs: every file the library reads or writes goes through `etils.epath`.

A workdir, data_dir, weights file or output folder may be a local path (`~` expanded, made
absolute) or a URL (`gs://bucket/run`, `s3://...`), which stays a URL: `os.path.abspath`
would turn `gs://b/r` into the local folder `$CWD/gs:/b/r` on every host. Library code takes
`resolve(x)` once at its boundary and then only uses `epath.Path` methods (`/`, `open`,
`read_text`, `write_text`, `mkdir`, `exists`, `glob`).
"""

from __future__ import annotations

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ...)."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: URLs unchanged, local paths `~`-expanded and absolute."""
  if isinstance(path, epath.Path) and is_url(path):
    return path
  s = os.fspath(path)
  if is_url(s):
    return epath.Path(s)
  return epath.Path(s).expanduser().absolute()


def local_file(path: PathLike, what: str) -> str:
  """A local filesystem path for APIs that cannot read URLs; a URL is a ValueError naming
  `what` (e.g. `config.data.manual_dir`)."""
  if is_url(path):
    raise ValueError(f"{what} must be a local path (this reader cannot use URLs), got "
                     f"{os.fspath(path)!r}")
  return os.fspath(epath.Path(os.fspath(path)).expanduser().absolute())
