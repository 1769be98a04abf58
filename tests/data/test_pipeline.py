"""Input pipelines on a generated WIDER release: static shapes, cap accounting, per-host
splits, exact-once eval with buckets, and host batches -> global arrays on an 8-device mesh."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.support.wider_fixture import write_wider_release
from tinyfaces_jax.training import sharding
from tinyfaces_jax.data import pipeline
from tinyfaces_jax.data.wider.builder import WiderFace

tfds.disable_progress_bar()
SIZE = 64


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp("wider")
  truth = write_wider_release(root / "release", labels=True, eval_mats=False)
  builder = WiderFace(data_dir=str(root / "tfds"), eval_dir=False)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(root / "release")))
  return builder, truth


def resize_transform(ex, seed):
  """A minimal deterministic transform: resize to SIZE x SIZE, scale boxes (test only)."""
  del seed
  hw = tf.cast(tf.shape(ex["image"])[:2], tf.float32)
  img = tf.image.resize(tf.cast(ex["image"], tf.float32), [SIZE, SIZE])
  s = tf.stack([SIZE / hw[1], SIZE / hw[0]] * 2)
  out = dict(ex, image=img, boxes=ex["boxes"] * s,
             landmarks=ex["landmarks"] * tf.reshape(s[:2], [1, 1, 2]))
  out["valid_region"] = tf.constant([0.0, 0.0, SIZE, SIZE])
  return out


def trainable_counts(truth):
  out = {}
  for im in truth:
    w, h = im.boxes[:, 2], im.boxes[:, 3]
    out[im.name] = int(((w > 0) & (h > 0)).sum())
  return out


def test_train_batches_static_and_cap_counted(release):
  builder, truth = release
  ds = pipeline.train_dataset(builder, "train", batch_size=3, transform=resize_transform,
                              max_boxes=2, seed=0, process_index=0, process_count=1,
                              num_epochs=1)
  want = trainable_counts(truth["train"])
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == len(truth["train"]) // 3          # drop_remainder
  for b in batches:
    assert b["image"].shape == (3, SIZE, SIZE, 3) and b["image"].dtype == np.float32
    assert b["boxes"].shape == (3, 2, 4) and b["box_mask"].shape == (3, 2)
    np.testing.assert_array_equal(b["box_mask"].sum(1), np.minimum(b["num_faces"], 2))
    np.testing.assert_array_equal(b["num_dropped"], np.maximum(b["num_faces"] - 2, 0))
    wh = b["boxes"][..., 2:] - b["boxes"][..., :2]
    assert np.all(wh[b["box_mask"]] > 0)                   # degenerate faces never kept
  # 7 images in batches of 3: exactly one image is left out by drop_remainder.
  assert len(truth["train"]) == 7
  seen = sum(int(n) for b in batches for n in b["num_faces"])
  assert seen in {sum(want.values()) - c for c in want.values()}


def test_train_deterministic_and_hosts_disjoint(release):
  builder, truth = release
  kw = dict(batch_size=1, transform=resize_transform, max_boxes=8, seed=3, num_epochs=1)
  a = [b["image"] for b in pipeline.train_dataset(builder, "train", process_index=0,
                                                  process_count=1, **kw).as_numpy_iterator()]
  b = [b["image"] for b in pipeline.train_dataset(builder, "train", process_index=0,
                                                  process_count=1, **kw).as_numpy_iterator()]
  assert len(a) == len(truth["train"])
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  h0 = list(pipeline.train_dataset(builder, "train", process_index=0, process_count=2,
                                   **kw).as_numpy_iterator())
  h1 = list(pipeline.train_dataset(builder, "train", process_index=1, process_count=2,
                                   **kw).as_numpy_iterator())
  assert len(h0) + len(h1) == len(truth["train"])
  sig = lambda bs: {float(x["image"].sum()) for x in bs}
  assert not sig(h0) & sig(h1)


def test_train_resume_at_any_step_gives_the_same_stream(release):
  """start_step=k yields batches k, k+1, ... of the uninterrupted stream, across epochs."""
  builder, truth = release
  kw = dict(batch_size=2, transform=resize_transform, max_boxes=8, seed=5, shuffle_buffer=4,
            process_index=0, process_count=1)
  full = list(pipeline.train_dataset(builder, "train", **kw).take(12).as_numpy_iterator())
  assert len(truth["train"]) == 7                          # 12 batches of 2 span 4 epochs
  for k in (1, 3, 7, 10):
    resumed = list(pipeline.train_dataset(builder, "train", start_step=k, **kw)
                   .take(12 - k).as_numpy_iterator())
    for a, b in zip(full[k:], resumed):
      for key in ("image", "boxes", "box_mask", "num_faces"):
        np.testing.assert_array_equal(a[key], b[key])
  # Epochs are reshuffled: the first two epochs do not present the images in the same order.
  per_example = [float(x) for b in full for x in b["image"].sum((1, 2, 3))]
  assert per_example[:7] != per_example[7:14]


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_every_image_exactly_once(release, hosts):
  builder, truth = release
  names, total_valid = [], 0
  for p in range(hosts):
    ds = pipeline.eval_dataset(builder, "validation", batch_size=4, max_boxes=16, bucket=32,
                               scale_fn=lambda hw: 0.5, process_index=p, process_count=hosts)
    for b in ds.as_numpy_iterator():
      assert b["image"].shape[0] == 4
      assert b["image"].shape[1] % 32 == 0 and b["image"].shape[2] % 32 == 0
      v = b["valid"]
      total_valid += int(v.sum())
      names += [n.decode() for n in b["filename"][v]]
      assert not b["image"][~v].any()                      # padded rows are empty
      np.testing.assert_array_equal(b["image_hw"][v],
                                    np.round(b["orig_hw"][v] * 0.5).astype(np.int32))
      np.testing.assert_allclose(b["scale"][v], 0.5)
  assert sorted(names) == sorted(im.name for im in truth["validation"])
  assert total_valid == len(truth["validation"])
  by_name = {im.name: im for im in truth["validation"]}
  for n in names:
    assert by_name[n].shape is not None


def test_host_to_global_on_mesh():
  import jax
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  assert sharding.check_batch_size(16, mesh) == 16
  with pytest.raises(ValueError, match="not divisible"):
    sharding.check_batch_size(12, mesh)
  batches = [{"image": np.full((16, 4, 4, 3), i, np.float32), "filename": np.array(["x"] * 16)}
             for i in range(3)]
  out = list(sharding.DevicePrefetcher(iter(batches), mesh))
  assert len(out) == 3
  for i, (dev, host) in enumerate(out):
    assert isinstance(dev["image"], jax.Array) and dev["image"].shape == (16, 4, 4, 3)
    assert len(dev["image"].sharding.device_set) == 8
    assert float(dev["image"][0, 0, 0, 0]) == i and host["filename"].shape == (16,)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_prefetcher_reraises_input_errors_and_closes():
  mesh = sharding.make_mesh()

  def broken():
    yield {"image": np.zeros((8, 2, 2, 3), np.float32)}
    raise ValueError("corrupt record in shard 3")

  it = sharding.DevicePrefetcher(broken(), mesh)
  next(it)
  with pytest.raises(ValueError, match="corrupt record in shard 3"):
    next(it)
  endless = sharding.DevicePrefetcher(
      ({"image": np.zeros((8, 2, 2, 3), np.float32)} for _ in iter(int, 1)), mesh, size=2)
  next(endless)
  endless.close()
  endless._thread.join(5)
  assert not endless._thread.is_alive()


@pytest.mark.parametrize("recipe,size", [("hr", 96), ("retinaface", 64)])
def test_train_with_real_recipes(release, recipe, size):
  from tinyfaces_jax import detectors
  builder, _ = release
  ds = pipeline.train_dataset(builder, "train", batch_size=2,
                              transform=detectors.make_transform(recipe, size=size),
                              max_boxes=8, seed=1, process_index=0, process_count=1)
  b = next(ds.as_numpy_iterator())
  assert b["image"].shape == (2, size, size, 3) and b["valid_region"].shape == (2, 4)
  m = b["box_mask"]
  assert np.all(b["boxes"][m][:, 2:] > b["boxes"][m][:, :2])
  assert np.all(b["boxes"][m] >= -1e-3) and np.all(b["boxes"][m] <= size + 1e-3)


def test_cap_drops_are_logged(release):
  builder, _ = release
  ds = pipeline.train_dataset(builder, "train", batch_size=2, transform=resize_transform,
                              max_boxes=1, seed=0, process_index=0, process_count=1,
                              num_epochs=1)
  messages = []
  gen = pipeline.log_dropped_faces(ds.as_numpy_iterator(), every=1,
                                   log=lambda fmt, *a: messages.append(fmt % a))
  batches = list(gen)
  total_dropped = sum(int(b["num_dropped"].sum()) for b in batches)
  assert total_dropped > 0
  assert messages and f"dropped {total_dropped} of" in messages[-1]
