"""The real-photo check: does a detector find the faces of real photos, and only those?

The photos and their faces are the shared reference fixtures (`../shared/reference/`, see its
README): t1.jpg and multiface.jpg with the faces that the released Pytorch_Retinaface
(MobileNet0.25, trained on real WIDER FACE; an independent detector) found at score >= its
visualisation threshold 0.6 (`retinaface_mnet025_m2man.npz`: `<photo>_boxes`, in the pixels
of the image that detector ran on, scaled here to the file's pixels), ivan.jpg (a speaker
before an embroidered coat of arms) with the one face of the released MTCNN of facenet-pytorch
(also trained on real faces; `mtcnn_facenet.npz`), and no-faces.jpg, which has none (same
file). A detection with score >= `min_score` matches an unmatched face at IoU >= `iou`
(greedy, by descending score); the others are false positives.

`reference_photos(reference_dir)` -> [Photo]; `check(photos, dets, min_score, iou)` -> the
per-photo and overall counts; `draw(photos, dets, result, path)` -> one PNG with the faces
(blue), the matched detections (green) and the false positives (red), scores written.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tinyfaces_jax import paths
from tinyfaces_jax.evaluation import drawing, landmarks

# (photo key, image file, reference file, array prefix): the faces of each photo.
PHOTOS = (("t1", "t1.jpg", "retinaface_mnet025_m2man.npz", "t1"),
          ("multiface", "multiface.jpg", "retinaface_mnet025_m2man.npz", "multiface"),
          ("ivan", "ivan.jpg", "mtcnn_facenet.npz", "ivan"),
          ("no-faces", "no-faces.jpg", "mtcnn_facenet.npz", "nofaces"))


@dataclasses.dataclass(frozen=True)
class Photo:
  """One photo: `key`, its image file and the faces [G, 4] xyxy in the file's pixels."""
  key: str
  file: str
  faces: np.ndarray
  image_hw: tuple


def reference_photos(reference_dir) -> list:
  """The photos of PHOTOS found in `reference_dir` (the shared `reference/` folder: its
  `images/` and .npz files) -> [Photo]. FileNotFoundError naming what is missing."""
  root = paths.resolve(reference_dir)
  out, arrays = [], {}
  for key, image, ref, prefix in PHOTOS:
    for need in (root / "images" / image, root / ref):
      if not need.exists():
        raise FileNotFoundError(f"photos: {need} is missing (the shared reference photos and "
                                "their reference outputs)")
    if ref not in arrays:
      with (root / ref).open("rb") as f:
        arrays[ref] = dict(np.load(f, allow_pickle=False))
    a = arrays[ref]
    from PIL import Image
    with (root / "images" / image).open("rb") as f:
      w, h = Image.open(f).size
    faces = np.asarray(a[f"{prefix}_boxes"], np.float64).reshape(-1, 4)
    rh, rw = a[f"{prefix}_image_rgb"].shape[:2]   # the image the reference detector ran on
    faces = faces * np.asarray([w / rw, h / rh, w / rw, h / rh])
    out.append(Photo(key, str(root / "images" / image), faces, (h, w)))
  return out


def check(photos, dets: dict, min_score: float = 0.5, iou: float = 0.5) -> dict:
  """Counts per photo and overall. dets: {photo key: dict(boxes [N, 4], scores [N])} in the
  photo's pixels. -> {"photos": [{key, faces, found, false_positives, face_scores (the score
  of the detection matching each face, 0 if none), false_positive_scores (descending),
  matched [N] bool}], "recall",
  "false_positives", "max_false_positives", "min_face_score"}."""
  rows = []
  for p in photos:
    d = dets[p.key]
    boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(d["scores"], np.float64).reshape(-1)
    keep = scores >= min_score
    order = np.argsort(-scores[keep], kind="stable")
    idx = np.flatnonzero(keep)[order]
    overlaps = [landmarks.iou_to_boxes(boxes[i], p.faces) for i in idx]
    taken = np.zeros(len(p.faces), bool)
    face_scores = np.zeros(len(p.faces))
    matched = np.zeros(len(boxes), bool)
    for r, i in enumerate(idx):
      if not len(p.faces):
        break
      cand = np.where(taken, -1.0, overlaps[r])
      j = int(np.argmax(cand))
      if cand[j] >= iou:
        taken[j], matched[i], face_scores[j] = True, True, scores[i]
    rows.append({"key": p.key, "faces": int(len(p.faces)), "found": int(taken.sum()),
                 "false_positives": int(keep.sum() - matched.sum()),
                 "face_scores": [round(float(s), 4) for s in face_scores],
                 "false_positive_scores": [round(float(scores[i]), 4) for i in idx
                                           if not matched[i]],
                 "matched": matched})
  faces = sum(r["faces"] for r in rows)
  all_scores = [s for r in rows for s in r["face_scores"]]
  return {"photos": rows, "min_score": min_score, "iou": iou,
          "recall": sum(r["found"] for r in rows) / max(faces, 1),
          "false_positives": sum(r["false_positives"] for r in rows),
          "max_false_positives": max((r["false_positives"] for r in rows), default=0),
          "min_face_score": min(all_scores, default=float("nan"))}


def draw(photos, dets: dict, result: dict, path, height: int = 480):
  """One PNG: the photos side by side at `height` px, faces in blue, matched detections in
  green, false positives (score >= min_score) in red, with their scores."""
  from PIL import Image
  tiles = []
  for p, row in zip(photos, result["photos"]):
    with paths.resolve(p.file).open("rb") as f:
      img = Image.open(f).convert("RGB")
    d = dets[p.key]
    boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(d["scores"], np.float64).reshape(-1)
    shown = scores >= result["min_score"]
    img = drawing.draw_boxes(img, p.faces, colour=(60, 120, 255), width=2)
    for sel, colour in ((shown & row["matched"], (0, 220, 0)),
                        (shown & ~row["matched"], (255, 40, 40))):
      img = drawing.draw_boxes(img, boxes[sel], scores=scores[sel], colour=colour, width=3)
    s = height / img.height
    tiles.append(img.resize((max(1, round(img.width * s)), height), Image.BILINEAR))
  canvas = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height),
                     (255, 255, 255))
  x = 0
  for t in tiles:
    canvas.paste(t, (x, 0))
    x += t.width + 8
  return drawing.save_image(canvas, path)
