"""Build the embedded WIDER-format dataset (what `config.data.source = "embedded"` trains on):

  tinyfaces-build-embedded --out=DIR [--num_train=600] [--num_val=150] [--seed=0] \
      [--min_size=320] [--max_size=640] [--workers=2] [--force]

Writes the WIDER FACE release layout under DIR (a path or a URL): WIDER_{train,val}/images/,
wider_face_split/*_bbx_gt.txt, embedded_manifest.json and README.md (data/embedded/build.py says how
the images are made). The same arguments always give the same bytes; a DIR already holding
them is left as it is (`--force` rebuilds). Training runs build it themselves (data/sources.py);
this command is for looking at the images or for training elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tinyfaces_jax import cli as cli_lib


def main(argv=None) -> int:
  from tinyfaces_jax.data.embedded import build
  parser = argparse.ArgumentParser(prog="tinyfaces-build-embedded",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output folder (path or URL)")
  parser.add_argument("--num_train", type=int, default=600, help="train images")
  parser.add_argument("--num_val", type=int, default=150, help="validation images")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min_size", type=int, default=320, help="shorter image side, px")
  parser.add_argument("--max_size", type=int, default=640, help="longer image side, px")
  parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                      help="rendering processes")
  parser.add_argument("--force", action="store_true", help="rebuild even if DIR is complete")
  a = parser.parse_args(argv)
  start = time.time()
  root = build.build_embedded_wider(a.out, num_train=a.num_train, num_val=a.num_val,
                                    seed=a.seed, image_size=(a.min_size, a.max_size),
                                    workers=a.workers, force=a.force)
  manifest = json.loads((root / build.MANIFEST).read_text())
  print(f"{root}: " + ", ".join(f"{k} {v['images']} images / {v['faces']} faces"
                                for k, v in manifest["splits"].items())
        + f" ({time.time() - start:.1f} s)")
  return 0


def cli() -> None:
  """Console script `tinyfaces-build-embedded`."""
  sys.exit(cli_lib.run(main, name="tinyfaces-build-embedded"))


if __name__ == "__main__":
  cli()
