"""Entry point: `python -m tinyfaces_jax.main --workdir=DIR`.

Until the training system lands this runs the detection-core demo (`core_demo.py`): a jitted
matching + OHEM + NMS pass over a crowded synthetic batch, with a drawn PNG in the workdir.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.DEFINE_string("workdir", None, "Directory for outputs.", required=True)
_BATCH = flags.DEFINE_integer("batch", 4, "Images in the synthetic batch.")
_SLOTS = flags.DEFINE_integer("slots", 128, "Ground-truth slots per image (max faces).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the synthetic faces.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  import jax  # imported after flags so platform settings from the environment apply
  from tinyfaces_jax import core_demo

  print(f"tinyfaces_jax detection-core demo on {jax.devices()[0].platform}: "
        f"B={_BATCH.value}, M={_SLOTS.value} slots, S3FD anchors at 640x640", flush=True)
  r = core_demo.run_demo(FLAGS.value, batch=_BATCH.value, slots=_SLOTS.value,
                         seed=_SEED.value)
  print(f"faces: {r.num_faces}; with >= 1 positive anchor: {r.faces_with_anchor} "
        f"({r.positives_per_face:.1f} positives per face); hard negatives kept: "
        f"{r.negatives_kept}")
  print(f"oracle head + NMS recovers {r.recalled}/{r.num_faces} faces at IoU >= 0.5 "
        f"({100.0 * r.recalled / max(r.num_faces, 1):.1f}%)")
  print(f"compile {r.compile_seconds:.2f} s, step {r.step_seconds * 1e3:.1f} ms; "
        f"drawing: {r.image_path}")


if __name__ == "__main__":
  app.run(main)
