"""MTCNN training: the stage losses, the P-Net sampler, hard-sample mining and its file, the
R- / O-Net crops, and the three stages through `main --mode=cascade` (training/stages.py),
against the numpy statements of AITTSMD/MTCNN-Tensorflow in tests/reference/mtcnn_training.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import mtcnn as mtcnn_config
from tests.reference import mtcnn_training as ref
from tinyfaces_jax import detectors, paths
from tinyfaces_jax.detectors import base
from tinyfaces_jax.detectors.mtcnn import mining, mtcnn_loss, MTCNNLossConfig, recipe


def _random_batch(rng, n, with_landmarks=True):
  label = rng.choice([0, 1, -1, -2], size=n, p=[0.45, 0.2, 0.15, 0.2])
  out = {"logits": rng.normal(size=(n, 2)), "reg": rng.normal(size=(n, 4)) * 0.2}
  if with_landmarks:
    out["landmarks"] = rng.uniform(size=(n, 10))
  batch = {"label": label, "bbox": rng.normal(size=(n, 4)) * 0.2,
           "landmarks": rng.uniform(size=(n, 10))}
  return out, batch


@pytest.mark.parametrize("seed,n,with_landmarks", [(0, 384, True), (1, 37, False), (2, 5, True)])
def test_loss_is_aittsmds(seed, n, with_landmarks):
  """Classification over the hardest 70% of the labelled samples, box and landmark L2 on
  their samples, the stage weights; P-Net's [b, 1, 1, c] maps reshape to [b, c]."""
  rng = np.random.default_rng(seed)
  out, batch = _random_batch(rng, n, with_landmarks)
  cfg = MTCNNLossConfig(cls_weight=1.0, box_weight=0.5, landmark_weight=1.0)
  as_maps = {k: jnp.asarray(v, jnp.float32).reshape(n, 1, 1, -1) for k, v in out.items()}
  total, m = jax.jit(lambda o, b: mtcnn_loss(o, b, cfg))(
      as_maps, {k: jnp.asarray(v) for k, v in batch.items()})
  cls, box, lm = ref.losses(out["logits"], out["reg"], out.get("landmarks"), batch["label"],
                            batch["bbox"], batch["landmarks"])
  np.testing.assert_allclose([m["loss_cls"], m["loss_box"]], [cls, box], rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(total, cls + 0.5 * box + lm, rtol=2e-5, atol=1e-6)
  assert ("loss_landm" in m) == with_landmarks


def test_loss_with_no_labelled_sample_is_zero():
  out, batch = _random_batch(np.random.default_rng(3), 8)
  batch["label"] = np.full(8, -2)
  total, m = mtcnn_loss(out, {k: jnp.asarray(v) for k, v in batch.items()}, MTCNNLossConfig())
  assert float(m["loss_cls"]) == 0.0 and float(m["loss_box"]) == 0.0 and np.isfinite(total)


def _hard_case(seed):
  rng = np.random.default_rng(seed)
  h, w = 300, 400
  faces = []
  for _ in range(rng.integers(0, 6)):
    fw, fh = rng.integers(15, 90, size=2)
    x, y = rng.integers(0, w - fw), rng.integers(0, h - fh)
    faces.append([x, y, x + fw, y + fh])
  faces = np.asarray(faces, np.float64).reshape(-1, 4)
  dets = []
  for f in faces:                      # detections around each face, some far off
    for _ in range(30):
      c = (f[:2] + f[2:]) / 2 + rng.normal(0, 0.25, 2) * (f[2:] - f[:2])
      s = (f[2:] - f[:2]) * rng.uniform(0.6, 1.5, 2)
      dets.append(np.concatenate([c - s / 2, c + s / 2]))
  for _ in range(120):                 # background, some crossing the border, some tiny
    c = rng.uniform([-20, -20], [w + 20, h + 20])
    s = rng.uniform(5, 80, 2)
    dets.append(np.concatenate([c - s / 2, c + s / 2]))
  dets = np.asarray(dets)[rng.permutation(len(dets))]
  return dets, faces, (h, w)


@pytest.mark.parametrize("seed", range(6))
def test_hard_sample_labels_are_gen_hard_examples(seed):
  """Squaring, rounding, the border / 20 px filter, the IoU labels, the first 60 negatives
  and the offsets, against a per-box loop statement of save_hard_example."""
  dets, faces, hw = _hard_case(seed)
  got = mining.label_detections(dets, faces, hw, mining.MiningConfig(max_negatives=60))
  want = ref.hard_examples(dets, faces, *hw)
  assert len(got["labels"]) == len(want) and len(want) > 10
  np.testing.assert_array_equal(got["labels"], [w[1] for w in want])
  np.testing.assert_allclose(got["squares"], [w[0] for w in want], atol=1e-3)
  np.testing.assert_allclose(got["bbox"], [w[2] for w in want], atol=1e-6)
  assert (got["labels"] == 0).sum() <= 60
  if len(faces):
    assert (got["labels"] == 1).any()


def test_samples_file_round_trip_and_bad_files(tmp_path):
  per_image = {f"e/{i}.jpg": mining.label_detections(*_hard_case(i)[:2], _hard_case(i)[2],
                                                     mining.MiningConfig()) for i in range(3)}
  path = tmp_path / "s.npz"
  path.write_bytes(mining.pack_samples(per_image, "abc"))
  z = mining.load_samples(path)
  assert z["fingerprint"] == "abc" and list(z["keys"]) == sorted(per_image)
  for i, k in enumerate(z["keys"]):
    a, b = z["offsets"][i], z["offsets"][i + 1]
    np.testing.assert_array_equal(z["labels"][a:b], per_image[k]["labels"])
    np.testing.assert_array_equal(z["squares"][a:b], per_image[k]["squares"])
  assert mining.counts(z)["negative"] == sum((v["labels"] == 0).sum() for v in per_image.values())
  path.write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(ValueError, match=r"s.npz: not an MTCNN hard-samples file"):
    mining.load_samples(path)


def test_crops_are_cv2_linear_resizes():
  """24 px crops of 20-60 px squares (upsampled ones reach half a pixel past the square, at
  the image border too) against a loop statement of cv2.resize INTER_LINEAR."""
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, size=(50, 70, 3)).astype(np.float32)
  squares = np.asarray([[0, 0, 20, 20], [50, 30, 70, 50], [5, 3, 53, 51], [13, 2, 24, 13]],
                       np.float32)
  got = recipe._crop(tf.constant(image), tf.constant(squares), 24).numpy()
  for g, s in zip(got, squares):
    np.testing.assert_allclose(g, ref.linear_crop(image, s, 24), atol=2e-3)


def _decoded(seed=0):
  rng = np.random.default_rng(seed)
  boxes = np.asarray([[30, 40, 90, 110], [150, 20, 190, 70], [100, 150, 104, 156],
                      [200, 100, 200, 140]], np.float32)
  lm = np.zeros((4, 5, 2), np.float32)
  lm[0] = [[45, 65], [75, 65], [60, 80], [48, 95], [72, 95]]
  return {"image": tf.constant(rng.integers(0, 255, (180, 240, 3)).astype(np.uint8)),
          "boxes": tf.constant(boxes), "trainable": tf.constant([True, True, True, False]),
          "landmarks": tf.constant(lm), "landmarks_present": tf.constant([True, False, False,
                                                                          False])}


def _iou(a, b):
  lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
  inter = np.prod(np.clip(rb - lt, 0, None))
  return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


@pytest.mark.parametrize("seed", [0, 1])
def test_pnet_sampler_follows_gen_12net_data(seed):
  """Negatives inside the image with IoU < 0.3 to every face (the untrainable one too),
  positives >= 0.65 and parts in [0.4, 0.65) to the face their targets name, landmark targets
  the points in crop fractions; every square inside the image and at least 12 px."""
  d = _decoded(seed)
  boxes = d["boxes"].numpy()
  seen = {}
  for c, kind in enumerate(["negative", "positive", "part", "landmark"]):
    out = {k: v.numpy() for k, v in recipe.draw_samples(
        d, tf.constant([seed, c], tf.int64), kind, 50, 5, 20).items()}
    sq = out["squares"]
    seen[kind] = len(sq)
    side = sq[:, 2] - sq[:, 0]
    assert np.allclose(sq[:, 3] - sq[:, 1], side) and (side >= 12).all()
    assert (sq[:, :2] >= 0).all() and (sq[:, 2] <= 240).all() and (sq[:, 3] <= 180).all()
    for s, t, lab, lmk in zip(sq, out["bbox"], out["label"], out["landmarks"]):
      assert lab == recipe.LABELS[kind]
      if kind == "negative":
        assert max(_iou(s, b) for b in boxes if (b[2:] > b[:2]).all()) < 0.3
      elif kind in ("positive", "part"):
        face = s + t * (s[2] - s[0])      # the targets name the face they came from
        assert any(np.allclose(face, b, atol=1e-3) for b in boxes[:2])
        iou = _iou(s, face)
        assert iou >= 0.65 if kind == "positive" else 0.4 <= iou < 0.65
      else:
        pts = d["landmarks"].numpy()[0]
        np.testing.assert_allclose(lmk, np.concatenate([(pts[:, 0] - s[0]) / (s[2] - s[0]),
                                                        (pts[:, 1] - s[1]) / (s[2] - s[0])]),
                                   atol=1e-5)
  assert seen["negative"] > 10 and seen["positive"] > 0 and seen["landmark"] >= 1


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  from tinyfaces_jax import settings
  from tinyfaces_jax.data import sources
  c = mtcnn_config.get_config("test")
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  spec = settings.dataclass_from(sources.DataConfig, c.data, "config.data")
  return sources.prepare_builder(spec, lambda m: None)


def test_mined_crops_and_mix(tiny_builder, tmp_path):
  """R-Net batches from a samples file: labels in the file's kinds only (no landmark stream:
  R-Net has no landmark head), each crop a cv2 linear resize of a mined square of its image
  (mirrored or not), targets as mined (x negated and swapped when mirrored)."""
  import tensorflow_datasets as tfds
  ds = tiny_builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  per_image, images = {}, {}
  for ex in ds.as_numpy_iterator():
    key = ex["image/filename"].decode()
    img = tf.io.decode_jpeg(ex["image"]).numpy()
    images[key] = img
    h, w = img.shape[:2]
    per_image[key] = {"squares": np.asarray([[0, 0, 24, 24], [w - 30, h - 30, w, h]],
                                            np.float32),
                      "labels": np.asarray([0, 1], np.int8),
                      "bbox": np.asarray([[0, 0, 0, 0], [0.1, -0.1, 0.05, 0.0]], np.float32)}
  path = tmp_path / "mined.npz"
  path.write_bytes(mining.pack_samples(per_image, "x"))
  batches = recipe.train_dataset(
      tiny_builder, "train", batch_size=16, size=24, max_boxes=1, seed=0, start_step=0,
      shuffle_buffer=4, threads=0, ram_budget_gb=0, stage="rnet", hard_samples=str(path),
      mix=(3.0, 1.0, 0.0, 2.0), colour=False, log=lambda m: None)
  batch = next(batches.as_numpy_iterator())
  assert set(batch["label"]) <= {0, 1} and batch["image"].shape == (16, 24, 24, 3)
  crops = {}
  for key, img in images.items():
    for s, lab in zip(per_image[key]["squares"], (0, 1)):
      c = ref.linear_crop(img.astype(np.float64), s, 24)
      crops.setdefault(lab, []).extend([c, c[:, ::-1]])
  for image, lab, t in zip(batch["image"], batch["label"], batch["bbox"]):
    err = min(np.abs(image - c).max() for c in crops[int(lab)])
    assert err < 0.05, err
    if lab == 1:
      assert np.allclose(t, [0.1, -0.1, 0.05, 0.0], atol=1e-6) or np.allclose(
          t, [-0.05, -0.1, -0.1, 0.0], atol=1e-6)
  # A kind missing from this host's images is named, not a hang.
  for v in per_image.values():
    v["labels"][:] = 0
  path.write_bytes(mining.pack_samples(per_image, "x"))
  with pytest.raises(ValueError, match=r"mined.npz: no positive / part sample on this host's share"):
    recipe.train_dataset(tiny_builder, "train", batch_size=16, size=24, max_boxes=1, seed=0,
                         start_step=0, shuffle_buffer=4, threads=0, ram_budget_gb=0,
                         stage="rnet", hard_samples=str(path), log=lambda m: None)


def test_mining_reuses_its_file_until_the_weights_change(tiny_builder, tmp_path):
  """prepare_training mines once (the cascade up to P-Net over the split), writes the file
  and reuses it while the fingerprint (earlier nets, settings, split) matches."""
  c = mtcnn_config.get_config(f"test,stage=rnet,previous={tmp_path}")
  det = detectors.build_detector("mtcnn", c.model, c.loss)
  variables = jax.jit(lambda: det.init_variables((24, 24)))()
  calls = []
  faces = mining.split_faces(tiny_builder, "train")
  hw = np.asarray([500, 500])
  kept = {k: mining.label_detections(f, f, hw, mining.MiningConfig())["labels"]
          for k, f in faces.items()}
  key = next(k for k, lab in kept.items() if len(lab) and (lab == 1).all())  # faces >= 20 px

  def predict_split(predict, variables, reduce):
    """A stand-in pass: the image's faces (positives) and three corners (negatives)."""
    calls.append(1)
    boxes = np.concatenate([faces[key], [[300, 300, 340, 340], [400, 400, 440, 440],
                                         [350, 50, 390, 90]]]).astype(np.float32)
    if len(calls) > 1:
      boxes = boxes[len(faces[key]):]
    return {key: reduce(key, {"boxes": boxes, "scores": np.ones(len(boxes)), "image_hw": hw})}

  ctx = base.TrainingContext(
      builder=tiny_builder, split="train", options=c.data.recipe_options.to_dict(),
      workdir=paths.resolve(tmp_path), predict_split=predict_split,
      host0_first=lambda name, fn: fn(), any_host=bool, log=lambda m: None)
  opts = det.prepare_training(variables, ctx)
  assert opts["hard_samples"] == str(tmp_path / "mtcnn_rnet_samples.npz") and len(calls) == 1
  assert "mining" not in opts and opts["stage"] == "rnet"
  n = mining.counts(mining.load_samples(opts["hard_samples"]))
  assert n == {"negative": 3, "positive": len(kept[key]), "part": 0}
  det.prepare_training(variables, ctx)
  assert len(calls) == 1
  # Other earlier nets (or an O-Net change: not in the fingerprint of the rnet stage).
  onet = jax.tree.map(lambda x: x + 1, variables["params"]["onet"])
  det.prepare_training({"params": dict(variables["params"], onet=onet)}, ctx)
  assert len(calls) == 1
  pnet = jax.tree.map(lambda x: x + 1, variables["params"]["pnet"])
  with pytest.raises(ValueError, match="found no positive sample"):  # now the fake finds none
    det.prepare_training({"params": dict(variables["params"], pnet=pnet)}, ctx)
  assert len(calls) == 2


def test_stage_configs_and_their_errors(tmp_path):
  from tinyfaces_jax.training import stages
  runs = stages.stage_configs("configs/mtcnn.py:embedded", {"data.data_dir": "/d"}, tmp_path)
  assert [(s, str(r)) for s, r, _ in runs] == [(s, str(tmp_path / s))
                                               for s in ("pnet", "rnet", "onet")]
  for (stage, _, c), prev in zip(runs, ["", tmp_path / "pnet", tmp_path / "rnet"]):
    assert c.model.train_stage == stage and c.data.data_dir == "/d"
    assert c.init.checkpoint == str(prev) and c.data.image_size == {
        "pnet": 12, "rnet": 24, "onet": 48}[stage]
    assert [f for f in c.optim.frozen] == [f"^{s}/" for s in ("pnet", "rnet", "onet")
                                           if s != stage]
  assert runs[2][2].loss.landmark_weight == 1.0 and runs[1][2].loss.landmark_weight == 0.5
  with pytest.raises(ValueError, match="declares no CASCADE_STAGES"):
    stages.stage_configs("configs/test.py", {}, tmp_path)
  with pytest.raises(ValueError, match="without stage= / previous="):
    stages.stage_configs("configs/mtcnn.py:stage=rnet", {}, tmp_path)
  with pytest.raises(ValueError, match=r"stage=rnet starts from the trained pnet: give "
                                       r"previous=<its workdir>"):
    mtcnn_config.get_config("stage=rnet")
  with pytest.raises(ValueError, match=r"stage='qnet'; known"):
    mtcnn_config.get_config("stage=qnet")


@pytest.mark.slow
def test_cascade_mode_trains_the_three_stages(tmp_path):
  """`main --mode=cascade --config=configs/mtcnn.py:test`: P-Net, then R-Net and O-Net from
  the stage before on its mined samples; the earlier nets stay as trained; a rerun skips the
  finished stages."""
  from tinyfaces_jax.training import checkpointing, stages
  r = stages.train_stages("configs/mtcnn.py:test", {}, tmp_path, log=lambda m: None)
  assert not r["preempted"] and list(r["stages"]) == ["pnet", "rnet", "onet"]
  det = detectors.build_detector("mtcnn", mtcnn_config.get_config(
      f"test,stage=onet,previous={tmp_path}/rnet").model)
  v = {s: checkpointing.model_variables(det, str(tmp_path / s))[0]["params"]
       for s in ("pnet", "rnet", "onet")}
  for net, trained_in in (("pnet", "pnet"), ("rnet", "rnet")):
    for later in ("rnet", "onet")[("pnet", "rnet").index(trained_in):]:
      for a, b in zip(jax.tree.leaves(v[trained_in][net]), jax.tree.leaves(v[later][net])):
        np.testing.assert_array_equal(a, b)
  for s in ("rnet", "onet"):
    assert (tmp_path / s / f"mtcnn_{s}_samples.npz").is_file()
    assert (tmp_path / s / "eval" / "step_4" / "summary.json").is_file()
  again = stages.train_stages("configs/mtcnn.py:test", {}, tmp_path, log=lambda m: None)
  assert again["stages"] == {"pnet": "done", "rnet": "done", "onet": "done"}
