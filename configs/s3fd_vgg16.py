"""S3FD (Zhang et al. 2017) with the VGG16 trunk, as the Caffe release trains and tests it.

  python -m tinyfaces_jax.main --config=configs/s3fd_vgg16.py --workdir=DIR \
      --config.data.manual_dir=/path/to/WIDER_release --config.init.backbone=vgg16-397923af.pth

Recipe (../shared/references/s3fd_ssh.md 1.3-1.6): 640x640 crops of the Caffe data layer
(detectors/s3fd/recipe.py), batch 32, SGD momentum 0.9, weight decay 5e-4, lr 1e-3 divided by
10 at 80k and 100k of 120k iterations; anchors 16..512 on strides 4..128, two-stage matching
(SSD bipartite then IoU >= 0.35; faces with fewer than 6 anchors topped up from IoU > 0.1),
3:1 hard negatives per image, loc weight 1; the trunk from a torchvision VGG16
(`init.backbone`; none ships offline), the other layers from random initialisation (lecun
normal; the release used xavier). Test: single scale at the
original size, softmax > 0.05, NMS 0.3 on the top 5000, keep 750 (the deploy
DetectionOutput), or `protocol=release`. Published WIDER val AP: 93.7 / 92.4 / 85.2 (easy /
medium / hard, the release's multi-scale protocol with box voting).

Arguments (`s3fd_vgg16.py:arg,...`):
  variant=V   caffe (default: the paper's geometry), face_alignment (for face-alignment's
              `s3fd-*.pth`: pad-3 fc6, floor pools, +1-pixel NMS as its detect), yxlijun
              (S3FD.pytorch's `sfd_face.pth`: dilated fc6, RGB input; trained as that release:
              its stage two, data-anchor-sampling for half the images). A weights file of one
              release refuses to load into another variant.
  backbone=vgg16|mnet025  the trunk (mnet025: MobileNetV1-0.25, whose ImageNet weights exist
              offline, at strides 4..32 with quarter-width extras: a CPU-sized S3FD).
  embedded    the embedded dataset on CPU (320 px crops; from random initialisation with
              VGG16, whose ImageNet weights do not exist offline).
  protocol=P  single (default: one pass at the original size, the deploy net's output) or
              release (the release's WIDER test: shrink, flip, 0.5x for large faces, up-scales
              for small ones, box voting; detectors/s3fd/predict.py).
  stage2=S    S3FD's stage two: author (default: faces with < 6 anchors take their best free
              anchors with IoU > 0.1), average (up to the image's stage-one average), yxlijun
              (S3FD.pytorch's image-global top N, with its best-prior forcing; the default of
              variant=yxlijun).
  test        a tiny shrink for the tests.   steps=N: the schedule scaled to N steps.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
"""

import os

from configs import common

BACKBONES = {"vgg16": "vgg16", "mnet025": "mobilenet0.25"}


def get_config(arg=None):
  a = common.parse_arg(arg, variant="caffe", embedded=False, test=False, steps=0, fddb="",
                       stage2="", backbone="vgg16", protocol="single")
  if a.backbone not in BACKBONES:
    raise ValueError(f"s3fd_vgg16.py: backbone={a.backbone!r}; known: {sorted(BACKBONES)}")
  c = common.get_config()
  c.detector = "s3fd"
  c.model.variant = a.variant
  c.model.backbone = BACKBONES[a.backbone]
  # The other loss keys are the family's defaults (detectors/s3fd LOSS_DEFAULTS).
  stage2 = a.stage2 or ("yxlijun" if a.variant == "yxlijun" else "author")
  c.loss.stage2 = stage2
  c.loss.force = "best" if stage2 == "yxlijun" else "bipartite"   # S3FD.pytorch: best prior

  c.data.source = "wider"
  c.data.recipe = "s3fd"
  # PyramidBox data-anchor-sampling: S3FD.pytorch draws it for half the images (and drops
  # faces under 6 px); the Caffe release never.
  c.data.recipe_options.anchor_sampling_prob = 0.5 if a.variant == "yxlijun" else 0.0
  c.data.recipe_options.min_face_px = 6.0 if a.variant == "yxlijun" else 0.0
  c.data.image_size = 640
  c.data.max_boxes = 512
  c.train.batch_size = 32
  c.train.num_steps = 120_000
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.eval_every = 20_000
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.decay_steps = (80_000, 100_000)
  c.eval.resize = "none"
  c.eval.score_threshold = 0.05
  c.eval.iou_threshold = 0.3
  c.eval.pre_nms_top_k = 5000
  c.eval.max_output = 750
  c.eval.pixel_offset = 1.0 if a.variant == "face_alignment" else 0.0
  c.eval.batch_size = 0                 # one image per device
  c.init.backbone = ""
  if a.protocol not in ("single", "release"):
    raise ValueError(f"s3fd_vgg16.py: protocol={a.protocol!r}; known: single, release")
  c.model.test_protocol = a.protocol

  if a.backbone == "mnet025":
    c.init.backbone = os.path.join(common.SHARED_WEIGHTS, "retinaface",
                                   "mobilenetV1X0.25_pretrain.tar")
  if a.embedded:
    c.data.source = "embedded"
    c.data.image_size = 320
    c.data.max_boxes = 64
    c.train.batch_size = 8
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.eval_every = 100
    c.optim.decay_steps = (200, 260)
    common.run_at_embedded_size(c)        # long side at most 640 px, as the set's images
    c.eval.batch_size = 8
    c.eval.max_output = 300
    c.init.require = False
    if a.backbone == "mnet025":           # from ImageNet weights: the RetinaFace main job's
      c.optim.learning_rate = 1e-2        # schedule
      c.optim.schedule = "cosine"
      c.optim.warmup_steps = 25
      c.optim.decay_steps = ()
  if a.test:
    common.shrink_for_tests(c)
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c


def get_sweep(name: str) -> list:
  """Sweeps (launch/sweep.py --sweep=NAME):
    stage2    the three published stage-two matchings (author, average, yxlijun with its
              best-prior forcing): what scale compensation buys on small faces;
    protocol  the single-scale deploy output vs the release's multi-scale WIDER protocol
              (an evaluation sweep: run with --mode=eval on one trained workdir's weights).
  """
  if name == "stage2":
    return [{"name": "author", "overrides": {}},
            {"name": "average", "overrides": {"loss.stage2": "average"}},
            {"name": "yxlijun", "overrides": {"loss.stage2": "yxlijun", "loss.force": "best"}}]
  if name == "protocol":
    return [{"name": p, "overrides": {"model.test_protocol": p}} for p in ("single", "release")]
  raise ValueError(f"unknown sweep {name!r}; known: stage2, protocol")
