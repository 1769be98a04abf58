"""Tests of evaluation/size_bins.py: the WIDER AP restricted to face-height bins.

Independent statements: numpy counts of the synthetic faces per bin, a ground truth built by
hand for one bin (keep masks written out literally) evaluated by `wider.evaluate` and by the
plain-loop MATLAB reading of tests/reference/wider.py.
"""

import json
import math

import numpy as np
import pytest

from tinyfaces_jax.evaluation import size_bins, wider, wider_io
from tinyfaces_jax.evaluation.wider_io import WiderGroundTruth
from tests.reference.wider import evaluate_reference

# Per image: faces (x, y, w, h) laid out left to right with gaps, and whether each is in the
# hard / easy settings. Heights cover every default bin; "ig" faces are official ignore faces.
FACES = {
  "0--ev/a": [((0, 0, 6, 8), True), ((20, 0, 12, 15), True), ((50, 0, 24, 30), True),
              ((100, 0, 48, 60), True), ((200, 0, 96, 120), True),
              ((400, 0, 12, 15), False)],                       # 15 px ignore face
  "0--ev/b": [((0, 0, 9, 12), True), ((30, 0, 14, 18), True), ((60, 0, 150, 200), True),
              ((300, 0, 300, 400), True), ((700, 0, 10, -2), True)],  # h < 0: in no bin
  "1--ev/c": [((0, 0, 10, 14), True), ((40, 0, 30, 39), True)],
  "1--ev/d": [],                                                   # no faces
}
SMALL = 20.0  # faces with h < 20 px: the first two default bins


def make_gt():
  keys, boxes, keep = [], [], {s: [] for s in wider_io.SETTINGS}
  for key, faces in FACES.items():
    b = np.array([f for f, _ in faces], np.float64).reshape(-1, 4)
    hard = np.array([k for _, k in faces], bool)
    easy = hard & (b[:, 3] >= 30)
    keys.append(key)
    boxes.append(b)
    keep["hard"].append(hard)
    keep["medium"].append(hard & (b[:, 3] >= 14))
    keep["easy"].append(easy)
  return WiderGroundTruth(keys=keys, boxes=boxes, keep=keep, version="current")


def on_faces(gt, select, scores):
  """Exact detections of the faces `select(h, kept)` picks, scores taken in order."""
  pred, it = {}, iter(scores)
  for key, b, k in zip(gt.keys, gt.boxes, gt.keep["hard"]):
    rows = [list(f) + [next(it)] for f, kk in zip(b, k) if select(f[3], kk)]
    pred[key] = np.array(rows, np.float64).reshape(-1, 5)
  return pred


def ap_of(rows, lo):
  return next(r["ap"] for r in rows if r["lo"] == lo)


def test_perfect_small_detections():
  gt = make_gt()
  pred = on_faces(gt, lambda h, k: 0 <= h < SMALL and k, np.linspace(0.9, 0.3, 20))
  rows = size_bins.ap_by_height(pred, gt)
  assert [(r["lo"], r["hi"]) for r in rows] == list(zip(size_bins.DEFAULT_HEIGHT_BINS,
                                                        size_bins.DEFAULT_HEIGHT_BINS[1:]))
  for r in rows:
    if r["hi"] <= SMALL:
      assert r["ap"] == pytest.approx(1.0, abs=1e-12), r
    else:
      assert r["ap"] == 0.0, r  # no proposal at all: the small detections are ignored there
  # An empty bin has no AP.
  rows = size_bins.ap_by_height(pred, gt, edges=(0, 20, 500, 1000, math.inf))
  assert [r["num_faces"] for r in rows] == [5, 6, 0, 0]
  assert rows[2]["ap"] is None and rows[3]["ap"] is None


def test_detection_outside_the_bin_is_not_a_false_positive():
  gt = make_gt()
  # Bin [10, 20): 4 kept faces; detect 3 of them (AP < 1 needs a false positive or a miss).
  base = on_faces(gt, lambda h, k: 12 <= h < SMALL and k, [0.8, 0.6, 0.4, 0.2])
  base["1--ev/c"] = np.array([[0, 0, 10, 14, 0.5], [200, 200, 10, 10, 0.7]])  # + background FP
  ref = ap_of(size_bins.ap_by_height(base, gt), 10.0)
  assert 0.0 < ref < 1.0
  for key, box in [("0--ev/a", (200, 0, 96, 120)),   # the 120 px face (another bin)
                   ("0--ev/a", (400, 0, 12, 15)),    # the 15 px face outside the hard setting
                   ("0--ev/b", (302, 3, 298, 395))]:  # the 400 px face, IoU >= 0.5
    pred = {k: v.copy() for k, v in base.items()}
    pred[key] = np.concatenate([pred[key], [list(box) + [0.75]]])  # score inside [min, max]
    assert ap_of(size_bins.ap_by_height(pred, gt), 10.0) == ref, key
  # The same high-scoring box on background is a false positive of the bin.
  pred = {k: v.copy() for k, v in base.items()}
  pred["0--ev/a"] = np.concatenate([pred["0--ev/a"], [[600, 300, 96, 120, 0.75]]])
  assert ap_of(size_bins.ap_by_height(pred, gt), 10.0) < ref


def test_num_faces_match_numpy_counts():
  gt = make_gt()
  pred = on_faces(gt, lambda h, k: k, np.linspace(0.9, 0.1, 20))
  edges = size_bins.DEFAULT_HEIGHT_BINS
  counts = {}
  for setting in wider_io.SETTINGS:
    h = np.concatenate([b[:, 3][k] for b, k in zip(gt.boxes, gt.keep[setting])])
    want = [int(np.count_nonzero((h >= lo) & (h < hi))) for lo, hi in zip(edges, edges[1:])]
    rows = size_bins.ap_by_height(pred, gt, setting=setting)
    assert [r["num_faces"] for r in rows] == want, setting
    assert size_bins.count_by_height(gt, setting=setting).tolist() == want
    assert sum(want) == gt.num_faces(setting) - int(np.count_nonzero(h < 0))
    counts[setting] = want
  assert counts == {"easy": [0, 0, 2, 1, 1, 1, 1], "medium": [0, 3, 2, 1, 1, 1, 1],
                    "hard": [1, 4, 2, 1, 1, 1, 1]}


def test_one_bin_against_a_hand_built_ground_truth():
  gt = make_gt()
  rng = np.random.default_rng(3)
  pred = {}
  for key, b in zip(gt.keys, gt.boxes):
    jit = b[b[:, 3] > 0] + rng.normal(0, 1.5, (int((b[:, 3] > 0).sum()), 4)).round(1)
    fp = np.concatenate([rng.uniform(0, 500, (2, 2)), rng.uniform(5, 40, (2, 2))], 1)
    d = np.concatenate([jit, fp]).round(1)
    pred[key] = np.concatenate([d, rng.choice(np.linspace(0.1, 0.9, 5), (len(d), 1))], 1)
  # Bin [10, 20) of the hard setting, written out face by face.
  hand = [np.array(m, bool) for m in ([0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0], [])]
  hand_gt = WiderGroundTruth(keys=gt.keys, boxes=gt.boxes, keep={s: hand for s in
                             wider_io.SETTINGS}, version="current")
  row = size_bins.ap_by_height(pred, gt)[1]
  assert (row["lo"], row["hi"], row["num_faces"]) == (10.0, 20.0, 4)
  want = wider.evaluate(pred, hand_gt, verbose=False).aps["hard"]
  ref, _ = evaluate_reference(gt.boxes, {"hard": hand}, [pred[k] for k in gt.keys])
  assert 0.0 < row["ap"] < 1.0
  assert row["ap"] == want
  assert abs(row["ap"] - ref["hard"]) <= 1e-12


def test_restrict_to_heights_copies_and_errors():
  gt = make_gt()
  before = [k.copy() for k in gt.keep["hard"]]
  sub = size_bins.restrict_to_heights(gt, 10, 20, setting="medium")
  for s in wider_io.SETTINGS:  # every setting gets the medium faces of the bin
    assert [m.tolist() for m in sub.keep[s]] == [
      [False, True, False, False, False, False], [False, True, False, False, False],
      [True, False], []]
  assert all(np.array_equal(a, b) for a, b in zip(gt.keep["hard"], before))  # not mutated
  assert sub.boxes is not gt.boxes and all(a is b for a, b in zip(sub.boxes, gt.boxes))
  assert sub.keep["easy"][0] is not sub.keep["hard"][0]
  with pytest.raises(ValueError, match="unknown setting 'tiny'"):
    size_bins.restrict_to_heights(gt, 0, 10, setting="tiny")
  with pytest.raises(ValueError, match="lo < hi"):
    size_bins.restrict_to_heights(gt, 20, 10)
  with pytest.raises(ValueError, match="strictly increasing"):
    size_bins.ap_by_height({}, gt, edges=(0, 20, 20))


def test_json_round_trip_and_labels():
  rows = [{"lo": 0.0, "hi": 10.0, "num_faces": 0, "ap": None},
          {"lo": 10.0, "hi": math.inf, "num_faces": np.int64(5), "ap": np.float64(0.5)}]
  text = json.dumps(size_bins.to_json(rows), allow_nan=False)  # strict JSON: inf -> null
  assert json.loads(text)[1]["hi"] is None
  assert size_bins.from_json(json.loads(text)) == [
    {"lo": 0.0, "hi": 10.0, "num_faces": 0, "ap": None},
    {"lo": 10.0, "hi": math.inf, "num_faces": 5, "ap": 0.5}]
  assert size_bins.from_json([{"lo": 1, "hi": "inf", "num_faces": 1, "ap": 1}])[0]["hi"] == \
    math.inf
  with pytest.raises(ValueError, match=r"x/aps.json\[0\]: expected keys"):
    size_bins.from_json([{"lo": 1}], where="x/aps.json")
  assert [size_bins.bin_label(a, b) for a, b in [(0, 10), (10, 20), (320, math.inf),
                                                 (2.5, 5)]] == ["<10", "10-20", ">=320",
                                                                "2.5-5"]
  assert size_bins.bin_centre(10, 40) == 20.0
  assert size_bins.bin_centre(320, math.inf) == pytest.approx(320 * 2 ** 0.5)


@pytest.mark.slow
def test_official_val_bins(shared_dir):
  """The RetinaFace-R152 fixture predictions on the official val ground truth (~3 s)."""
  d = shared_dir / "data" / "wider_eval"
  if not (d / "ground_truth" / "wider_face_val.mat").is_file():
    pytest.skip("WIDER evaluation data absent")
  gt = wider_io.load_ground_truth(d / "ground_truth", "current")
  rows = size_bins.ap_by_height(d / "fixtures" / "retinaface_r152", gt)
  assert [r["num_faces"] for r in rows] == [3, 12029, 10186, 5965, 2439, 943, 393]
  assert sum(r["num_faces"] for r in rows) == gt.num_faces("hard")
  aps = [r["ap"] for r in rows]
  assert aps[1] < aps[2] < aps[3] < aps[4]  # small faces are the hard ones
  # Regression values (measured with this module when it was written).
  assert abs(aps[1] - 0.35847484531058116) < 1e-9 and abs(aps[4] - 0.9296411180970452) < 1e-9
