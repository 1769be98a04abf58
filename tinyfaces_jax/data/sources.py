"""Where a run's data comes from: the embedded dataset or the user's WIDER FACE release.

`prepare_builder(cfg)` returns a prepared `WiderFace` TFDS builder:
  * source "embedded": builds the embedded WIDER-format release and prepares it, once per
    set of embedded parameters, under `<data_dir>/tinyfaces_embedded/v<generator version>_
    <train>x<val>_<px>/` (its release folder carries the teacher landmarks' label.txt files);
  * source "wider": prepares the official release files in `manual_dir` into `data_dir`
    (once; later runs reuse the prepared dataset).
(The WIDER evaluator reads a split's faces itself: evaluation/evaluators.split_ground_truth.)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time


from tinyfaces_jax import paths

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
  from tinyfaces_jax.data.embedded import build as embedded
  from tinyfaces_jax.data.wider.builder import WiderFace

  tfds.disable_progress_bar()
  data_dir = paths.resolve(cfg.data_dir)
  if cfg.source == "embedded":
    lo, hi = cfg.embedded_image_size
    root = data_dir / "tinyfaces_embedded" / (
        f"v{embedded.GENERATOR_VERSION}_{cfg.embedded_train}x{cfg.embedded_val}_{lo}-{hi}px")
    builder = WiderFace(data_dir=str(root / "tfds"), eval_dir=False,
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
                                      num_val=cfg.embedded_val, image_size=(lo, hi),
                                      workers=min(8, os.cpu_count() or 1))
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
