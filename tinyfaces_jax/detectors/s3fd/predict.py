"""S3FD's own WIDER FACE test protocol (sfzhang15/SFD `sfd_test_code/WIDER_FACE/wider_test.py`;
../shared/references/s3fd_ssh.md 1.7), as a family predictor with the shared contract
(inference.make_predict_fn): predict(variables, images [B, H, W, 3] float32 RGB 0..255,
image_hw=None) -> dict(boxes [B, K, 4], scores [B, K], valid [B, K]), K = cfg.max_output.

For an image of H x W: max_im_shrink = sqrt(0x7fffffff / 577 / (H W)) (the largest input
Caffe's blob can hold), shrink = min(max_im_shrink, 1), and the branches
  * `shrink` and its mirror (x1' = W - x2, no -1), all boxes;
  * st = 0.5 (0.5 max_im_shrink when max_im_shrink < 0.75): boxes with max side > 30;
  * bt = min(2, max_im_shrink) when max_im_shrink > 1, else (st + max_im_shrink) / 2; when
    max_im_shrink > 2 also 2 bt, 4 bt, ... below max_im_shrink and max_im_shrink itself; with
    the final bt > 1 boxes with min side < 100, else max side > 30
(sides in original pixels, +1 convention). Each branch is the deploy net's DetectionOutput:
softmax > score_threshold (0.05), the top pre_nms_top_k (5000), NMS at iou_threshold (0.3,
continuous IoU as Caffe's normalised boxes), keep max_output (750). The branches are pooled
and merged by the release's box voting (detection/box_voting: clusters at IoU >= 0.3 in the
+1 convention averaged by score, singletons dropped), keeping the first max_output.

Static shapes: the scales come from the size of the batch's images, i.e. the padded size
bucket (one compile per bucket), not from each image's own size: for a 1024 x 683 WIDER image
in a 1024 x 704 bucket max_im_shrink is 2.24 instead of 2.28. Resizing is jax.image.resize
(linear, antialiased when shrinking) for cv2.INTER_LINEAR.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from tinyfaces_jax import inference
from tinyfaces_jax.detection import box_voting, nms as nms_lib

CAFFE_MAX_BLOB = 0x7FFFFFFF / 577.0


def release_branches(height: int, width: int) -> list[tuple[float, bool, str]]:
  """[(scale, flip, size filter)] of the protocol for an H x W image; the filter is "all",
  "large" (max side > 30) or "small" (min side < 100)."""
  max_shrink = math.sqrt(CAFFE_MAX_BLOB / (height * width))
  shrink = min(max_shrink, 1.0)
  out = [(shrink, False, "all"), (shrink, True, "all")]
  st = 0.5 if max_shrink >= 0.75 else 0.5 * max_shrink
  out.append((st, False, "large"))
  bt = min(2.0, max_shrink) if max_shrink > 1 else (st + max_shrink) / 2
  big = [bt]
  if max_shrink > 2:
    bt *= 2
    while bt < max_shrink:
      big.append(bt)
      bt *= 2
    big.append(max_shrink)
  kind = "small" if bt > 1 else "large"
  return out + [(s, False, kind) for s in big]


def size_filter(boxes, kind: str):
  """[..., 4] boxes -> [...] bool, the protocol's filter (+1 pixel sides)."""
  w = boxes[..., 2] - boxes[..., 0] + 1.0
  h = boxes[..., 3] - boxes[..., 1] + 1.0
  if kind == "large":
    return jnp.maximum(w, h) > 30.0
  if kind == "small":
    return jnp.minimum(w, h) < 100.0
  return jnp.ones(boxes.shape[:-1], bool)


def make_release_predict(detector, cfg: inference.InferenceConfig) -> Callable:
  """The jitted protocol predictor of the module docstring."""

  @jax.jit
  def predict(variables, images, image_hw=None):
    del image_hw     # scales from the bucket (module docstring)
    h, w = images.shape[1:3]
    boxes, scores, valid = [], [], []
    for scale, flip, kind in release_branches(h, w):
      b, s, _ = inference.run_branch(detector, variables, images, scale, flip)
      r = nms_lib.batched_nms(b, s, iou_threshold=cfg.iou_threshold,
                              max_output=cfg.max_output, score_threshold=cfg.score_threshold,
                              pre_nms_top_k=cfg.pre_nms_top_k, pixel_offset=0.0)
      boxes.append(r.boxes)
      scores.append(r.scores)
      valid.append(r.valid & size_filter(r.boxes, kind))
    v = box_voting.batched_box_vote(jnp.concatenate(boxes, 1), jnp.concatenate(scores, 1),
                                    jnp.concatenate(valid, 1), iou_threshold=0.3,
                                    max_output=cfg.max_output, pixel_offset=1.0)
    return {"boxes": v.boxes, "scores": v.scores, "valid": v.valid}

  return predict
