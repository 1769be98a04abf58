"""RetinaFace-ResNet50 (Deng et al. 2020) as Pytorch_Retinaface trains it.

  python -m tinyfaces_jax.main --config=configs/retinaface_r50.py --workdir=DIR \
      --config.data.manual_dir=/path/to/WIDER_release --config.init.backbone=resnet50.pth

Recipe (Pytorch_Retinaface cfg_re50): 840x840 crops, batch 24, lr 1e-3 divided by 10 at
epochs 70 and 90 of 100 (537 steps per epoch on WIDER train), FPN/SSH with 256 channels and
ReLU, the same anchors, matching, OHEM and loss as MobileNet0.25, starting from an ImageNet
ResNet-50 (a torchvision `resnet50` state dict; none ships offline, so `init.backbone` is
yours to give). Published WIDER val AP: 95.5 / 94.0 / 84.4 (easy / medium / hard).

Arguments: `test` (tiny shrink), `steps=N`, `embedded` (the embedded dataset, random init),
`fddb=DIR` (also evaluate on FDDB: DIR holds originalPics/ and FDDB-folds/).
"""

from configs import common
from configs import retinaface_mnet025

STEPS_PER_EPOCH = 12880 // 24


def get_config(arg=None):
  a = common.parse_arg(arg, embedded=False, test=False, steps=0, fddb="")
  c = retinaface_mnet025.get_config(
      ",".join(k for k in ("embedded", "test") if a[k]) or None)
  c.model.preset = "resnet50"
  if not a.embedded and not a.test:
    c.data.image_size = 840
    c.train.batch_size = 24
    c.train.num_steps = 100 * STEPS_PER_EPOCH
    c.train.checkpoint_every = 5 * STEPS_PER_EPOCH
    c.train.eval_every = 10 * STEPS_PER_EPOCH
    c.optim.decay_steps = (70 * STEPS_PER_EPOCH, 90 * STEPS_PER_EPOCH)
  c.init.backbone = ""
  common.add_fddb(c, a.fddb)
  if a.steps:
    common.set_num_steps(c, a.steps)
  return c
