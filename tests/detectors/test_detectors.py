"""The family registry: families are the packages under detectors/, looked up by module name,
and a family imports nothing of another (the check anyone can run:
`python -c "import tinyfaces_jax.detectors.hr"`)."""

import json
import pathlib
import subprocess
import sys

import pytest

from tinyfaces_jax import detectors, settings

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_families_are_the_packages():
  assert detectors.known_families() == ["hr", "mtcnn", "retinaface", "s3fd", "ssh"]
  with pytest.raises(settings.ConfigError, match=r"unknown detector 'retina'; known: "
                                                 r"\['hr', 'mtcnn', 'retinaface', 's3fd', 'ssh'\]"):
    detectors.build_detector("retina")
  with pytest.raises(settings.ConfigError, match=r"unknown recipe 'tiny_faces'; the families "
                                                 r"with a training recipe: \['hr', 'mtcnn', 'retinaface', 's3fd', 'ssh'\]"):
    detectors.make_transform("tiny_faces")


@pytest.mark.parametrize("family", detectors.known_families())
def test_a_family_imports_no_other_family(family):
  code = (f"import sys, json, tinyfaces_jax.detectors.{family}; print(json.dumps(sorted("
          "m for m in sys.modules if m.startswith('tinyfaces_jax.detectors.'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout
  loaded = json.loads(out.strip().splitlines()[-1])
  others = [m for m in loaded if m.split(".")[2] not in (family, "base")]
  assert others == [], f"importing detectors.{family} loaded {others}"
  assert f"tinyfaces_jax.detectors.{family}.recipe" not in loaded  # TensorFlow stays out
  assert f"tinyfaces_jax.detectors.{family}" in loaded
