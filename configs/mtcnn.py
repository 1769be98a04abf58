"""MTCNN (Zhang et al. 2016): the released P-Net / R-Net / O-Net cascade, evaluated and run,
and the three stages trained as the paper (and AITTSMD/MTCNN-Tensorflow) trains them.

  python -m tinyfaces_jax.main --mode=eval --config=configs/mtcnn.py --workdir=DIR
  python -m tinyfaces_jax.cli.detect --config=configs/mtcnn.py \
      --weights=../shared/weights/mtcnn --output_dir=OUT IMAGES...
  python -m tinyfaces_jax.cli.train_cascade --config=configs/mtcnn.py:embedded --workdir=DIR

Weights (`config.init.checkpoint`, or detect's --weights): the folder of facenet-pytorch's
pnet/rnet/onet `.pt` or the PyPI mtcnn package's `.lz4` (the same numbers), or `pypi:mtcnn`
for the installed package's files; by default the shared folder ../shared/weights/mtcnn.
Test settings (model section, detectors/mtcnn/cascade.CascadeConfig): facenet-pytorch's
defaults, min face 20, thresholds 0.6 / 0.7 / 0.7, factor 0.709, NMS 0.5 / 0.7 / 0.7 / 0.7
('Min'); the cascade has its own pyramid, so `eval.scales` / `flip` / NMS do not apply.

Training, one stage per run (`:stage=pnet|rnet|onet`), each network from scratch while the
others stay frozen (`optim.frozen`), on its crops (detectors/mtcnn/recipe.py):
  * pnet: 12 px crops cut on the fly from the training images (negatives, positives, part
    faces, landmark samples);
  * rnet / onet: 24 / 48 px crops of the hard samples the earlier stages find on the training
    images (detectors/mtcnn/mining.py: the cascade up to the previous stage with AITTSMD's
    mining settings, P-Net threshold 0.3, R-Net 0.1, min face 20, factor 0.79; detections
    labelled by IoU with the faces: < 0.3 negative (at most 60 per image), >= 0.65 positive,
    >= 0.4 part), plus landmark samples; `previous=DIR` names the previous stage's workdir,
    whose checkpoint the run starts from (the trained earlier nets), and the mined samples
    are cached in the run's workdir;
  * every stage mixes neg : pos : part : landmark 3 : 1 : 1 : 2 (the paper; landmark samples
    only where the dataset has landmarks and the net a landmark head: P-Net here has
    AITTSMD's conv4_3, the released R-Net none);
  * loss: cross-entropy over the hardest 70% (online hard sample mining), box L2, landmark
    L2, weights 1 / 0.5 / 0.5 (P, R) and 1 / 0.5 / 1 (O);
  * AITTSMD's schedule: batch 384, SGD momentum 0.9, weight decay 5e-4, lr 1e-3 divided by 10
    after epochs 6, 14 and 20 (of 30 for P-Net, 22 for R- and O-Net);
  * evaluated as the cascade up to the stage being trained (`model.stages`).
`python -m tinyfaces_jax.cli.train_cascade --config=configs/mtcnn.py[:embedded] --workdir=DIR`
trains the three in sequence (DIR/pnet, DIR/rnet, DIR/onet), each from
the one before; DIR/onet's final evaluation is the whole trained cascade.

Data: the embedded dataset by default (`--config.data.source=wider` and `data.manual_dir` for
WIDER FACE; `fddb=DIR` adds FDDB).

Arguments (`mtcnn.py:arg,...`):
  wider       the original release's WIDER settings (codes/README.txt): min face 10, factor
              0.79, thresholds 0.5 / 0.5 / 0.3.
  stage=S     train that stage (pnet, rnet, onet; see above); "" (default): evaluate / run
              the released cascade.
  previous=D  with stage=rnet / onet: the previous stage's workdir (required).
  embedded    with stage: a CPU-sized training on the embedded dataset.
  steps=N     with stage: the schedule scaled to N steps.
  test        a tiny embedded set for the tests.
  weights=P   the weights folder / `pypi:mtcnn`.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
"""

import os

from configs import common

WIDER_SETTINGS = {"min_face_size": 10.0, "factor": 0.79, "thresholds": (0.5, 0.5, 0.3)}
# The training stages in order (tinyfaces_jax.cli.train_cascade reads this name and runs
# `:<arg>,stage=<s>,previous=<the workdir before>` for each).
CASCADE_STAGES = STAGES = ("pnet", "rnet", "onet")
CROP_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}
LOSS_WEIGHTS = {"pnet": (1.0, 0.5, 0.5), "rnet": (1.0, 0.5, 0.5), "onet": (1.0, 0.5, 1.0)}
EPOCHS = {"pnet": 30, "rnet": 22, "onet": 22}
# AITTSMD: ~1.4M samples per stage (WIDER + landmark faces) at batch 384 is ~3,700 steps an
# epoch; lr x0.1 after epochs 6, 14, 20.
STEPS_PER_EPOCH = 3700
LR_EPOCHS = (6, 14, 20)
# CPU-sized runs on the embedded dataset: (steps, lr, decay steps) per stage.
EMBEDDED = {"pnet": (1500, 0.01, (1000, 1300)), "rnet": (600, 0.01, (400, 520)),
            "onet": (600, 0.01, (400, 520))}
# gen_hard_example.py's detector: thresholds [0.3, 0.1, (0.7)], min face 20, factor 0.79.
MINING = {"thresholds": (0.3, 0.1), "min_face_size": 20.0, "factor": 0.79,
          "max_negatives": 60}


def get_config(arg=None):
  a = common.parse_arg(arg, wider=False, test=False, stage="", previous="", embedded=False,
                       steps=0,
                       weights=os.path.normpath(os.path.join(common.SHARED_WEIGHTS, "mtcnn")),
                       fddb="")
  c = common.get_config()
  c.detector = "mtcnn"
  c.model.min_face_size = 20.0
  c.model.thresholds = (0.6, 0.7, 0.7)
  c.model.factor = 0.709
  if a.wider:
    for k, v in WIDER_SETTINGS.items():
      c.model[k] = v
  c.train.num_steps = 0
  c.eval.resize = "none"
  c.eval.max_size = 0
  c.eval.bucket = 256                    # the cascade masks the padding: few buckets, few compiles
  c.eval.batch_size = 4
  c.eval.max_output = 750
  c.init.checkpoint = a.weights
  common.add_landmark_evaluator(c)        # O-Net's points (the embedded set's teacher labels)
  if a.embedded:
    c.train.log_every = 50
    c.data.shuffle_buffer = 4096
  if a.test:
    common.shrink_for_tests(c)
    c.train.num_steps = 0
    c.train.batch_size = 16
    c.data.shuffle_buffer = 64
    c.init.checkpoint = a.weights
  common.add_fddb(c, a.fddb)
  if a.stage:
    _stage_config(c, a.stage, a.previous, embedded=a.embedded, test=a.test, steps=a.steps)
  elif a.previous or a.steps:
    raise ValueError("mtcnn.py: previous= and steps= go with stage=")
  return c


def _stage_config(c, stage: str, previous: str, *, embedded: bool, test: bool, steps: int):
  """Turns the cascade config `c` into the training config of `stage` (in place), started
  from the workdir `previous` (the stage before; required for rnet / onet)."""
  if stage not in STAGES:
    raise ValueError(f"mtcnn.py: stage={stage!r}; known: {list(STAGES)}")
  k = STAGES.index(stage)
  if k and not previous:
    raise ValueError(f"mtcnn.py: stage={stage} starts from the trained {STAGES[k - 1]}: give "
                     f"previous=<its workdir> (or run tinyfaces_jax.cli.train_cascade)")
  c.model.pnet_landmarks = True
  c.model.train_stage = stage
  c.model.stages = k + 1
  c.optim.frozen = tuple(f"^{s}/" for s in STAGES if s != stage)
  c.data.recipe = "mtcnn"
  c.data.image_size = CROP_SIZES[stage]
  c.data.recipe_options.stage = stage
  if k:
    c.data.recipe_options.mining = dict(MINING)
  c.loss.cls_weight, c.loss.box_weight, c.loss.landmark_weight = LOSS_WEIGHTS[stage]
  c.loss.keep_ratio = 0.7
  c.init.checkpoint = previous
  c.train.eval_at_start = False           # the stage's own net starts random: nothing to see
  if stage != "onet" and "landmarks" in c.eval.evaluators:
    del c.eval.evaluators["landmarks"]     # only O-Net predicts the points
  if test:
    c.train.num_steps = 4
    c.train.batch_size = 16
    c.optim.decay_steps = ()
    c.data.recipe_options.negatives = 8
    c.data.recipe_options.tries = 4
    c.eval.max_output = 100
    return c
  if embedded:
    n, lr, decay = EMBEDDED[stage]
    c.train.num_steps = n
    c.train.checkpoint_every = 300 if k else 500
    c.train.eval_every = 300 if k else 500
    c.optim.learning_rate = lr
    c.optim.decay_steps = decay
  else:
    c.train.num_steps = EPOCHS[stage] * STEPS_PER_EPOCH
    c.train.log_every = 100
    c.train.checkpoint_every = 5000
    c.train.eval_every = 10 * STEPS_PER_EPOCH
    c.optim.learning_rate = 1e-3
    c.optim.decay_steps = tuple(e * STEPS_PER_EPOCH for e in LR_EPOCHS)
    c.data.shuffle_buffer = 20_000
  c.train.batch_size = 384
  c.optim.schedule = "step"
  if steps:
    common.set_num_steps(c, steps)
  return c
