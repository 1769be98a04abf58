"""TFDS builder for WIDER FACE, read from the official release files a user already has.

    builder = WiderFace(data_dir=DATA_DIR)   # optional: label_path=, val_label_path=,
                                             # eval_dir=, splits=
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=RELEASE_DIR))
    ds = builder.as_dataset(split="validation")   # later: tfds.load("tinyfaces_wider_face", ...)

Registered as `tinyfaces_wider_face` (TFDS itself ships a `wider_face` builder with normalised,
clipped boxes and no landmarks/settings; the names must differ). Splits: train (12880 images in
the official release), validation (3226), test (16097, images only: `faces` is empty).

Example features:
  image             encoded image bytes exactly as in the release, decoded as [H, W, 3] uint8
  image/filename    `<event>/<name>.jpg` (the key of the annotation and prediction files)
  image/event       `<event>`, e.g. `0--Parade`
  faces             Sequence of N faces, each:
    bbox            [4] float32 pixel (x1, y1, x2, y2) with x2 = x1 + w, y2 = y1 + h (the file's
                    xywh, unclipped; exact for the integer annotations; the project's canonical
                    `xyxy`, see detection/box_ops.py). Boxes with w <= 0 or h <= 0 are kept.
    blur expression illumination occlusion pose   int32, as in the file
    invalid         bool, the file's flag (ignored by the evaluation, kept for training)
    trainable       bool, w > 0 and h > 0 (see annotations.py for the rule's sources)
    landmarks       [5, 2] float32 pixel (x, y): eyes, nose, mouth corners (RetinaFace order);
                    -1 when absent. From the split's `label.txt` (train, val), when one is used.
    landmarks_present  bool
    easy medium hard   bool: the face is in that setting's `gt_list` (validation, when the
                    eval_tools .mat files are used). False elsewhere.
`info.metadata` records which optional files were used (`landmarks_file`, `val_landmarks_file`,
`eval_settings_dir`, empty when none) and how many train / val faces found no landmark entry
(`faces_without_label`, `val_faces_without_label`).

Every image is decode-checked while generating; a missing or undecodable image raises an error
naming it (the WIDER protocol evaluates every listed image, so nothing is skipped).

`manual_dir`, `label_path` and `eval_dir` may be local paths or URLs (gs://...): the release is
read through etils.epath (zips as seekable file objects). `data_dir` is TFDS's own.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import zipfile
from typing import Iterator, Optional, Union

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tinyfaces_jax import paths
from tinyfaces_jax.data.wider import annotations as wa

PathLike = Union[str, os.PathLike]

_LOG = logging.getLogger(__name__)
_SPLIT_PARTS = {"train": "WIDER_train", "validation": "WIDER_val", "test": "WIDER_test"}
_SPLIT_FILES = {"train": "wider_face_train_bbx_gt.txt", "validation": "wider_face_val_bbx_gt.txt",
                "test": "wider_face_test_filelist.txt"}
_ANNOTATION_PART = "wider_face_split"
_IMAGE_FORMATS = ("JPEG", "PNG", "BMP")
_VAL_LABEL_CANDIDATES = ("retinaface_gt_v1.1/val/label.txt", "retinaface_gt/val/label.txt",
                         "val/label.txt")
# Per split: the metadata keys of its landmarks file and of its faces that file lacks.
_LABEL_METADATA = {"train": ("landmarks_file", "faces_without_label"),
                   "validation": ("val_landmarks_file", "val_faces_without_label")}
_LABEL_CANDIDATES = ("retinaface_gt_v1.1/train/label.txt", "retinaface_gt/train/label.txt",
                     "train/label.txt", "WIDER_train/label.txt", "label.txt")
_EVAL_CANDIDATES = ("", "ground_truth", "eval_tools/ground_truth", "wider_eval/ground_truth")

_CITATION = """@inproceedings{yang2016wider,
  author = {Yang, Shuo and Luo, Ping and Loy, Chen Change and Tang, Xiaoou},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  title = {WIDER FACE: A Face Detection Benchmark},
  year = {2016}}"""


class _ReleasePart:
  """One part of the release: `<manual_dir>/<stem>/` already extracted, or `<stem>.zip`.

  An extracted part may sit one level deeper (`<stem>/<stem>/...`, unzipping into a folder of the
  same name); a zip may hold `<stem>/...` (the official layout) or its content at the top.
  `marker` is a path inside the part that proves the layout (e.g. `images`).
  """

  def __init__(self, manual_dir: PathLike, stem: str, marker: str):
    manual_dir = paths.resolve(manual_dir)
    self.stem = stem
    self.root: Optional[epath.Path] = None
    self.zip_path: Optional[epath.Path] = None
    self._zip: Optional[zipfile.ZipFile] = None
    self._files: Optional[contextlib.ExitStack] = None
    self._prefix = ""
    for cand in (manual_dir / stem / stem, manual_dir / stem):
      if (cand / marker).exists():
        self.root = cand
        return
    if (manual_dir / f"{stem}.zip").exists():
      self.zip_path = manual_dir / f"{stem}.zip"
    elif (manual_dir / stem).is_dir():
      self.root = manual_dir / stem  # no marker: member lookups will name what is missing.

  @property
  def found(self) -> bool:
    return self.root is not None or self.zip_path is not None

  @property
  def kind(self) -> str:
    return "zip" if self.zip_path is not None else "dir"

  def __enter__(self) -> "_ReleasePart":
    if self.zip_path is not None:
      # epath's open is a context manager for URLs (not a file object): keep it entered.
      self._files = contextlib.ExitStack()
      self._zip = zipfile.ZipFile(self._files.enter_context(self.zip_path.open("rb")))
      names = self._zip.namelist()
      self._members = set(names)
      self._prefix = f"{self.stem}/" if any(n.startswith(f"{self.stem}/") for n in names) else ""
    return self

  def __exit__(self, *exc) -> None:
    if self._zip is not None:
      self._zip.close()
      self._files.close()
      self._zip = self._files = None

  def where(self, rel: str) -> str:
    """Human-readable location of member `rel` (for error messages)."""
    if self.zip_path is not None:
      return f"{self.zip_path}!{self._prefix}{rel}"
    return os.fspath(self.root / rel)

  def exists(self, rel: str) -> bool:
    """Whether member `rel` exists (inside `with`, for a zip)."""
    if self._zip is not None:
      return self._prefix + rel in self._members
    return self.root is not None and (self.root / rel).exists()

  def read(self, rel: str) -> bytes:
    """Bytes of member `rel`; FileNotFoundError naming it when absent."""
    if self._zip is not None:
      if not self.exists(rel):
        raise FileNotFoundError(f"WIDER FACE file not found: {self.where(rel)}")
      return self._zip.read(self._prefix + rel)
    path = self.root / rel
    if not path.exists():
      raise FileNotFoundError(f"WIDER FACE file not found: {self.where(rel)}")
    return path.read_bytes()


def check_image(data: bytes, where: str) -> tuple[int, int]:
  """Fully decodes `data` with PIL; returns (height, width). ValueError naming `where` if not."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data)) as img:
      fmt, (width, height) = img.format, img.size
      img.load()
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise ValueError(f"corrupt or undecodable image {where}: {e}") from e
  if fmt not in _IMAGE_FORMATS:
    raise ValueError(f"image {where} is {fmt}, expected one of {_IMAGE_FORMATS}")
  return height, width


def _find_optional(manual_dir: epath.Path, given, candidates, marker: str) -> Optional[str]:
  """`given` (a path, False to disable, None to look in `manual_dir`) -> a path or None."""
  if given is False:
    return None
  if given is not None:
    path = paths.resolve(given)
    if not (path / marker if marker else path).exists():
      raise FileNotFoundError(f"not found: {path / marker if marker else given}")
    return os.fspath(path)
  for cand in candidates:
    path = manual_dir / cand if cand else manual_dir
    if (path / marker if marker else path).exists():
      return os.fspath(path)
  return None


def _join_landmarks(ann: wa.ImageAnnotation, labels: dict) -> tuple[np.ndarray, np.ndarray, int]:
  """Landmarks of `ann`'s faces from a parsed label.txt: ([N, 5, 2], [N] bool, #unmatched).

  The label.txt lists the same faces in the same order as the bbx_gt file; when an image's boxes
  differ, each face takes the first unused label face with the identical box.
  """
  n = ann.num_faces
  landmarks = np.full([n, wa.NUM_LANDMARKS, 2], -1.0, np.float32)
  present = np.zeros([n], bool)
  entry = labels.get(ann.name)
  if entry is None:
    return landmarks, present, n
  boxes, lms, lpresent = entry
  if boxes.shape == ann.boxes.shape and np.array_equal(boxes, ann.boxes):
    return lms.copy(), lpresent.copy(), 0
  used = np.zeros([boxes.shape[0]], bool)
  for i in range(n):
    hits = np.flatnonzero(np.all(boxes == ann.boxes[i], axis=1) & ~used)
    if hits.size:
      used[hits[0]] = True
      landmarks[i], present[i] = lms[hits[0]], lpresent[hits[0]]
  return landmarks, present, int(n - used.sum())


class WiderFace(tfds.core.GeneratorBasedBuilder):
  """WIDER FACE from the official release (+ optional RetinaFace landmarks, eval settings)."""

  name = "tinyfaces_wider_face"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pixel xyxy boxes, all attributes, landmarks, easy/medium/hard."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download WIDER FACE from http://shuoyang1213.me/WIDERFACE/ and put into `manual_dir`, each either
as the zip or extracted (the folder inside the zip, e.g. `WIDER_train/images/<event>/<img>.jpg`):
  WIDER_train.zip        (or WIDER_train/images/...)   needed for the train split
  WIDER_val.zip          (or WIDER_val/images/...)     needed for the validation split
  WIDER_test.zip         (or WIDER_test/images/...)    needed for the test split
  wider_face_split.zip   (or wider_face_split/wider_face_{train,val}_bbx_gt.txt and
                          wider_face_split/wider_face_test_filelist.txt)
Optional, extracted (or pass `label_path=` / `val_label_path=` / `eval_dir=` to the builder;
False disables):
  retinaface_gt_v1.1/train/label.txt (or train/label.txt, label.txt): RetinaFace 5-point
      landmarks for the train faces (retinaface_gt_v1.1.zip of deepinsight/insightface).
  retinaface_gt_v1.1/val/label.txt (or val/label.txt): the same layout for the val faces
      (the official file has boxes only: no landmarks; the embedded dataset's has them).
  wider_{easy,medium,hard}_val.mat (in manual_dir, ground_truth/ or eval_tools/ground_truth/):
      the official eval_tools ground truth, giving each val face's easy/medium/hard membership.
"""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. TFDS's default probes `importlib_resources`, which tensorflow-datasets 4.9.10
    uses without declaring it (ModuleNotFoundError without etils[epath]); the answer is known."""
    return epath.Path(__file__)

  def __init__(self, *, label_path: Union[PathLike, bool, None] = None,
               eval_dir: Union[PathLike, bool, None] = None,
               splits: Optional[tuple[str, ...]] = None,
               val_label_path: Union[PathLike, bool, None] = None, **kwargs):
    """`label_path` (train landmarks) / `val_label_path` (val) / `eval_dir`: a path, None
    (look in manual_dir) or False (do not use).

    `splits`: the splits to build, each required; None builds every split whose images and
    annotation file are in manual_dir (at least one; e.g. a release without WIDER_test).
    """
    unknown = set(splits or ()) - set(_SPLIT_PARTS)
    if unknown:
      raise ValueError(f"unknown splits {sorted(unknown)}; known: {sorted(_SPLIT_PARTS)}")
    self._label_path, self._eval_dir = label_path, eval_dir
    self._val_label_path = val_label_path
    self._splits = tuple(splits) if splits else None
    _hide_gpus_from_tf()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    face = {"bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32)}
    face.update({k: np.int32 for k in ("blur", "expression", "illumination", "occlusion", "pose")})
    face.update({"invalid": np.bool_, "trainable": np.bool_,
                 "landmarks": tfds.features.Tensor(shape=(wa.NUM_LANDMARKS, 2), dtype=np.float32),
                 "landmarks_present": np.bool_})
    face.update({k: np.bool_ for k in wa.SETTINGS})
    return tfds.core.DatasetInfo(
        builder=self,
        description="WIDER FACE face detection benchmark (61 events; train/val/test).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/event": tfds.features.Text(),
            "faces": tfds.features.Sequence(face),
        }),
        homepage="http://shuoyang1213.me/WIDERFACE/",
        citation=_CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    manual_dir = paths.resolve(dl_manager.manual_dir)
    ann_part = _ReleasePart(manual_dir, _ANNOTATION_PART, "")
    missing, available = [], []
    if not ann_part.found:
      missing.append(f"{_ANNOTATION_PART}.zip (or {_ANNOTATION_PART}/)")
    else:
      with ann_part:
        for split in self._splits or _SPLIT_PARTS:
          images = _ReleasePart(manual_dir, _SPLIT_PARTS[split], "images")
          if not images.found:
            missing.append(f"{_SPLIT_PARTS[split]}.zip (or {_SPLIT_PARTS[split]}/images/)")
          elif not ann_part.exists(_SPLIT_FILES[split]):
            missing.append(ann_part.where(_SPLIT_FILES[split]))
          else:
            available.append(split)
    if not self._splits and available:
      if missing:
        _LOG.warning("WIDER FACE: building %s only; not found: %s", available, missing)
      missing = []
    if missing:
      raise FileNotFoundError(f"WIDER FACE files missing from manual_dir {manual_dir}: "
                              f"{', '.join(missing)}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    labels = {}
    for split, given, candidates in (("train", self._label_path, _LABEL_CANDIDATES),
                                     ("validation", self._val_label_path,
                                      _VAL_LABEL_CANDIDATES)):
      path = _find_optional(manual_dir, given, candidates, "")
      if path is not None and paths.resolve(path).is_dir():
        path = os.fspath(paths.resolve(path) / "label.txt")
      labels[split] = path
      self.info.metadata[_LABEL_METADATA[split][0]] = path or ""
      self.info.metadata[_LABEL_METADATA[split][1]] = 0
    eval_dir = _find_optional(manual_dir, self._eval_dir, _EVAL_CANDIDATES, "wider_hard_val.mat")
    self.info.metadata["eval_settings_dir"] = eval_dir or ""
    return {split: self._generate_examples(
        manual_dir=os.fspath(manual_dir), split=split, label_path=labels.get(split),
        eval_dir=eval_dir if split == "validation" else None) for split in available}

  def _generate_examples(self, manual_dir: str, split: str, label_path: Optional[str],
                         eval_dir: Optional[str]) -> Iterator[tuple[str, dict]]:
    with _ReleasePart(manual_dir, _ANNOTATION_PART, "") as ann_part:
      text = ann_part.read(_SPLIT_FILES[split]).decode("utf-8").splitlines()
      source = ann_part.where(_SPLIT_FILES[split])
    if split == "test":
      annotations = [wa.ImageAnnotation(n, n.split("/", 1)[0], np.zeros([0, 4], np.float32),
                                        np.zeros([0, 6], np.int32))
                     for n in _with_source(wa.parse_filelist, text, source)]
    else:
      annotations = _with_source(wa.parse_bbx_gt, text, source)
    labels = wa.parse_retinaface_labels(label_path) if label_path else {}
    settings = wa.load_eval_settings(eval_dir) if eval_dir else None
    unmatched = 0
    with _ReleasePart(manual_dir, _SPLIT_PARTS[split], "images") as images:
      for ann in annotations:
        rel = f"images/{ann.name}"
        data = images.read(rel)
        check_image(data, images.where(rel))
        faces = _face_features(ann)
        if label_path:
          faces["landmarks"], faces["landmarks_present"], lost = _join_landmarks(ann, labels)
          unmatched += lost
        if settings is not None:
          entry = settings.get(ann.name)
          if entry is None or entry["hard"].shape[0] != ann.num_faces:
            raise ValueError(f"{ann.name}: {ann.num_faces} faces in {source}, "
                             f"{'no entry' if entry is None else entry['hard'].shape[0]} in the "
                             f"eval .mat files of {eval_dir}")
          faces.update({k: entry[k] for k in wa.SETTINGS})
        yield ann.name, {"image": data, "image/filename": ann.name, "image/event": ann.event,
                         "faces": faces}
    if label_path:
      self.info.metadata[_LABEL_METADATA[split][1]] = unmatched
      if unmatched:
        _LOG.warning("WIDER FACE: %d %s faces have no matching face in %s (landmarks "
                     "marked absent)", unmatched, split, label_path)


def _with_source(parse, lines: list[str], source: str):
  """Runs a parser on in-memory lines, naming `source` (not `<lines>`) in its errors."""
  try:
    return parse(lines)
  except ValueError as e:
    msg = str(e)
    raise ValueError(source + msg[len("<lines>"):] if msg.startswith("<lines>") else msg) from e


def _face_features(ann: wa.ImageAnnotation) -> dict[str, np.ndarray]:
  """The `faces` dict of one image (landmarks absent, settings False): [N, ...] arrays."""
  n = ann.num_faces
  b = ann.boxes
  out = {"bbox": np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)}
  for key in ("blur", "expression", "illumination", "occlusion", "pose"):
    out[key] = ann.attribute(key).astype(np.int32)
  out["invalid"] = ann.invalid
  out["trainable"] = ann.trainable
  out["landmarks"] = np.full([n, wa.NUM_LANDMARKS, 2], -1.0, np.float32)
  out["landmarks_present"] = np.zeros([n], bool)
  out.update({k: np.zeros([n], bool) for k in wa.SETTINGS})
  return out


def _hide_gpus_from_tf() -> None:
  """TF only reads files here; keep it off the accelerators JAX uses."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError, ImportError):  # already initialised / no TF: nothing to do.
    pass
