"""The landmark evaluator: NME / failure rate against a hand-worked case and a loop statement,
and the `landmarks` evaluator type on a generated WIDER release whose train split carries
RetinaFace label.txt landmarks."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tinyfaces_jax.evaluation import evaluators, landmarks

tfds.disable_progress_bar()


def test_hand_worked_errors():
  gt = {"a": {"boxes": np.asarray([[0, 0, 100, 100], [200, 0, 240, 60]], np.float64),
              "landmarks": np.asarray([[[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]],
                                       [[210, 20], [230, 20], [220, 30], [212, 45],
                                        [228, 45]]], np.float64),
              "present": np.asarray([True, False])}}
  pts = gt["a"]["landmarks"][0] + np.asarray([4.0, 3.0])          # every point 5 px off
  dets = {"a": {"boxes": np.asarray([[2, 1, 101, 99], [0, 0, 100, 100]], np.float32),
                "scores": np.asarray([0.9, 0.5], np.float32),
                "landmarks": np.stack([pts, pts + 50])}}
  r = landmarks.evaluate(dets, gt)
  s = r.summary()
  assert (s["num_faces"], s["num_matched"]) == (1, 1)              # the second face has none
  assert s["nme_interocular"] == pytest.approx(5 / 40)             # inter-ocular 40 px
  assert s["nme_box"] == pytest.approx(5 / 100)
  assert s["failure_rate"] == 1.0                                  # 0.125 > 0.1
  # The higher-scoring detection takes the face (the lower one would be exact but comes later).
  dets["a"]["scores"] = np.asarray([0.5, 0.9], np.float32)
  assert landmarks.evaluate(dets, gt).summary()["nme_interocular"] == pytest.approx(
      np.hypot(54, 53) / 40)
  # No detection above IoU 0.5: counted, not scored.
  dets["a"]["boxes"] = dets["a"]["boxes"] + 60
  s = landmarks.evaluate(dets, gt).summary()
  assert s["num_matched"] == 0 and s["nme_interocular"] is None and s["matched"] == 0


def loop_statement(dets, truth, iou=0.5, thr=0.1):
  """Greedy matching and the two NMEs, one pair at a time (continuous IoU)."""
  def iou_of(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
  eo, eb = [], []
  for key, t in truth.items():
    faces = [g for g in range(len(t["boxes"])) if t["present"][g]]
    d = dets[key]
    taken = {}
    for k in sorted(range(len(d["scores"])), key=lambda k: (-d["scores"][k], k)):
      free = [g for g in faces if g not in taken]
      if not free:
        break
      ov = [iou_of(d["boxes"][k], t["boxes"][g]) for g in free]
      best = int(np.argmax(ov))
      if ov[best] >= iou:
        taken[free[best]] = k
    for g, k in taken.items():
      q = t["landmarks"][g]
      err = sum(np.hypot(*(d["landmarks"][k][i] - q[i])) for i in range(5)) / 5
      w, h = t["boxes"][g][2] - t["boxes"][g][0], t["boxes"][g][3] - t["boxes"][g][1]
      eo.append(err / np.hypot(*(q[0] - q[1])))
      eb.append(err / np.sqrt(w * h))
  return np.mean(eo), np.mean(eb), np.mean(np.asarray(eo) > thr), len(eo)


def test_matches_the_loop_statement_on_random_scenes():
  rng = np.random.default_rng(3)
  truth, dets = {}, {}
  for i in range(6):
    n = rng.integers(1, 12)
    xy = rng.uniform(0, 400, (n, 2))
    wh = rng.uniform(15, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    pts = xy[:, None] + wh[:, None] * rng.uniform(0.2, 0.8, (n, 5, 2))
    truth[f"e/{i}.jpg"] = {"boxes": boxes, "landmarks": pts, "present": rng.uniform(size=n) > .3}
    m = n + 3
    src = rng.integers(0, n, m)
    dets[f"e/{i}.jpg"] = {"boxes": boxes[src] + rng.normal(0, 6, (m, 4)),
                          "scores": rng.uniform(size=m).astype(np.float32),
                          "landmarks": pts[src] + rng.normal(0, 3, (m, 5, 2))}
  s = landmarks.evaluate(dets, truth).summary()
  eo, eb, fail, n = loop_statement(dets, truth)
  assert s["num_matched"] == n > 10
  assert s["nme_interocular"] == pytest.approx(eo)
  assert s["nme_box"] == pytest.approx(eb)
  assert s["failure_rate"] == pytest.approx(fail)
  t, frac = landmarks.cumulative_error([0.05, 0.15, 0.25], limit=0.3, steps=4)
  np.testing.assert_allclose(frac, [0, 1 / 3, 2 / 3, 1])


def test_evaluator_on_a_wider_release_with_labels(tmp_path):
  from tests.support.wider_fixture import write_wider_release
  from tinyfaces_jax.data.wider.builder import WiderFace
  truth = write_wider_release(tmp_path / "release", labels=True, eval_mats=False)
  builder = WiderFace(data_dir=str(tmp_path / "tfds"), eval_dir=False)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "release")))
  (ev,) = evaluators.make_evaluators({"lm": {"type": "landmarks", "split": "train"}}, builder,
                                     "validation")
  rng = np.random.default_rng(0)
  dets, want = {}, []
  for im in truth["train"]:
    keep = im.attributes[:, 3] == 0                                # not invalid
    b = im.boxes[keep].astype(np.float64)
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    pts = im.landmarks[keep] + rng.normal(0, 0.5, im.landmarks[keep].shape)
    dets[im.name] = {"boxes": xyxy, "scores": np.linspace(1, 0.5, len(b)), "landmarks": pts}
    for g in np.nonzero(im.landmarks_present[keep])[0]:
      q = im.landmarks[keep][g]
      if (b[g, 2:] > 0).all():
        want.append(np.linalg.norm(pts[g] - q, axis=1).mean() / np.linalg.norm(q[0] - q[1]))
  s = ev.evaluate(dets, tmp_path / "out")
  assert s["num_matched"] == len(want) > 3
  assert s["scalars"]["nme_interocular"] == pytest.approx(np.mean(want), rel=1e-5)
  assert (tmp_path / "out" / "landmarks_ced.png").stat().st_size > 5000
  assert json.loads((tmp_path / "out" / "landmarks.json").read_text())["num_faces"] >= len(want)
  assert ev.describe(s)[0].startswith("landmarks NME ")
  # The val split has no landmarks: said so, NaN scalars.
  (val,) = evaluators.make_evaluators({"lm": {"type": "landmarks"}}, builder, "validation")
  s = val.evaluate({}, tmp_path / "val")
  assert np.isnan(s["scalars"]["nme_interocular"]) and "none to score" in val.describe(s)[0]
  with pytest.raises(Exception, match="failure_threshhold"):
    evaluators.make_evaluators({"lm": {"type": "landmarks", "failure_threshhold": 1}}, builder,
                               "validation")
