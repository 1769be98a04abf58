"""The Detector interface every family implements, and weight loading with tree checks.

A `Detector` bundles a flax model with its input preprocessing, its loss (matching and OHEM
inside, XLA, static shapes), its decoding to boxes in input pixels and its weight importers.
The training loop (training/train.py), the inference core (inference.py) and the CLIs only talk to this
interface; a family is the package `detectors/<name>/` whose `build(model, loss)` returns one
(`detectors.build_detector` looks it up by module name).

Images reach `preprocess` as float32 RGB 0..255 [B, H, W, 3] (what the tf.data pipelines and
the image loaders produce); `decode` returns, in the pixels of the model input [H, W]:
  boxes [B, A, 4] xyxy, scores [B, A] face probability, and optionally landmarks [B, A, P, 2].

Mixed precision: `detector.with_dtype(jnp.bfloat16)` is the same detector whose model
computes in bfloat16 (convs, dots, BatchNorm output, activations, neck, heads) with the same
variables tree, float32 parameters / batch statistics and float32 outputs; the loss and
decoding are float32 either way. Training builds it for the train step (train.bf16) and
evaluates with the float32 one on the same parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tinyfaces_jax import paths

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Detector:
  """One detector family, configured.

  Attributes:
    name: family name, e.g. "retinaface".
    model: the flax module; `model.apply(variables, preprocess(images), train=...)` -> outputs
      (float32). Its `config` is a frozen dataclass with a `dtype` field (the compute dtype
      name, models/layers.py), which `with_dtype` replaces.
    preprocess: [B, H, W, 3] float32 RGB 0..255 -> model input.
    loss: (outputs, batch, key) -> (scalar loss, metrics); `key` drives sampling inside the
      loss (OHEM draws); the training image size is read from batch["image"] (static), so
      anchors/templates are trace-time constants.
    decode: (outputs, (H, W), scale) -> dict(boxes [B, A, 4], scores [B, A], landmarks
      [B, A, P, 2]); `scale` is the test scale of the branch (HR prunes templates by it).
    decode_region: decode also takes `region=` [B, 4] float32 (x1, y1, x2, y2), each image's
      extent inside the padded input, when the caller knows the images' sizes (HR's border
      mask at the image's own border rather than the size bucket's).
    pad_value: RGB value that `preprocess` maps to zero (padding of size buckets).
    landmark_flip: permutation of the P landmarks under a horizontal flip (None: none).
    import_weights: path -> {'params', 'batch_stats'} of the whole model (public checkpoints).
    import_backbone: path -> {'params', 'batch_stats'} of the backbone alone (ImageNet).
    backbone_scope: the top-level variable scope the backbone lives in.
    make_predict: None (inference.make_predict_fn's scales / flip / NMS over `decode`), or the
      family's own `(inference.InferenceConfig) -> predict(variables, images [B, H, W, 3]
      float32 RGB 0..255, image_hw [B, 2] int32 or None) -> dict(boxes [B, K, 4], scores
      [B, K], valid [B, K][, landmarks [B, K, P, 2]])` (a cascade; `image_hw` is each image's
      size inside the bucket padding), used by evaluation, detect and export alike.
    locate_weights: None, or `name -> path` for weight names the family resolves itself
      (MTCNN's "pypi:mtcnn": the installed package's files); other names come back as given.
    folder_weights: the importer takes a folder of files (MTCNN's three networks), so a
      folder that is not a training workdir goes to `import_weights`.
    prepare_training: None, or `(variables, TrainingContext) -> recipe options`: work the
      family does with its starting weights before its training batches can be made (MTCNN's
      R- / O-Net stages mine hard samples with the trained, frozen earlier nets); the
      training loop calls it on every host once the state is initialised or restored and
      passes what it returns to the recipe's `train_dataset`.
    raw_exports: None (the network on images of each export size and test scale), or
      `sizes [(H, W)] -> [(file suffix, model method, input (h, w))]`: the networks an export
      of raw outputs writes (MTCNN's three nets; export/functions.py).
  """
  name: str
  model: nn.Module
  preprocess: Callable[[Array], Array]
  loss: Callable[[dict, dict], tuple]
  decode: Callable[[dict, tuple], dict]
  decode_region: bool = False
  pad_value: tuple = (0.0, 0.0, 0.0)
  landmark_flip: Optional[tuple] = None
  import_weights: Optional[Callable[[str], dict]] = None
  import_backbone: Optional[Callable[[str], dict]] = None
  backbone_scope: str = "body"
  make_predict: Optional[Callable] = None
  locate_weights: Optional[Callable[[str], str]] = None
  folder_weights: bool = False
  prepare_training: Optional[Callable[[dict, "TrainingContext"], dict]] = None
  raw_exports: Optional[Callable[[list], list]] = None

  def weights_path(self, path: str) -> str:
    """`path` through `locate_weights` (a family's own weight names), else unchanged."""
    return self.locate_weights(path) if (path and self.locate_weights) else path

  def init_variables(self, image_hw=(64, 64), rng=None) -> dict:
    """Random-init variables for an input of [1, H, W, 3]."""
    rng = jax.random.key(0) if rng is None else rng
    x = jnp.zeros((1,) + tuple(image_hw) + (3,), jnp.float32)
    return self.model.init(rng, self.preprocess(x), train=False)

  @property
  def dtype(self) -> jnp.dtype:
    """The model's compute dtype (float32 unless configured or `with_dtype`)."""
    return jnp.dtype(self.model.config.dtype)

  def with_dtype(self, dtype) -> "Detector":
    """This detector with its model computing in `dtype` (e.g. jnp.bfloat16): the same
    variables tree (parameters and batch statistics float32), outputs float32; preprocess,
    loss, decode and importers unchanged."""
    cfg = getattr(self.model, "config", None)
    if not (dataclasses.is_dataclass(cfg) and any(f.name == "dtype"
                                                  for f in dataclasses.fields(cfg))):
      raise ValueError(f"{self.name}: the model has no config.dtype, so it cannot compute in "
                       f"{dtype}")
    name = jnp.dtype(dtype).name
    if name not in ("float32", "bfloat16"):
      raise ValueError(f"{self.name}: compute dtype must be float32 or bfloat16, got {name}")
    return dataclasses.replace(self, model=self.model.clone(
        config=dataclasses.replace(cfg, dtype=name)))


@dataclasses.dataclass(frozen=True)
class TrainingContext:
  """What the training loop gives a family's `prepare_training`.

  Attributes:
    builder / split: the run's dataset and training split.
    options: config.data.recipe_options (a dict).
    workdir: the run's workdir (epath.Path; a URL stays a URL).
    predict_split: `(predict, reduce) -> {image key: reduce(key, detections)}`: `predict`
      (inference.make_predict_fn's contract) over every image of the training split, each
      host its share (test resize and size buckets of config.eval), merged on every host; a
      collective (every host calls it); `reduce` is what a host keeps of each image.
    host0_first: `(name, fn) -> fn()` run on host 0 first, then on the others (a file host 0
      writes is there when they run).
    any_host: `flag -> bool`: whether any host's flag is set (a collective).
    log: prints on host 0.
  """
  builder: Any
  split: str
  options: dict
  workdir: Any
  predict_split: Callable
  host0_first: Callable
  any_host: Callable[[bool], bool]
  log: Callable[[str], None]


def load_initial_weights(detector: Detector, variables: dict, *, checkpoint: Optional[str] = None,
                         backbone: Optional[str] = None) -> tuple[dict, str]:
  """Overwrites random-init `variables` with imported weights.

  Args:
    detector: the detector (its importers are used).
    variables: {'params', 'batch_stats'} (numpy or jax arrays).
    checkpoint: a whole-model public checkpoint (e.g. a RetinaFace .pth / .onnx), or None.
    backbone: an ImageNet backbone checkpoint put into `detector.backbone_scope`, or None.
    Either may be a local path (`~` expanded) or a URL (gs://...: stays a URL, paths.py);
    the importers get the resolved path as a string.
  Returns:
    (variables, a one-line description of what was loaded).
  Raises:
    FileNotFoundError naming the path; ValueError when a checkpoint does not fit the model.
  """
  resolved = {}
  checkpoint = detector.weights_path(checkpoint)
  for path in (checkpoint, backbone):
    if path:
      resolved[path] = paths.resolve(path)
      if not resolved[path].exists():
        raise FileNotFoundError(f"initial weights not found: {path}")
  if checkpoint:
    if detector.import_weights is None:
      raise ValueError(f"{detector.name}: no importer for whole-model checkpoints")
    loaded = detector.import_weights(str(resolved[checkpoint]))
    _check_same_tree(variables, loaded, checkpoint)
    return loaded, f"whole model from {checkpoint}"
  if backbone:
    if detector.import_backbone is None:
      raise ValueError(f"{detector.name}: no importer for backbone checkpoints")
    sub = detector.import_backbone(str(resolved[backbone]))
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
