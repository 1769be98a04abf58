"""The real-photo check (evaluation/photos.py, evaluator type "photos"): the shared reference
photos and their faces, greedy matching by score at IoU >= 0.5, false positives per photo,
the drawn PNG and the evaluator's record."""

import json

import numpy as np
import pytest
from PIL import Image

from tinyfaces_jax.evaluation import evaluators, photos


@pytest.fixture(scope="module")
def reference(shared_dir):
  return photos.reference_photos(shared_dir / "reference")


def test_reference_photos_and_their_faces(reference, shared_dir):
  """t1 and multiface with the 6 faces of the released RetinaFace (t1's scaled from the
  640x480 input it ran on to the file's 1280x886 pixels), ivan with MTCNN's one face (it ran
  at the file's size), no-faces with none."""
  assert [p.key for p in reference] == ["t1", "multiface", "ivan", "no-faces"]
  t1, multi, ivan, none = reference
  assert t1.image_hw == (886, 1280) and t1.faces.shape == (6, 4)
  ref = np.load(shared_dir / "reference/retinaface_mnet025_m2man.npz")
  np.testing.assert_allclose(t1.faces, ref["t1_boxes"] * [2.0, 886 / 480, 2.0, 886 / 480])
  np.testing.assert_allclose(multi.faces, ref["multiface_boxes"])    # ran at the file's size
  mtcnn = np.load(shared_dir / "reference/mtcnn_facenet.npz")
  assert ivan.image_hw == (561, 561) and ivan.faces.shape == (1, 4)
  np.testing.assert_allclose(ivan.faces, mtcnn["ivan_boxes"])
  assert none.faces.shape == (0, 4)
  w, h = Image.open(t1.file).size
  assert (t1.faces[:, 2] <= w).all() and (t1.faces[:, 3] <= h).all()


def test_check_counts_matches_and_false_positives(reference):
  """Hand-made detections: on t1 five faces found (one of them twice: the second is a false
  positive), one face only at a score under min_score (missed, not a false positive), a box
  on no face; on multiface every face; on ivan nothing; on no-faces one box."""
  t1, multi, ivan, none = reference
  f = t1.faces
  shifted = f[0] + [0.3 * (f[0, 2] - f[0, 0]), 0, 0.3 * (f[0, 2] - f[0, 0]), 0]  # IoU ~0.54
  dets = {
      "t1": {"boxes": np.concatenate([f[:5], [shifted], [f[5]], [[0, 0, 50, 50]]]),
             "scores": np.asarray([0.9, 0.8, 0.95, 0.7, 0.6, 0.85, 0.3, 0.55])},
      "multiface": {"boxes": multi.faces, "scores": np.full(6, 0.99)},
      "ivan": {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)},
      "no-faces": {"boxes": np.asarray([[10, 10, 40, 40]]), "scores": np.asarray([0.51])}}
  r = photos.check(reference, dets, min_score=0.5, iou=0.5)
  t1_row, multi_row, ivan_row, none_row = r["photos"]
  # face 0: the exact box (0.9) wins over the shifted one (0.85), which becomes a FP
  assert (t1_row["found"], t1_row["false_positives"]) == (5, 2)
  assert t1_row["face_scores"] == [0.9, 0.8, 0.95, 0.7, 0.6, 0.0]
  assert t1_row["matched"].tolist() == [True] * 5 + [False, False, False]
  assert t1_row["false_positive_scores"] == [0.85, 0.55]       # the 0.3 box is under min_score
  assert (multi_row["found"], multi_row["false_positives"]) == (6, 0)
  assert (none_row["faces"], none_row["false_positives"]) == (0, 1)
  assert none_row["false_positive_scores"] == [0.51] and multi_row["false_positive_scores"] == []
  assert (ivan_row["faces"], ivan_row["found"], ivan_row["false_positives"]) == (1, 0, 0)
  assert r["recall"] == pytest.approx(11 / 13)
  assert (r["false_positives"], r["max_false_positives"], r["min_face_score"]) == (3, 2, 0.0)
  # the shifted box alone finds face 0 (IoU >= 0.5)
  alone = photos.check(reference, {**dets, "t1": {"boxes": [shifted], "scores": [0.9]}})
  assert alone["photos"][0]["found"] == 1


def test_evaluator_writes_its_record_and_picture(shared_dir, tmp_path):
  ev = evaluators.make_evaluators(
      {"photos": {"type": "photos", "reference_dir": str(shared_dir / "reference")}},
      None, "")[0]
  images = ev.images()
  assert images.keys == ("t1", "multiface", "ivan", "no-faces") and all(
      f.endswith(".jpg") for f in images.files)
  dets = {p.key: {"boxes": p.faces, "scores": np.ones(len(p.faces))} for p in ev.photos}
  dets["no-faces"] = {"boxes": np.asarray([[5.0, 5, 30, 30], [50, 50, 80, 80]]),
                      "scores": np.asarray([0.6, 0.75])}
  s = ev.evaluate(dets, tmp_path)
  assert s["scalars"] == {"recall": 1.0, "false_positives": 2.0, "max_false_positives": 2.0,
                          "min_face_score": 1.0}
  assert json.loads((tmp_path / "photos.json").read_text())["photos"][0]["found"] == 6
  png = Image.open(tmp_path / "photos.png")
  assert png.height == 480 and png.width > 4 * 300
  assert ev.describe(s) == ["real photos (score >= 0.5): t1 6/6 faces, 0 false positive(s); "
                            "multiface 6/6 faces, 0 false positive(s); ivan 1/1 faces, 0 false "
                            "positive(s); no-faces 0/0 faces, 2 "
                            "false positive(s) at 0.75 0.60"]


def test_missing_reference_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"photos: .*t1.jpg is missing"):
    photos.reference_photos(tmp_path)
  with pytest.raises(Exception, match="reference_dir is required"):
    evaluators.make_evaluators({"photos": {"type": "photos"}}, None, "")
