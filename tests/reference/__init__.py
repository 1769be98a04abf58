"""Plain-numpy statements of the reference implementations, the one home of them.

Tests and benchmarks import these modules from here (`from tests.reference import nms as
nms_ref`; the repository root is on sys.path under pytest, `pythonpath = ["."]`, and the
benchmarks insert it themselves); no other file restates them. Each module is an independent
numpy statement of a reference implementation, written from the reference code or paper and
never calling `tinyfaces_jax`, so that a test compares the library against something it does
not share code with. Only numpy (and the standard library) is imported: the benchmarks run
where tensorflow, tensorflow_datasets, clu and ml_collections are absent.

  matching       ssd.pytorch / Pytorch_Retinaface `match`, S3FD's two-stage matching and
                 peiyunh/tiny `cnn_get_batch_hardmine.m` labels, loops over faces.
  matching_peer  the same S3FD matching + ssd.pytorch OHEM, vectorised per image the way
                 ssd.pytorch / S3FD.pytorch data loaders do it (the speed peer of
                 benchmarks/matching.py).
  sampling       ssd.pytorch MultiBoxLoss hard negative mining, MTCNN cls_ohem and the
                 deterministic part of Tiny Faces hardmine.
  nms            RetinaFace `utils/nms/py_cpu_nms.py` (as published, and with stable ties)
                 and the library's NMS semantics written like it (detect.py's threshold /
                 top-k / keep steps); the pairwise IoU loop of py_cpu_nms / the WIDER tool.
  retinaface     Pytorch_Retinaface `utils/box_utils.py` encode / decode / decode_landm and
                 the `detect.py` post-processing.
  losses         Pytorch_Retinaface `layers/modules/multibox_loss.py` MultiBoxLoss.
  tiny_faces     the Tiny Faces / HR release loss (template labels, logistic + Huber).
  transforms     Pytorch_Retinaface `data/data_augment.py` `_crop` over given rois.
  wider          the WIDER FACE MATLAB eval_tools (`read_pred.m`, `norm_score.m`,
                 `evaluation.m`, `boxoverlap.m`, `VOCap.m`).
  fddb           the FDDB evaluation tool (Jain & Learned-Miller, `evaluation/` C++):
                 rectangle masks, ellipse geometry, one-to-one matching, per-image results
                 and `Results::merge`.
"""
