"""HR / Finding Tiny Faces (Hu & Ramanan 2017) behind the Detector interface (detectors/base.py):
model.py is the network (hybrid-resolution score maps on a ResNet / VGG16 / MobileNet trunk).

Model section keys (configs/hr_res101.py): the `model.HRConfig` fields (backbone,
activation, conv_impl, dtype; num_templates comes from the file) plus
  templates          the template file (RefBox_N25_scaled.mat layout: [T, 4 or 5])
  allscale_templates 1-based ids used at every test scale (release: type A, 5-12)
  onescale_templates 1-based ids used only at the scale matching their resolution sigma
                     (release: type B, 19-25, sigma 2: only on the 2x image)
  cell_offset        pixel of output cell 0's centre; None = the backbone's receptive-field
                     centre (`cell_offset`)
  border_mask        score 0 for templates that cross the image's border (the release's
                     `violation` mask, commented out in cnn_widerface_test_AB.m: the box of
                     cell + template, before regression, with x1 <= 0, y1 <= 0, x2 > W or
                     y2 > H in its 1-based pixels; W, H are each image's own size inside the
                     size-bucket padding when the caller gives the sizes, as evaluation and
                     detect do, else the network input's). Off by default, as the release;
                     on in the `:embedded` recipe.
Templates in neither list are never used at test time (the release ignores 1-4 and 13-18).

Decoding (per test scale s, in the pixels of the network input): cell (y, x), template t at
centre (offset + 8x, offset + 8y) with the template's +1 size (w_t, h_t); box centre
c + (w_t tx, h_t ty), size (w_t e^tw, h_t e^th), the exact inverse of the training targets
(the release writes c -+ size / 2, half a pixel wider); score sigmoid(score_cls), zero for the
templates not used at scale s (`active_templates`, `cnn_widerface_test_AB.m`'s rule: s < 1
keeps the one-scale templates with sigma < 1, s == 1 those with sigma == 1, s > 1 those with
sigma > 1).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax import settings
from tinyfaces_jax.detection import box_coder
from tinyfaces_jax.detectors.hr import loss as loss_lib, template_matching, templates as templates_lib
from tinyfaces_jax.detectors.base import Detector
from tinyfaces_jax.detectors.hr import model as hr

DEFAULT_ALLSCALE = tuple(range(5, 13))
DEFAULT_ONESCALE = tuple(range(19, 26))


def cell_offset(backbone: str) -> float:
  """Receptive-field centre (0-based pixels) of output cell 0 of HR on `backbone`: the
  stride-8 tap's. ResNet / MobileNet (PyTorch padding k // 2): every stride-2 layer maps
  centres i -> 2i, so 0. VGG16: each 2x2 pool shifts by half a stride: 0.5 + 1 + 2 = 3.5."""
  return 3.5 if backbone == "vgg16" else 0.0


def active_templates(sigma: np.ndarray, scale: float, allscale, onescale) -> np.ndarray:
  """[T] bool: the templates used at test `scale` (1-based id lists, see the docstring)."""
  t = len(sigma)
  for ids in (allscale, onescale):
    bad = [i for i in ids if not 1 <= int(i) <= t]
    if bad:
      raise ValueError(f"template ids {bad} outside 1..{t}")
  on = np.zeros(t, bool)
  on[np.asarray(allscale, int) - 1] = True
  one = np.asarray(onescale, int) - 1
  s = sigma[one]
  match = (s < 1) if scale < 1 else (s == 1) if scale == 1 else (s > 1)
  on[one[match]] = True
  return on


@dataclasses.dataclass(frozen=True)
class TemplateOptions:
  """The model section's template keys (the rest are hr.HRConfig fields; see the docstring)."""
  templates: str = ""
  allscale_templates: tuple = DEFAULT_ALLSCALE
  onescale_templates: tuple = DEFAULT_ONESCALE
  cell_offset: Optional[float] = None
  border_mask: bool = False

  def __post_init__(self):
    if not self.templates:
      raise ValueError("templates: the template file is required (RefBox_N25_scaled.mat, or "
                       "one made by `tinyfaces-cluster-templates`)")


def build(model: dict, loss: dict) -> Detector:
  """The configured HR Detector."""
  tpl_keys, net_keys = settings.partition(model, (TemplateOptions, hr.HRConfig), "config.model")
  opts = settings.dataclass_from(TemplateOptions, tpl_keys, "config.model")
  tpl = templates_lib.load_templates(opts.templates)  # a path (~ expanded) or a URL
  allscale, onescale = opts.allscale_templates, opts.onescale_templates
  cfg = settings.dataclass_from(hr.HRConfig, net_keys, "config.model", num_templates=len(tpl))
  offset = cell_offset(cfg.backbone) if opts.cell_offset is None else float(opts.cell_offset)
  loss_cfg = settings.dataclass_from(loss_lib.TinyFacesLossConfig, loss, "config.loss",
                                     offset=offset)
  try:
    active_templates(tpl.sigma, 1.0, allscale, onescale)
  except ValueError as e:
    raise settings.ConfigError(f"config.model: {e}") from None
  boxes = jnp.asarray(tpl.boxes)
  mean = jnp.asarray(hr.TINY_RGB_MEAN, jnp.float32)
  inclusive = jnp.asarray([0.0, 0.0, 1.0, 1.0], jnp.float32)

  def preprocess(images):
    return images.astype(jnp.float32) - mean

  def loss_fn(outputs, batch, key):
    return loss_lib.tiny_faces_loss(outputs, batch, boxes, key, loss_cfg)

  def decode(outputs, image_hw, scale=1.0, region=None):
    cls = outputs["cls"]
    b, h, w, t = cls.shape
    grid = template_matching.template_grid(boxes, (h, w), stride=8.0, offset=offset)
    reg = jnp.moveaxis(outputs["reg"].reshape(b, h, w, 4, t), 3, -1).reshape(b, -1, 4)
    out = box_coder.decode_boxes(reg, grid.reshape(1, -1, 4), (1.0, 1.0), pixel_offset=1.0)
    on = jnp.asarray(np.tile(active_templates(tpl.sigma, float(scale), allscale, onescale),
                             h * w))[None, :]
    if opts.border_mask:   # the release's test in 1-based pixels: x1 + 1 <= 0 | x2 + 1 > W ...
      ih, iw = image_hw    # ... at the input's border, or at each image's own (`region`)
      r = (jnp.asarray([[0.0, 0.0, iw, ih]], jnp.float32) if region is None
           else jnp.asarray(region, jnp.float32))[:, None, :]
      g = grid.reshape(1, -1, 4)
      on = on & (g[..., 0] > r[..., 0] - 1.0) & (g[..., 1] > r[..., 1] - 1.0) & (
          g[..., 2] <= r[..., 2] - 1.0) & (g[..., 3] <= r[..., 3] - 1.0)
    scores = jnp.where(on, jax.nn.sigmoid(cls.reshape(b, -1)), 0.0)
    return {"boxes": out + inclusive, "scores": scores}

  def import_backbone(path):
    from tinyfaces_jax.pretrained import backbones_pth
    last = {"vgg16": 5, "mobilenet0.25": 3}.get(cfg.backbone, 3)
    return backbones_pth.load_trunk(path, cfg.backbone, last, cfg.activation)

  return Detector(name="hr", model=hr.HybridResolution(cfg), preprocess=preprocess,
                  loss=loss_fn, decode=decode, decode_region=opts.border_mask,
                  pad_value=hr.TINY_RGB_MEAN,
                  landmark_flip=None, import_weights=None, import_backbone=import_backbone,
                  backbone_scope="body")
