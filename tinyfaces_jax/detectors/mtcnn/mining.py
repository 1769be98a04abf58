"""Hard samples for MTCNN's R-Net and O-Net stages: the earlier stages run on the training
images and their detections labelled by IoU with the faces, as AITTSMD/MTCNN-Tensorflow's
`prepare_data/gen_hard_example.py` does (../shared/references/mtcnn_alignment.md 1f).

For the stage `rnet` the cascade runs P-Net alone, for `onet` P-Net then R-Net (the trained,
frozen nets of the run's starting checkpoint), with gen_hard_example's detector settings
(`MiningConfig`: thresholds 0.3 / 0.1, min face 20, factor 0.79; facenet's cascade otherwise,
cascade.py), over every training image (each host its share, at the config's test resize).
Per image, in descending score order, each detection is (`label_detections`):
  * squared as AITTSMD's `convert_to_square` (side max(w, h) with w = x2 - x1 + 1, on the same
    centre) and rounded; dropped when narrower than 20 px or not inside the image (x1 < 0,
    y1 < 0, x2 > W - 1, y2 > H - 1; x2 / y2 inclusive);
  * labelled by its largest IoU with the image's faces (every annotated face with a positive
    size; IoU with +1 pixel areas, as AITTSMD's `IoU`): < 0.3 a negative (label 0; the first
    `max_negatives` = 60 only, i.e. the highest-scoring: the hard ones), >= 0.65 a positive (1),
    >= 0.4 a part face (-1), else dropped; positives and parts get the regression targets of
    the face they overlap most: ((fx1 - x1) / w, (fy1 - y1) / h, (fx2 - x2) / w, (fy2 - y2) / h),
    w = x2 - x1 + 1, h = y2 - y1 + 1 (the inclusive box; the crop covers pixels x1 .. x2).
The samples of the whole split go to `<workdir>/mtcnn_<stage>_samples.npz` (host 0 writes it;
`load_samples`), keyed by image, with a fingerprint of the earlier nets' parameters and the
settings: a rerun or a resume of the stage reuses it, other weights mine again. The recipe
(recipe.py) cuts the 24 / 48 px crops of these squares on the fly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import jax
import numpy as np

from tinyfaces_jax import settings
from tinyfaces_jax.evaluation import wider
from tinyfaces_jax.detectors.mtcnn import cascade
from tinyfaces_jax.detectors.mtcnn.model import NETS

NEGATIVE, POSITIVE, PART = 0, 1, -1
SAMPLES_FILE = "mtcnn_{stage}_samples.npz"


@dataclasses.dataclass(frozen=True)
class MiningConfig:
  """gen_hard_example.py's settings (config.data.recipe_options.mining).

  Attributes:
    thresholds: P-Net (and R-Net) face-probability thresholds of the mining cascade.
    min_face_size / factor: its pyramid.
    max_negatives: negatives kept per image (the highest-scoring).
    min_side: squares narrower than this are dropped.
    iou: (negative below, part from, positive from).
  """
  thresholds: tuple = (0.3, 0.1)
  min_face_size: float = 20.0
  factor: float = 0.79
  max_negatives: int = 60
  min_side: int = 20
  iou: tuple = (0.3, 0.4, 0.65)

  def __post_init__(self):
    if len(self.thresholds) != 2 or len(self.iou) != 3:
      raise ValueError(f"mining: thresholds needs 2 values and iou 3, got {self.thresholds} "
                       f"and {self.iou}")


def square_rounded(boxes: np.ndarray) -> np.ndarray:
  """[N, 4] xyxy -> AITTSMD's convert_to_square then np.round: [N, 4] float64 inclusive
  squares (x2 = x1 + side - 1)."""
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  w = b[:, 2] - b[:, 0] + 1
  h = b[:, 3] - b[:, 1] + 1
  side = np.maximum(w, h)
  x1 = b[:, 0] + w * 0.5 - side * 0.5
  y1 = b[:, 1] + h * 0.5 - side * 0.5
  return np.round(np.stack([x1, y1, x1 + side - 1, y1 + side - 1], 1))


def label_detections(boxes: np.ndarray, faces: np.ndarray, image_hw, cfg: MiningConfig) -> dict:
  """One image's detections [N, 4] (descending score) and faces [G, 4] xyxy -> dict(squares
  [K, 4] float32 xyxy with exclusive x2 / y2 (the crop covers [x1, x2) x [y1, y2)), labels [K]
  int8, bbox [K, 4] float32 targets (zeros for negatives)), the module docstring's rules.
  (Rounding may leave a square one pixel wider than high or the reverse, as in AITTSMD.)"""
  sq = square_rounded(boxes)
  height, width = int(image_hw[0]), int(image_hw[1])
  side = sq[:, 2:] - sq[:, :2] + 1                  # [N, 2] (w, h): rounding may differ by 1
  keep = ((side[:, 0] >= cfg.min_side) & (sq[:, 0] >= 0) & (sq[:, 1] >= 0) & (sq[:, 2] <= width - 1)
          & (sq[:, 3] <= height - 1))
  sq, side = sq[keep], side[keep]
  faces = np.asarray(faces, np.float64).reshape(-1, 4)
  if len(faces):
    xywh = lambda b: np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)  # x2 = x + w
    iou = wider.iou_plus1(xywh(sq), xywh(faces))      # AITTSMD's utils.IoU: +1 areas
    best, which = iou.max(1), iou.argmax(1)
  else:
    best, which = np.zeros(len(sq)), np.zeros(len(sq), np.int64)
  neg_t, part_t, pos_t = cfg.iou
  negative = best < neg_t
  negative &= np.cumsum(negative) <= cfg.max_negatives
  label = np.where(negative, NEGATIVE, np.where(best >= pos_t, POSITIVE,
                                                np.where(best >= part_t, PART, 2)))
  keep = label != 2
  sq, side, label, which = sq[keep], side[keep], label[keep], which[keep]
  target = np.zeros((len(sq), 4))
  if len(faces):
    f = faces[which]
    target = (f - sq) / np.tile(side, 2)
    target[label == NEGATIVE] = 0.0
  squares = np.concatenate([sq[:, :2], sq[:, 2:] + 1], 1)
  return {"squares": squares.astype(np.float32), "labels": label.astype(np.int8),
          "bbox": target.astype(np.float32)}


def split_faces(builder, split: str) -> dict:
  """{image key: [G, 4] float64 xyxy} of every annotated face with a positive size in
  `split` (no image decoding)."""
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  out = {}
  for ex in ds.as_numpy_iterator():
    b = np.asarray(ex["faces"]["bbox"], np.float64).reshape(-1, 4)
    out[ex["image/filename"].decode()] = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
  return out


def fingerprint(variables: dict, stage: str, cfg: MiningConfig, split: str) -> str:
  """sha256 of the nets before `stage` (their parameters' bytes), the settings and the split."""
  h = hashlib.sha256(json.dumps([stage, dataclasses.asdict(cfg), split]).encode())
  earlier = NETS[:NETS.index(stage)]
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      {n: variables["params"][n] for n in earlier})[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return h.hexdigest()


def pack_samples(per_image: dict, fp: str) -> bytes:
  """{image key: label_detections(...)} -> the .npz bytes of `load_samples`."""
  keys = sorted(per_image)
  counts = [len(per_image[k]["labels"]) for k in keys]
  cat = lambda f, shape, dt: (np.concatenate([per_image[k][f] for k in keys]).astype(dt)
                              if keys else np.zeros(shape, dt))
  buf = io.BytesIO()
  np.savez(buf, keys=np.asarray(keys, dtype=str),
           offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
           squares=cat("squares", (0, 4), np.float32), labels=cat("labels", (0,), np.int8),
           bbox=cat("bbox", (0, 4), np.float32), fingerprint=np.asarray(fp))
  return buf.getvalue()


def load_samples(path) -> dict:
  """The mined samples file -> dict(keys [I] str, offsets [I + 1], squares [S, 4], labels
  [S], bbox [S, 4], fingerprint); ValueError naming the file when it is not one."""
  import zipfile
  from tinyfaces_jax import paths
  try:
    with np.load(io.BytesIO(paths.resolve(path).read_bytes())) as z:
      out = {k: z[k] for k in ("keys", "offsets", "squares", "labels", "bbox", "fingerprint")}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: not an MTCNN hard-samples file ({e})") from None
  out["fingerprint"] = str(out["fingerprint"])
  return out


def counts(samples: dict) -> dict:
  """{"negative": n, "positive": n, "part": n} of a samples dict."""
  lab = samples["labels"]
  return {"negative": int((lab == NEGATIVE).sum()), "positive": int((lab == POSITIVE).sum()),
          "part": int((lab == PART).sum())}


def prepare(detector, cascade_cfg: cascade.CascadeConfig, variables: dict, ctx) -> dict:
  """The family's `prepare_training` (base.TrainingContext): for the rnet / onet stages,
  the mined samples file (made, or reused when its fingerprint matches) -> the recipe
  options with `hard_samples` = its path; the pnet stage's options unchanged."""
  options = dict(ctx.options)
  stage = options.get("stage", "pnet")
  mining = settings.as_dict(options.pop("mining", None) or {})
  if stage not in NETS or stage == "pnet":
    return options
  cfg = settings.dataclass_from(MiningConfig, mining, "config.data.recipe_options.mining")
  path = ctx.workdir / SAMPLES_FILE.format(stage=stage)
  fp = fingerprint(variables, stage, cfg, ctx.split)

  def current() -> bool:
    try:
      return path.is_file() and load_samples(path)["fingerprint"] == fp
    except ValueError:
      return False

  if ctx.any_host(not current()):
    k = NETS.index(stage)
    ctx.log(f"mining {stage} training samples: the cascade up to {NETS[k - 1]} (thresholds "
            f"{cfg.thresholds[:k]}, min face {cfg.min_face_size:g}, factor {cfg.factor}) on "
            f"the {ctx.split} images ...")
    from tinyfaces_jax import inference
    from tinyfaces_jax.data import pipeline
    ccfg = dataclasses.replace(cascade_cfg, stages=k, min_face_size=cfg.min_face_size,
                               factor=cfg.factor,
                               thresholds=tuple(cfg.thresholds) + cascade_cfg.thresholds[2:])
    capacity = ccfg.rnet_max if k == 1 else ccfg.onet_max
    predict = cascade.make_cascade_predict(detector, ccfg,
                                           inference.InferenceConfig(max_output=capacity))
    faces = split_faces(ctx.builder, pipeline.host_split(ctx.split))
    mined = ctx.predict_split(
        predict, variables,
        lambda key, d: label_detections(d["boxes"], faces.get(key, np.zeros((0, 4))),
                                        d["image_hw"], cfg))
    n = counts({"labels": np.concatenate([m["labels"] for m in mined.values()] or
                                         [np.zeros(0, np.int8)])})
    ctx.log(f"mined {sum(n.values())} samples on {len(mined)} images: "
            + ", ".join(f"{v} {k}" for k, v in n.items()))
    if not n["positive"] or not n["negative"]:
      raise ValueError(f"MTCNN {stage} stage: the earlier stages found no "
                       f"{'positive' if not n['positive'] else 'negative'} sample on the "
                       f"{len(mined)} {ctx.split} images ({n}); train them longer or lower "
                       "config.data.recipe_options.mining.thresholds")

    def write():
      if jax.process_index() == 0:
        path.write_bytes(pack_samples(mined, fp))

    ctx.host0_first(f"mine {stage} samples", write)
  else:
    ctx.log(f"{stage} training samples: {path} (mined by these weights)")
  options["hard_samples"] = str(path)
  return options
