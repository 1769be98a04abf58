"""SSH (Najibi et al. 2017) behind the Detector interface: model.py is the network and its
anchors, weights.py imports the released `SSH.caffemodel`, recipe.py the training input.

Model section: SSHConfig fields (model.py) plus the test-time keys of `TestOptions`; loss
section: `SSHLossConfig` fields.

Loss (../shared/references/s3fd_ssh.md 2.3, mahyarnajibi/SSH `SSH/layers/anchor_target_layer.py`),
per image and per module M1 / M2 / M3, inside the jitted step:
  * anchors crossing the image by more than the module's border (0, 0, 512 px) are ignored
    (the image is the batch's `valid_region`; when no anchor of a module is inside, all are
    used, as the release);
  * IoU (+1 pixel convention) >= 0.5 positive, < 0.3 negative, no forced match;
  * OHEM on a stop-gradient of the same forward (the release's `_ohem` branches share the
    parameters and do not back-propagate): at most 64 positives, the lowest-scoring, and
    256 - #positives negatives, the highest-scoring (sampling.ohem_sample_mask);
  * softmax cross-entropy averaged over the sampled anchors + Smooth L1 (sigma 3) of the
    positives' deltas over the sampled count; the modules' losses are summed, and the batch
    loss is the mean over images (the release averages its 8 single-image gradients).
Targets encode as py-faster-rcnn's bbox_transform (+1 widths, no variances).

Decoding as the release's proposal layer: face probability, bbox_transform_inv (whose x2 / y2
come out one pixel beyond the +1 convention: ctr + 0.5 w), boxes clipped to the network input
(x into [0, W - 1], y into [0, H - 1]), each module's top `top_per_module` (1000) by score
kept, the rest scored 0; at a test scale >= `drop_m3_from_scale` (the pyramid's largest) M3
is dropped. Deviations: the input is the padded size bucket when images are padded (the
shared predictor's buckets), so a box can reach into the padding by less than a bucket; the
release's float overflow fallback (every dw, dh > 50 becomes 5 when one exp overflows) is
replaced by the core's log-scale clip; ties in the top 1000 go to the lower anchor index.

Preprocessing: RGB 0..255 -> BGR minus (102.9801, 115.9465, 122.7717).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tinyfaces_jax import settings
from tinyfaces_jax.detection import box_coder, matching, sampling
from tinyfaces_jax.detection.multibox_loss import smooth_l1
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.ssh import model as model_lib

BORDERS = (0.0, 0.0, 512.0)           # RPN allowed border of M1, M2, M3
NO_VARIANCES = (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class SSHLossConfig:
  """SSH anchor targets and OHEM (module docstring); release values."""
  pos_iou: float = 0.5
  neg_iou: float = 0.3
  num_samples: int = 256
  fg_fraction: float = 0.25
  hard_positives: bool = True
  sigma: float = 3.0
  borders: tuple = BORDERS


@dataclasses.dataclass(frozen=True)
class TestOptions:
  """Test-time keys of the model section: top_per_module (the release's N_DETS_PER_MODULE),
  drop_m3_from_scale (branches at a test scale >= it run without M3; 0 never: the pyramid
  config sets its largest scale, 2)."""
  top_per_module: int = 1000
  drop_m3_from_scale: float = 0.0


def module_targets(anchors, boxes, box_mask, valid_region, cfg: SSHLossConfig, slices):
  """Labels of one image: anchors [A, 4], boxes [M, 4], box_mask [M], valid_region [4] (x1, y1,
  x2, y2 of the image inside the canvas) -> Match with [A] fields (outside anchors ignored)."""
  m = matching.match_anchors(anchors, boxes, box_mask, pos_iou=cfg.pos_iou,
                             neg_iou=cfg.neg_iou, force="none", pixel_offset=1.0)
  x0, y0, x1, y1 = (valid_region[i] for i in range(4))
  parts = []
  for sl, b in zip(slices, cfg.borders):
    a = anchors[sl]
    inside = ((a[:, 0] >= x0 - b) & (a[:, 1] >= y0 - b) & (a[:, 2] < x1 + b)
              & (a[:, 3] < y1 + b))
    parts.append(jnp.where(jnp.any(inside), inside, True))
  inside = jnp.concatenate(parts)
  return m._replace(labels=jnp.where(inside, m.labels, matching.IGNORE))


def ssh_loss(outputs: dict, batch: dict, anchors, slices, cfg: SSHLossConfig):
  """outputs logits [B, A, 2], deltas [B, A, 4]; batch boxes [B, M, 4], box_mask [B, M],
  valid_region [B, 4], image [B, H, W, 3] -> (loss, metrics); see the module docstring."""
  anchors = jnp.asarray(anchors)
  region = batch.get("valid_region")
  if region is None:                      # the whole input is image
    b, h, w = batch["image"].shape[:3]
    region = jnp.tile(jnp.asarray([[0.0, 0.0, w, h]], jnp.float32), (b, 1))
  match = jax.vmap(lambda b, k, r: module_targets(anchors, b, k, r, cfg, slices))(
      batch["boxes"].astype(jnp.float32), batch["box_mask"], region.astype(jnp.float32))
  logits = outputs["logits"].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  fg = jax.lax.stop_gradient(jnp.exp(logp[..., 1]))
  matched = jax.vmap(lambda x, i: x[i])(batch["boxes"].astype(jnp.float32), match.matched_gt)
  targets = box_coder.encode_boxes(matched, anchors, NO_VARIANCES, pixel_offset=1.0)
  reg = jnp.sum(smooth_l1(outputs["deltas"].astype(jnp.float32) - targets,
                          1.0 / cfg.sigma ** 2), axis=-1)                      # [B, A]
  total_cls, total_reg = 0.0, 0.0
  num_pos, num_neg = 0.0, 0.0
  for sl in slices:
    pos, neg = jax.vmap(lambda s, l: sampling.ohem_sample_mask(
        s, l, num_samples=cfg.num_samples, fg_fraction=cfg.fg_fraction,
        hard_positives=cfg.hard_positives))(fg[:, sl], match.labels[:, sl])
    sampled = (pos | neg).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(sampled, axis=1), 1.0)                         # [B]
    ce = jnp.where(pos, -logp[:, sl, 1], -logp[:, sl, 0])
    total_cls = total_cls + jnp.sum(ce * sampled, axis=1) / count
    total_reg = total_reg + jnp.sum(reg[:, sl] * pos, axis=1) / count
    num_pos = num_pos + jnp.sum(pos)
    num_neg = num_neg + jnp.sum(neg)
  loss_cls, loss_box = jnp.mean(total_cls), jnp.mean(total_reg)
  loss = loss_cls + loss_box
  return loss, {"loss": loss, "loss_cls": loss_cls, "loss_box": loss_box,
                "num_pos": num_pos, "num_neg": num_neg}


def decode_outputs(outputs: dict, image_hw, options: TestOptions, scale: float = 1.0) -> dict:
  """The release's proposal layer per module (module docstring) -> boxes [B, A, 4], scores
  [B, A] (0 outside each module's top_per_module and for a dropped M3)."""
  anchors = jnp.asarray(model_lib.anchors(tuple(image_hw)))
  boxes = box_coder.decode_boxes(outputs["deltas"], anchors[None], NO_VARIANCES,
                                 pixel_offset=1.0)
  boxes = boxes + jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)   # ctr + 0.5 w (no -1)
  h, w = image_hw
  boxes = jnp.clip(boxes, 0.0, jnp.asarray([w - 1, h - 1, w - 1, h - 1], jnp.float32))
  scores = jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)[..., 1]
  parts = []
  for k, sl in enumerate(model_lib.module_slices(tuple(image_hw))):
    s = scores[:, sl]
    dropped = k == 2 and options.drop_m3_from_scale and scale >= options.drop_m3_from_scale
    if dropped:
      parts.append(jnp.zeros_like(s))
      continue
    if options.top_per_module and s.shape[1] > options.top_per_module:
      keep = jax.vmap(lambda v: sampling.top_k_mask(v, jnp.ones(v.shape, bool),
                                                    options.top_per_module))(s)
      s = jnp.where(keep, s, 0.0)
    parts.append(s)
  return {"boxes": boxes, "scores": jnp.concatenate(parts, axis=1)}


def build(model: dict, loss: dict) -> Detector:
  """SSH configured by the `model` section (SSHConfig + TestOptions fields) and the `loss`
  section (SSHLossConfig fields)."""
  net_keys, test_keys = settings.partition(model, (model_lib.SSHConfig, TestOptions),
                                           "config.model")
  net_cfg = settings.dataclass_from(model_lib.SSHConfig, net_keys, "config.model")
  test_opts = settings.dataclass_from(TestOptions, test_keys, "config.model")
  loss_cfg = settings.dataclass_from(SSHLossConfig, settings.as_dict(loss), "config.loss")
  mean = jnp.asarray(model_lib.MEAN_BGR[::-1], jnp.float32)        # in RGB order

  def preprocess(images):
    return (images.astype(jnp.float32) - mean)[..., ::-1]

  def loss_fn(outputs, batch, key=None):
    del key
    hw = tuple(batch["image"].shape[1:3])
    return ssh_loss(outputs, batch, model_lib.anchors(hw), model_lib.module_slices(hw),
                    loss_cfg)

  def decode(outputs, image_hw, scale=1.0):
    return decode_outputs(outputs, image_hw, test_opts, scale)

  def import_weights(path):
    from tinyfaces_jax.detectors.ssh import weights
    return weights.load_ssh_caffemodel(path, net_cfg)

  def import_backbone(path):
    from tinyfaces_jax.pretrained import backbones_pth
    # a torchvision VGG16 (`features.N`) or the ImageNet MobileNetV1-0.25
    return backbones_pth.load_trunk(path, net_cfg.backbone, 5 if net_cfg.backbone == "vgg16"
                                    else 3, net_cfg.activation)

  return Detector(name="ssh", model=model_lib.SSH(net_cfg), preprocess=preprocess,
                  loss=loss_fn, decode=decode,
                  pad_value=tuple(float(v) for v in model_lib.MEAN_BGR[::-1]),
                  import_weights=import_weights, import_backbone=import_backbone,
                  backbone_scope="vgg" if net_cfg.backbone == "vgg16" else "body")
