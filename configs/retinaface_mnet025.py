"""RetinaFace-MobileNet0.25 (Deng et al. 2020) as Pytorch_Retinaface trains it.

  python -m tinyfaces_jax.main --config=configs/retinaface_mnet025.py --workdir=DIR \
      --config.data.manual_dir=/path/to/WIDER_release

Recipe (Pytorch_Retinaface data/config.py cfg_mnet + train.py): 640x640 crops of the
`preproc` augmentation, batch 32, SGD momentum 0.9, weight decay 5e-4, lr 1e-3 divided by 10
at epochs 190 and 220 of 250 (WIDER train: 12,880 images = 403 steps per epoch), anchors
16/32, 64/128, 256/512 on strides 8/16/32, IoU 0.35 matching with force-match, 7:1 OHEM,
loss 2 * box + cls + landmarks (landmarks from RetinaFace's label.txt where present),
starting from the ImageNet MobileNetV1-0.25 (`mobilenetV1X0.25_pretrain.tar`).
Evaluation: the WIDER test resize (shorter side 1600, longer at most 2150), score > 0.02,
NMS 0.4. Published WIDER val AP of this model: 90.7 / 88.2 / 73.8 (easy / medium / hard, the
Pytorch_Retinaface README, original-size test).

Arguments (`retinaface_mnet025.py:arg,...`):
  embedded    the embedded dataset on CPU: a real, short train + evaluation (the README's main
              job: ~7.5 minutes on 2 cores) from the ImageNet backbone; images are run at
              their own size up to 640 px on the long side (the embedded set's largest).
  gpu         with embedded: the longer variant for one GPU (4,000 images, 3,000 steps of 32
              crops of 640 px; evaluation every 500 steps).
  test        a tiny shrink for the tests.
  steps=N     override the number of train steps (keeps the schedule's proportions).
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
  preset=P    mnet025 (LeakyReLU 0.1, default) or mnet025_1mb (ReLU, anchors 10..256).
"""

import os

from configs import common

STEPS_PER_EPOCH = 12880 // 32


def get_config(arg=None):
  a = common.parse_arg(arg, embedded=False, gpu=False, test=False, steps=0, preset="mnet025",
                       fddb="")
  if a.gpu and not a.embedded:
    raise ValueError("retinaface_mnet025.py: gpu is the long variant of embedded; write "
                     "'embedded,gpu' (a WIDER run is already the full recipe)")
  c = common.get_config()
  c.detector = "retinaface"
  c.model.preset = a.preset
  c.loss.matcher = "argmax"
  c.loss.pos_iou = 0.35
  c.loss.force_min_iou = 0.2
  c.loss.neg_pos_ratio = 7.0
  c.loss.loc_weight = 2.0
  c.loss.landmark_weight = 1.0

  c.data.source = "wider"
  c.data.recipe = "retinaface"
  c.data.image_size = 640
  c.data.max_boxes = 512
  c.train.batch_size = 32
  epochs = 250
  c.train.num_steps = epochs * STEPS_PER_EPOCH
  c.train.log_every = 100
  c.train.checkpoint_every = 5 * STEPS_PER_EPOCH
  c.train.eval_every = 25 * STEPS_PER_EPOCH
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.decay_steps = (190 * STEPS_PER_EPOCH, 220 * STEPS_PER_EPOCH)
  c.eval.resize = "fit"
  c.eval.batch_size = 0                 # one (up to 1600 x 2150) image per device
  c.init.backbone = os.path.join(common.SHARED_WEIGHTS, "retinaface",
                                 "mobilenetV1X0.25_pretrain.tar")

  if a.embedded:
    c.data.source = "embedded"
    c.data.image_size = 320
    c.data.max_boxes = 64
    c.train.batch_size = 16
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
    # The backbone file is looked up beside the repository; without it the run still goes,
    # from random initialisation, and says so.
    c.init.require = False
    common.add_landmark_evaluator(c)      # the embedded set's teacher landmarks
  if a.embedded and not a.test:
    common.add_photo_check(c)             # the faces of real photos, false positives
  if a.gpu:
    c.data.image_size = 640
    c.data.max_boxes = 128
    common.embedded_on_gpu(c, steps=3000, batch_size=32, eval_every=500)
  if a.test:
    common.shrink_for_tests(c)
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c
