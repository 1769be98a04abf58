"""The embedded set's real-photo sources: pinned sdist members, teacher face labels, person
cutouts and the visibility bookkeeping of pasted faces."""

import io
import json
import tarfile

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the embedded dataset needs scikit-image")

from tinyfaces_jax.data.embedded import blending, package_images, sdists, teacher  # noqa: E402


def _archive(members: dict) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def test_sdist_archives_are_checked(tmp_path, monkeypatch):
  """A local archive folder without the file, or with an altered one, is a one-line error
  naming the file; nothing is extracted."""
  sdists.fetch.cache_clear()      # fetch checks once per process: forget the real cache
  monkeypatch.setattr(sdists, "fetch", sdists.fetch.__wrapped__)
  monkeypatch.setenv("TINYFACES_SDIST_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("TINYFACES_SDISTS", str(tmp_path / "archives"))
  spec = "face_recognition:tests/test_images/obama.jpg"
  with pytest.raises(FileNotFoundError, match="face_recognition-1.3.0.tar.gz"):
    sdists.fetch(spec)
  (tmp_path / "archives").mkdir()
  (tmp_path / "archives" / "face_recognition-1.3.0.tar.gz").write_bytes(
      _archive({"face_recognition-1.3.0/tests/test_images/obama.jpg": b"not obama"}))
  with pytest.raises(ValueError, match="is not the pinned"):
    sdists.fetch(spec)
  assert not (tmp_path / "cache").exists()
  with pytest.raises(KeyError, match="not a pinned sdist member"):
    sdists.fetch("opencv:samples/data/not_listed.jpg")


def test_every_member_is_fetched_and_pinned():
  paths = sdists.fetch_all()
  assert set(paths) == set(sdists.MEMBERS)
  assert set(package_images.PEOPLE_FILES) | set(package_images.NEGATIVE_FILES) <= set(paths)
  names = set(package_images.available_backgrounds())
  assert set(package_images.PEOPLE_FILES) <= names and set(package_images.NEGATIVE_FILES) <= names
  assert not set(package_images.PEOPLE_FILES) & set(package_images.NEGATIVE_FILES)


def test_photo_labels_belong_to_the_pinned_files():
  doc = json.loads(package_images.PHOTO_FACES_FILE.read_text())
  faces = package_images.photo_faces()
  for spec in package_images.PEOPLE_FILES:
    entry = doc["photos"][spec]
    assert entry["sha256"] == sdists.MEMBERS[spec]
    photo = package_images.load_photo(spec)
    h, w = photo.pixels.shape[:2]
    assert entry["size"] == [w, h]
    assert faces[spec], spec
    for x1, y1, x2, y2, score, points in faces[spec]:
      assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and score >= teacher.PHOTO_MIN_SCORE
      if points is not None:
        p = np.asarray(points)
        assert ((p[:, 0] > x1) & (p[:, 0] < x2) & (p[:, 1] > y1) & (p[:, 1] < y2)).all(), spec


def test_photo_labels_are_a_teacher_rerun(shared_dir):
  """The office group (6 faces) relabelled by the RetinaFace teacher gives the shipped boxes."""
  spec = package_images.PEOPLE_FILES[0]
  got = teacher.label_photos(
      str(shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"), [spec])[spec]
  shipped = package_images.photo_faces()[spec]
  assert len(got["faces"]) == len(shipped) == 6
  np.testing.assert_allclose(sorted(f[:4] for f in got["faces"]),
                             sorted(f[:4] for f in shipped), atol=1.0)


def test_cutout_masks_show_their_faces_and_hide_the_others():
  """Rendered with the mask `paste` uses (fitted to the whole region): every labelled face's
  inscribed ellipse is fully opaque, every other face of the photo fully transparent."""
  cutouts = package_images.person_cutouts()
  labelled = package_images.photo_faces()
  assert len(cutouts) >= 40
  assert sum(c.name.startswith(package_images.PEOPLE_FILES[1]) for c in cutouts) >= 25
  for c in cutouts:
    spec = c.name.rsplit("#", 1)[0]
    h, w = c.pixels.shape[:2]
    alpha = blending.elliptical_alpha(h, w, (w / 2, h / 2), (w / 2, h / 2),
                                      package_images.CUTOUT_FEATHER)
    boxes = ([f[:4] for f in labelled[spec]] if spec in labelled
             else package_images.REAL_FACE_BOXES[spec])
    ox, oy = c.origin
    inside = {tuple(np.round(f[:4], 3)) for f in c.faces}
    for x1, y1, x2, y2 in boxes:
      box = tuple(np.round((x1 - ox, y1 - oy, x2 - ox, y2 - oy), 3))
      ys, xs = np.mgrid[0:h, 0:w] + 0.5
      on_face = ((xs - (box[0] + box[2]) / 2) / ((box[2] - box[0]) / 2)) ** 2 + (
          (ys - (box[1] + box[3]) / 2) / ((box[3] - box[1]) / 2)) ** 2 <= 1
      if box in inside:
        assert alpha[on_face].min() > 0.99, c.name
      else:
        assert not on_face.any() or alpha[on_face].max() < 1e-6, c.name
    assert tuple(np.round(c.box, 3)) in inside


def test_coverage_is_the_mean_alpha_over_the_box():
  alpha = np.zeros((10, 20), np.float32)
  alpha[2:6, 5:15] = 0.5
  mask = (30, 40, alpha)           # the mask's top-left in the canvas
  assert blending.coverage((35, 42, 45, 46), mask) == pytest.approx(0.5)
  assert blending.coverage((25, 40, 45, 50), mask) == pytest.approx(0.5 * 40 / 200)
  assert blending.coverage((0, 0, 10, 10), mask) == 0.0
  assert blending.coverage((0, 0, 10, 10), None) == 0.0
