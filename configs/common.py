"""Defaults shared by every detector config, and the `config.py:arg` parser.

A config file is `configs/<name>.py` with `get_config(arg=None) -> ml_collections.ConfigDict`;
`arg` is what follows the colon on the command line, e.g.
`--config=configs/retinaface_mnet025.py:embedded,steps=300`: comma-separated `key=value`
pairs and bare flags (`test` means `test=True`), parsed by `parse_arg` against the config's
declared options (unknown options are an error). Any field can then be overridden with
`--config.<path>=<value>`. train.py turns the sections into frozen dataclasses, so a typo in
a config file is an error naming the key and its closest known name.

Sections: detector, seed, data, model, loss, optim, train, eval, init.
"""

from __future__ import annotations

import ast
import os

import ml_collections

# The ImageNet MobileNetV1-0.25 weights RetinaFace starts from, where this workplace keeps them
# (`../shared` beside the repository); users pass their own with --config.init.backbone=PATH.
SHARED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              os.pardir, "shared", "weights")
# The shared reference photos and outputs (the real-photo check of the embedded runs).
SHARED_REFERENCE = os.path.normpath(os.path.join(os.path.dirname(SHARED_WEIGHTS), "reference"))


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """`"a=1,b=x,flag"` -> ConfigDict(defaults updated); values parsed as python literals
  (falling back to strings), bare names set True. Unknown names raise ValueError."""
  out = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: "
                       f"{', '.join(sorted(defaults))}")
    if not sep:
      value = True
    else:
      try:
        value = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        value = raw
    if isinstance(defaults[key], bool) and not isinstance(value, bool):
      raise ValueError(f"config argument {key!r} is a flag, got {raw!r}")
    if isinstance(defaults[key], int) and not isinstance(defaults[key], bool):
      value = int(value)
    if isinstance(defaults[key], float):
      value = float(value)
    out[key] = value
  return out


def get_config() -> ml_collections.ConfigDict:
  """The shared defaults (a detector config fills model/loss and adjusts the rest)."""
  c = ml_collections.ConfigDict()
  c.detector = "retinaface"
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"            # "embedded" (built here) or "wider" (your release files)
  c.data.data_dir = "~/tensorflow_datasets"   # TFDS data_dir (embedded: a subfolder of it)
  c.data.manual_dir = ""                # source=wider: folder with the official release files
  c.data.label_path = ""                # wider: RetinaFace label.txt ("" = look in manual_dir)
  c.data.eval_dir = ""                  # wider: eval_tools .mat folder ("" = look in manual_dir)
  c.data.embedded_train = 600           # embedded: images per split and their size range
  c.data.embedded_val = 150
  c.data.embedded_image_size = (320, 640)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.recipe = "retinaface"          # the augmentation of detectors/<recipe>/recipe.py
  c.data.recipe_options = ml_collections.ConfigDict()
  c.data.image_size = 640               # training crop side S
  c.data.max_boxes = 256                # M ground-truth slots (faces over it are counted)
  c.data.shuffle_buffer = 1024
  c.data.threads = 0                    # tf.data private thread pool per host (0: shared default)
  c.data.ram_budget_gb = 0.0            # tf.data autotune memory budget (0: half the host RAM)

  c.model = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict()

  c.optim = ml_collections.ConfigDict()  # optim.OptimConfig fields
  c.optim.learning_rate = 1e-3
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "step"
  c.optim.warmup_steps = 0
  c.optim.decay_steps = ()
  c.optim.decay_factor = 0.1
  c.optim.lr_multipliers = ()
  c.optim.frozen = ()
  c.optim.grad_clip_norm = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32               # global batch (divisible by the device count)
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0                # 0: evaluate only at the end
  c.train.eval_at_start = True          # with eval_every: also evaluate the starting weights
  c.train.bf16 = False                  # the model computes in bfloat16 (params, loss in f32)
  c.train.grad_accum_steps = 1          # micro-batches per optimizer step (same global batch)
  c.train.checkpoint_dir = ""           # "" = <workdir>/checkpoints (a local path or a URL)
  c.train.compilation_cache = "auto"    # persistent XLA cache: auto = <workdir>/jax_cache
                                        # (unless one is already set), "" = none, or a folder
  c.train.profile_steps = ()            # (first, last): a profiler trace of those steps on
                                        # host 0 into <workdir>/profile (TensorBoard)
  c.train.prefetch = 2                  # batches moved to the devices ahead of the step

  c.eval = ml_collections.ConfigDict()  # inference.InferenceConfig fields + the loop's own
  c.eval.batch_size = 8                 # per host (divisible by its devices; 0 = 1 per device)
  c.eval.resize = "none"
  c.eval.target_size = 1600
  c.eval.max_size = 2150
  c.eval.scales = (1.0,)
  c.eval.flip = False
  c.eval.score_threshold = 0.02
  c.eval.pre_nms_top_k = 5000
  c.eval.iou_threshold = 0.4
  c.eval.max_output = 750
  c.eval.pixel_offset = 1.0
  c.eval.bucket = 128
  c.eval.max_branch_size = 0            # skip test scales whose input side exceeds it (0: none)
  c.eval.max_images = 0                 # 0 = every image of each evaluator's set
  # Evaluators by type (evaluation/evaluators.py): {name: {type, options}}; the name names the
  # output folder eval/step_<k>/<name>/ and the scalars <name>/<scalar>.
  c.eval.evaluators = ml_collections.ConfigDict()
  c.eval.evaluators.wider = ml_collections.ConfigDict()
  c.eval.evaluators.wider.type = "wider"
  c.eval.evaluators.wider.gt_dir = ""         # official ground-truth .mat folder; "" = the split's
  c.eval.evaluators.wider.baselines_dir = ""  # official PR curves to plot beside ours
  c.eval.evaluators.wider.split = ""          # "" = data.eval_split

  c.init = ml_collections.ConfigDict()
  c.init.backbone = ""                  # ImageNet backbone checkpoint
  c.init.checkpoint = ""                # whole-model checkpoint (.pth / .onnx)
  c.init.require = True                 # a missing file is an error (False: warn, random init)
  return c


def add_fddb(c: ml_collections.ConfigDict, root: str) -> ml_collections.ConfigDict:
  """Adds the FDDB evaluator (the `fddb=DIR` config argument): DIR holds the official
  `originalPics/` and `FDDB-folds/` (paths or URLs)."""
  if root:
    root = root.rstrip("/")
    c.eval.evaluators.fddb = ml_collections.ConfigDict(
        {"type": "fddb", "images_dir": f"{root}/originalPics", "folds_dir": f"{root}/FDDB-folds",
         "folds": "1-10"})
  return c


def add_landmark_evaluator(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the 5-point landmark evaluator (NME, failure rate) on the eval split: the embedded
  dataset's teacher landmarks, or a release whose val label.txt has points."""
  c.eval.evaluators.landmarks = ml_collections.ConfigDict({"type": "landmarks"})
  return c


def add_photo_check(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the real-photo check (evaluator type "photos": the faces of the shared reference
  photos found, false positives per photo, photos.png) when the shared reference folder is
  beside the repository (`../shared/reference`); without it, nothing."""
  if os.path.isdir(SHARED_REFERENCE):
    c.eval.evaluators.photos = ml_collections.ConfigDict(
        {"type": "photos", "reference_dir": SHARED_REFERENCE})
  return c


def run_at_embedded_size(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Test-time size of the `:embedded` recipes: an image is run at its own size, at most the
  embedded set's largest side (`data.embedded_image_size[1]`, 640 px) on the long side, so a
  larger photo's objects sit at the scale the detector was trained on (the val images are
  never resized; the README's main-job section measures the real photos both ways)."""
  c.eval.resize = "none"
  c.eval.max_size = int(c.data.embedded_image_size[1])
  return c


def embedded_on_gpu(c: ml_collections.ConfigDict, *, steps: int, batch_size: int,
                    eval_every: int) -> ml_collections.ConfigDict:
  """The `gpu` variant of an `:embedded` config: the same recipe, longer, on a larger
  embedded set (4,000 train / 500 val images: ~2 minutes to build on 16 cores) with the
  schedule's warm-up and the checkpoint/eval cadence scaled to `steps`."""
  c.data.embedded_train = 4000
  c.data.embedded_val = 500
  c.train.batch_size = batch_size
  c.train.num_steps = steps
  c.train.log_every = 100
  c.train.checkpoint_every = eval_every
  c.train.eval_every = eval_every
  c.optim.warmup_steps = max(int(c.optim.warmup_steps), steps // 50)
  return c


def shrink_for_tests(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `test` variant: a tiny embedded set, tiny crops, a few steps (CPU seconds)."""
  c.data.source = "embedded"
  c.data.embedded_train = 16
  c.data.embedded_val = 8
  c.data.embedded_image_size = (96, 160)
  c.data.image_size = 96
  c.data.max_boxes = 32
  c.data.shuffle_buffer = 16
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.train.eval_every = 0
  c.eval.batch_size = 8
  c.eval.max_size = 160
  c.eval.bucket = 160
  c.eval.max_output = 100
  c.eval.pre_nms_top_k = 500
  c.optim.warmup_steps = 0
  c.optim.decay_steps = ()
  c.init.backbone = ""
  c.init.checkpoint = ""
  return c


def set_num_steps(c: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """Sets train.num_steps, scaling the schedule's step counts in proportion."""
  scale = steps / c.train.num_steps
  c.optim.decay_steps = tuple(int(s * scale) for s in c.optim.decay_steps)
  c.optim.warmup_steps = int(c.optim.warmup_steps * scale)
  c.train.num_steps = int(steps)
  c.train.checkpoint_every = max(1, min(c.train.checkpoint_every, steps))
  c.train.eval_every = min(c.train.eval_every, steps)
  return c
