"""What the command lines share: their exit statuses, and bad input said in one line.

The commands (``apps/``: ``train.py``, ``evaluate.py``, ``data_prep/build_tfrecords.py`` and their
console scripts) start through ``run``. A bad
flag, path or combination (``ConfigError``, ``FileNotFoundError``, absl's flag errors and
``app.UsageError``) ends as one line on stderr naming the flag and the fix, with status
``USAGE``; anything else is a real failure and keeps its traceback. The statuses are the same
for every command (docs/training.md, "Exit statuses"):

- ``OK`` (0): done.
- ``FAILED`` (1): the work failed: the training loss became NaN, or the converter rejected more
  files than ``--max_rejects``.
- ``USAGE`` (2): bad input, said in one line before any work it would spoil.
- ``VERIFY_FAILED`` (3): ``build_tfrecords.py --verify`` found a shard that does not match.
- ``RESUMABLE`` (75, ``EX_TEMPFAIL``): stopped by SIGTERM after a checkpoint; run the same
  command again to resume. A supervisor should restart it (Kubernetes: a ``podFailurePolicy``
  rule with ``onExitCodes: {operator: In, values: [75]}`` and ``action: Ignore`` keeps it from
  counting against ``backoffLimit``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags

from alexnet_tf.config import ConfigError

OK = 0
FAILED = 1
USAGE = 2
VERIFY_FAILED = 3
RESUMABLE = 75  # sysexits.h's EX_TEMPFAIL: "try again later"

USAGE_ERRORS = (ConfigError, FileNotFoundError, app.UsageError)


def usage_error(message: str) -> int:
    """Says ``message`` in one line, prefixed with the program's name; returns ``USAGE``."""
    sys.stderr.write(f"{os.path.basename(sys.argv[0])}: {message}\n")
    sys.stderr.flush()
    return USAGE


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(usage_error(f"{e} (--helpfull lists every flag)"))


def run(main: Callable[[list[str]], int | None], usage: str | None = None) -> None:
    """``app.run(main)``, with bad input ending in one line and status ``USAGE``.

    Args:
      main: the command's main function.
      usage: what ``--help`` prints before the flags (the command's module docstring). absl prints
        the ``__main__`` module's docstring, which is the entry script's or the console script's.
    """
    if usage:
        sys.modules["__main__"].__doc__ = usage
    # absl's --help lists the flags of the main module, which it knows by sys.argv[0]: the command's
    # flags are those of the module that defines ``main``.
    for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def guarded(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except USAGE_ERRORS as e:
            return usage_error(str(e))

    app.run(guarded, flags_parser=_parse_flags)
