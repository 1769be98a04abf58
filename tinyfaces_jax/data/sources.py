"""Where a run's data comes from: the embedded dataset or the user's WIDER FACE release.

`prepare_builder(cfg)` returns a prepared `WiderFace` TFDS builder:
  * source "embedded": builds the embedded WIDER-format release and prepares it, once per
    set of embedded parameters, under `<data_dir>/tinyfaces_embedded/<train>x<val>_<px>/`;
  * source "wider": prepares the official release files in `manual_dir` into `data_dir`
    (once; later runs reuse the prepared dataset).
`ground_truth(builder, split)` reads the split's faces (no image decoding) as a
`WiderGroundTruth` for the WIDER evaluator: boxes x y w h and, per setting, the faces that
count: easy / medium / hard from the eval_tools files when the dataset was built with them,
else every face that is not `invalid` and has w, h > 0 (the same set for all three settings).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import numpy as np

from tinyfaces_jax import paths
from tinyfaces_jax.evaluation import wider_io

SOURCES = ("embedded", "wider")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` config section (see configs/common.py for each field's meaning)."""
  source: str = "embedded"
  data_dir: str = "~/tensorflow_datasets"
  manual_dir: str = ""
  label_path: str = ""
  eval_dir: str = ""
  embedded_train: int = 600
  embedded_val: int = 150
  embedded_image_size: tuple = (320, 640)
  train_split: str = "train"
  eval_split: str = "validation"
  recipe: str = "retinaface"
  recipe_options: dict = dataclasses.field(default_factory=dict)
  image_size: int = 640
  max_boxes: int = 256
  shuffle_buffer: int = 1024
  threads: int = 0
  ram_budget_gb: float = 0.0

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


def _opt(path: str):
  """"" -> None (look in manual_dir), "none" -> False (do not use), else the path."""
  if not path:
    return None
  return False if path.lower() == "none" else str(paths.resolve(path))


def prepare_builder(cfg: DataConfig, log=print):
  """Returns the prepared WiderFace builder for `cfg` (builds what is missing, with progress)."""
  import tensorflow_datasets as tfds
  from tinyfaces_jax.data import embedded
  from tinyfaces_jax.data.wider_face import WiderFace

  tfds.disable_progress_bar()
  data_dir = paths.resolve(cfg.data_dir)
  if cfg.source == "embedded":
    lo, hi = cfg.embedded_image_size
    root = data_dir / "tinyfaces_embedded" / (
        f"{cfg.embedded_train}x{cfg.embedded_val}_{lo}-{hi}px")
    builder = WiderFace(data_dir=str(root / "tfds"), eval_dir=False, label_path=False,
                        splits=("train", "validation"))
    if not builder.is_prepared():
      t0 = time.time()
      log(f"building the embedded dataset ({cfg.embedded_train} train + {cfg.embedded_val} "
          f"val images, {lo}-{hi} px) under {root}")
      # The release files are only read by the builder: a URL data_dir gets them built in a
      # local temporary folder, the prepared dataset itself lands under the URL.
      with tempfile.TemporaryDirectory(prefix="tinyfaces_embedded_") as tmp:
        manual = os.path.join(tmp, "release") if paths.is_url(root) else str(root / "release")
        embedded.build_embedded_wider(manual, num_train=cfg.embedded_train,
                                      num_val=cfg.embedded_val, image_size=(lo, hi))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual))
      log(f"embedded dataset ready in {time.time() - t0:.0f} s")
    return builder
  builder = WiderFace(data_dir=str(data_dir), label_path=_opt(cfg.label_path),
                      eval_dir=_opt(cfg.eval_dir))
  if not builder.is_prepared():
    if not cfg.manual_dir:
      raise FileNotFoundError(
          f"WIDER FACE is not prepared in {data_dir} and config.data.manual_dir is empty: set "
          "--config.data.manual_dir=/path/to/release (the folder holding the official WIDER "
          "FACE release files) or --config.data.data_dir to where it was prepared")
    manual = paths.resolve(cfg.manual_dir)
    if not manual.is_dir():
      raise FileNotFoundError(f"config.data.manual_dir {cfg.manual_dir!r} is not a folder; it "
                              "must hold the official WIDER FACE release files")
    log(f"preparing WIDER FACE from {manual} into {data_dir} (once; decode-checks every "
        "image)")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


def ground_truth(builder, split: str) -> wider_io.WiderGroundTruth:
  """The split's faces as WIDER ground truth (see the module docstring for `keep`).

  `split` may be sliced ("validation[:100]"); keys are `"<event>/<stem>"` (the filename
  without its extension), in dataset order.
  """
  import tensorflow_datasets as tfds
  with_settings = bool(builder.info.metadata.get("eval_settings_dir"))
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  keys, boxes = [], []
  keep = {s: [] for s in wider_io.SETTINGS}
  for ex in ds.as_numpy_iterator():
    keys.append(os.path.splitext(ex["image/filename"].decode())[0])
    f = ex["faces"]
    b = np.asarray(f["bbox"], np.float64).reshape(-1, 4)
    boxes.append(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1))
    counted = ~np.asarray(f["invalid"], bool) & np.asarray(f["trainable"], bool)
    for s in wider_io.SETTINGS:
      keep[s].append(np.asarray(f[s], bool) if with_settings else counted)
  return wider_io.WiderGroundTruth(keys=keys, boxes=boxes, keep=keep, version="current")
