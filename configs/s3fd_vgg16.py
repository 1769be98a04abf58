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
DetectionOutput). Published WIDER val AP: 93.7 / 92.4 / 85.2 (easy / medium / hard, the
release's multi-scale protocol with box voting).

Arguments (`s3fd_vgg16.py:arg,...`):
  variant=V   caffe (default: the paper's geometry), face_alignment (for face-alignment's
              `s3fd-*.pth`: pad-3 fc6, floor pools, +1-pixel NMS as its detect), yxlijun
              (S3FD.pytorch's `sfd_face.pth`: dilated fc6, RGB input). A weights file of one
              release refuses to load into another variant.
  embedded    the embedded dataset on CPU (320 px crops, random initialisation: no VGG16
              ImageNet weights exist offline).
  stage2=S    S3FD's stage two: author (default: faces with < 6 anchors take their best free
              anchors with IoU > 0.1), average (up to the image's stage-one average), yxlijun
              (S3FD.pytorch's image-global top N, with its best-prior forcing; the default of
              variant=yxlijun).
  test        a tiny shrink for the tests.   steps=N: the schedule scaled to N steps.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
"""

from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, variant="caffe", embedded=False, test=False, steps=0, fddb="",
                       stage2="")
  c = common.get_config()
  c.detector = "s3fd"
  c.model.variant = a.variant
  # The loss section holds only what differs from the family's defaults (detectors/s3fd
  # LOSS_DEFAULTS: bipartite stage one, the author's stage two).
  stage2 = a.stage2 or ("yxlijun" if a.variant == "yxlijun" else "author")
  if stage2 != "author":
    c.loss.stage2 = stage2
  if stage2 == "yxlijun":
    c.loss.force = "best"                # S3FD.pytorch forces each face's best prior

  c.data.source = "wider"
  c.data.recipe = "s3fd"
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
    c.eval.batch_size = 8
    c.eval.max_output = 300
  if a.test:
    common.shrink_for_tests(c)
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c
