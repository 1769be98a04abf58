"""URL paths (gs://) in the file readers and writers whose own test files are full: the FDDB
evaluator's folds, detection, ROC and plot files on a `ram://` URL (the code path gs:// takes,
see url_fs.py). Each test also checks that nothing appeared on the local disk."""

import numpy as np
import pytest

from tests.support import url_fs
from tinyfaces_jax.evaluation import fddb


def test_fddb_files_on_a_url(shared_dir, ram_dir):
  folds = shared_dir / "data" / "fddb" / "FDDB-folds"
  if not folds.is_dir():
    pytest.skip(f"{folds} not found")
  local = fddb.load_folds(folds, folds=(1, 2))
  url_fs.copy_tree(folds, ram_dir / "folds")
  names, gt = fddb.load_folds(str(ram_dir / "folds"), folds=(1, 2))
  assert names == local[0] and all(np.array_equal(gt[n], local[1][n]) for n in names)
  dets = {n: np.array([[e[3] - e[1], e[4] - e[0], 2 * e[1], 2 * e[0], 0.9] for e in gt[n]])
          for n in names[:20]}
  fddb.write_detections(ram_dir / "out" / "dets.txt", dets)
  back = fddb.read_detection_folds([ram_dir / "out" / "dets.txt"])
  assert list(back) == names[:20] and all(np.allclose(back[n], dets[n]) for n in dets)
  disc, cont = fddb.evaluate_fddb({n: gt[n] for n in names[:20]}, back)
  assert disc[0, 0] > 0.5
  dp, cp = fddb.write_roc_files(f"{ram_dir}/out/ours", disc, cont)
  assert str(dp) == f"{ram_dir}/out/oursDiscROC.txt" and cp.name == "oursContROC.txt"
  np.testing.assert_allclose(fddb.read_roc_file(dp)[:, :2], disc[:, :2], rtol=1e-5, atol=1e-6)
  fddb.plot_roc(ram_dir / "plots" / "roc.png", {"ours": disc}, max_fp=30)
  assert (ram_dir / "plots" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert url_fs.local_entries(".") == []
