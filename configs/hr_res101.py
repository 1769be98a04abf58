"""HR / Finding Tiny Faces (Hu & Ramanan, CVPR 2017) with ResNet-101, as the release trains it.

  python -m tinyfaces_jax.main --config=configs/hr_res101.py --workdir=DIR \
      --config.data.manual_dir=/path/to/WIDER_release \
      --config.init.backbone=/path/to/resnet101.pth   # a torchvision ImageNet state dict

Recipe (peiyunh/tiny scripts/hr_res101.m, cnn_widerface.m, cnn_get_batch_hardmine.m,
cnn_train_dag_hardmine.m): ResNet-101 up to res4, score convs on res3 and res4 (hybrid
resolution), the 25 templates of RefBox_N25_scaled.mat; 500x500 crops of images rescaled by
0.5 / 1 / 2 pasted on the mean image, flip, colour noise; labels IoU >= 0.7 / < 0.3 with
force-matching, padding-crossing boxes ignored; hard mining (loss < 0.03 dropped, <= 128
positives and 128 negatives per image); logistic + Huber losses; batch 12, SGD momentum 0.9,
weight decay 5e-4, lr 1e-4 for 50 epochs (12,880 images: 1,073 steps per epoch), the res3
score layer at 0.1x. Test: image pyramid 2^(-2, -1, 0, 1), templates 5-12 (type A) at every
scale and 19-25 (type B) only on the 2x image, keep sigmoid > 0.03, NMS 0.3. The official
release reaches WIDER val AP 93.0 / 91.6 / 83.0 (easy / medium / hard; computed from its PR
curves in the eval_tools baselines).

Arguments (`hr_res101.py:arg,...`):
  backbone=res101|res50|vgg16|mnet025  the trunk (mnet025: MobileNetV1-0.25 for CPU runs;
              its ImageNet weights exist offline, ResNet/VGG ones must be given).
  embedded    the embedded dataset on CPU: a short real training from ImageNet MobileNet
              weights when backbone=mnet025 (600 steps of 8 crops at 1x / 2x, 384 random
              hard negatives per crop, SGD lr 3e-3 with cosine decay; see the README).
  gpu         with embedded: the longer variant for one GPU (4,000 images, 4,000 steps of 16
              crops of 500 px; evaluation every 1,000 steps).
  modern      a modern schedule: lr 0.01, 1,000-step warm-up, cosine decay.
  test        a tiny shrink for the tests.   steps=N: the schedule scaled to N steps.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
Sweeps (`get_sweep`, run with launch/sweep.py): "resolution", "templates", "context".
"""

import os

import ml_collections

from configs import common

STEPS_PER_EPOCH = 12880 // 12
TINY_DATA = os.path.join(common.SHARED_WEIGHTS, os.pardir, "data", "tinyfaces")
BACKBONES = {"res101": "resnet101", "res50": "resnet50", "vgg16": "vgg16",
             "mnet025": "mobilenet0.25"}


def get_config(arg=None):
  a = common.parse_arg(arg, backbone="res101", embedded=False, gpu=False, modern=False,
                       test=False, steps=0, fddb="")
  if a.gpu and not a.embedded:
    raise ValueError("hr_res101.py: gpu is the long variant of embedded; write "
                     "'embedded,gpu' (a WIDER run is already the full recipe)")
  if a.backbone not in BACKBONES:
    raise ValueError(f"hr_res101.py: backbone={a.backbone!r}; known: {sorted(BACKBONES)}")
  c = common.get_config()
  c.detector = "hr"
  c.model.backbone = BACKBONES[a.backbone]
  c.model.fusion = "res3+res4"
  c.model.templates = os.path.normpath(os.path.join(TINY_DATA, "RefBox_N25_scaled.mat"))
  c.model.allscale_templates = tuple(range(5, 13))
  c.model.onescale_templates = tuple(range(19, 26))
  c.model.cell_offset = ml_collections.config_dict.placeholder(float)
  c.model.border_mask = False             # the release's test-time `violation` mask (off there)
  c.loss.pos_iou = 0.7
  c.loss.neg_iou = 0.3
  c.loss.easy_loss = 0.03
  c.loss.max_pos = 128
  c.loss.max_neg = 128
  c.loss.neg_select = "random"          # the release; "hardest": the 128 of largest loss

  c.data.source = "wider"
  c.data.recipe = "hr"
  c.data.recipe_options.scales = (0.5, 1.0, 2.0)
  c.data.image_size = 500
  c.data.max_boxes = 512
  c.train.batch_size = 12
  c.train.num_steps = 50 * STEPS_PER_EPOCH
  c.train.log_every = 100
  c.train.checkpoint_every = STEPS_PER_EPOCH
  c.train.eval_every = 10 * STEPS_PER_EPOCH
  c.optim.learning_rate = 1e-4
  c.optim.schedule = "constant"
  c.optim.lr_multipliers = (("score_res3", 0.1),)
  c.eval.resize = "none"
  c.eval.max_size = 5000
  c.eval.max_branch_size = 5000
  c.eval.scales = (0.25, 0.5, 1.0, 2.0)
  c.eval.score_threshold = 0.03
  c.eval.iou_threshold = 0.3
  c.eval.pre_nms_top_k = 5000
  c.eval.max_output = 2000
  c.eval.batch_size = 0
  c.eval.bucket = 64
  if a.backbone == "mnet025":
    c.model.activation = "leaky_relu"
    c.init.backbone = os.path.join(common.SHARED_WEIGHTS, "retinaface",
                                   "mobilenetV1X0.25_pretrain.tar")
  if a.modern:
    c.optim.learning_rate = 1e-2
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 1000
  if a.embedded:
    c.data.source = "embedded"
    c.model.border_mask = True            # no template crossing an image's border at test
    # Crops at 1x and 2x: the set's images are at most 640 px, so a 0.5x one fills at most
    # 41% of the 500 px crop; 384 random negatives per crop (the release: 128).
    c.data.recipe_options.scales = (1.0, 2.0)
    c.data.max_boxes = 64
    c.loss.max_neg = 384
    c.train.batch_size = 8
    c.train.num_steps = 600
    c.train.log_every = 25
    c.train.checkpoint_every = 200
    c.train.eval_every = 200
    c.train.eval_at_start = False         # untrained score layers: every template at 0.5
    c.optim.learning_rate = 3e-3          # 1e-2 ended runs at 0.53-0.66 AP, this at 0.68-0.75
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30
    c.eval.batch_size = 4
    common.run_at_embedded_size(c)        # long side at most 640 px, as the set's images
    c.eval.max_output = 500
    c.init.require = False
    if not a.test:
      common.add_photo_check(c)           # the faces of real photos, false positives
  if a.gpu:
    c.data.max_boxes = 128
    common.embedded_on_gpu(c, steps=4000, batch_size=16, eval_every=1000)
  if a.test:
    common.shrink_for_tests(c)
    c.data.image_size = 128
    c.eval.scales = (0.5, 1.0, 2.0)
    c.eval.max_branch_size = 200
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c


def get_sweep(name: str) -> list:
  """Scale-analysis sweeps (the paper's Sec. 3 / Fig. 8 questions), as config overrides:
    resolution  one template set (RefBox_N25.mat, all at sigma 1) trained and tested at one
                image resolution 0.5x, 1x or 2x: which resolution suits which face size;
    templates   template subsets at test time: type A only, A + B (release), all 25;
    context     which taps score the templates: res3, res4, both (receptive field / context).
  Runs as separate workdirs: `python launch/sweep.py --config=configs/hr_res101.py:... --sweep=NAME`.
  """
  if name == "resolution":
    unscaled = os.path.normpath(os.path.join(TINY_DATA, "RefBox_N25.mat"))
    return [{"name": f"res{r:g}x",
             "overrides": {"model.templates": unscaled,
                           "model.allscale_templates": tuple(range(1, 26)),
                           "model.onescale_templates": (),
                           "data.recipe_options.scales": (r,),
                           "eval.scales": (r,)}}
            for r in (0.5, 1.0, 2.0)]
  if name == "templates":
    return [{"name": "typeA", "overrides": {"model.onescale_templates": ()}},
            {"name": "typeA+B", "overrides": {}},
            {"name": "all25", "overrides": {"model.allscale_templates": tuple(range(1, 26)),
                                            "model.onescale_templates": ()}}]
  if name == "context":
    return [{"name": f, "overrides": {"model.fusion": f}} for f in ("res3", "res4", "res3+res4")]
  raise ValueError(f"unknown sweep {name!r}; known: resolution, templates, context")
