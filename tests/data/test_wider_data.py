"""WIDER FACE reader: annotation parsers (real val ground truth) and the TFDS builder (generated
release, zipped and extracted, read back and compared with the generated truth exactly)."""

import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.support import url_fs
from tests.support.wider_fixture import SETTINGS, corrupt_copy, write_wider_release
from tinyfaces_jax.data.wider import annotations as wa
from tinyfaces_jax.data.wider.builder import WiderFace

tfds.disable_progress_bar()


# ---------------------------------------------------------------- real val ground truth (shared)

@pytest.fixture(scope="module")
def real_val(shared_dir):
  gt_dir = shared_dir / "data" / "wider_eval"
  return gt_dir, wa.parse_bbx_gt(gt_dir / "wider_face_val_bbx_gt.txt")


def test_real_val_bbx_gt_counts(real_val):
  _, anns = real_val
  assert len(anns) == 3226
  assert len({a.event for a in anns}) == 61
  assert wa.count_faces(anns) == 39708
  degenerate = sum(int((~a.trainable).sum()) for a in anns)
  print(f"val faces with w <= 0 or h <= 0: {degenerate}; invalid: "
        f"{sum(int(a.invalid.sum()) for a in anns)}")
  assert degenerate == 11  # kept (evaluation needs them), flagged not trainable
  assert sum(int(a.invalid.sum()) for a in anns) == 585
  assert all(a.boxes.dtype == np.float32 and a.attributes.shape == (a.num_faces, 6) for a in anns)


def test_real_eval_settings_agree_with_bbx_gt(real_val):
  gt_dir, anns = real_val
  settings = wa.load_eval_settings(gt_dir / "ground_truth")
  assert set(settings) == {a.name for a in anns}
  counts = dict.fromkeys(SETTINGS, 0)
  for a in anns:
    s = settings[a.name]
    assert all(s[k].shape == (a.num_faces,) for k in SETTINGS)
    assert not (s["easy"] & ~s["medium"]).any() and not (s["medium"] & ~s["hard"]).any()
    assert not (s["hard"] & a.invalid).any()  # the evaluation ignores invalid faces
    for k in SETTINGS:
      counts[k] += int(s[k].sum())
  assert counts == {"easy": 7211, "medium": 13319, "hard": 31958}


def test_real_retinaface_val_labels_match_bbx_gt(real_val):
  gt_dir, anns = real_val
  labels = wa.parse_retinaface_labels(gt_dir / "wider_val_label_retinaface_format.txt")
  assert set(labels) == {a.name for a in anns}
  for a in anns:
    boxes, landmarks, present = labels[a.name]
    np.testing.assert_array_equal(boxes, a.boxes)
    assert landmarks.shape == (a.num_faces, 5, 2) and not present.any()


# ------------------------------------------------------------------------------ parser details

def test_zero_face_dummy_line_and_all_zero_face():
  anns = wa.parse_bbx_gt(["a--A/x.jpg", "0", "0 0 0 0 0 0 0 0 0 0 ", "a--A/y.jpg", "1",
                          "0 0 0 0 0 0 0 0 0 0", "b--B/z.jpg", "0", "c--C/w.jpg", "2",
                          "1 2 3 4 2 1 1 1 2 1 ", "5 6 -2 8 0 0 0 0 0 0", ""])
  assert [a.name for a in anns] == ["a--A/x.jpg", "a--A/y.jpg", "b--B/z.jpg", "c--C/w.jpg"]
  assert [a.num_faces for a in anns] == [0, 1, 0, 2]  # dummy consumed; count-1 zeros is a face
  np.testing.assert_array_equal(anns[3].boxes, [[1, 2, 3, 4], [5, 6, -2, 8]])
  np.testing.assert_array_equal(anns[3].attributes[0], [2, 1, 1, 1, 2, 1])
  np.testing.assert_array_equal(anns[3].trainable, [True, False])
  np.testing.assert_array_equal(anns[1].trainable, [False])
  assert anns[3].event == "c--C" and anns[3].invalid.tolist() == [True, False]


@pytest.mark.parametrize("lines,lineno", [
    (["e--E/a.jpg", "1", "1 2 3 4 0 0 0 0 0"], 3),            # 9 fields
    (["e--E/a.jpg", "1", "1 2 3 4 0 0 0 0 0 0 7"], 3),        # 11 fields
    (["e--E/a.jpg", "1", "1 2 x 4 0 0 0 0 0 0"], 3),          # non-numeric
    (["e--E/a.jpg", "1", "1 2 3 4 0.5 0 0 0 0 0"], 3),        # non-integer attribute
    (["e--E/a.jpg", "1", "1 2 3 4 0 0 0 3 0 0"], 3),          # invalid=3
    (["e--E/a.jpg", "two", "1 2 3 4 0 0 0 0 0 0"], 2),        # count not an integer
    (["e--E/a.jpg", "-1", "1 2 3 4 0 0 0 0 0 0"], 2),         # negative count
    (["e--E/a.jpg", "1", "1 2 3 4 0 0 0 0 0 0", "e--E/b.jpg", "3", "1 2 3 4 0 0 0 0 0 0"], 5),
    (["e--E/a.jpg", "2", "1 2 3 4 0 0 0 0 0 0", "e--E/b.jpg", "1", "1 1 1 1 0 0 0 0 0 0"], 4),
    (["e--E/a.jpg"], 2),                                      # count missing at EOF
    (["e--E/a.jpg", "0", "", "not_an_image", "1"], 4),
])
def test_malformed_bbx_gt_names_file_and_line(tmp_path, lines, lineno):
  path = tmp_path / "wider_face_val_bbx_gt.txt"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}:{lineno}:")):
    wa.parse_bbx_gt(path)


def test_retinaface_labels_and_errors(tmp_path):
  lm = " ".join(["10.5 11.0 0.0"] * 5)
  labels = wa.parse_retinaface_labels(["# e--E/a.jpg", f"1 2 3 4 {lm} 0.9",
                                       "5 6 7 8 " + " ".join(["-1.0"] * 15) + " 0.2",
                                       "# e--E/b.jpg", "# e--E/c.jpg", "9 9 2 2"])
  boxes, landmarks, present = labels["e--E/a.jpg"]
  np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
  np.testing.assert_array_equal(landmarks[0], [[10.5, 11.0]] * 5)
  np.testing.assert_array_equal(present, [True, False])
  assert labels["e--E/b.jpg"][0].shape == (0, 4) and labels["e--E/b.jpg"][1].shape == (0, 5, 2)
  assert not labels["e--E/c.jpg"][2].any()
  for bad, lineno in ((["1 2 3 4"], 1), (["# e--E/a.jpg", "1 2 3 4 5"], 2),
                      (["# e--E/a.jpg", "1 2 3 x"], 2), (["# e--E/a.jpg", "# e--E/a.jpg"], 2)):
    path = tmp_path / "label.txt"
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:{lineno}:")):
      wa.parse_retinaface_labels(path)


def test_filelist(tmp_path):
  assert wa.parse_filelist(["e--E/a.jpg", "", "f--F/b.jpg "]) == ["e--E/a.jpg", "f--F/b.jpg"]
  path = tmp_path / "wider_face_test_filelist.txt"
  path.write_text("e--E/a.jpg\ne--E/a.jpg\n")
  with pytest.raises(ValueError, match=re.escape(f"{path}:2:")):
    wa.parse_filelist(path)


# ------------------------------------------------------------------- TFDS builder (generated)

@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """Both layouts written and built once: {variant: (manual_dir, builder, truth)}."""
  base = tmp_path_factory.mktemp("wider")
  out = {}
  for variant in ("extracted", "zipped"):
    manual = base / variant
    truth = write_wider_release(manual, zipped=(variant == "zipped"))
    builder = WiderFace(data_dir=base / f"data_{variant}")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    out[variant] = (manual, builder, truth)
  return out


def _read(builder, split):
  ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  return {ex["image/filename"].decode(): ex for ex in tfds.as_numpy(ds)}


@pytest.mark.parametrize("variant", ["extracted", "zipped"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_built_dataset_matches_truth(release, variant, split):
  _, builder, truth = release[variant]
  got = _read(builder, split)
  assert sorted(got) == sorted(im.name for im in truth[split])
  for im in truth[split]:
    ex, faces = got[im.name], got[im.name]["faces"]
    assert ex["image"] == im.jpeg and ex["image/event"].decode() == im.event
    b = im.boxes
    np.testing.assert_array_equal(faces["bbox"], np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1))
    assert faces["bbox"].dtype == np.float32
    for j, key in enumerate(wa.ATTRIBUTE_NAMES):
      np.testing.assert_array_equal(faces[key], im.attributes[:, j].astype(faces[key].dtype))
    np.testing.assert_array_equal(faces["trainable"], (b[:, 2] > 0) & (b[:, 3] > 0))
    np.testing.assert_array_equal(faces["landmarks"], im.landmarks)
    np.testing.assert_array_equal(faces["landmarks_present"], im.landmarks_present)
    for key in SETTINGS:
      np.testing.assert_array_equal(faces[key], im.settings[key])
  if split != "test":
    assert got[truth[split][0].name]["faces"]["bbox"].shape == (0, 4)  # the 0-face image
    degenerate = got[truth[split][2].name]["faces"]  # w = 0 and w = -2 boxes, kept
    assert degenerate["bbox"].shape[0] == 6 and (~degenerate["trainable"]).sum() == 3
  else:
    assert all(ex["faces"]["bbox"].shape == (0, 4) for ex in got.values())


def test_landmarks_settings_present_and_metadata(release):
  manual, builder, truth = release["zipped"]
  assert sum(im.landmarks_present.sum() for im in truth["train"]) > 0
  assert sum(im.settings["hard"].sum() for im in truth["validation"]) > 0
  md = builder.info.metadata
  assert md["landmarks_file"].endswith("train/label.txt") and md["eval_settings_dir"]
  # faces of the image missing from label.txt have no landmark entry
  assert md["faces_without_label"] == truth["train"][-1].boxes.shape[0]


def test_tfds_load_decodes_images(release):
  manual, builder, truth = release["extracted"]
  ds = tfds.load("tinyfaces_wider_face", split="validation", data_dir=builder.data_dir_root)
  shapes = {ex["image/filename"].decode(): ex["image"].shape for ex in tfds.as_numpy(ds)}
  assert shapes == {im.name: (*im.shape, 3) for im in truth["validation"]}  # grayscale -> 3


def _build(manual, data_dir, **kwargs):
  builder = WiderFace(data_dir=data_dir, splits=("validation",), **kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder


def test_without_extras(release, tmp_path):
  manual, _, truth = release["extracted"]
  builder = _build(manual, tmp_path / "data", eval_dir=False)
  got = _read(builder, "validation")
  assert not any(ex["faces"][k].any() for ex in got.values() for k in SETTINGS)
  assert builder.info.metadata["eval_settings_dir"] == ""


@pytest.mark.parametrize("damage,message", [
    ({"remove": True}, "not found"), ({}, "corrupt or undecodable image")])
def test_missing_or_corrupt_image_names_file(release, tmp_path, damage, message):
  manual, _, truth = release["extracted"]
  name = truth["validation"][4].name
  target = corrupt_copy(manual, tmp_path / "rel", image=name, **damage)
  with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
    _build(tmp_path / "rel", tmp_path / "data")
  assert str(target) in str(err.value)


def test_malformed_annotation_in_release_names_file_and_line(release, tmp_path):
  manual, _, _ = release["extracted"]
  corrupt_copy(manual, tmp_path / "rel", bbx_lines={6: "1 2 3 4 0 0 0 0 0"})
  gt = tmp_path / "rel" / "wider_face_split" / "wider_face_val_bbx_gt.txt"
  with pytest.raises(ValueError, match=re.escape(f"{gt}:6:")):
    _build(tmp_path / "rel", tmp_path / "data")


def test_missing_archive_says_what_to_put_where(tmp_path):
  truth = write_wider_release(tmp_path / "rel", labels=False, eval_mats=False)
  shutil.rmtree(tmp_path / "rel" / "WIDER_val")
  with pytest.raises(FileNotFoundError, match=r"WIDER_val\.zip \(or WIDER_val/images/\)"):
    _build(tmp_path / "rel", tmp_path / "data")  # splits=("validation",): required
  # default: every split that is there (here with train extracted one folder deeper)
  shutil.move(tmp_path / "rel" / "WIDER_train", tmp_path / "WIDER_train")
  (tmp_path / "rel" / "WIDER_train").mkdir()
  shutil.move(tmp_path / "WIDER_train", tmp_path / "rel" / "WIDER_train" / "WIDER_train")
  builder = WiderFace(data_dir=tmp_path / "data2")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=tmp_path / "rel"))
  assert set(builder.info.splits) == {"train", "test"}
  assert builder.info.splits["train"].num_examples == len(truth["train"])


def test_release_and_annotations_from_a_url(release, real_val, tmp_path, ram_dir):
  """A ram:// manual_dir (the gs:// code path) with the zipped release and the eval .mat files:
  the same validation examples as from the disk; the annotation readers take URLs; nothing
  is written locally except TFDS's own data_dir."""
  manual, builder, _ = release["zipped"]
  remote = url_fs.copy_tree(manual, ram_dir / "release")
  data_dir = tmp_path / "data"
  got = _read(_build(str(remote), data_dir), "validation")
  want = _read(builder, "validation")
  assert sorted(got) == sorted(want)
  for name, ex in want.items():
    assert got[name]["image"] == ex["image"]
    for key, value in ex["faces"].items():
      np.testing.assert_array_equal(got[name]["faces"][key], value)
  gt_dir, anns = real_val
  text = url_fs.copy_tree(gt_dir / "wider_face_val_bbx_gt.txt", ram_dir / "gt" / "val.txt")
  again = wa.parse_bbx_gt(str(text))
  assert [a.name for a in again] == [a.name for a in anns]
  assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(anns, again))
  assert url_fs.local_entries(".") == []
