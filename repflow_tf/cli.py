"""Command-line plumbing shared by every script in bin/: one-line errors, exit status 2."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from absl import flags


def fail(message: str) -> NoReturn:
    """Prints `<script>: error: <message>` to stderr and exits with status 2.

    >>> try:
    ...     fail("--fold must be 1, 2 or 3")
    ... except SystemExit as exit:
    ...     print(exit.code)
    2
    """
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl `flags_parser` for `app.run` that reports a bad flag in one line with status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --helpshort)")
