"""Tests of the WIDER FACE evaluator (evaluation/wider.py, wider_io.py, plots.py, evaluate.py).

Reference values: the APs the python WIDER evaluator printed for the RetinaFace-R152 fixture
predictions (../shared/data/wider_eval/fixtures), and the plain-loop MATLAB reading in
tests/reference/wider.py on synthetic ground truth.
"""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.support import url_fs
from tinyfaces_jax.cli import evaluate as cli
from tinyfaces_jax.evaluation import plots, size_bins, wider, wider_io
from tinyfaces_jax.evaluation.wider_io import PredictionFormatError, WiderGroundTruth
from tests.reference.wider import evaluate_reference

FIXTURE_APS = {"easy": 0.9275622029431613, "medium": 0.8982544700877207,
               "hard": 0.7380331982994256}


@pytest.fixture(scope="module")
def wider_dir(shared_dir):
  d = shared_dir / "data" / "wider_eval"
  if not (d / "ground_truth" / "wider_face_val.mat").is_file():
    pytest.skip("WIDER evaluation data absent")
  return d


@pytest.fixture(scope="module")
def gt(wider_dir):
  return wider_io.load_ground_truth(wider_dir / "ground_truth", "current")


@pytest.fixture(scope="module")
def fixture_preds(wider_dir):
  return wider_io.read_predictions(wider_dir / "fixtures" / "retinaface_r152")


@pytest.fixture(scope="module")
def fixture_result(wider_dir):
  """Full val evaluation from the text files, timed (printed, not asserted)."""
  t = time.perf_counter()
  res = wider.evaluate(wider_dir / "fixtures" / "retinaface_r152", wider_dir / "ground_truth",
                       verbose=False)
  elapsed = time.perf_counter() - t
  print(f"\nfull-val evaluation incl. reading gt + 3226 files: {elapsed:.2f}s {res.timings}")
  return res


# ----------------------------------------------------------------------- fixture reproduction


def test_ground_truth_structure(gt):
  assert gt.num_images == 3226 and gt.version == "current"
  assert sum(len(b) for b in gt.boxes) == 39708
  assert {s: gt.num_faces(s) for s in wider_io.SETTINGS} == {
    "easy": 7211, "medium": 13319, "hard": 31958}
  assert gt.keys[0] == "0--Parade/0_Parade_marchingband_1_465"
  assert sum(int((b[:, 2] <= 0).sum()) for b in gt.boxes) > 0  # w <= 0 faces exist


def test_fixture_aps(fixture_result):
  for s, ref in FIXTURE_APS.items():
    assert abs(fixture_result.aps[s] - ref) <= 1e-12, (s, fixture_result.aps[s], ref)
  assert fixture_result.num_detections == 140605
  assert not fixture_result.missing and not fixture_result.extra
  for s in wider_io.SETTINGS:
    curve = fixture_result.pr_curves[s]
    assert curve.shape == (1000, 2)
    assert np.all(np.diff(curve[:, 1]) >= 0)  # recall grows as the threshold drops
    assert fixture_result.num_faces[s] == int(fixture_result.counts[s][-1, 1] / curve[-1, 1])


def test_shuffled_lines_same_result(gt, fixture_preds, fixture_result):
  rng = np.random.default_rng(0)
  shuffled = {k: v[rng.permutation(len(v))] for k, v in fixture_preds.items()}
  res = wider.evaluate(shuffled, gt, verbose=False)
  for s in wider_io.SETTINGS:
    assert res.aps[s] == fixture_result.aps[s]
    np.testing.assert_array_equal(res.counts[s], fixture_result.counts[s])


def _subset(gt, events):
  """The ground truth of the images of `events`, as a WiderGroundTruth."""
  idx = [i for i, k in enumerate(gt.keys) if k.split("/")[0] in events]
  return WiderGroundTruth(keys=[gt.keys[i] for i in idx], boxes=[gt.boxes[i] for i in idx],
                          keep={s: [m[i] for i in idx] for s, m in gt.keep.items()},
                          version=gt.version)


def test_missing_files_mean_no_detections(gt, fixture_preds, fixture_result):
  dropped = gt.keys[::7]
  kept = {k: v for k, v in fixture_preds.items() if k not in set(dropped)}
  res = wider.evaluate(kept, gt, verbose=False)
  assert sorted(res.missing) == sorted(dropped)
  empty = dict(kept, **{k: np.zeros((0, 5)) for k in dropped})
  res_empty = wider.evaluate(empty, gt, verbose=False)
  for s in wider_io.SETTINGS:
    assert res.aps[s] == res_empty.aps[s]
    assert res.num_faces[s] == fixture_result.num_faces[s]  # their faces still count
    assert res.counts[s][-1, 1] < fixture_result.counts[s][-1, 1]
  # Independent check on a small subset (two events) with the loop reference.
  sub = _subset(gt, ("1--Handshaking", "50--Celebration_Or_Party"))
  preds = [fixture_preds[k] if k not in set(dropped) else None for k in sub.keys]
  ref_aps, ref_curves = evaluate_reference(sub.boxes, sub.keep, preds)
  res_sub = wider.evaluate({k: p for k, p in zip(sub.keys, preds) if p is not None}, sub,
                           verbose=False)
  assert res_sub.missing
  for s in wider_io.SETTINGS:
    assert abs(res_sub.aps[s] - ref_aps[s]) <= 1e-12
    np.testing.assert_array_equal(res_sub.pr_curves[s], ref_curves[s])


def test_ground_truth_2016(wider_dir, fixture_preds, fixture_result):
  gt16 = wider_io.load_ground_truth(wider_dir / "ground_truth_2016", "2016")
  assert gt16.version == "2016" and gt16.num_images == 3226
  assert any(not np.all(b == np.round(b)) for b in gt16.boxes)  # float boxes
  res = wider.evaluate(fixture_preds, gt16, verbose=False)
  for s in wider_io.SETTINGS:
    assert res.num_faces[s] == fixture_result.num_faces[s]
    assert 0.5 < res.aps[s] < 1.0 and abs(res.aps[s] - fixture_result.aps[s]) < 0.05
  with pytest.raises(ValueError, match="2016"):
    wider_io.load_ground_truth(wider_dir / "ground_truth", "2016")


# ------------------------------------------------------------------ synthetic vs loop reference


def synthetic_case(seed, n_images=12):
  """Crowded synthetic val set: ignore faces, w <= 0 faces, duplicate faces, score ties,
  images without faces, images without predictions, boxes on top of non-kept faces."""
  rng = np.random.default_rng(seed)
  keys, boxes, preds = [], [], {}
  keep = {s: [] for s in wider_io.SETTINGS}
  for i in range(n_images):
    key = f"{i % 3}--ev/img_{i}"
    g = 0 if i % 5 == 4 else int(rng.integers(1, 9))
    xy = rng.uniform(0, 120, (g, 2)).round()
    wh = rng.uniform(4, 40, (g, 2)).round()
    b = np.concatenate([xy, wh], 1)
    if g >= 3:
      b[0, 2] = rng.choice([0.0, -1.0, -3.0, 0.5 - 1.0])  # w <= 0 faces
      b[1] = b[2]  # duplicate face: IoU ties, first index wins
    hard = rng.random(g) < 0.8
    medium = hard & (rng.random(g) < 0.6)
    easy = medium & (rng.random(g) < 0.6)
    keys.append(key)
    boxes.append(b)
    for s, m in zip(wider_io.SETTINGS, (easy, medium, hard)):
      keep[s].append(m)
    if i % 4 == 3:
      continue  # missing prediction file
    n_true = int(rng.integers(0, 2 * g + 1)) if g else 0
    src = b[rng.integers(0, g, n_true)] if g else np.zeros((0, 4))
    jit = src + rng.normal(0, 2.5, src.shape).round(1)
    rand = np.concatenate([rng.uniform(0, 120, (3, 2)), rng.uniform(3, 40, (3, 2))], 1)
    d = np.concatenate([jit, rand]).round(1)
    score = rng.choice(np.linspace(0.05, 0.95, 7), len(d))  # many ties
    preds[key] = np.concatenate([d, score[:, None]], 1)
  gt = WiderGroundTruth(keys=keys, boxes=boxes, keep=keep, version="current")
  return gt, preds


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_reference(seed):
  gt, preds = synthetic_case(seed)
  res = wider.evaluate(preds, gt, verbose=False)
  ref_aps, ref_curves = evaluate_reference(gt.boxes, gt.keep, [preds.get(k) for k in gt.keys])
  assert res.missing
  for s in wider_io.SETTINGS:
    assert abs(res.aps[s] - ref_aps[s]) <= 1e-12, (s, res.aps[s], ref_aps[s])
    np.testing.assert_array_equal(res.pr_curves[s], ref_curves[s])  # NaN == NaN here
  # Shuffling lines within a file changes nothing (per-image sort by score).
  rng = np.random.default_rng(seed)
  res2 = wider.evaluate({k: v[rng.permutation(len(v))] for k, v in preds.items()}, gt,
                        verbose=False)
  assert res2.aps == res.aps


def test_iou_and_ap_values():
  gt = np.array([[0, 0, 9, 9], [0, 0, -1, 5]], float)  # 10x10 pixels; a zero-area face
  o = wider.iou_plus1(np.array([[0, 0, 9, 9], [5, 0, 9, 9], [20, 20, 3, 3]], float), gt)
  np.testing.assert_allclose(o[:, 0], [1.0, 50 / 150, 0.0])
  assert np.all(o[:, 1] == 0)
  assert wider.voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == 0.75
  assert wider.voc_ap(np.array([0.0, 0.5]), np.array([np.nan, 1.0])) == 0.5
  np.testing.assert_array_equal(wider.score_thresholds(4), [0.75, 0.5, 0.25, 0.0])


# --------------------------------------------------------------------------------------- I/O


def test_write_read_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  dets = {"0--Parade/0_Parade_1": np.concatenate(
            [rng.uniform(0, 500, (6, 4)), rng.random((6, 1))], 1),
          "0--Parade/0_Parade_2": np.zeros((0, 5)),
          "12--Group/12_Group_3": np.array([[1, 2, 3, 4, 0.5]], np.float32)}
  assert wider_io.write_predictions(tmp_path, dets) == 3
  lines = (tmp_path / "12--Group" / "12_Group_3.txt").read_text().splitlines()
  assert lines == ["12_Group_3", "1", "1 2 3 4 0.5"]
  back = wider_io.read_predictions(tmp_path)
  assert set(back) == set(dets)
  for k, v in dets.items():
    np.testing.assert_array_equal(back[k], np.asarray(v, np.float64).reshape(-1, 5))
  with pytest.raises(ValueError, match="event"):
    wider_io.write_predictions(tmp_path, {"no_event": np.zeros((0, 5))})


@pytest.mark.parametrize("text,line,msg", [
  ("img\n2\n1 2 3 4 0.9\n1 2 3 0.5\n", 4, "5 numbers"),
  ("img\n1\n1 2 3 x 0.9\n", 3, "not a number"),
  ("img\n3\n1 2 3 4 0.9\n1 2 3 4 0.5\n", 2, "count mismatch"),
  ("img\n1\n1 2 3 4 0.9\n1 2 3 4 0.5\n", 2, "count mismatch"),
  ("img\ntwo\n", 2, "number of boxes"),
  ("img\n", 2, "count line"),
  ("img\n2\n1 2 3 4 0.9\n1 2 3 4 nan\n", 4, "non-finite"),
])
def test_malformed_files(tmp_path, text, line, msg):
  path = tmp_path / "ev" / "img.txt"
  path.parent.mkdir()
  path.write_text(text)
  with pytest.raises(PredictionFormatError, match=msg) as err:
    wider_io.read_predictions(tmp_path)
  assert f"{path}:{line}:" in str(err.value)


def test_in_memory_errors_and_extra_images():
  gt, preds = synthetic_case(0)
  key = next(iter(preds))
  with pytest.raises(ValueError, match=key):
    wider.evaluate(dict(preds, **{key: np.array([[1, 2, 3, 4, np.inf]])}), gt, verbose=False)
  with pytest.raises(ValueError, match=key):
    wider.evaluate(dict(preds, **{key: np.zeros((2, 4))}), gt, verbose=False)
  with pytest.warns(UserWarning, match="2 prediction"):
    res = wider.evaluate(dict(preds, **{"9--x/a": np.ones((1, 5)), "9--x/b": np.ones((1, 5))}),
                         gt, verbose=False)
  assert res.extra == ["9--x/a", "9--x/b"]
  assert res.aps == wider.evaluate(preds, gt, verbose=False).aps


# --------------------------------------------------------------------------------------- CLI


def test_cli_smoke(wider_dir, tmp_path, capsys):
  out = tmp_path / "out"
  rc = cli.main(["--pred_dir", str(wider_dir / "fixtures" / "retinaface_r152"),
                 "--gt_dir", str(wider_dir / "ground_truth"), "--out_dir", str(out),
                 "--method_name", "R152", "--baselines_dir", str(wider_dir / "baselines"),
                 "--quiet"])
  assert rc == 0
  printed = capsys.readouterr().out
  assert f"Hard   Val AP: {FIXTURE_APS['hard']!r}" in printed
  for s in wider_io.SETTINGS:
    png = out / f"wider_pr_curve_{s}_val.png"
    with Image.open(png) as im:
      assert im.format == "PNG" and im.size[0] > 300
    name, curve = __import__("tinyfaces_jax.evaluation.plots", fromlist=["x"]).load_pr_info(
      out / "R152" / f"wider_pr_info_R152_{s}_val.mat")
    assert name == "R152" and curve.shape == (1000, 2)
    assert abs(wider.voc_ap(curve[:, 1], curve[:, 0]) - FIXTURE_APS[s]) <= 1e-12


# --------------------------------------------------------------------------- URL folders


def test_url_round_trip_and_plot(ram_dir):
  """Predictions and a PR-curve PNG written to a ram:// URL (the gs:// code path) read back;
  nothing appears on the local disk."""
  gt, preds = synthetic_case(2)
  assert wider_io.write_predictions(ram_dir / "pred", preds) == len(preds)
  back = wider_io.read_predictions(str(ram_dir / "pred"))
  assert set(back) == set(preds)
  for k, v in preds.items():
    np.testing.assert_array_equal(back[k], v)
  res = wider.evaluate(str(ram_dir / "pred"), gt, verbose=False)
  assert res.aps == wider.evaluate(preds, gt, verbose=False).aps
  rows = size_bins.ap_by_height(ram_dir / "pred", gt, edges=(0, 20, float("inf")))
  assert sum(r["num_faces"] for r in rows) == gt.num_faces("hard")
  png, = [p for p in plots.plot_result(res, ram_dir / "plots", "ours")
          if p.name == "wider_pr_curve_hard_val.png"]
  assert str(png) == f"{ram_dir}/plots/wider_pr_curve_hard_val.png"
  with Image.open(io.BytesIO(png.read_bytes())) as im:
    assert im.format == "PNG"
  assert url_fs.local_entries(".") == []


def test_cli_with_url_folders(wider_dir, fixture_preds, ram_dir, capsys):
  """`evaluate` with every folder a ram:// URL: the fixture APs, PNGs, .mat curves and
  aps.json land under the URL; the cwd stays empty."""
  wider_io.write_predictions(ram_dir / "pred", fixture_preds)
  url_fs.copy_tree(wider_dir / "ground_truth", ram_dir / "gt")
  url_fs.copy_tree(wider_dir / "baselines", ram_dir / "baselines")
  out = ram_dir / "out"
  assert cli.main(["--pred_dir", str(ram_dir / "pred"), "--gt_dir", str(ram_dir / "gt"),
                   "--out_dir", str(out), "--method_name", "R152",
                   "--baselines_dir", str(ram_dir / "baselines"), "--quiet"]) == 0
  assert f"Hard   Val AP: {FIXTURE_APS['hard']!r}" in capsys.readouterr().out
  assert json.loads((out / "aps.json").read_text())["aps"] == FIXTURE_APS
  for s in wider_io.SETTINGS:
    with Image.open(io.BytesIO((out / f"wider_pr_curve_{s}_val.png").read_bytes())) as im:
      assert im.format == "PNG" and im.size[0] > 300
    name, curve = plots.load_pr_info(out / "R152" / f"wider_pr_info_R152_{s}_val.mat")
    assert name == "R152" and abs(wider.voc_ap(curve[:, 1], curve[:, 0]) - FIXTURE_APS[s]) <= 1e-12
  # baselines (MATLAB v7.3 = HDF5 and v5 files) read from the URL as from the disk
  for s in ("hard",):
    local = plots.load_baselines(wider_dir / "baselines", s)
    remote = plots.load_baselines(ram_dir / "baselines", s)
    assert [n for n, _ in remote] == [n for n, _ in local] and len(local) > 10
    for (_, a), (_, b) in zip(local, remote):
      np.testing.assert_array_equal(a, b)
  assert url_fs.local_entries(".") == []
