"""Command-line tools, each `python -m tinyfaces_jax.cli.<name>` and a console script
(pyproject.toml): detect (tinyfaces-detect), export (tinyfaces-export), evaluate (WIDER,
tinyfaces-evaluate),
evaluate_fddb (tinyfaces-evaluate-fddb), cluster_templates (tinyfaces-cluster-templates),
build_embedded (tinyfaces-build-embedded), core_demo (`python -m tinyfaces_jax.cli.core_demo`);
the training entry point is tinyfaces_jax.main (tinyfaces-train).

`run(main, argv)` is how every tool starts: a user error (a bad file named with its line, an
unknown config key, missing weights, hosts that disagree) prints one line `<tool>: error:
...` and exits 2 instead of a traceback (TINYFACES_TRACEBACK=1 shows it anyway).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence


def user_errors() -> tuple:
  """The exception types that are the user's to fix, printed as one line: the library raises
  ValueError (ConfigError, the WIDER / FDDB / annotation format errors naming file and line,
  weights that do not fit), OSError (FileNotFoundError naming the path), UnpicklingError (a
  corrupt checkpoint) and HostsDisagree for what a user gave it."""
  import pickle
  from tinyfaces_jax.training import hosts
  return (ValueError, OSError, pickle.UnpicklingError, hosts.HostsDisagree)


def run(main: Callable[[Optional[Sequence[str]]], int], argv=None,
        name: Optional[str] = None) -> int:
  """Calls `main(argv)` -> its exit status; a user error -> one line on stderr and 2."""
  name = name or os.path.basename(sys.argv[0] or "tinyfaces")
  try:
    return main(argv) or 0
  except user_errors() as e:
    if os.environ.get("TINYFACES_TRACEBACK"):
      raise
    print(f"{name}: error: {e}", file=sys.stderr, flush=True)
    return 2


def run_absl(main: Callable, name: str) -> None:
  """`absl.app.run(main)` whose flag errors are one line too: a misspelt `--config.<path>`
  override (ml_collections raises KeyError / AttributeError with its did-you-mean while the
  flags are parsed) prints `<name>: error: ...` and exits 2."""
  from absl import app

  def parse(argv):
    try:
      return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      text = str(e.args[0] if e.args else e)
      while text[:1] in "'\"" and text[-1:] == text[:1]:   # KeyError quotes its message
        text = text[1:-1]
      text = text.replace("\\n", "\n").replace("\\'", "'")
      print(f"{name}: error: bad flag: " + " ".join(text.split()),
            file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(main, flags_parser=parse)
