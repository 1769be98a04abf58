"""MTCNN (Zhang et al. 2016): the released P-Net / R-Net / O-Net cascade, evaluated and run.

  python -m tinyfaces_jax.main --mode=eval --config=configs/mtcnn.py --workdir=DIR
  python -m tinyfaces_jax.cli.detect --config=configs/mtcnn.py \
      --weights=../shared/weights/mtcnn --output_dir=OUT IMAGES...

Weights (`config.init.checkpoint`, or detect's --weights): the folder of facenet-pytorch's
pnet/rnet/onet `.pt` or the PyPI mtcnn package's `.lz4` (the same numbers), or `pypi:mtcnn`
for the installed package's files; by default the shared folder ../shared/weights/mtcnn.
Test settings (model section, detectors/mtcnn/cascade.CascadeConfig): facenet-pytorch's
defaults, min face 20, thresholds 0.6 / 0.7 / 0.7, factor 0.709, NMS 0.5 / 0.7 / 0.7 / 0.7
('Min'); the cascade has its own pyramid, so `eval.scales` / `flip` / NMS do not apply.
Training the three stages is not built yet (the loss says so).

Data: the embedded dataset's validation split by default (`--config.data.source=wider` and
`data.manual_dir` for WIDER FACE val; `fddb=DIR` adds FDDB).

Arguments (`mtcnn.py:arg,...`):
  wider       the original release's WIDER settings (codes/README.txt): min face 10, factor
              0.79, thresholds 0.5 / 0.5 / 0.3.
  test        a tiny embedded set for the tests.
  weights=P   the weights folder / `pypi:mtcnn`.
  fddb=DIR    also evaluate on FDDB (DIR holds originalPics/ and FDDB-folds/).
"""

import os

from configs import common

WIDER_SETTINGS = {"min_face_size": 10.0, "factor": 0.79, "thresholds": (0.5, 0.5, 0.3)}


def get_config(arg=None):
  a = common.parse_arg(arg, wider=False, test=False,
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
  if a.test:
    common.shrink_for_tests(c)
    c.train.num_steps = 0
  c.init.checkpoint = a.weights
  common.add_fddb(c, a.fddb)
  return c
