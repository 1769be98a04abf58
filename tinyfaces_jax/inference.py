"""Inference shared by every detector: test-time resize, scales, flip, batched XLA NMS.

`make_predict_fn(detector, cfg)` returns one jitted function
    predict(variables, images [B, H, W, 3] float32 RGB 0..255, image_hw=None) -> dict of [B, K, ...]
that runs the model at each test scale (relative to the given images; `jax.image.resize`
inside the jit), optionally on the mirrored images too, maps every branch's boxes (and
landmarks, with left/right swapped under the flip) back to the pixels of `images`, keeps each
branch's `pre_nms_top_k` best, and runs one greedy NMS over all of them. jit compiles once per
input shape, so callers pad images to size buckets (`bucket_hw`, `pad_to`) to get one compile
per bucket, not per image; `image_hw` [B, 2] int32 (optional) is each image's size inside
its padding, which this predictor gives only to a family whose decode asks for it
(`Detector.decode_region`: HR's border mask at the image's own border) and a family's own
predictor may use (a cascade's pyramid). With one scale and no flip this is exactly the reference
post-processing (threshold, top-k, NMS, keep-top-k).

Output (K = max_output, in descending score order, padded with valid=False):
  boxes [B, K, 4] xyxy, scores [B, K], landmarks [B, K, P, 2] (when the detector has them),
  valid [B, K].
Host helpers map one image's detections to original pixels (`to_original`) and choose the
base scale of an image (`base_scale`, the WIDER test-resize policies). A family with its own
prediction (a cascade: `Detector.make_predict`) is served by `make_predict_fn` too, with the
same output contract, so evaluation, detect and export do not tell the difference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tinyfaces_jax.detection import nms as nms_lib
from tinyfaces_jax.detectors import Detector

RESIZE_POLICIES = ("none", "fit")


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """Test-time settings (defaults: RetinaFace `detect.py` / `test_widerface.py`).

  Attributes:
    resize: base scale policy: "none" (original size) or "fit" (shorter side to
      `target_size`, longer side at most `max_size`: RetinaFace's WIDER test resize).
    target_size: the "fit" shorter side.
    max_size: the longer side is never above it (both policies; 0 = no cap): a bound on memory.
    scales: test scales relative to the base image (e.g. (0.5, 1.0, 2.0)).
    flip: also run on the mirrored image.
    score_threshold: candidates need a score > it (reference 0.02).
    pre_nms_top_k: candidates per scale and flip entering NMS (reference 5000).
    iou_threshold: NMS IoU (reference 0.4).
    max_output: K, detections kept per image (reference keep_top_k 750).
    pixel_offset: 1.0 for the +1-pixel NMS areas of py_cpu_nms.
    bucket: padded H and W are multiples of it (one compile per bucket).
    max_branch_size: a test scale whose input would have a side above it is skipped for that
      bucket (0 = never; the HR release skips upsampled images over 5000 px). The scale 1
      branch always runs.
  """
  resize: str = "none"
  target_size: int = 1600
  max_size: int = 2150
  scales: tuple = (1.0,)
  flip: bool = False
  score_threshold: float = 0.02
  pre_nms_top_k: int = 5000
  iou_threshold: float = 0.4
  max_output: int = 750
  pixel_offset: float = 1.0
  bucket: int = 32
  max_branch_size: int = 0

  def __post_init__(self):
    if self.resize not in RESIZE_POLICIES:
      raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
    if not self.scales or any(float(s) <= 0 for s in self.scales):
      raise ValueError(f"scales must be positive, got {self.scales}")
    if self.bucket < 1 or self.max_output < 1 or self.pre_nms_top_k < 1:
      raise ValueError("bucket, max_output and pre_nms_top_k must be >= 1")


def base_scale(height, width, cfg: InferenceConfig, minimum: Callable = min):
  """The base resize factor of an image of `height` x `width` under `cfg.resize`.

  Pure arithmetic plus `minimum`, so it serves python numbers (default) and tensors
  (pass e.g. `tf.minimum`).
  """
  short, long = minimum(height, width), -minimum(-height, -width)
  if cfg.resize == "fit":
    scale = cfg.target_size / short
  else:
    scale = 1.0 + 0.0 * short
  if cfg.max_size:
    scale = minimum(scale, cfg.max_size / long)
  return scale


def bucket_hw(height: int, width: int, bucket: int) -> tuple[int, int]:
  """(H, W) rounded up to multiples of `bucket`."""
  return (int(math.ceil(height / bucket) * bucket), int(math.ceil(width / bucket) * bucket))


def pad_to(image: np.ndarray, hw: tuple[int, int], value) -> np.ndarray:
  """[h, w, 3] -> [H, W, 3] float32, padded bottom/right with the RGB `value`."""
  h, w = image.shape[:2]
  out = np.empty((hw[0], hw[1], 3), np.float32)
  out[...] = np.asarray(value, np.float32)
  out[:h, :w] = image
  return out


def _flip_back(boxes, landmarks, width: float, perm):
  """Maps detections on a mirrored image of `width` back: x -> width - x, L/R landmarks."""
  x1, y1, x2, y2 = jnp.split(boxes, 4, axis=-1)
  boxes = jnp.concatenate([width - x2, y1, width - x1, y2], axis=-1)
  if landmarks is not None:
    landmarks = landmarks.at[..., 0].set(width - landmarks[..., 0])
    if perm is not None:
      landmarks = landmarks[..., jnp.asarray(perm), :]
  return boxes, landmarks


def image_region(image_hw, padded_hw, branch_hw, flip: bool):
  """Each image's extent inside the padded input of a branch: image_hw [B, 2] (h, w) in the
  pixels of the padded images (padded_hw), the branch input of size branch_hw (mirrored when
  `flip`: the image then sits at the right) -> [B, 4] float32 (x1, y1, x2, y2)."""
  sy, sx = branch_hw[0] / padded_hw[0], branch_hw[1] / padded_hw[1]
  hw = jnp.asarray(image_hw, jnp.float32)
  y2, x2 = hw[:, 0] * sy, hw[:, 1] * sx
  zero = jnp.zeros_like(x2)
  if flip:
    return jnp.stack([branch_hw[1] - x2, zero, jnp.full_like(x2, branch_hw[1]), y2], -1)
  return jnp.stack([zero, zero, x2, y2], -1)


def run_branch(detector: Detector, variables, images, scale: float, flip: bool,
               image_hw=None):
  """One test branch: images [B, H, W, 3] resized by `scale` (static; `jax.image.resize`
  linear), mirrored when `flip`, through the model and `detector.decode`, mapped back to the
  pixels of `images`. image_hw [B, 2] (optional): each image's size inside its padding, given
  to a `decode_region` family's decode as its extent in the branch input.
  -> (boxes [B, A, 4], scores [B, A], landmarks [B, A, P, 2] or None)."""
  b, h, w, _ = images.shape
  hs, ws = max(1, round(h * scale)), max(1, round(w * scale))
  x = images if (hs, ws) == (h, w) else jax.image.resize(images, (b, hs, ws, 3), "linear")
  if flip:
    x = x[:, :, ::-1]
  out = detector.model.apply(variables, detector.preprocess(x), train=False)
  kw = {}
  if detector.decode_region and image_hw is not None:
    kw["region"] = image_region(image_hw, (h, w), (hs, ws), flip)
  d = detector.decode(jax.tree.map(lambda v: v.astype(jnp.float32), out), (hs, ws),
                      scale=scale, **kw)
  boxes, landmarks = d["boxes"], d.get("landmarks")
  if flip:
    boxes, landmarks = _flip_back(boxes, landmarks, float(ws), detector.landmark_flip)
  sx, sy = ws / w, hs / h
  boxes = boxes / jnp.asarray([sx, sy, sx, sy], jnp.float32)
  if landmarks is not None:
    landmarks = landmarks / jnp.asarray([sx, sy], jnp.float32)
  return boxes, d["scores"], landmarks


def make_predict_fn(detector: Detector, cfg: InferenceConfig) -> Callable:
  """The jitted `predict(variables, images) -> dict` described in the module docstring, or
  the family's own (`detector.make_predict(cfg)`, e.g. a cascade or a release's test
  protocol) with the same contract."""
  if detector.make_predict is not None:
    return detector.make_predict(cfg)

  flips = (False, True) if cfg.flip else (False,)

  def branches_for(h: int, w: int) -> list:
    out = [(float(s), f) for s in cfg.scales for f in flips
           if float(s) == 1.0 or not cfg.max_branch_size
           or max(h, w) * float(s) <= cfg.max_branch_size]
    return out or [(1.0, f) for f in flips]

  @jax.jit
  def predict(variables, images, image_hw=None):
    parts = [run_branch(detector, variables, images, s, f, image_hw)
             for s, f in branches_for(*images.shape[1:3])]
    if len(parts) == 1:
      boxes, scores, landmarks = parts[0]
      top_k: Optional[int] = cfg.pre_nms_top_k
    else:
      sel = []
      for boxes, scores, landmarks in parts:
        k = min(cfg.pre_nms_top_k, scores.shape[1])
        s, i = lax.top_k(scores, k)
        take = jax.vmap(lambda x, j: x[j])
        sel.append((take(boxes, i), s, None if landmarks is None else take(landmarks, i)))
      boxes = jnp.concatenate([p[0] for p in sel], axis=1)
      scores = jnp.concatenate([p[1] for p in sel], axis=1)
      landmarks = (None if sel[0][2] is None
                   else jnp.concatenate([p[2] for p in sel], axis=1))
      top_k = None
    return select(boxes, scores, landmarks, cfg, top_k)

  return predict


def select(boxes, scores, landmarks, cfg: InferenceConfig, pre_nms_top_k: Optional[int]):
  """The predictor's last step (traceable): score threshold, top-k, greedy NMS and keep-K of
  one set of candidates per image. boxes [B, A, 4], scores [B, A], landmarks [B, A, P, 2] or
  None -> the output dict of the module docstring."""
  res = nms_lib.batched_nms(boxes, scores, iou_threshold=cfg.iou_threshold,
                            max_output=cfg.max_output, score_threshold=cfg.score_threshold,
                            pre_nms_top_k=pre_nms_top_k, pixel_offset=cfg.pixel_offset)
  out = {"boxes": res.boxes, "scores": res.scores, "valid": res.valid}
  if landmarks is not None:
    lm = jax.vmap(lambda x, j: x[j])(landmarks, jnp.maximum(res.indices, 0))
    out["landmarks"] = jnp.where(res.valid[..., None, None], lm, 0.0)
  return out


def to_original(det: dict, index: int, scale: float) -> dict:
  """Image `index` of a (host) `predict` result -> its valid detections in original pixels.

  Returns dict(boxes [N, 4] xyxy, scores [N], landmarks [N, P, 2] when present), float32,
  descending score order; `scale` is the factor the image was resized by before `predict`.
  """
  v = np.asarray(det["valid"][index])
  out = {"boxes": np.asarray(det["boxes"][index])[v] / scale,
         "scores": np.asarray(det["scores"][index])[v]}
  if "landmarks" in det:
    out["landmarks"] = np.asarray(det["landmarks"][index])[v] / scale
  return out
