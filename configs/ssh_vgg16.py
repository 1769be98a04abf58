"""SSH (Najibi et al. 2017) with the VGG16 trunk, as the Caffe release trains and tests it.

  python -m tinyfaces_jax.main --config=configs/ssh_vgg16.py --workdir=DIR \
      --config.data.manual_dir=/path/to/WIDER_release --config.init.backbone=vgg16-397923af.pth

Recipe (../shared/references/s3fd_ssh.md 2.3-2.5; mahyarnajibi/SSH solver_ssh.prototxt,
default_config.yml, wider.yml): whole images, short side 1200 and long side at most 1600
(detectors/ssh/recipe.py: on a 1600 x 1600 canvas), horizontal flip; 8 images per update,
SGD momentum 0.9, weight decay 5e-4, lr 0.004 divided by 10 at 18k of 21k iterations; conv1
and conv2 frozen (lr_mult 0); anchors 16..512 on M1 / M2 / M3, IoU >= 0.5 / < 0.3, per module
and image 256 OHEM samples with at most 64 positives; the trunk from a torchvision VGG16
(`init.backbone`; none ships offline). Deviation: Caffe's biases train at 2x lr without
weight decay; here every parameter has the base lr and decay. Test: single scale (short side
1200, long <= 1600), top 1000 per module, score > 0.05, NMS 0.3 (+1 pixel IoU). Published
WIDER val AP 91.9 / 90.7 / 81.4 single scale, 93.1 / 92.1 / 84.5 with the pyramid.

Arguments (`ssh_vgg16.py:arg,...`):
  backbone=vgg16|mnet025  the trunk (mnet025: MobileNetV1-0.25, whose ImageNet weights exist
              offline, with the module widths halved: a CPU-sized SSH).
  pyramid     the release's pyramid test: base short side 800 (long <= 1200) at x0.625, 1,
              1.5, 2, M3 dropped at x2, one NMS over all.
  embedded    the embedded dataset on CPU (320 px canvas).
  test        a tiny shrink for the tests.   steps=N: the schedule scaled to N steps.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
"""

import os

from configs import common

BACKBONES = {"vgg16": "vgg16", "mnet025": "mobilenet0.25"}
# The release's pyramid test (wider_pyramid.yml): base short side 800 (long <= 1200), x0.625 /
# 1 / 1.5 / 2, M3 dropped at x2. Used by `:pyramid` and the `test` sweep.
PYRAMID = {"eval.target_size": 800, "eval.max_size": 1200, "eval.scales": (0.625, 1.0, 1.5, 2.0),
           "model.drop_m3_from_scale": 2.0}


def get_config(arg=None):
  a = common.parse_arg(arg, backbone="vgg16", pyramid=False, embedded=False, test=False,
                       steps=0, fddb="")
  if a.backbone not in BACKBONES:
    raise ValueError(f"ssh_vgg16.py: backbone={a.backbone!r}; known: {sorted(BACKBONES)}")
  c = common.get_config()
  c.detector = "ssh"
  c.model.backbone = BACKBONES[a.backbone]
  c.model.top_per_module = 1000
  c.model.drop_m3_from_scale = 0.0
  c.loss.num_samples = 256                      # OHEM samples per module and image
  c.loss.fg_fraction = 0.25                     # at most 64 positives

  c.data.source = "wider"
  c.data.recipe = "ssh"
  c.data.image_size = 1600                      # the canvas: the long side's cap
  c.data.recipe_options.short = 1200
  c.data.max_boxes = 1024
  c.train.batch_size = 8
  c.train.num_steps = 21_000
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.eval_every = 7000
  c.optim.learning_rate = 0.004
  c.optim.schedule = "step"
  c.optim.decay_steps = (18_000,)
  c.optim.frozen = (r"^vgg/conv[12]_",)
  c.eval.resize = "fit"
  c.eval.target_size = 1200
  c.eval.max_size = 1600
  c.eval.score_threshold = 0.05
  c.eval.iou_threshold = 0.3
  c.eval.pixel_offset = 1.0
  c.eval.pre_nms_top_k = 3000                   # 3 modules x top 1000
  c.eval.max_output = 1000
  c.eval.batch_size = 0
  c.init.backbone = ""
  if a.pyramid:
    for path, value in PYRAMID.items():
      section, key = path.split(".")
      c[section][key] = value
  if a.backbone == "mnet025":
    c.model.fuse_channels = 64
    c.model.module_widths = ((64, 32), (128, 64), (128, 64))
    c.optim.frozen = ()
    c.init.backbone = os.path.join(common.SHARED_WEIGHTS, "retinaface",
                                   "mobilenetV1X0.25_pretrain.tar")
  if a.embedded:
    c.data.source = "embedded"
    c.data.image_size = 320
    c.data.recipe_options.short = 320
    c.data.max_boxes = 64
    # An embedded image has ~9 faces (a WIDER one ~25, many more anchors each): with the
    # release's 256 samples its few positives barely weigh in the averaged loss (held-out AP
    # 0.03 after 300 steps, against 0.2+ with 64; `get_sweep("ohem")`).
    c.loss.num_samples = 64
    c.train.batch_size = 8
    c.train.num_steps = 300
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.eval_every = 100
    c.optim.learning_rate = 1e-2
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 25
    c.optim.decay_steps = ()
    common.run_at_embedded_size(c)        # long side at most 640 px, as the set's images
    c.eval.batch_size = 8
    c.eval.max_output = 300
    c.init.require = False
  if a.test:
    common.shrink_for_tests(c)
    c.data.recipe_options.short = 96
    c.eval.resize = "none"
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c


def get_sweep(name: str) -> list:
  """Sweeps (launch/sweep.py --sweep=NAME):
    ohem      OHEM samples per module and image (the release's 256, and 64 / 1024): how
              the balance of few faces against many hard negatives trains;
    test      single scale vs the release's pyramid (an evaluation sweep: --mode=eval).
  """
  if name == "ohem":
    return [{"name": f"samples{n}", "overrides": {"loss.num_samples": n}} for n in (64, 256, 1024)]
  if name == "test":
    return [{"name": "single", "overrides": {}}, {"name": "pyramid", "overrides": dict(PYRAMID)}]
  raise ValueError(f"unknown sweep {name!r}; known: ohem, test")
