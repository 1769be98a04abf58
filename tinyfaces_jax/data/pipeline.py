"""tf.data input pipelines: per-host train batches with fixed shapes, and exact-once eval.

Train (`train_dataset`): this host's share of the split (`tfds.split_for_jax_process`),
per-epoch seeded shuffling, repeat, exact resume at any step (`start_step`), decode, a per-detector augmentation `transform(example, seed)`
(see transforms.py) with a stateless per-example seed, faces padded to `max_boxes` with a
`box_mask` (faces beyond the cap are dropped and counted per example in `num_dropped`), batches
of the host-local size with `drop_remainder`, prefetch. Every batch has static shapes:
  image [b, S, S, 3] float32, boxes [b, M, 4] xyxy, box_mask [b, M] bool,
  landmarks [b, M, 5, 2], landmarks_present [b, M] bool, valid_region [b, 4],
  num_faces [b] int32 (trainable faces before the cap), num_dropped [b] int32.

Eval (`eval_dataset` over a split, `files_eval_dataset` over image files): every image of this
host's share exactly once; images optionally scaled
(`scale_fn`) and padded bottom/right to a size bucket (multiples of `bucket`, so one compile
per bucket, not per image), batched within a bucket; the last batch of a bucket is padded with
`valid=False` rows. Carries what maps boxes back to original pixels:
  image [b, Hb, Wb, 3] float32, image_hw [b, 2] int32 (the scaled image inside the padding),
  orig_hw [b, 2] int32, scale [b] float32 (scaled / original), valid [b] bool,
  filename [b] string, boxes [b, M, 4] original-pixel ground truth, box_mask [b, M].

Example features are those of the TFDS builder in wider/builder.py.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

Transform = Callable[[dict, tf.Tensor], dict]
AUTOTUNE = tf.data.AUTOTUNE


def hide_gpus_from_tf() -> None:
  """tf.data must not grab accelerator memory that JAX owns."""
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):  # already initialised, or no such device type
    pass


def decode_example(ex: dict) -> dict:
  """TFDS example -> the transform contract: image uint8 [H, W, 3], boxes [N, 4] xyxy,
  trainable [N], landmarks [N, 5, 2], landmarks_present [N], filename []."""
  faces = ex["faces"]
  image = ex["image"]
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  return {"image": image, "boxes": tf.cast(faces["bbox"], tf.float32),
          "trainable": faces["trainable"], "landmarks": tf.cast(faces["landmarks"], tf.float32),
          "landmarks_present": faces["landmarks_present"],
          "filename": ex["image/filename"]}


def pad_faces(ex: dict, max_boxes: int) -> dict:
  """Keeps the trainable faces, pads/caps them to `max_boxes` slots with a mask.

  Non-trainable faces (w or h <= 0) never reach the model. When more than `max_boxes`
  trainable faces remain, the first `max_boxes` are kept and the rest counted in
  `num_dropped` (the pipeline's caller logs the total).
  """
  keep = ex["trainable"]
  boxes = tf.boolean_mask(ex["boxes"], keep)
  lms = tf.boolean_mask(ex["landmarks"], keep)
  lm_ok = tf.boolean_mask(ex["landmarks_present"], keep)
  n = tf.shape(boxes)[0]
  kept = tf.minimum(n, max_boxes)
  pad = max_boxes - kept
  out = {k: v for k, v in ex.items()
         if k not in ("boxes", "trainable", "landmarks", "landmarks_present", "filename")}
  out["boxes"] = tf.pad(boxes[:kept], [[0, pad], [0, 0]])
  out["box_mask"] = tf.range(max_boxes) < kept
  out["landmarks"] = tf.pad(lms[:kept], [[0, pad], [0, 0], [0, 0]], constant_values=-1.0)
  out["landmarks_present"] = tf.pad(lm_ok[:kept], [[0, pad]])
  out["num_faces"] = tf.cast(n, tf.int32)
  out["num_dropped"] = tf.cast(n - kept, tf.int32)
  for k, shape in (("boxes", [max_boxes, 4]), ("box_mask", [max_boxes]),
                   ("landmarks", [max_boxes, 5, 2]), ("landmarks_present", [max_boxes])):
    out[k] = tf.ensure_shape(out[k], shape)
  return out


def host_split(split: str, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> str:
  """This host's share of a TFDS split (`tfds.split_for_jax_process` without needing jax)."""
  import tensorflow_datasets as tfds
  if process_index is None or process_count is None:
    return tfds.split_for_jax_process(split)
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def train_dataset(builder, split: str, *, batch_size: int, transform: Transform,
                  max_boxes: int, seed: int = 0, shuffle_buffer: int = 1024,
                  process_index: Optional[int] = None, process_count: Optional[int] = None,
                  num_epochs: Optional[int] = None, start_step: int = 0,
                  threads: int = 0, ram_budget_gb: float = 0.0) -> tf.data.Dataset:
  """Host-local training batches (`batch_size` = this host's share of the global batch).

  The stream is a pure function of (seed, host, step): epoch e reads this host's records in
  file order through a shuffle buffer seeded by (seed, host, e); example j of the host's
  stream (j = e * N + position) gets the augmentation seed fold_in((seed, host), j); batch k
  holds examples [k * batch_size, (k + 1) * batch_size). So `start_step=k` resumes exactly
  where an uninterrupted run would be at step k, reading at most one epoch of records to get
  there (the skip happens before decoding).

  Args:
    builder: a prepared TFDS builder (e.g. wider.builder.WiderFace).
    split: e.g. "train".
    transform: `(example, seed [2] int32) -> example` with a fixed-size float32 image.
    max_boxes: M, ground-truth slots per image.
    seed: data order and augmentation seed; each host folds in its index.
    process_index / process_count: override jax's (for tests); default jax.process_*().
    num_epochs: None repeats forever; else the stream ends after that many epochs (counted
      from epoch 0, also when resuming).
    start_step: the first batch produced is batch `start_step` of the stream.
    threads: size of the pipeline's private thread pool (0: tf.data's shared default); a
      private pool keeps input threads from competing with the host's JAX runtime threads.
    ram_budget_gb: autotune's memory budget for prefetch buffers (0: tf.data's default, half
      of the host's RAM).
  """
  hide_gpus_from_tf()
  if process_index is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  sub = host_split(split, process_index, process_count)
  import tensorflow_datasets as tfds
  num_examples = int(builder.info.splits[sub].num_examples)
  if num_examples == 0:
    raise ValueError(f"split {sub!r} of {builder.name} has no examples for host "
                     f"{process_index} of {process_count}")
  base = builder.as_dataset(split=sub, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  first_epoch, offset = divmod(int(start_step) * batch_size, num_examples)
  last_epoch = tf.int64.max if num_epochs is None else int(num_epochs)
  host_seed = tf.constant(seed * 1000003 + process_index * 7919, tf.int64)
  n = tf.constant(num_examples, tf.int64)

  def epoch(e):
    order = base.shuffle(shuffle_buffer, seed=host_seed + e * 104729,
                         reshuffle_each_iteration=False)
    return order.enumerate().map(lambda p, ex: (e * n + p, ex))

  ds = tf.data.Dataset.range(first_epoch, last_epoch).flat_map(epoch).skip(offset)
  base_seed = tf.constant([seed, process_index], tf.int32)

  def prepare(j, ex):
    ex_seed = tf.random.experimental.stateless_fold_in(base_seed, tf.cast(j, tf.int32))
    out = transform(decode_example(ex), ex_seed)
    return pad_faces(out, max_boxes)

  ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(AUTOTUNE).with_options(dataset_options(threads, ram_budget_gb))


def dataset_options(threads: int = 0, ram_budget_gb: float = 0.0) -> tf.data.Options:
  """tf.data options of the training stream (deterministic order, autotuned parallelism)."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  if threads:
    options.threading.private_threadpool_size = int(threads)
  if ram_budget_gb:
    options.autotune.ram_budget = int(ram_budget_gb * (1 << 30))
  return options


def _bucket_size(size: tf.Tensor, bucket: int) -> tf.Tensor:
  return (size + bucket - 1) // bucket * bucket


def eval_dataset(builder, split: str, *, batch_size: int, max_boxes: int, bucket: int = 128,
                 scale_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                 max_size: int = 4096, pad_value=(0.0, 0.0, 0.0),
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> tf.data.Dataset:
  """Every image of this host's share of `split` exactly once, bucketed by padded size.

  Args:
    scale_fn: `(hw [2] int32) -> scale` float32 scalar applied before padding (e.g. the
      RetinaFace test resize); default 1 (original size).
    bucket: padded H and W are multiples of it (one compile per (Hb, Wb) pair).
    max_size: error out on larger scaled images (a guard against runaway memory).
    pad_value: RGB value of the bottom/right padding inside an image (e.g. the detector's
      mean, which its preprocessing maps to zero); padded batch rows stay zero.
  """
  hide_gpus_from_tf()
  if process_index is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  sub = host_split(split, process_index, process_count)
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=sub, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(decode_example, num_parallel_calls=AUTOTUNE, deterministic=True)
  return _eval_batches(ds, batch_size=batch_size, max_boxes=max_boxes, bucket=bucket,
                       scale_fn=scale_fn, max_size=max_size, pad_value=pad_value)


def files_eval_dataset(files, keys, *, batch_size: int, bucket: int = 128,
                       scale_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                       max_size: int = 4096, pad_value=(0.0, 0.0, 0.0),
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None) -> tf.data.Dataset:
  """`eval_dataset` over image files (JPEG / PNG / BMP / GIF paths or URLs, any channel
  count): this host's share is every `process_count`-th file from `process_index`; `filename`
  carries the file's key (`keys[i]`); there is no ground truth (boxes all padding, max_boxes
  1). A file that does not decode stops the pass with an error naming it."""
  hide_gpus_from_tf()
  files, keys = [str(f) for f in files], [str(k) for k in keys]
  if len(files) != len(keys):
    raise ValueError(f"{len(files)} files but {len(keys)} keys")
  if process_index is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  files, keys = files[process_index::process_count], keys[process_index::process_count]
  ds = tf.data.Dataset.from_tensor_slices((tf.constant(files, tf.string),
                                           tf.constant(keys, tf.string)))

  def read(path, key):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return {"image": image, "boxes": tf.zeros([0, 4], tf.float32), "filename": key}

  ds = ds.map(read, num_parallel_calls=AUTOTUNE, deterministic=True)
  return _eval_batches(ds, batch_size=batch_size, max_boxes=1, bucket=bucket,
                       scale_fn=scale_fn, max_size=max_size, pad_value=pad_value)


def _eval_batches(ds: tf.data.Dataset, *, batch_size: int, max_boxes: int, bucket: int,
                  scale_fn, max_size: int, pad_value) -> tf.data.Dataset:
  """Decoded examples {image uint8 [H, W, 3], boxes [N, 4], filename} -> the eval batches of
  the module docstring (scaled, padded to buckets, grouped, last batches padded)."""

  def prepare(d):
    img = d["image"]
    hw = tf.shape(img)[:2]
    scale = tf.constant(1.0) if scale_fn is None else tf.cast(scale_fn(hw), tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(tf.cast(hw, tf.float32) * scale), tf.int32), 1)
    tf.debugging.Assert(tf.reduce_max(new_hw) <= max_size,
                        ["eval image larger than max_size after scaling:", d["filename"],
                         new_hw, max_size])
    img = tf.image.resize(tf.cast(img, tf.float32), new_hw, method="bilinear", antialias=True)
    hb, wb = _bucket_size(new_hw[0], bucket), _bucket_size(new_hw[1], bucket)
    fill = tf.constant(pad_value, tf.float32)
    img = tf.pad(img - fill, [[0, hb - new_hw[0]], [0, wb - new_hw[1]], [0, 0]]) + fill
    n = tf.minimum(tf.shape(d["boxes"])[0], max_boxes)
    return {"image": img, "image_hw": new_hw, "orig_hw": tf.cast(hw, tf.int32),
            "scale": scale, "valid": tf.constant(True), "filename": d["filename"],
            "boxes": tf.pad(d["boxes"][:n], [[0, max_boxes - n], [0, 0]]),
            "box_mask": tf.range(max_boxes) < n, "key": hb * 100003 + wb}

  ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)

  def batch_window(key, window):
    return window.padded_batch(batch_size)

  ds = ds.group_by_window(lambda ex: tf.cast(ex["key"], tf.int64), batch_window,
                          window_size=batch_size)
  return ds.map(lambda b: _pad_batch(b, batch_size)).prefetch(AUTOTUNE)


def _pad_batch(batch: dict, batch_size: int) -> dict:
  """Pads the leading dim of every field to batch_size; padded rows have valid=False."""
  n = tf.shape(batch["valid"])[0]
  out = {}
  for k, v in batch.items():
    if k == "key":
      continue
    pad = [[0, batch_size - n]] + [[0, 0]] * (len(v.shape) - 1)
    out[k] = tf.pad(v, pad)
  return out


def log_dropped_faces(batches, every: int = 100, log=None):
  """Wraps an iterator of numpy train batches; logs how many faces the `max_boxes` cap drops.

  Every `every` batches (and when the iterator ends) logs the running totals of
  `num_faces` and `num_dropped` (absl logging at WARNING when anything was dropped, so it
  shows in quiet runs). Yields the batches unchanged; the final (faces, dropped) totals are
  the generator's return value.
  """
  if log is None:
    from absl import logging as absl_logging
    log = absl_logging.warning
  faces = dropped = 0
  n = 0

  def report():
    if dropped:
      log("max_boxes cap dropped %d of %d trainable faces (%.2f%%) in %d batches",
          dropped, faces, 100.0 * dropped / max(faces, 1), n)

  for batch in batches:
    if "num_faces" in batch:  # whole-image batches (a family's own crops may not count)
      faces += int(batch["num_faces"].sum())
      dropped += int(batch["num_dropped"].sum())
    n += 1
    if n % every == 0:
      report()
    yield batch
  report()
  return faces, dropped
