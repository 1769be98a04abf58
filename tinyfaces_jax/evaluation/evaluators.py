"""Evaluators, chosen in the config by type; each scores detections with its own protocol.

  config.eval.evaluators = {"wider": {"type": "wider"},
                            "fddb": {"type": "fddb", "images_dir": ..., "folds_dir": ...}}

The name of an entry names its output folder (`<out>/<name>/`) and its scalars
(`<name>/<scalar>`, e.g. `wider/ap_hard`); `type` picks the class of `TYPES`, the other keys
are that class's `Options` fields (a misspelt key is an error naming its closest field).

An evaluator says which images it needs (`images()`: a split of the run's dataset, or image
files), and the training/eval loop runs the configured predictor over them once per image set
(evaluators of the same set share the pass), on every host, and hands host 0 the detections:
  {key: dict(boxes [N, 4] xyxy, scores [N], landmarks [N, P, 2] when the detector has them,
             image_hw [2] (original H, W))}   in original pixels, descending score,
key = the image's name in its set (a split: `image/filename`, "<event>/<name>.jpg"; files:
the name the evaluator gave). `evaluate(dets, out_dir)` writes the protocol's files and returns
a JSON-able summary whose "scalars" entry is {name: float} (what the loop logs, writes to
TensorBoard and prints in the run's table); `describe(summary)` gives the log lines.

Types: "wider" (the official WIDER FACE protocol: APs easy / medium / hard, AP per face-height
bin, the submission layout, PR curves), "fddb" (the official FDDB discrete and continuous ROC:
TPR at 100 / 500 / 1000 / 2000 false positives, the tool's ROC files, the ROC plot),
"landmarks" (5-point NME by inter-ocular distance and by box size, the failure rate at 10%,
the cumulative error distribution plot), "photos" (the real-photo check: the faces of the
shared reference photos found, false positives per photo, a drawn PNG).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

from tinyfaces_jax import paths, settings
from tinyfaces_jax.evaluation import fddb, fddb_io, plots, size_bins, wider, wider_io


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """Images a prediction pass runs on: `split` of a TFDS `builder` (possibly sliced,
  "validation[:N]"), or `files` named `keys`."""
  builder: Any = None
  split: str = ""
  files: tuple = ()
  keys: tuple = ()

  @property
  def identity(self) -> tuple:
    """Equal for image sets that a single prediction pass serves."""
    return (id(self.builder), self.split, self.files)

  def describe(self) -> str:
    return self.split if self.builder is not None else f"{len(self.files)} image files"


def submission_rows(dets: dict) -> np.ndarray:
  """dict(boxes [N, 4] xyxy, scores [N]) -> [N, 5] x y w h score (WIDER's submission rows and
  FDDB's rectangle rows)."""
  b = np.asarray(dets["boxes"], np.float64).reshape(-1, 4)
  return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2],
                         np.asarray(dets["scores"], np.float64).reshape(-1, 1)], axis=1)


def split_ground_truth(builder, split: str) -> wider_io.WiderGroundTruth:
  """A split's faces as WIDER ground truth (no image decoding). Faces that count, per setting:
  easy / medium / hard of the eval_tools files when the dataset was built with them, else
  every face that is not `invalid` and has w, h > 0 (the same set for all three settings).
  `split` may be sliced ("validation[:100]"); keys are "<event>/<stem>", in dataset order."""
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


class WiderEvaluator:
  """type "wider": the run's eval split (or `split`) under the official WIDER FACE protocol.

  Writes predictions/<event>/<stem>.txt (the submission layout), aps.json (APs, AP per
  face-height bin, counts) and wider_pr_curve_<setting>_val.png. Scalars ap_easy, ap_medium,
  ap_hard."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    """gt_dir: the official ground-truth .mat folder ("" = the split's own annotations);
    baselines_dir: official PR curves drawn beside ours ("" = none); split: "" = the run's
    data.eval_split; score_format: the scores in the submission files, "probability" (the
    detectors' face probability) or "logit" (log(p / (1 - p)): what the HR release writes,
    its raw score_cls; a monotone map, so the APs are the same)."""
    gt_dir: str = ""
    baselines_dir: str = ""
    split: str = ""
    score_format: str = "probability"

    def __post_init__(self):
      if self.score_format not in ("probability", "logit"):
        raise ValueError(f"score_format must be 'probability' or 'logit', got "
                         f"{self.score_format!r}")

  def __init__(self, name: str, options: "WiderEvaluator.Options", builder, split: str,
               max_images: int = 0):
    self.name, self.options, self.builder = name, options, builder
    split = options.split or split
    self.split = f"{split}[:{max_images}]" if max_images else split
    self._gt: Optional[wider_io.WiderGroundTruth] = None

  def images(self) -> ImageSet:
    return ImageSet(builder=self.builder, split=self.split)

  def ground_truth(self) -> wider_io.WiderGroundTruth:
    if self._gt is None:
      self._gt = (wider_io.load_ground_truth(paths.resolve(self.options.gt_dir))
                  if self.options.gt_dir else split_ground_truth(self.builder, self.split))
    return self._gt

  def evaluate(self, dets: dict, out_dir, method_name: str = "tinyfaces_jax") -> dict:
    rows = {os.path.splitext(k)[0]: submission_rows(d) for k, d in dets.items()}
    if self.options.score_format == "logit":
      for r in rows.values():
        p = np.clip(r[:, 4], 1e-12, 1 - 1e-12)
        r[:, 4] = np.log(p) - np.log1p(-p)
    gt = self.ground_truth()
    result = wider.evaluate(rows, gt, verbose=False)
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wider_io.write_predictions(out / "predictions", rows)
    plots.plot_result(result, out, method_name, self.options.baselines_dir or None)
    summary = {"split": self.split, "num_images": len(rows),
               "num_detections": int(sum(len(r) for r in rows.values())),
               "aps": result.aps, "num_faces": result.num_faces, "missing": len(result.missing),
               "ap_by_height": size_bins.to_json(size_bins.ap_by_height(rows, gt)),
               "scalars": {f"ap_{k}": float(v) for k, v in result.aps.items()}}
    (out / "aps.json").write_text(json.dumps(summary, indent=2))
    return summary

  def describe(self, s: dict) -> list:
    a = s["aps"]
    return [f"WIDER AP easy {a['easy']:.4f} medium {a['medium']:.4f} hard {a['hard']:.4f} on "
            f"{s['num_images']} images ({s['num_faces']['hard']} faces, "
            f"{s['num_detections']} detections)",
            "  hard AP by face height: " + "  ".join(
                f"{size_bins.bin_label(b['lo'], b['hi'] if b['hi'] is not None else float('inf'))}"
                f" {b['ap']:.3f} ({b['num_faces']})" for b in s["ap_by_height"]
                if b["ap"] is not None)]


class FddbEvaluator:
  """type "fddb": the FDDB images of `folds` under the official FDDB evaluation.

  Writes detections.txt (the FDDB layout, all folds), <method>DiscROC.txt / <method>ContROC.txt
  (the tool's files), fddb_disc_roc.png and fddb.json. Regions are clipped to each image's
  size, as the tool's image-sized masks do. Scalars disc_tpr_fp<N> / cont_tpr_fp<N> for N in
  fddb.FP_POINTS."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    """images_dir: the folder holding `<name>.jpg` for each fold name (originalPics);
    folds_dir: the official FDDB-folds folder; folds: e.g. "1-10" or "1,3"."""
    images_dir: str = ""
    folds_dir: str = ""
    folds: str = "1-10"

    def __post_init__(self):
      for f in ("images_dir", "folds_dir"):
        if not getattr(self, f):
          raise ValueError(f"{f} is required (the FDDB {'images' if f == 'images_dir' else 'folds'}"
                           " folder)")

  def __init__(self, name: str, options: "FddbEvaluator.Options", builder=None, split: str = "",
               max_images: int = 0):
    del builder, split
    self.name, self.options = name, options
    self.names, self.gt = fddb_io.load_folds(options.folds_dir,
                                             fddb_io.parse_folds(options.folds))
    if max_images:
      self.names = self.names[:max_images]
    root = paths.resolve(options.images_dir)
    self.files = tuple(str(root / f"{n}.jpg") for n in self.names)

  def images(self) -> ImageSet:
    return ImageSet(files=self.files, keys=tuple(self.names))

  def evaluate(self, dets: dict, out_dir, method_name: str = "tinyfaces_jax") -> dict:
    rows = {k: submission_rows(d) for k, d in dets.items()}
    sizes = {k: tuple(int(v) for v in d["image_hw"]) for k, d in dets.items()}
    disc, cont = fddb.evaluate_fddb(self.gt, rows, image_sizes=sizes, image_names=self.names)
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fddb_io.write_detections(out / "detections.txt", {n: rows[n] for n in self.names})
    fddb_io.write_roc_files(f"{out}/{method_name}", disc, cont)
    fddb.plot_roc(out / "fddb_disc_roc.png", {method_name: disc})
    scalars = {}
    for kind, roc in (("disc", disc), ("cont", cont)):
      for fp, tpr in zip(fddb.FP_POINTS, fddb.roc_at_fp(roc, fddb.FP_POINTS)):
        scalars[f"{kind}_tpr_fp{fp}"] = float(tpr)
    summary = {"folds": self.options.folds, "num_images": len(self.names),
               "num_faces": int(sum(len(self.gt[n]) for n in self.names)),
               "num_detections": int(sum(len(r) for r in rows.values())), "scalars": scalars}
    (out / "fddb.json").write_text(json.dumps(summary, indent=2))
    return summary

  def describe(self, s: dict) -> list:
    sc = s["scalars"]
    return ["FDDB discrete TPR " + "  ".join(f"{sc[f'disc_tpr_fp{fp}']:.4f}@{fp}"
                                              for fp in fddb.FP_POINTS)
            + f" on {s['num_images']} images ({s['num_faces']} faces)"]


def split_landmarks(builder, split: str) -> dict:
  """{"<event>/<name>.jpg": dict(boxes [G, 4] xyxy, landmarks [G, 5, 2], present [G])} of a
  split (no image decoding): the faces that are not `invalid`, present where the dataset has
  their 5 points."""
  import tensorflow_datasets as tfds
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  out = {}
  for ex in ds.as_numpy_iterator():
    f = ex["faces"]
    keep = ~np.asarray(f["invalid"], bool)
    out[ex["image/filename"].decode()] = {
        "boxes": np.asarray(f["bbox"], np.float64).reshape(-1, 4)[keep],
        "landmarks": np.asarray(f["landmarks"], np.float64).reshape(-1, 5, 2)[keep],
        "present": np.asarray(f["landmarks_present"], bool)[keep]}
  return out


class LandmarkEvaluator:
  """type "landmarks": 5-point accuracy on the faces of the split that have landmarks
  (evaluation/landmarks.py): detections matched at IoU >= `iou`, NME by the inter-ocular
  distance and by the box size, the failure rate at `failure_threshold` (inter-ocular).
  Writes landmarks.json and landmarks_ced.png (the cumulative error distributions). Scalars
  nme_interocular, nme_box, failure_rate, matched (the fraction of faces with landmarks that a
  detection matched); NaN when the split has no landmarks (said in the log line)."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    """split: "" = the run's data.eval_split; iou: matching IoU; failure_threshold: the
    inter-ocular NME above which a face counts as a failure."""
    split: str = ""
    iou: float = 0.5
    failure_threshold: float = 0.1

  def __init__(self, name: str, options: "LandmarkEvaluator.Options", builder, split: str,
               max_images: int = 0):
    self.name, self.options, self.builder = name, options, builder
    split = options.split or split
    self.split = f"{split}[:{max_images}]" if max_images else split
    self._truth: Optional[dict] = None

  def images(self) -> ImageSet:
    return ImageSet(builder=self.builder, split=self.split)

  def evaluate(self, dets: dict, out_dir, method_name: str = "tinyfaces_jax") -> dict:
    from tinyfaces_jax.evaluation import landmarks
    if self._truth is None:
      self._truth = split_landmarks(self.builder, self.split)
    r = landmarks.evaluate(dets, self._truth, self.options.iou, self.options.failure_threshold)
    s = r.summary()
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(r.errors_interocular):
      plots.plot_ced([(f"{method_name}, inter-ocular", *landmarks.cumulative_error(
                          r.errors_interocular)),
                      (f"{method_name}, box size", *landmarks.cumulative_error(r.errors_box))],
                     out / "landmarks_ced.png", title=f"5-point NME, {self.split}",
                     failure_threshold=self.options.failure_threshold)
    summary = {"split": self.split, **s, "scalars": {
        k: (float("nan") if s[k] is None else s[k])
        for k in ("nme_interocular", "nme_box", "failure_rate", "matched")}}
    (out / "landmarks.json").write_text(json.dumps(summary, indent=2))
    return summary

  def describe(self, s: dict) -> list:
    if not s["num_matched"] or s["nme_interocular"] is None:
      return [f"landmarks: none to score on {self.split} ({s['num_faces']} faces with "
              f"landmarks, {s['num_matched']} matched by a detection)"]
    return [f"landmarks NME {s['nme_interocular']:.4f} (inter-ocular) {s['nme_box']:.4f} (box), "
            f"failure rate {s['failure_rate']:.3f} at {self.options.failure_threshold:g}, on "
            f"{s['num_matched']} of {s['num_faces']} faces with landmarks (matched "
            f"{s['matched']:.3f})"]


class PhotosEvaluator:
  """type "photos": the real-photo check (evaluation/photos.py) on the shared reference photos
  (t1 and multiface with the faces of the released RetinaFace trained on WIDER, ivan with the
  face of the released MTCNN, no-faces with none): faces found by a detection with score >=
  min_score at IoU >= iou, and the false positives per photo. Writes photos.json and
  photos.png (faces blue, matches green, false positives red). Scalars recall,
  false_positives (all photos), max_false_positives (the worst photo), min_face_score (the
  lowest score that found a face; 0 when one was missed)."""

  @dataclasses.dataclass(frozen=True)
  class Options:
    """reference_dir: the shared `reference/` folder (images/ and the reference .npz)."""
    reference_dir: str = ""
    min_score: float = 0.5
    iou: float = 0.5

    def __post_init__(self):
      if not self.reference_dir:
        raise ValueError("reference_dir is required (the shared reference/ folder)")

  def __init__(self, name: str, options: "PhotosEvaluator.Options", builder=None,
               split: str = "", max_images: int = 0):
    del builder, split, max_images
    from tinyfaces_jax.evaluation import photos
    self.name, self.options = name, options
    self.photos = photos.reference_photos(options.reference_dir)

  def images(self) -> ImageSet:
    return ImageSet(files=tuple(p.file for p in self.photos),
                    keys=tuple(p.key for p in self.photos))

  def evaluate(self, dets: dict, out_dir, method_name: str = "tinyfaces_jax") -> dict:
    from tinyfaces_jax.evaluation import photos
    r = photos.check(self.photos, dets, self.options.min_score, self.options.iou)
    out = paths.resolve(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos.draw(self.photos, dets, r, out / "photos.png")
    rows = [{k: v for k, v in row.items() if k != "matched"} for row in r["photos"]]
    summary = {**{k: v for k, v in r.items() if k != "photos"}, "photos": rows,
               "method": method_name, "scalars": {
                   k: float(r[k]) for k in ("recall", "false_positives", "max_false_positives",
                                            "min_face_score")}}
    (out / "photos.json").write_text(json.dumps(summary, indent=2))
    return summary

  def describe(self, s: dict) -> list:
    def fps(r):
      scores = r.get("false_positive_scores", [])
      return (f"{r['false_positives']} false positive(s)"
              + (" at " + " ".join(f"{v:.2f}" for v in scores[:6]) if scores else "")
              + (" ..." if len(scores) > 6 else ""))
    return ["real photos (score >= {:g}): ".format(s["min_score"]) + "; ".join(
        f"{r['key']} {r['found']}/{r['faces']} faces, {fps(r)}" for r in s["photos"])]


TYPES = {"wider": WiderEvaluator, "fddb": FddbEvaluator, "landmarks": LandmarkEvaluator,
         "photos": PhotosEvaluator}


def make_evaluators(section: dict, builder, split: str, max_images: int = 0,
                    where: str = "config.eval.evaluators") -> list:
  """{name: {"type": ..., options}} -> [evaluator] in the section's order (ConfigError naming
  the entry for an unknown type or option)."""
  out = []
  for name, entry in settings.as_dict(section).items():
    entry = dict(settings.as_dict(entry))
    kind = entry.pop("type", None)
    if kind not in TYPES:
      raise settings.ConfigError(f"{where}.{name}.type: unknown evaluator type {kind!r}; "
                                 f"known: {sorted(TYPES)}")
    cls = TYPES[kind]
    options = settings.dataclass_from(cls.Options, entry, f"{where}.{name}")
    out.append(cls(name, options, builder, split, max_images))
  return out
