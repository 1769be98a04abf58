"""FDDB evaluator (tinyfaces_jax.evaluation.fddb): parsing, official-tool agreement, references.

The official tool (`evaluation/` C++ of Jain & Learned-Miller) is re-implemented in numpy; here
it is checked against
  - the real folds in ../shared/data/fddb (10 folds, 2845 images, 5171 faces),
  - the official tool's DiscROC.txt / ContROC.txt for the MTCNN detections shipped with them,
  - independent plain-loop references (tests/reference/fddb.py): pixel masks painted pixel by
    pixel, brute-force one-to-one matching, and a literal port of `Results::merge`,
  - malformed files (errors must name file and line).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.reference import fddb as fddb_ref
from tinyfaces_jax.evaluation import fddb
from tinyfaces_jax.evaluation.fddb_io import FddbFormatError

N_FACES = 5171
N_IMAGES = 2845


# ----------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def fddb_dir(shared_dir):
  d = shared_dir / "data" / "fddb"
  if not (d / "FDDB-folds").is_dir():
    pytest.skip(f"{d}/FDDB-folds not found")
  return d


@pytest.fixture(scope="module")
def folds(fddb_dir):
  return fddb.load_folds(fddb_dir / "FDDB-folds")


@pytest.fixture(scope="module")
def mtcnn(fddb_dir, folds):
  """(our disc, our cont, official disc [K, 3], official cont [K, 2]), no image sizes."""
  out = fddb_dir / "mtcnn_outputs"
  names, gt = folds
  dets = fddb.read_detection_folds([out / f"fold-{i:02d}-out.txt" for i in range(1, 11)])
  disc, cont = fddb.evaluate_fddb(gt, dets, image_names=names)
  return (disc, cont, fddb.read_roc_file(out / "MTCNNDiscROC.txt"),
          fddb.read_roc_file(out / "MTCNNContROC.txt"), dets)


def test_parse_real_folds(fddb_dir, folds):
  names, gt = folds
  assert len(names) == N_IMAGES == len(gt) == len(set(names))
  counts = [fddb.read_image_list(fddb_dir / "FDDB-folds" / f"FDDB-fold-{i:02d}.txt")
            for i in range(1, 11)]
  assert [len(c) for c in counts] == [290, 285, 274, 302, 298, 302, 279, 276, 259, 280]
  faces = np.concatenate([gt[n] for n in names])
  assert faces.shape == (N_FACES, 5)
  assert np.all(faces[:, 0] > 0) and np.all(faces[:, 1] > 0)
  assert np.all(np.abs(faces[:, 2]) <= math.pi / 2 + 1e-6)
  np.testing.assert_allclose(gt["2002/08/11/big/img_591"],
                             [[123.5833, 85.5495, 1.265839, 269.6934, 161.7812]])
  # S3FD's corrected annotations: same images, a few faces added
  new = fddb.read_ellipse_list(fddb_dir / "FDDB_annotation_ellipseList_new.txt")
  assert set(new) == set(gt)
  assert sum(len(v) for v in new.values()) >= N_FACES


def test_mtcnn_official_roc_agreement(mtcnn):
  """Agreement with the official tool's DiscROC/ContROC for the MTCNN fixture.

  Thresholds (one row per distinct score plus DBL_MAX, 1774 rows, ascending) agree exactly up to
  the 6 digits the tool prints. TPR and FP differ only because the image sizes are unknown: the
  tool clips both regions to the image before counting pixels; we clip left / top exactly
  (masks start at 0) but not right / bottom. Measured (rows compared at equal thresholds):
  discrete TPR max |diff| 0.00058 (3 of 5171 faces, ours lower), FP max |diff| 3, continuous TPR
  max |diff| 0.0011 (mean -0.0006); final TPR 0.89576 vs 0.896345. Bounds: 4 faces, 4 FP, 0.0015.
  """
  disc, cont, od, oc, _ = mtcnn
  assert disc.shape == od.shape == (1774, 3) and oc.shape == (1774, 2)
  np.testing.assert_allclose(disc[:-1, 2], od[:-1, 2], rtol=5e-6)
  assert disc[-1, 2] == fddb.DBL_MAX and od[-1, 2] == pytest.approx(1.79769e308, rel=1e-5)
  np.testing.assert_array_equal(disc[:, 1], cont[:, 1])
  assert np.all(np.diff(disc[:, 2]) > 0)
  assert np.abs(disc[:, 1] - od[:, 1]).max() <= 4
  assert np.abs(disc[:, 0] - od[:, 0]).max() * N_FACES <= 4.01
  assert np.abs(cont[:, 0] - oc[:, 0]).max() <= 0.0015
  assert abs((cont[:, 0] - oc[:, 0]).mean()) <= 0.001
  # TPR at fixed FP counts (best TPR with FP <= f). A 1-3 FP offset at equal thresholds moves
  # the steep start of the curve sideways: measured max |diff| over f = 0..299 is 0.0143 (74
  # faces, at f = 16). The official curve ends at FP = 249, so f = 500 / 1000 / 2000 all give its
  # final TPR: 0.895765 (ours) vs 0.896345, continuous 0.673389 vs 0.674485.
  fps = np.arange(300)
  assert np.abs(fddb.roc_at_fp(disc, fps) - fddb.roc_at_fp(od, fps)).max() <= 0.016
  assert np.abs(fddb.roc_at_fp(cont, fps) - fddb.roc_at_fp(oc, fps)).max() <= 0.013
  for f in (500, 1000, 2000):
    assert abs(fddb.roc_at_fp(disc, [f])[0] - fddb.roc_at_fp(od, [f])[0]) * N_FACES <= 4.01
    assert abs(fddb.roc_at_fp(cont, [f])[0] - fddb.roc_at_fp(oc, [f])[0]) <= 0.0015


def test_mtcnn_clipped_to_450(folds, mtcnn):
  """Clipping every image at 450 x 450 (an upper bound: no ground-truth centre or MTCNN box
  passes 450 px) removes part of the gap: measured at equal thresholds discrete max |diff| 2
  faces, FP 2, continuous 0.00071; at matched FP (0..299) 0.0029 discrete, 0.0025 continuous."""
  names, gt = folds
  _, _, od, oc, dets = mtcnn
  disc, cont = fddb.evaluate_fddb(gt, dets, image_sizes={n: (450, 450) for n in names},
                                  image_names=names)
  assert np.abs(disc[:, 1] - od[:, 1]).max() <= 3
  assert np.abs(disc[:, 0] - od[:, 0]).max() * N_FACES <= 3.01
  assert np.abs(cont[:, 0] - oc[:, 0]).max() <= 0.001
  fps = np.arange(300)
  assert np.abs(fddb.roc_at_fp(disc, fps) - fddb.roc_at_fp(od, fps)).max() <= 0.0035
  assert np.abs(fddb.roc_at_fp(cont, fps) - fddb.roc_at_fp(oc, fps)).max() <= 0.003


def test_roc_writer_reproduces_official_text(fddb_dir, mtcnn, tmp_path):
  _, _, od, oc, _ = mtcnn
  dp, cp = fddb.write_roc_files(tmp_path / "MTCNN", od, oc)
  out = fddb_dir / "mtcnn_outputs"
  assert dp.read_text() == (out / "MTCNNDiscROC.txt").read_text()
  assert cp.read_text() == (out / "MTCNNContROC.txt").read_text()


def test_roc_writer_roundtrip_and_plot(mtcnn, tmp_path):
  disc, cont, od, _, _ = mtcnn
  dp, cp = fddb.write_roc_files(tmp_path / "ours", disc, cont)
  assert dp.name == "oursDiscROC.txt" and cp.name == "oursContROC.txt"
  assert dp.read_text().splitlines()[-1] == "0 0 1.79769e+308"
  back = fddb.read_roc_file(dp)
  np.testing.assert_allclose(back[:, :2], disc[:, :2], rtol=1e-5, atol=1e-6)
  png = tmp_path / "roc.png"
  fddb.plot_roc(png, {"ours": disc, "official": od}, max_fp=300)
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- references

def _paint(rows, h, w):
  """Row intervals -> [h, w] bool mask, painted pixel by pixel (pixels outside are dropped)."""
  y0, x1, x2 = rows
  m = np.zeros((h, w), bool)
  for r in range(len(x1)):
    for x in range(x1[r], x2[r] + 1):
      if 0 <= y0 + r < h and 0 <= x < w:
        m[y0 + r, x] = True
  return m


ELLIPSES = [
  (30.4, 20.2, 0.3, 40.6, 35.2), (25.0, 14.9, -1.2, 30.0, 50.0), (12.7, 9.1, 1.5708, 20.0, 20.0),
  (40.0, 40.0, 0.0, 5.0, 60.0), (7.9, 4.2, 0.8, 60.3, 10.7), (50.0, 30.0, -0.05, 70.0, 45.0),
]
RECTS = [
  (15.0, 10.0, 50.0, 52.0), (20.4, 30.5, 20.0, 41.6), (-10.0, 40.0, 40.0, 45.0),
  (55.0, 0.0, 12.0, 18.0), (10.0, 10.0, 0.0, 0.0), (60.0, 20.0, 40.0, 60.0),
]


@pytest.mark.parametrize("ell", ELLIPSES)
def test_ellipse_geometry_vs_analytic(ell):
  """Every pixel well inside the analytic ellipse is drawn, every pixel well outside is not
  (the boundary band is where OpenCV's 5-degree polygon, fixed-point scanlines and outline
  decide), and the area is within the band of pi * a * b."""
  h, w = 140, 140
  shift = (30, 30)  # keep the whole ellipse on the canvas
  e = (ell[0], ell[1], ell[2], ell[3] + shift[0], ell[4] + shift[1])
  ours = _paint(fddb.ellipse_rows(*e), h, w)
  rad, r_min = fddb_ref.ellipse_radius(*e, h, w)
  band = 1.6 / r_min
  assert ours[rad < 1 - band].all()
  assert not ours[rad > 1 + band].any()
  a, b = int(e[0]), int(e[1])
  assert abs(ours.sum() - math.pi * a * b) <= 1.6 * math.pi * (a + b) + 4


def test_ellipse_angle_convention():
  """FDDB angle = orientation of the major axis; pi/2 is vertical, 0 horizontal."""
  y0, x1, x2 = fddb.ellipse_rows(30.0, 10.0, math.pi / 2, 100.0, 100.0)
  assert len(x1) in (61, 62, 63) and (x2 - x1).max() + 1 in (21, 22, 23)
  y0, x1, x2 = fddb.ellipse_rows(30.0, 10.0, 0.0, 100.0, 100.0)
  assert len(x1) in (21, 22, 23) and (x2 - x1).max() + 1 in (61, 62, 63)


@pytest.mark.parametrize("size", [None, (90, 80), (50, 120)])
def test_overlap_matrix_vs_pixel_masks(size):
  """overlap_matrix == IoU of pixel masks painted by loops (rectangles by an independent loop,
  ellipses from their row intervals), with and without clipping to the image; and close to the
  IoU with analytic ellipses (<= 0.06, the boundary band)."""
  annots = np.asarray(ELLIPSES)
  dets = np.concatenate([np.asarray(RECTS), np.linspace(0.1, 0.9, len(RECTS))[:, None]], 1)
  ov = fddb.overlap_matrix(annots, dets, "rect", size)
  # without an image: a canvas holding everything (left/top still clipped at 0 like the tool)
  h, w = size if size is not None else (200, 200)
  for i, e in enumerate(annots):
    ma = _paint(fddb.ellipse_rows(*e), h, w)
    rad, _ = fddb_ref.ellipse_radius(*e, h, w)
    for j, r in enumerate(dets):
      md = fddb_ref.rect_mask(*r[:4], h, w)
      assert ov[i, j] == pytest.approx(fddb_ref.mask_iou(ma, md), abs=1e-12)
      assert abs(ov[i, j] - fddb_ref.mask_iou(rad <= 1, md)) <= 0.06


def test_overlap_rect_vs_rect_and_ellipse_dets():
  r1 = np.array([[10.0, 10.0, 9.0, 9.0, 1.0]])
  # ellipse detection identical to the annotation -> IoU 1
  e = np.array([[20.0, 12.0, 0.4, 50.0, 40.0]])
  assert fddb.overlap_matrix(e, np.c_[e, [0.5]], "ellipse")[0, 0] == 1.0
  # region entirely outside the image -> 0, not NaN
  assert fddb.overlap_matrix(np.array([[5.0, 5.0, 0.0, 500.0, 500.0]]), r1, "rect",
                             (100, 100))[0, 0] == 0.0
  assert fddb.overlap_matrix(np.zeros((0, 5)), r1).shape == (0, 1)


def test_matching_vs_brute_force():
  rng = np.random.default_rng(0)
  for trial in range(60):
    na, nd = rng.integers(0, 5), rng.integers(0, 5)
    s = rng.uniform(0, 1, (na, nd)) * (rng.uniform(0, 1, (na, nd)) < 0.6)
    m = fddb.match_image(s)
    assert m.sum() == pytest.approx(fddb_ref.brute_force_match(s), abs=1e-12)
    assert len(m) <= min(na, nd) and np.all(m > 0)


def test_image_results_and_accumulate_vs_tool_merge():
  rng = np.random.default_rng(1)
  cum, per_image, n_faces = [], [], 0
  for img in range(25):
    na, nd = int(rng.integers(0, 4)), int(rng.integers(0, 5))
    s = rng.uniform(0, 1, (na, nd)) * (rng.uniform(0, 1, (na, nd)) < 0.7)
    scores = np.round(rng.uniform(0, 1, nd), 1)  # ties within and across images
    thr, st = fddb.image_results(s, scores)
    ref = fddb_ref.image_results(s, list(scores))
    np.testing.assert_array_equal(thr, [t for t, _ in ref])
    np.testing.assert_allclose(st, [r for _, r in ref], atol=1e-12)
    per_image.append((thr, st))
    n_faces += na
    cum = fddb_ref.merge(cum, [(t, na, *r) for t, r in ref])
  disc, cont = fddb.accumulate(per_image, n_faces)
  ref = np.array(cum)
  np.testing.assert_array_equal(disc[:, 2], ref[:, 0])
  assert np.all(ref[:, 1] == n_faces)
  np.testing.assert_allclose(disc[:, 0], ref[:, 2] / n_faces, atol=1e-12)
  np.testing.assert_allclose(cont[:, 0], ref[:, 3] / n_faces, atol=1e-12)
  np.testing.assert_allclose(disc[:, 1], ref[:, 4], atol=1e-9)


def test_evaluate_small_end_to_end(tmp_path):
  gt = {"a": np.array([[20.0, 15.0, 0.0, 50.0, 50.0]]),
        "b": np.array([[10.0, 8.0, 1.2, 30.0, 30.0], [10.0, 8.0, 0.0, 80.0, 30.0]]),
        "c": np.zeros((0, 5))}
  dets = {"a": np.array([[35.0, 30.0, 31.0, 41.0, 0.9], [0.0, 0.0, 5.0, 5.0, 0.3]]),
          "b": np.array([[72.0, 22.0, 17.0, 15.0, 0.8]]),
          "c": np.zeros((0, 5))}
  disc, cont = fddb.evaluate_fddb(gt, dets)
  np.testing.assert_array_equal(disc[:, 2], [0.3, 0.8, 0.9, fddb.DBL_MAX])
  np.testing.assert_array_equal(disc[:, 0] * 3, [2, 2, 1, 0])
  np.testing.assert_array_equal(disc[:, 1], [1, 0, 0, 0])
  assert cont[0, 0] == pytest.approx(cont[1, 0]) and 0 < cont[2, 0] < cont[1, 0] < 2 / 3
  with pytest.raises(ValueError, match="'c' has no entry"):
    fddb.evaluate_fddb(gt, {"a": dets["a"], "b": dets["b"]})
  d2, _ = fddb.evaluate_fddb(gt, {"a": dets["a"], "b": dets["b"]}, allow_missing=True)
  np.testing.assert_array_equal(d2, disc)
  # file round trip through the FDDB layouts
  fddb.write_detections(tmp_path / "dets.txt", dets)
  back = fddb.read_detections(tmp_path / "dets.txt")
  assert list(back) == ["a", "b", "c"] and back["c"].shape == (0, 5)
  np.testing.assert_allclose(back["a"], dets["a"])


# ----------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("text,line,what", [
  ("img_1\ntwo\n1 2 3 4 0.5\n", 2, "expected the number of regions"),
  ("img_1\n2\n1 2 3 4 0.5\n", 3, "announces 2 regions"),
  ("img_1\n1\n1 2 3 4\n", 3, "expected 5 numbers"),
  ("img_1\n1\n1 2 x 4 0.5\n", 3, "non-numeric"),
  ("img_1\n1\n1 2 3 4 nan\n", 3, "non-finite"),
  ("img_1\n0\nimg_1\n0\n", 3, "appears twice"),
  ("img_1\n-1\n", 2, "negative region count"),
  ("img_1\n", 1, "no count line"),
  ("img 1\n0\n", 1, "expected an image name"),
])
def test_malformed_detections(tmp_path, text, line, what):
  p = tmp_path / "bad.txt"
  p.write_text(text)
  with pytest.raises(FddbFormatError, match=what) as exc:
    fddb.read_detections(p)
  assert f"{p}:{line}:" in str(exc.value)


def test_malformed_ellipses_and_format(tmp_path):
  p = tmp_path / "ell.txt"
  p.write_text("img_1\n1\n10 5 0.1 20\n")
  with pytest.raises(FddbFormatError, match=rf"{p}:3: expected 6 numbers"):
    fddb.read_ellipse_list(p)
  p.write_text("img_1\n1\n10 5 0.1 20 30\n")  # the trailing 1 is optional
  assert fddb.read_ellipse_list(p)["img_1"].shape == (1, 5)
  with pytest.raises(ValueError, match="det_format"):
    fddb.read_detections(p, "pixels")
