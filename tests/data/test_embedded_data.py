"""Tests of the embedded WIDER-format dataset (tinyfaces_jax.data.embedded.build), small counts."""

import hashlib
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="the embedded dataset needs scikit-image")

from tests.support import url_fs  # noqa: E402
from tinyfaces_jax.data.embedded import build as embedded  # noqa: E402

NUM_TRAIN, NUM_VAL = 48, 12


def parse_gt(path: pathlib.Path) -> list:
  """Own minimal WIDER bbx_gt parser -> [(name, [[10 ints], ...])] (strict)."""
  lines = path.read_text().splitlines()
  out, i = [], 0
  while i < len(lines):
    name = lines[i]
    assert name.endswith(".jpg") and "/" in name, name
    count = int(lines[i + 1])
    rows = [list(map(int, line.split())) for line in lines[i + 2:i + 2 + max(count, 1)]]
    assert all(len(r) == 10 for r in rows), name
    if count == 0:
      assert rows == [[0] * 10], name
      rows = []
    out.append((name, rows))
    i += 2 + max(count, 1)
  return out


def tree_hashes(root: pathlib.Path) -> dict:
  """{relative path: sha256} of every file under `root` except the manifest and README."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*"))
          if p.is_file() and p.name not in (embedded.MANIFEST, "README.md")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("embedded") / "wider"
  return embedded.build_embedded_wider(root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3)


@pytest.fixture(scope="module")
def parsed(built):
  return {split: parse_gt(built / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt")
          for split in ("train", "val")}


def test_deterministic_and_idempotent(built, tmp_path):
  again = embedded.build_embedded_wider(tmp_path / "again", num_train=NUM_TRAIN,
                                        num_val=NUM_VAL, seed=3, workers=2)
  assert tree_hashes(built) == tree_hashes(again)
  stamp = (again / embedded.MANIFEST).stat().st_mtime_ns
  embedded.build_embedded_wider(again, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3)
  assert (again / embedded.MANIFEST).stat().st_mtime_ns == stamp  # skipped
  other = embedded.build_embedded_wider(tmp_path / "other", num_train=4, num_val=1, seed=4)
  assert set(tree_hashes(other).values()).isdisjoint(
      h for k, h in tree_hashes(built).items() if k.endswith(".jpg"))


def test_image_prefix_does_not_depend_on_counts(built, tmp_path):
  small = embedded.build_embedded_wider(tmp_path / "small", num_train=5, num_val=2, seed=3)
  big, few = tree_hashes(built), tree_hashes(small)
  assert all(big[k] == v for k, v in few.items() if k.endswith(".jpg"))


def test_layout_and_format(built, parsed):
  for split, folder in (("train", "WIDER_train"), ("val", "WIDER_val")):
    entries = parsed[split]
    assert len(entries) == (NUM_TRAIN if split == "train" else NUM_VAL)
    names = {n for n, _ in entries}
    on_disk = {str(p.relative_to(built / folder / "images"))
               for p in (built / folder / "images").rglob("*.jpg")}
    assert names == on_disk
    for name, rows in entries:
      event = name.split("/")[0]
      assert event in embedded.EVENTS
      with Image.open(built / folder / "images" / name) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        width, height = image.size
      assert 320 <= min(width, height) and max(width, height) <= 640
      for x, y, w, h, blur, expr, illum, invalid, occl, pose in rows:
        assert w > 0 and h > 0 and x >= 0 and y >= 0, name
        assert x + w <= width and y + h <= height, name
        assert blur in (0, 1, 2) and occl in (0, 1, 2) and pose in (0, 1) and invalid == 0
      if event == "3--No_Face":
        assert not rows


def test_manifest_counts(built, parsed):
  manifest = json.loads((built / embedded.MANIFEST).read_text())
  assert manifest["params"]["seed"] == 3
  assert manifest["params"]["package_versions"]["scikit-image"]
  for split in ("train", "val"):
    s = manifest["splits"][split]
    assert s["images"] == len(parsed[split])
    assert s["faces"] == sum(len(r) for _, r in parsed[split])
    assert s["zero_face_images"] == sum(not r for _, r in parsed[split])
    assert sum(s["images_per_event"].values()) == s["images"]
    assert sum(s["height_histogram"]["counts"]) == s["faces"]
  assert (built / "README.md").read_text().startswith("# Embedded WIDER-format")


def test_counts_and_zero_face_images(parsed):
  counts = np.array([len(r) for _, r in parsed["train"] + parsed["val"]])
  assert (counts == 0).any()
  assert counts.max() >= 15 and counts.max() <= 50
  assert np.median(counts) <= 6


def test_scale_distribution_is_wider_like():
  """Many images (heights only, no pixels): tiny to large faces, WIDER-like proportions."""
  rng = np.random.default_rng(0)
  heights = []
  for _ in range(3000):
    width, height = embedded.sample_image_size(rng, (320, 640))
    heights += embedded.sample_heights(rng, embedded.sample_face_count(rng), width, height)
  heights = np.array(heights)
  assert heights.min() >= 6
  assert 0.30 < np.mean(heights < 16) < 0.50  # WIDER val: 0.39
  assert 0.65 < np.mean(heights < 48) < 0.85  # WIDER val: 0.72
  assert 0.01 < np.mean(heights > 150) < 0.08  # WIDER val: ~0.04
  assert heights.max() > 300
  ref = embedded.wider_reference(embedded.REPORT_EDGES)
  assert abs(sum(ref) - 1.0) < 0.01


def test_built_images_cover_tiny_to_large(built, parsed):
  heights = np.array([r[3] for _, rows in parsed["train"] + parsed["val"] for r in rows])
  assert np.mean(heights < 16) > 0.2
  assert (heights > 150).any()


def test_pasted_faces_are_not_flat_patches(built, parsed):
  """Boxes contain image structure (a face), and the box border blends (no hard edge)."""
  name, rows = max(parsed["train"], key=lambda e: max([r[3] for r in e[1]], default=0))
  image = np.asarray(Image.open(built / "WIDER_train/images" / name).convert("L"), np.float32)
  x, y, w, h = rows[int(np.argmax([r[3] for r in rows]))][:4]
  face = image[y:y + h, x:x + w]
  assert face.std() > 8.0


def test_build_into_a_url(built, ram_dir):
  """Built under a ram:// URL (the gs:// code path): the same bytes as on the disk, rebuilt
  only when asked; nothing on the local disk."""
  root = embedded.build_embedded_wider(ram_dir / "wider", num_train=3, num_val=1, seed=3)
  assert str(root) == f"{ram_dir}/wider"
  manifest = json.loads((root / embedded.MANIFEST).read_text())
  assert manifest["splits"]["train"]["images"] == 3
  gt = (root / "wider_face_split" / "wider_face_train_bbx_gt.txt").read_text()
  names = [n for n in gt.splitlines() if n.endswith(".jpg")]
  assert len(names) == 3
  for name in names:
    local = (built / "WIDER_train" / "images" / name).read_bytes()
    assert (root / "WIDER_train" / "images" / name).read_bytes() == local
  (root / "README.md").write_text("marker")
  embedded.build_embedded_wider(str(root), num_train=3, num_val=1, seed=3)  # same: skipped
  assert (root / "README.md").read_text() == "marker"
  embedded.build_embedded_wider(root, num_train=3, num_val=1, seed=3, force=True)
  assert (root / "README.md").read_text().startswith("# Embedded")
  assert url_fs.local_entries(".") == []
