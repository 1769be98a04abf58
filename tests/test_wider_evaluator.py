"""WIDER FACE evaluator: the fixture APs to 1e-12, shuffle invariance, missing files, a plain
MATLAB-style loop reference on synthetic ground truth, I/O errors and the CLI."""

import time

import numpy as np
import pytest

from tinyfaces_jax import evaluate as evaluate_cli
from tinyfaces_jax.evaluation import wider, wider_io

FIXTURE_APS = {"easy": 0.9275622029431613, "medium": 0.8982544700877207,
               "hard": 0.7380331982994256}


@pytest.fixture(scope="module")
def real(shared_dir):
  root = shared_dir / "data" / "wider_eval"
  gt = wider_io.load_ground_truth(root / "ground_truth")
  preds = wider_io.read_predictions(root / "fixtures" / "retinaface_r152")
  return root, gt, preds


def test_fixture_aps_and_speed(real):
  root, _, _ = real
  t0 = time.perf_counter()
  r = wider.evaluate(root / "fixtures" / "retinaface_r152", root / "ground_truth",
                     verbose=False)
  elapsed = time.perf_counter() - t0
  print(f"full WIDER val evaluation incl. reading 3226 files: {elapsed:.2f} s")
  for s, ap in FIXTURE_APS.items():
    assert abs(r.aps[s] - ap) <= 1e-12, (s, r.aps[s], ap)
  assert r.num_detections > 140_000 and not r.missing and not r.extra


def test_shuffled_lines_give_the_same_aps(real):
  _, gt, preds = real
  rng = np.random.default_rng(0)
  shuffled = {k: v[rng.permutation(len(v))] for k, v in preds.items()}
  a = wider.evaluate(preds, gt, verbose=False)
  b = wider.evaluate(shuffled, gt, verbose=False)
  assert a.aps == b.aps


def test_missing_file_means_no_detections(real):
  _, gt, preds = real
  drop = sorted(preds)[::7]
  fewer = {k: v for k, v in preds.items() if k not in drop}
  empty = dict(preds, **{k: np.zeros((0, 5)) for k in drop})
  a = wider.evaluate(fewer, gt, verbose=False)
  b = wider.evaluate(empty, gt, verbose=False)
  assert a.aps == b.aps and len(a.missing) == len(drop)
  assert all(a.aps[s] < FIXTURE_APS[s] for s in FIXTURE_APS)


def test_2016_ground_truth(real):
  root, _, preds = real
  r = wider.evaluate(preds, root / "ground_truth_2016", verbose=False)
  for s, ap in FIXTURE_APS.items():
    assert abs(r.aps[s] - ap) < 0.02


# ------------------------------------------------- an independent MATLAB-style statement ---

def matlab_style(gt_boxes, keeps, preds, thresh_num=1000):
  """evaluation.m as loops: norm_score, image_evaluation, image_pr_info, dataset_pr_info,
  VOCap. gt_boxes: list [G, 4] xywh; keeps: list of [G] bool; preds: list of [K, 5] or None."""
  scores = [p[:, 4] for p in preds if p is not None and len(p)]
  allsc = np.concatenate(scores) if scores else np.zeros(0)
  hi, lo = max(allsc.max(), np.finfo(np.float32).tiny), min(allsc.min(), 3.4e38)
  pr = np.zeros((thresh_num, 2))
  count_face = 0
  for gt, keep, p in zip(gt_boxes, keeps, preds):
    count_face += int(keep.sum())
    if p is None or len(p) == 0 or len(gt) == 0:
      continue
    p = p.copy()
    p[:, 4] = (p[:, 4] - lo) / (hi - lo)
    p = p[np.argsort(-p[:, 4], kind="stable")]
    recall_list = np.zeros(len(gt))
    proposal = np.ones(len(p))
    pred_recall = np.zeros(len(p))
    for h in range(len(p)):
      best, bi = -np.inf, 0
      for j in range(len(gt)):
        px, py, pw, ph = p[h, :4]
        gx, gy, gw, gh = gt[j]
        iw = min(gx + gw, px + pw) - max(gx, px) + 1
        ih = min(gy + gh, py + ph) - max(gy, py) + 1
        if iw > 0 and ih > 0:
          o = iw * ih / ((gw + 1) * (gh + 1) + (pw + 1) * (ph + 1) - iw * ih)
        else:
          o = 0.0
        if o > best:
          best, bi = o, j
      if best >= 0.5:
        if not keep[bi]:
          recall_list[bi] = -1
          proposal[h] = -1
        elif recall_list[bi] == 0:
          recall_list[bi] = 1
      pred_recall[h] = (recall_list == 1).sum()
    for t in range(thresh_num):
      thr = 1 - (t + 1) / thresh_num
      idx = np.flatnonzero(p[:, 4] >= thr)
      if len(idx):
        r = idx[-1]
        pr[t, 0] += (proposal[:r + 1] == 1).sum()
        pr[t, 1] += pred_recall[r]
  with np.errstate(invalid="ignore", divide="ignore"):
    prec, rec = pr[:, 1] / pr[:, 0], pr[:, 1] / count_face
  mrec = np.r_[0, rec, 1]
  mpre = np.r_[0, prec, 0]
  for i in range(len(mpre) - 2, -1, -1):
    mpre[i] = np.nanmax([mpre[i], mpre[i + 1]])
  i = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def synthetic(seed):
  rng = np.random.default_rng(seed)
  keys, boxes, keeps, preds = [], [], [], {}
  for i in range(12):
    g = int(rng.integers(0, 8))
    xy = rng.uniform(0, 200, (g, 2)).round()
    wh = rng.uniform(5, 60, (g, 2)).round()
    b = np.concatenate([xy, wh], 1)
    if g > 2:
      b[1, 2] = -1 if i % 2 else 0                     # degenerate ground truth
    keys.append(f"0--Ev/img_{i}")
    boxes.append(b)
    keeps.append(rng.uniform(size=g) < 0.7)            # the others are ignore faces
    if i % 5 == 4:
      continue                                         # missing prediction file
    k = int(rng.integers(0, 12))
    src = b[rng.integers(0, max(g, 1), k)] if g else rng.uniform(0, 200, (k, 4))
    jit = src + rng.normal(0, 3, src.shape).round()
    sc = rng.choice([0.9, 0.5, 0.5, 0.3, 0.77], k)     # ties in scores
    preds[keys[-1]] = np.concatenate([jit, sc[:, None]], 1) if k else np.zeros((0, 5))
  return keys, boxes, keeps, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_equals_matlab_style_loops(seed):
  keys, boxes, keeps, preds = synthetic(seed)
  gt = wider_io.WiderGroundTruth(keys=keys, boxes=boxes,
                                 keep={s: keeps for s in wider_io.SETTINGS}, version="current")
  r = wider.evaluate(preds, gt, verbose=False)
  want = matlab_style(boxes, keeps, [preds.get(k) for k in keys])
  assert abs(r.aps["hard"] - want) < 1e-12, (r.aps["hard"], want)


# ------------------------------------------------------------------------ I/O and CLI ---

def test_write_read_roundtrip(tmp_path):
  dets = {"0--Parade/a": np.array([[1, 2, 3, 4, 0.5], [5.5, 6, 7, 8, 0.123456789]]),
          "1--Handshaking/b": np.zeros((0, 5))}
  assert wider_io.write_predictions(tmp_path, dets) == 2
  back = wider_io.read_predictions(tmp_path)
  assert set(back) == set(dets)
  np.testing.assert_array_equal(back["0--Parade/a"], dets["0--Parade/a"])
  assert back["1--Handshaking/b"].shape == (0, 5)
  assert (tmp_path / "0--Parade" / "a.txt").read_text().splitlines()[:2] == ["a", "2"]


@pytest.mark.parametrize("text,line,msg", [
    ("a\n2\n1 2 3 4 0.5\n", 2, "count mismatch"),
    ("a\nx\n", 2, "number of boxes"),
    ("a\n1\n1 2 3 0.5\n", 3, "5 numbers"),
    ("a\n1\n1 2 3 4 zz\n", 3, "not a number"),
    ("a\n1\n1 2 3 4 nan\n", 3, "non-finite"),
])
def test_malformed_prediction_lines(text, line, msg):
  with pytest.raises(wider_io.PredictionFormatError, match=f"f.txt:{line}: .*{msg}"):
    wider_io.parse_prediction_text(text, "f.txt")


def test_cli_writes_aps_and_plots(real, tmp_path, capsys):
  root, _, preds = real
  sub = {k: v for k, v in list(preds.items())[:300]}
  wider_io.write_predictions(tmp_path / "pred", sub)
  code = evaluate_cli.main(["--pred_dir", str(tmp_path / "pred"), "--gt_dir",
                            str(root / "ground_truth"), "--out_dir", str(tmp_path / "out"),
                            "--baselines_dir", str(root / "baselines"), "--quiet"])
  assert code == 0
  out = capsys.readouterr().out
  assert "Easy   Val AP" in out and "Hard   Val AP" in out
  for s in wider_io.SETTINGS:
    png = tmp_path / "out" / f"wider_pr_curve_{s}_val.png"
    assert png.stat().st_size > 10_000
  assert (tmp_path / "out" / "aps.json").exists()
