"""Tiny Faces templates: the released file, and K-medoids clustering under 1 - IoU."""

import itertools

import numpy as np
import pytest

from tests.support import url_fs
from tinyfaces_jax.detectors.hr import templates


def test_load_released_templates(shared_dir):
  t = templates.load_templates(str(shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"))
  assert len(t) == 25 and t.boxes.shape == (25, 4)
  np.testing.assert_allclose(t.boxes[:, :2], -t.boxes[:, 2:])  # centred
  assert sorted(set(t.sigma.tolist())) == [0.5, 1.0, 2.0]
  np.testing.assert_array_equal(t.sigma[:4], 0.5)
  np.testing.assert_array_equal(t.sigma[12:], 2.0)
  plain = templates.load_templates(str(shared_dir / "data/tinyfaces/RefBox_N25.mat"))
  np.testing.assert_array_equal(plain.sigma, 1.0)


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.mat"):
    templates.load_templates(str(tmp_path / "nope.mat"))
  bad = tmp_path / "bad.mat"
  bad.write_text("not a mat file")
  with pytest.raises(ValueError, match="bad.mat"):
    templates.load_templates(str(bad))


def np_cost(wh, medoid_wh):
  """Total 1 - IoU of every box to its nearest medoid, as a plain loop."""
  tot = 0.0
  for w, h in wh:
    best = 1.0
    for mw, mh in medoid_wh:
      inter = min(w, mw) * min(h, mh)
      best = min(best, 1 - inter / (w * h + mw * mh - inter))
    tot += best
  return tot


def test_kmedoids_finds_the_exhaustive_optimum_on_small_data():
  rng = np.random.default_rng(3)
  wh = np.concatenate([rng.normal(c, s, (15, 2)) for c, s in [(12, 1), (40, 3), (120, 8)]])
  wh = np.round(np.abs(wh)) + 10
  xyxy = np.concatenate([np.zeros_like(wh), wh - 1], 1)
  t = templates.cluster_templates(xyxy, num_templates=3, seed=0)
  got = np_cost(wh, t.wh)
  uniq = np.unique(wh, axis=0)
  best = min(np_cost(wh, uniq[list(c)]) for c in itertools.combinations(range(len(uniq)), 3))
  assert got <= best + 1e-9
  assert np.all(np.diff(t.wh[:, 0] * t.wh[:, 1]) <= 0)  # sorted by area, largest first


def test_cluster_filters_and_subsamples_deterministically():
  rng = np.random.default_rng(4)
  wh = np.round(rng.uniform(2, 300, (3000, 2)))
  xyxy = np.concatenate([np.zeros_like(wh), wh - 1], 1)
  a = templates.cluster_templates(xyxy, num_templates=8, max_boxes=1000, seed=1)
  b = templates.cluster_templates(xyxy, num_templates=8, max_boxes=1000, seed=1)
  np.testing.assert_array_equal(a.boxes, b.boxes)
  assert np.all(a.wh >= 10)
  with pytest.raises(ValueError, match="fewer than"):
    templates.cluster_templates(xyxy[:3], num_templates=8)


def test_cluster_templates_command(tmp_path):
  """The CLI clusters a WIDER-format file's faces into a .mat that the HR detector reads."""
  import scipy.io
  from tinyfaces_jax.cli import cluster_templates
  rng = np.random.default_rng(0)
  lines = []
  for i in range(40):
    n = 5
    lines += [f"0--A/{i}.jpg", str(n)]
    for _ in range(n):
      w, h = rng.integers(12, 200), rng.integers(12, 240)
      lines.append(f"{rng.integers(0, 100)} {rng.integers(0, 100)} {w} {h} 0 0 0 0 0 0 ")
  ann = tmp_path / "bbx_gt.txt"
  ann.write_text("\n".join(lines) + "\n")
  out = tmp_path / "t.mat"
  assert cluster_templates.main([f"--annotations={ann}", f"--out={out}", "--num=6",
                                 "--scaled"]) == 0
  c = scipy.io.loadmat(str(out))["clusters"]
  assert c.shape == (6, 5)
  t = templates.load_templates(str(out))
  h = t.wh[:, 1]
  # sigma from the height before scaling: > 140 px at 0.5 (stored halved), < 40 at 2 (doubled)
  assert np.all(h[t.sigma == 0.5] > 70) and np.all(h[t.sigma == 2.0] < 80)
  assert set(np.unique(t.sigma)) <= {0.5, 1.0, 2.0}
  np.testing.assert_allclose(t.boxes[:, :2], -t.boxes[:, 2:])     # centred


def test_templates_from_and_to_a_url(shared_dir, tmp_path, ram_dir):
  """The released .mat read from a ram:// URL (the gs:// code path), the HR detector built on
  it, and the clustering CLI reading its annotations from and writing its .mat to URLs."""
  from tinyfaces_jax import detectors
  from tinyfaces_jax.cli import cluster_templates
  local = shared_dir / "data/tinyfaces/RefBox_N25_scaled.mat"
  remote = url_fs.copy_tree(local, ram_dir / "tpl" / local.name)
  a, b = templates.load_templates(str(local)), templates.load_templates(str(remote))
  np.testing.assert_array_equal(a.boxes, b.boxes)
  np.testing.assert_array_equal(a.sigma, b.sigma)
  det = detectors.build_detector("hr", {"backbone": "mobilenet0.25", "templates": str(remote)})
  assert det.model.config.num_templates == 25
  with pytest.raises(FileNotFoundError, match="nope.mat"):
    templates.load_templates(str(ram_dir / "nope.mat"))
  rng = np.random.default_rng(1)
  lines = []
  for i in range(12):
    lines += [f"0--A/{i}.jpg", "3"] + [f"0 0 {rng.integers(12, 90)} {rng.integers(12, 90)} "
                                        "0 0 0 0 0 0" for _ in range(3)]
  (ram_dir / "ann" / "bbx_gt.txt").parent.mkdir(parents=True, exist_ok=True)
  (ram_dir / "ann" / "bbx_gt.txt").write_text("\n".join(lines) + "\n")
  assert cluster_templates.main([f"--annotations={ram_dir}/ann/bbx_gt.txt",
                                 f"--out={ram_dir}/out/t.mat", "--num=4"]) == 0
  assert len(templates.load_templates(ram_dir / "out" / "t.mat")) == 4
  assert url_fs.local_entries(".") == []
