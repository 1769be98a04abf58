"""eval_loop.py host-side pieces: the multi-host merge of detections (with a stand-in for the
cross-host all-gather), the eval section split into inference + loop settings, and the
evaluators chosen by type."""

import numpy as np
import pytest

from tinyfaces_jax import settings
from tinyfaces_jax.training import eval_loop


def test_allgather_merges_every_hosts_detections(monkeypatch):
  """Two hosts with different images and sizes: every host ends with the union, rows intact."""
  from jax.experimental import multihost_utils
  host_a = {"0--A/a1.jpg": {"boxes": np.arange(8, dtype=np.float32).reshape(2, 4),
                            "scores": np.asarray([0.9, 0.5], np.float32),
                            "image_hw": np.asarray([40, 60], np.int32)},
            "0--A/a2.jpg": {"boxes": np.zeros((0, 4), np.float32),
                            "scores": np.zeros((0,), np.float32),
                            "landmarks": np.zeros((0, 5, 2), np.float32)}}
  host_b = {"1--B/b1.jpg": {"boxes": np.full((3, 4), 7.5, np.float32),
                            "scores": np.full((3,), 0.25, np.float32)}}

  def fake_allgather(x):
    x = np.asarray(x)
    if x.dtype == np.int64:                        # the size exchange comes first
      other = eval_loop.pack_detections(host_b).size
      return np.stack([x, np.asarray([other], np.int64)])
    other = eval_loop.pack_detections(host_b)
    padded = np.zeros_like(x)
    padded[:other.size] = other
    return np.stack([x, padded])

  monkeypatch.setattr("jax.process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
  merged = eval_loop._allgather(host_a)
  assert sorted(merged) == ["0--A/a1.jpg", "0--A/a2.jpg", "1--B/b1.jpg"]
  for host in (host_a, host_b):
    for key, fields in host.items():
      assert sorted(merged[key]) == sorted(fields)
      for name, value in fields.items():
        assert merged[key][name].dtype == value.dtype
        np.testing.assert_array_equal(merged[key][name], value)


def test_eval_section_split_and_typos():
  inf, loop = eval_loop.split_eval_section(
      {"scales": [0.5, 1.0], "flip": True, "batch_size": 0, "max_images": 3,
       "evaluators": {"val": {"type": "wider", "gt_dir": "x"}}})
  assert inf.scales == (0.5, 1.0) and inf.flip and loop.batch_size == 0
  assert loop.max_images == 3 and loop.evaluators == {"val": {"type": "wider", "gt_dir": "x"}}
  assert eval_loop.split_eval_section({})[1].evaluators == {"wider": {"type": "wider"}}
  with pytest.raises(settings.ConfigError, match=r"config.eval.flipp \(did you mean "
                                                 r"config.eval.flip\?\)"):
    eval_loop.split_eval_section({"flipp": True})


def test_evaluators_by_type_and_their_config_errors(tmp_path):
  """Entries pick their class by type; a misspelt option or type names the entry."""
  from tinyfaces_jax.evaluation import evaluators
  (wider,) = evaluators.make_evaluators({"val": {"type": "wider", "split": "train"}}, "B",
                                        "validation", max_images=5)
  assert isinstance(wider, evaluators.WiderEvaluator) and wider.name == "val"
  assert wider.images() == evaluators.ImageSet(builder="B", split="train[:5]")
  with pytest.raises(settings.ConfigError, match=r"config.eval.evaluators.val.gt_dirr "
                                                 r"\(did you mean config.eval.evaluators.val"
                                                 r".gt_dir\?\)"):
    evaluators.make_evaluators({"val": {"type": "wider", "gt_dirr": ""}}, "B", "validation")
  with pytest.raises(settings.ConfigError, match=r"config.eval.evaluators.x.type: unknown "
                                                 r"evaluator type 'widerr'; known: \['fddb', "
                                                 r"'landmarks', 'photos', 'wider'\]"):
    evaluators.make_evaluators({"x": {"type": "widerr"}}, "B", "validation")
  with pytest.raises(settings.ConfigError, match="config.eval.evaluators.f: images_dir is "
                                                 "required"):
    evaluators.make_evaluators({"f": {"type": "fddb", "folds_dir": str(tmp_path)}}, None, "")


def test_wider_evaluator_logit_scores_same_aps(tmp_path):
  """score_format=logit writes log(p / (1 - p)) (the HR release's raw scores) and leaves the
  APs unchanged (a monotone map)."""
  from tinyfaces_jax.evaluation import evaluators, wider_io
  gt = wider_io.WiderGroundTruth(
      keys=["0--a/img0", "0--a/img1"],
      boxes=[np.array([[10, 10, 20, 20], [50, 50, 30, 30]], float), np.array([[5, 5, 40, 40]], float)],
      keep={s: [np.array([True, True]), np.array([True])] for s in wider_io.SETTINGS},
      version="current")
  dets = {"0--a/img0.jpg": {"boxes": np.array([[10, 10, 30, 30], [50, 50, 80, 80], [0, 0, 5, 5]]),
                            "scores": np.array([0.9, 0.4, 0.7])},
          "0--a/img1.jpg": {"boxes": np.array([[5, 5, 45, 45], [100, 100, 120, 120]]),
                            "scores": np.array([0.6, 0.95])}}
  results = {}
  for fmt in ("probability", "logit"):
    (ev,) = evaluators.make_evaluators({"val": {"type": "wider", "score_format": fmt}}, None,
                                       "validation")
    ev._gt = gt
    results[fmt] = ev.evaluate(dets, tmp_path / fmt)
  assert results["probability"] == results["logit"]
  rows = wider_io.read_predictions(tmp_path / "logit" / "predictions")
  np.testing.assert_allclose(sorted(rows["0--a/img1"][:, 4]),
                             sorted(np.log([0.6, 0.95]) - np.log1p(-np.array([0.6, 0.95]))),
                             rtol=1e-4)
  with pytest.raises(settings.ConfigError, match="score_format"):
    evaluators.make_evaluators({"val": {"type": "wider", "score_format": "logits"}}, None, "v")
