"""End-to-end check of the detection core: an oracle head must recover every face."""

from tinyfaces_jax.cli import core_demo


def test_oracle_recovers_every_face(tmp_path):
  r = core_demo.run_demo(str(tmp_path), batch=2, slots=24, seed=1)
  assert r.num_faces > 10
  assert r.faces_with_anchor == r.num_faces       # every face owns an anchor (force match)
  assert r.recalled == r.num_faces                # match -> encode -> decode -> NMS is lossless
  assert r.positives_per_face >= 1.0
  assert r.negatives_kept > 0
  assert (tmp_path / "core_demo.png").stat().st_size > 1000
