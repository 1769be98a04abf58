"""The tests' config: RetinaFace-MobileNet0.25 on a tiny embedded set (CPU seconds).

`configs/test.py[:steps=N]`; see `common.shrink_for_tests`.
"""

from configs import retinaface_mnet025


def get_config(arg=None):
  return retinaface_mnet025.get_config("test" + (f",{arg}" if arg else ""))
