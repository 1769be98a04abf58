"""The embedded dataset's teacher landmarks: the shipped table is what the two teachers give,
the points follow each face through the paste (mirroring included), and the builder reads
them for train and val."""

import json

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the embedded dataset needs scikit-image")

from tinyfaces_jax.data.embedded import build as embedded, package_images, teacher  # noqa: E402
from tinyfaces_jax.data.wider import annotations as wa  # noqa: E402

# Clear cases on both sides of the thresholds (a rerun on another CPU may move the
# disagreement of a borderline crop such as lfw:47, 0.1499, across 0.15), all of one canvas
# size (one compile per teacher).
RERUN = ("lfw:0", "lfw:17", "lfw:50", "lfw:99")


def test_shipped_table_is_a_teacher_rerun(shared_dir):
  crops = [c for c in package_images.face_crops() if c.name in RERUN]
  assert len(crops) == 4
  got = teacher.label_crops(
      crops, str(shared_dir / "weights/retinaface/mobilenet0.25_Final.m2man.pth"),
      str(shared_dir / "weights/mtcnn"))
  with open(teacher.LANDMARKS_FILE) as f:
    shipped = json.load(f)["crops"]
  for name, g in got.items():
    s = shipped[name]
    assert g["present"] == s["present"], name
    np.testing.assert_allclose(g["points"], s["points"], atol=0.05, err_msg=name)
  assert [got[n]["present"] for n in ("lfw:0", "lfw:17")] == [True, False]


def test_table_covers_every_crop_with_points_on_the_face():
  table = teacher.crop_landmarks()
  crops = package_images.face_crops()
  assert {c.name for c in crops} <= set(table)
  present = [c for c in crops if table[c.name][1]]
  assert len(present) >= 0.9 * len(crops)
  for c in present:
    p = table[c.name][0]
    x1, y1, x2, y2 = c.box
    assert (p[:, 0] > x1).all() and (p[:, 0] < x2).all() and (p[:, 1] > y1).all() \
        and (p[:, 1] < y2).all(), c.name
    assert p[0, 0] < p[1, 0] and p[3, 0] < p[4, 0], c.name       # image-left first
    assert max(p[0, 1], p[1, 1]) < p[2, 1] < min(p[3, 1], p[4, 1]), c.name   # eyes, nose, mouth


@pytest.mark.parametrize("flip", [False, True])
def test_pasted_points_follow_the_crop(flip):
  """An LFW crop (its face box is the whole 25 x 25 patch) pasted on (100, 40, 140, 90): a
  point (x, y) lands on (100 + x 40 / 25, 40 + y 50 / 25), mirrored x -> 25 - x with the eyes
  and mouth corners swapped."""
  crop = next(c for c in package_images.face_crops() if c.name == "lfw:0")
  pts = teacher.crop_landmarks()["lfw:0"][0].astype(np.float64)
  box = (100, 40, 140, 90)
  patch_box = (0.0, 0.0, 25.0, 25.0)
  got = embedded.pasted_landmarks(crop, (25, 25), patch_box, box, flip)
  if flip:
    pts = pts[[1, 0, 2, 4, 3]]
    pts[:, 0] = 25 - pts[:, 0]
  np.testing.assert_allclose(got, np.stack([100 + pts[:, 0] * 40 / 25, 40 + pts[:, 1] * 2], 1))
  assert got[0, 0] < got[1, 0]
  absent = next(c for c in package_images.face_crops() if c.name == "lfw:17")
  assert embedded.pasted_landmarks(absent, (25, 25), patch_box, box, flip) is None


def test_release_label_files_and_builder(tmp_path):
  """The built release has RetinaFace label.txt files for train and val whose faces are the
  bbx_gt faces in order; landmarks sit inside their boxes, occluded faces have none; the TFDS
  builder reads both splits' points."""
  import tensorflow_datasets as tfds
  from tinyfaces_jax.data.wider.builder import WiderFace
  root = embedded.build_embedded_wider(tmp_path / "release", num_train=12, num_val=6)
  for split, n in (("train", 12), ("val", 6)):
    gt = wa.parse_bbx_gt(root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt")
    labels = wa.parse_retinaface_labels(root / "retinaface_gt_v1.1" / split / "label.txt")
    assert len(gt) == len(labels) == n
    present_total = 0
    for ann in gt:
      boxes, points, present = labels[ann.name]
      np.testing.assert_array_equal(boxes, ann.boxes)
      occluded = ann.attribute("occlusion") > 0
      assert not present[occluded].any()
      for b, p in zip(boxes[present], points[present]):
        assert (p[:, 0] >= b[0] - 0.1 * b[2]).all() and (p[:, 0] <= b[0] + 1.1 * b[2]).all()
        assert (p[:, 1] >= b[1] - 0.1 * b[3]).all() and (p[:, 1] <= b[1] + 1.1 * b[3]).all()
      present_total += int(present.sum())
    assert present_total > 0
  manifest = json.loads((root / embedded.MANIFEST).read_text())
  assert manifest["splits"]["val"]["faces_with_landmarks"] > 0
  builder = WiderFace(data_dir=str(tmp_path / "tfds"), eval_dir=False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(root)))
  assert builder.info.metadata["val_landmarks_file"].endswith("val/label.txt")
  for split in ("train", "validation"):
    faces = [f for ex in builder.as_dataset(split=split).as_numpy_iterator()
             for f in [ex["faces"]]]
    assert sum(int(f["landmarks_present"].sum()) for f in faces) > 0
