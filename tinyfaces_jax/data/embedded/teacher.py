"""Teacher landmarks for the embedded dataset's face crops (5 points: eyes, nose, mouth
corners, image-left first), made once by two pretrained detectors and shipped as
`teacher_landmarks.json` beside this file, so that building the dataset needs no weights.

Each pasteable crop (`package_images.face_crops()`: the 100 LFW faces and the real photos'
faces) is upscaled so its face box is `FACE_SIDE` = 150 px high (PIL bicubic), centred on a
256 px canvas (or larger) filled with its mean colour, and run through
  * RetinaFace-MobileNet0.25 (Pytorch_Retinaface's weights, e.g. `mobilenet0.25_Final.m2man.pth`;
    single scale, score > 0.02, NMS 0.4) and
  * MTCNN (facenet-pytorch's P/R/O-Nets, its cascade with min face 20).
From each teacher the detection overlapping the crop's face box most is taken; the label is
the mean of the two teachers' points, mapped back to crop pixels. It is `present` only when
both teachers are sure: each score >= `MIN_SCORE` (0.9), each box IoU >= `MIN_IOU` (0.5) with
the face box, and the two point sets within `MAX_DISAGREEMENT` (0.15) of each other in
inter-ocular normalised mean error. These are teacher labels, not human annotation: their
error is about that disagreement (median 0.07 of the inter-ocular distance on the LFW crops).

  python -m tinyfaces_jax.data.embedded.teacher \
      --retinaface=../shared/weights/retinaface/mobilenet0.25_Final.m2man.pth \
      --mtcnn=../shared/weights/mtcnn [--out=PATH]
rewrites the file (tests/data/test_embedded_landmarks.py checks a rerun agrees with it).

The faces of the people photos (`package_images.PEOPLE_FILES`, from the pinned sdists) come
from the RetinaFace teacher alone, run on each whole photo at the test scales of
`PHOTO_SCALES` that put its long side in `PHOTO_SIDES`, with flip: a face is a detection with
score >= `PHOTO_MIN_SCORE` (0.8; its 5 points are kept at >= 0.9), boxes found again at
another scale are merged, 0.3-0.8 ones are listed as uncertain. Every photo's labels were
checked by eye against the drawn boxes (the rugby team's 30 faces of 12-16 px included);
  python -m tinyfaces_jax.data.embedded.teacher --photos \
      --retinaface=../shared/weights/retinaface/mobilenet0.25_Final.m2man.pth
rewrites `photo_faces.json` (tests/data/test_embedded_sources.py reruns one photo).
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
from etils import epath
from PIL import Image

from tinyfaces_jax.data.embedded import package_images
from tinyfaces_jax.detection import box_ops

LANDMARKS_FILE = epath.Path(__file__).parent / "teacher_landmarks.json"
FACE_SIDE = 150
CANVAS = 256
MIN_SCORE = 0.9
MIN_IOU = 0.5
MAX_DISAGREEMENT = 0.15


def teacher_input(crop: package_images.FaceCrop) -> tuple:
  """A crop -> (uint8-valued float32 image [S, S, 3], (ox, oy, scale)): crop pixel (x, y) sits
  at (ox + x scale, oy + y scale) in the image."""
  x1, y1, x2, y2 = crop.box
  scale = FACE_SIDE / (y2 - y1)
  h, w = crop.pixels.shape[:2]
  nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
  big = Image.fromarray(np.clip(crop.pixels, 0, 255).astype(np.uint8), "RGB").resize(
      (nw, nh), Image.Resampling.BICUBIC)
  side = max(CANVAS, 32 * math.ceil((max(nw, nh) + 32) / 32))
  out = np.empty((side, side, 3), np.float32)
  out[:] = np.asarray(big, np.float32).mean((0, 1))
  ox, oy = (side - nw) // 2, (side - nh) // 2
  out[oy:oy + nh, ox:ox + nw] = np.asarray(big, np.float32)
  return out, (ox, oy, nw / w)


def run_teacher(family: str, weights: str, crops) -> list:
  """One teacher on every crop -> [(score, box [4] and points [5, 2] in crop pixels, IoU
  with the face box)] (score 0 and NaNs where it finds nothing)."""
  import jax
  import jax.numpy as jnp
  from tinyfaces_jax import detectors, inference
  from tinyfaces_jax.evaluation import landmarks
  from tinyfaces_jax.training import checkpointing
  det = detectors.build_detector(family)
  variables, _ = checkpointing.model_variables(det, weights)
  predict = inference.make_predict_fn(det, inference.InferenceConfig(max_output=20))
  out = []
  for crop in crops:
    image, (ox, oy, s) = teacher_input(crop)
    r = jax.device_get(predict(variables, jnp.asarray(image[None]),
                               jnp.asarray([image.shape[:2]], jnp.int32)))
    boxes = (r["boxes"][0] - [ox, oy, ox, oy]) / s
    ious = landmarks.iou_to_boxes(np.asarray(crop.box, np.float64), boxes) * r["valid"][0]
    if not ious.size or ious.max() <= 0:
      out.append((0.0, np.full(4, np.nan), np.full((5, 2), np.nan), 0.0))
      continue
    k = int(np.argmax(ious))
    out.append((float(r["scores"][0][k]), boxes[k], (r["landmarks"][0][k] - [ox, oy]) / s,
                float(ious[k])))
  return out


def label_crops(crops, retinaface: str, mtcnn: str) -> dict:
  """{crop name: {points [[x, y] x 5] in crop pixels, present, retinaface_score, mtcnn_score,
  disagreement}} (module docstring)."""
  a, b = run_teacher("retinaface", retinaface, crops), run_teacher("mtcnn", mtcnn, crops)
  out = {}
  for crop, (sa, _, pa, ia), (sb, _, pb, ib) in zip(crops, a, b):
    points = (pa + pb) / 2
    ocular = float(np.linalg.norm(points[0] - points[1]))
    gap = float(np.linalg.norm(pa - pb, axis=1).mean() / ocular) if ocular > 0 else math.inf
    present = bool(min(sa, sb) >= MIN_SCORE and min(ia, ib) >= MIN_IOU
                   and gap <= MAX_DISAGREEMENT)
    out[crop.name] = {"points": [[round(float(x), 3), round(float(y), 3)] for x, y in points]
                      if np.isfinite(points).all() else None,
                      "present": present, "retinaface_score": round(sa, 4),
                      "mtcnn_score": round(sb, 4),
                      "disagreement": round(gap, 4) if math.isfinite(gap) else None}
  return out


@functools.lru_cache(maxsize=None)
def crop_landmarks(path=LANDMARKS_FILE) -> dict:
  """{crop name: (points [5, 2] float32 in crop pixels, present)} from the shipped file; a
  crop it does not list has no landmarks (present False)."""
  crops = json.loads(epath.Path(path).read_text())["crops"]
  return {name: (np.asarray(v["points"], np.float32) if v["points"] else
                 np.full((5, 2), -1.0, np.float32), bool(v["present"]))
          for name, v in crops.items()}


PHOTO_SCALES = (0.25, 0.5, 1.0, 2.0)
PHOTO_SIDES = (256, 2048)      # a test scale is used when it puts the long side in this range
PHOTO_MIN_SCORE = 0.8          # a face; 0.3 to this is reported as uncertain
PHOTO_LANDMARK_SCORE = 0.9


def label_photo(predict_for, spec: str) -> dict:
  """Faces of one people photo (`package_images.PEOPLE_FILES`) by the RetinaFace teacher.

  Runs the photo at each of `PHOTO_SCALES` that puts its long side in `PHOTO_SIDES`, with
  flip, merged by the predictor's NMS. -> {"sha256": first 16 hex digits of the file,
  "size": [w, h], "faces": [[x1, y1, x2, y2, score, points [5, 2] or None]] (score >=
  PHOTO_MIN_SCORE; points where >= PHOTO_LANDMARK_SCORE), "uncertain": [[x1, y1, x2, y2,
  score]] (0.3 <= score < PHOTO_MIN_SCORE)}.
  """
  import hashlib
  import jax
  import jax.numpy as jnp
  path = package_images.package_file(spec)
  photo = package_images.load_photo(spec, labelled=False)
  h, w = photo.pixels.shape[:2]
  scales = tuple(s for s in PHOTO_SCALES if PHOTO_SIDES[0] <= s * max(h, w) <= PHOTO_SIDES[1])
  r = jax.device_get(predict_for(scales or (1.0,))(
      None, jnp.asarray(photo.pixels[None].astype(np.float32))))
  faces, uncertain = [], []
  for box, score, points, valid in zip(r["boxes"][0], r["scores"][0], r["landmarks"][0],
                                       r["valid"][0]):
    if not valid or score < 0.3:
      continue
    box = [round(float(v), 1) for v in np.clip(box, 0, [w, h, w, h])]
    if faces and float(np.max(box_ops.pairwise_overlap_min(
        np.asarray([box]), np.asarray([f[:4] for f in faces])))) > 0.5:
      continue  # the same face found at another scale (NMS at 0.4 IoU keeps nested boxes)
    if score >= PHOTO_MIN_SCORE:
      pts = ([[round(float(x), 1), round(float(y), 1)] for x, y in points]
             if score >= PHOTO_LANDMARK_SCORE else None)
      faces.append(box + [round(float(score), 4), pts])
    else:
      uncertain.append(box + [round(float(score), 4)])
  return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "size": [w, h],
          "scales": list(scales), "faces": faces, "uncertain": uncertain}


def label_photos(retinaface: str, specs) -> dict:
  """{spec: label_photo(...)} for the people photos, with one RetinaFace predictor per scale
  set."""
  from tinyfaces_jax import detectors, inference
  from tinyfaces_jax.training import checkpointing
  det = detectors.build_detector("retinaface")
  variables, _ = checkpointing.model_variables(det, retinaface)
  cache = {}

  def predict_for(scales):
    if scales not in cache:
      fn = inference.make_predict_fn(det, inference.InferenceConfig(
          scales=scales, flip=True, max_size=0, max_output=200))
      cache[scales] = lambda _, images: fn(variables, images)
    return cache[scales]

  return {spec: label_photo(predict_for, spec) for spec in specs}


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--retinaface", required=True, help="Pytorch_Retinaface mnet0.25 .pth")
  parser.add_argument("--mtcnn", help="MTCNN weights folder (.pt / .lz4; not for --photos)")
  parser.add_argument("--out", default=str(LANDMARKS_FILE))
  parser.add_argument("--photos", action="store_true",
                      help="label the people photos' faces into photo_faces.json instead")
  args = parser.parse_args(argv)
  if args.photos:
    out = epath.Path(args.out if args.out != str(LANDMARKS_FILE) else
                     package_images.PHOTO_FACES_FILE)
    labels = label_photos(args.retinaface, package_images.PEOPLE_FILES)
    doc = {"teacher": epath.Path(args.retinaface).name, "min_score": PHOTO_MIN_SCORE,
           "landmark_score": PHOTO_LANDMARK_SCORE, "photos": labels}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for spec, v in labels.items():
      print(f"{spec}: {len(v['faces'])} faces, {len(v['uncertain'])} uncertain "
            f"{[u[4] for u in v['uncertain']]}")
    return
  if not args.mtcnn:
    parser.error("--mtcnn is required (except with --photos)")
  crops = package_images.face_crops()
  labels = label_crops(crops, args.retinaface, args.mtcnn)
  doc = {"teachers": {"retinaface": epath.Path(args.retinaface).name,
                      "mtcnn": epath.Path(args.mtcnn).name,
                      "face_side_px": FACE_SIDE, "min_score": MIN_SCORE, "min_iou": MIN_IOU,
                      "max_disagreement": MAX_DISAGREEMENT},
         "crops": labels}
  epath.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
  n = sum(v["present"] for v in labels.values())
  gaps = [v["disagreement"] for v in labels.values() if v["disagreement"] is not None]
  print(f"{args.out}: {n} of {len(labels)} crops with landmarks; teacher disagreement median "
        f"{np.median(gaps):.3f}, max {np.max(gaps):.3f} (inter-ocular NME)")


if __name__ == "__main__":
  main()
