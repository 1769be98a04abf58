"""Detector families behind one interface: what training, evaluation and `detect` need.

A `Detector` bundles a flax model with its input preprocessing, its loss (matching and OHEM
inside, XLA, static shapes), its decoding to boxes in input pixels and its weight importers.
The training loop (train.py), the inference core (inference.py) and the CLIs only talk to this
interface; each family registers a builder in `BUILDERS` (RetinaFace here; HR, S3FD, SSH and
MTCNN add theirs).

Images reach `preprocess` as float32 RGB 0..255 [B, H, W, 3] (what the tf.data pipelines and
the image loaders produce); `decode` returns, in the pixels of the model input [H, W]:
  boxes [B, A, 4] xyxy, scores [B, A] face probability, and optionally landmarks [B, A, P, 2].
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax import losses, settings
from tinyfaces_jax.detection import anchors as anchors_lib

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Detector:
  """One detector family, configured.

  Attributes:
    name: family name, e.g. "retinaface".
    model: the flax module; `model.apply(variables, preprocess(images), train=...)` -> outputs.
    preprocess: [B, H, W, 3] float32 RGB 0..255 -> model input.
    loss: (outputs, batch, key) -> (scalar loss, metrics); `key` drives sampling inside the
      loss (OHEM draws); the training image size is read from batch["image"] (static), so
      anchors/templates are trace-time constants.
    decode: (outputs, (H, W), scale) -> dict(boxes [B, A, 4], scores [B, A], landmarks
      [B, A, P, 2]); `scale` is the test scale of the branch (HR prunes templates by it).
    pad_value: RGB value that `preprocess` maps to zero (padding of size buckets).
    landmark_flip: permutation of the P landmarks under a horizontal flip (None: none).
    import_weights: path -> {'params', 'batch_stats'} of the whole model (public checkpoints).
    import_backbone: path -> {'params', 'batch_stats'} of the backbone alone (ImageNet).
    backbone_scope: the top-level variable scope the backbone lives in.
  """
  name: str
  model: nn.Module
  preprocess: Callable[[Array], Array]
  loss: Callable[[dict, dict], tuple]
  decode: Callable[[dict, tuple], dict]
  pad_value: tuple = (0.0, 0.0, 0.0)
  landmark_flip: Optional[tuple] = None
  import_weights: Optional[Callable[[str], dict]] = None
  import_backbone: Optional[Callable[[str], dict]] = None
  backbone_scope: str = "body"

  def init_variables(self, image_hw=(64, 64), rng=None) -> dict:
    """Random-init variables for an input of [1, H, W, 3]."""
    rng = jax.random.key(0) if rng is None else rng
    x = jnp.zeros((1,) + tuple(image_hw) + (3,), jnp.float32)
    return self.model.init(rng, self.preprocess(x), train=False)


def _retinaface(model: dict, loss: dict) -> Detector:
  from tinyfaces_jax.models import retinaface
  from tinyfaces_jax.pretrained import retinaface_onnx, retinaface_pth

  model = dict(model)
  preset = model.pop("preset", "mnet025")
  if preset not in retinaface.PRESETS:
    raise settings.ConfigError(f"config.model.preset: unknown RetinaFace preset {preset!r}; "
                               f"known: {sorted(retinaface.PRESETS)}")
  base = dataclasses.asdict(retinaface.PRESETS[preset])
  cfg = settings.dataclass_from(retinaface.RetinaFaceConfig, {**base, **model}, "config.model")
  loss_cfg = settings.dataclass_from(losses.MultiboxLossConfig, loss, "config.loss")
  spec = cfg.anchor_spec
  mean_bgr = jnp.asarray(retinaface.MEAN_BGR, jnp.float32)

  def preprocess(images):
    return images[..., ::-1].astype(jnp.float32) - mean_bgr

  def loss_fn(outputs, batch, key=None):
    del key
    anchors = jnp.asarray(anchors_lib.anchor_grid(spec, tuple(batch["image"].shape[1:3])))
    return losses.multibox_loss(outputs, batch, anchors, loss_cfg)

  def decode(outputs, image_hw, scale=1.0):
    del scale
    d = retinaface.decode(outputs, cfg, tuple(image_hw))
    b, a = d["scores"].shape
    return {"boxes": d["boxes"], "scores": d["scores"],
            "landmarks": d["landmarks"].reshape(b, a, 5, 2)}

  def import_weights(path):
    if str(path).endswith(".onnx"):
      return retinaface_onnx.load_retinaface_onnx(path, cfg)
    return retinaface_pth.load_retinaface_pth(path, cfg)

  def import_backbone(path):
    return retinaface_pth.load_backbone_pth(path, cfg.backbone, cfg.activation)

  return Detector(name="retinaface", model=retinaface.RetinaFace(cfg), preprocess=preprocess,
                  loss=loss_fn, decode=decode, pad_value=tuple(float(v) for v in
                                                               retinaface.MEAN_BGR[::-1]),
                  landmark_flip=(1, 0, 2, 4, 3), import_weights=import_weights,
                  import_backbone=import_backbone, backbone_scope="body")


def _hr(model: dict, loss: dict) -> Detector:
  from tinyfaces_jax import hr_detector
  return hr_detector.build(model, loss)


BUILDERS: dict[str, Callable[[dict, dict], Detector]] = {"retinaface": _retinaface, "hr": _hr}


def build_detector(name: str, model: Any = None, loss: Any = None) -> Detector:
  """The detector `name` configured by the `model` and `loss` sections (mappings)."""
  if name not in BUILDERS:
    raise settings.ConfigError(f"config.detector: unknown detector {name!r}; known: "
                               f"{sorted(BUILDERS)}")
  return BUILDERS[name](settings.as_dict(model), settings.as_dict(loss))


def load_initial_weights(detector: Detector, variables: dict, *, checkpoint: Optional[str] = None,
                         backbone: Optional[str] = None) -> tuple[dict, str]:
  """Overwrites random-init `variables` with imported weights.

  Args:
    detector: the detector (its importers are used).
    variables: {'params', 'batch_stats'} (numpy or jax arrays).
    checkpoint: a whole-model public checkpoint (e.g. a RetinaFace .pth / .onnx), or None.
    backbone: an ImageNet backbone checkpoint put into `detector.backbone_scope`, or None.
  Returns:
    (variables, a one-line description of what was loaded).
  Raises:
    FileNotFoundError naming the path; ValueError when a checkpoint does not fit the model.
  """
  for path in (checkpoint, backbone):
    if path and not os.path.exists(os.path.expanduser(path)):
      raise FileNotFoundError(f"initial weights not found: {path}")
  if checkpoint:
    if detector.import_weights is None:
      raise ValueError(f"{detector.name}: no importer for whole-model checkpoints")
    loaded = detector.import_weights(os.path.expanduser(checkpoint))
    _check_same_tree(variables, loaded, checkpoint)
    return loaded, f"whole model from {checkpoint}"
  if backbone:
    if detector.import_backbone is None:
      raise ValueError(f"{detector.name}: no importer for backbone checkpoints")
    sub = detector.import_backbone(os.path.expanduser(backbone))
    scope = detector.backbone_scope
    out = {}
    for coll, tree in variables.items():
      tree = dict(tree)
      if coll in sub:
        _check_same_tree({coll: tree[scope]}, {coll: sub[coll]}, backbone)
        tree[scope] = sub[coll]
      out[coll] = tree
    return out, f"backbone '{scope}' from {backbone}"
  return variables, "random initialisation"


def _check_same_tree(want: dict, got: dict, source: str) -> None:
  """Same pytree structure and leaf shapes, else ValueError naming the first differences."""
  flat_w = {jax.tree_util.keystr(k): np.shape(v)
            for k, v in jax.tree_util.tree_flatten_with_path(want)[0]}
  flat_g = {jax.tree_util.keystr(k): np.shape(v)
            for k, v in jax.tree_util.tree_flatten_with_path(got)[0]}
  diff = sorted(k for k in set(flat_w) | set(flat_g) if flat_w.get(k) != flat_g.get(k))
  if diff:
    raise ValueError(f"{source}: weights do not fit the configured model; first differences: "
                     + ", ".join(f"{k} model {flat_w.get(k)} vs file {flat_g.get(k)}"
                                 for k in diff[:5]))
