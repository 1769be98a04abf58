"""S3FD (Zhang et al. 2017) behind the Detector interface: model.py is the network, its
variants and anchors; weights.py imports face-alignment's and S3FD.pytorch's files.

Model section keys: `variant` (model.VARIANTS: caffe, face_alignment, yxlijun) plus any
S3FDConfig field to override, and `test_protocol`: "single" (the shared predictor: one pass,
threshold, NMS, as the deploy net) or "release" (predict.py: the release's WIDER protocol with
shrink, flip, 0.5x / up-scales with size filters and box voting); loss section: multibox_loss.MultiboxLossConfig fields (S3FD
defaults, LOSS_DEFAULTS: stage one SSD Caffe's bipartite matching then IoU >= 0.35, stage two
the author's (faces with < 6 anchors take their best free anchors with IoU > 0.1), 3:1 hard
negatives per image ranked by background loss, both terms over the batch's positives, loc
weight 1; `stage2` "average" / "yxlijun" for the other published variants).

Preprocessing: RGB 0..255 -> BGR minus (104, 117, 123) (caffe, face_alignment), or RGB minus
the same means in RGB order (yxlijun, whose weights were trained on RGB). Decoding: softmax
face probability, SSD box offsets with variances 0.1 / 0.2 on the anchors of the maps the
network produces at that input size (model.feature_sizes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinyfaces_jax import settings
from tinyfaces_jax.detection import box_coder, multibox_loss
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.s3fd import model as model_lib, weights

PROTOCOLS = ("single", "release")
LOSS_DEFAULTS = dict(matcher="s3fd", pos_iou=0.35, force="bipartite", force_min_iou=0.0,
                     stage2="author", stage2_n=6, neg_pos_ratio=3.0, loc_weight=1.0)


def build(model: dict, loss: dict) -> Detector:
  """S3FD configured by the `model` section (a variant + S3FDConfig fields) and the `loss`
  section (MultiboxLossConfig fields over LOSS_DEFAULTS)."""
  model = dict(model)
  variant = model.pop("variant", "caffe")
  protocol = model.pop("test_protocol", "single")
  if protocol not in PROTOCOLS:
    raise settings.ConfigError(f"config.model.test_protocol: {protocol!r}; known: {PROTOCOLS}")
  if variant not in model_lib.VARIANTS:
    raise settings.ConfigError(f"config.model.variant: unknown S3FD variant {variant!r}; "
                               f"known: {sorted(model_lib.VARIANTS)}")
  base = dataclasses.asdict(model_lib.VARIANTS[variant])
  cfg = settings.dataclass_from(model_lib.S3FDConfig, {**base, **model}, "config.model")
  loss_cfg = settings.dataclass_from(multibox_loss.MultiboxLossConfig,
                                     {**LOSS_DEFAULTS, **settings.as_dict(loss)}, "config.loss")
  mean = jnp.asarray(model_lib.MEAN_BGR[::-1], jnp.float32)       # in RGB order

  def preprocess(images):
    x = images.astype(jnp.float32) - mean
    return x if cfg.rgb_input else x[..., ::-1]

  def loss_fn(outputs, batch, key=None):
    del key
    anchors = jnp.asarray(model_lib.anchors(cfg, tuple(batch["image"].shape[1:3])))
    return multibox_loss.multibox_loss(outputs, batch, anchors, loss_cfg)

  def decode(outputs, image_hw, scale=1.0):
    del scale
    anchors = jnp.asarray(model_lib.anchors(cfg, tuple(image_hw)))
    boxes = box_coder.decode_boxes(outputs["loc"], anchors[None], loss_cfg.variances)
    return {"boxes": boxes, "scores": jax.nn.softmax(outputs["conf"], axis=-1)[..., 1]}

  def import_weights(path):
    return weights.load_s3fd_pth(path, cfg)

  def import_backbone(path):   # a torchvision VGG16 (`features.N`) or the ImageNet MobileNet
    from tinyfaces_jax.pretrained import backbones_pth
    return backbones_pth.load_trunk(path, cfg.backbone, 5 if cfg.backbone == "vgg16" else 3,
                                    cfg.activation)

  def make_predict(infer_cfg):
    from tinyfaces_jax.detectors.s3fd import predict
    return predict.make_release_predict(det, infer_cfg)

  det = Detector(name="s3fd", model=model_lib.S3FD(cfg), preprocess=preprocess,
                 loss=loss_fn, decode=decode,
                 pad_value=tuple(float(v) for v in model_lib.MEAN_BGR[::-1]),
                 import_weights=import_weights, import_backbone=import_backbone,
                 backbone_scope="vgg" if cfg.backbone == "vgg16" else "body",
                 make_predict=make_predict if protocol == "release" else None)
  return det
