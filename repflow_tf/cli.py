"""Command-line plumbing shared by every script in bin/: one-line errors, exit status 2, `--help`
that lists the script's flags, and `--verbose` / a quiet TensorFlow start.

A script parses its flags and checks its config before it imports anything that imports
TensorFlow, then calls `start_tensorflow()`: a bad flag or config answers in one line at once.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from absl import flags

from repflow_tf import startup

flags.DEFINE_bool("verbose", False, "Show TensorFlow's own start-up and INFO logs.")
_HELP_FLAGS = {"--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml"}


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


def _adopt_script_flags() -> None:
    """Makes the flags our modules define the key flags of `sys.argv[0]`, which is what absl's
    `--help` lists: for an installed console script (`repflow-train`) that is the wrapper file,
    which defines none, so `--help` would only say "Try --helpfull"."""
    main_module = sys.argv[0]
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        if module == main_module or module.startswith("absl"):
            continue
        for flag in module_flags:
            flags.FLAGS.register_key_flag_for_module(main_module, flag)
        # `--help` prints __main__'s docstring (our usage examples); the wrapper has none.
        script = sys.modules.get(module)
        main = sys.modules.get("__main__")
        if module.startswith("repflow_tf.bin.") and main is not None and not main.__doc__:
            main.__doc__ = script.__doc__


def parse_flags(argv: list[str]) -> list[str]:
    """absl `flags_parser` for `app.run` that reports a bad flag in one line with status 2."""
    _adopt_script_flags()
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(f"{error} (see --help)")
    except SystemExit as exit:
        # absl's help flags exit with status 1; asking for help is not an error.
        if exit.code == 1 and set(argv[1:]) & _HELP_FLAGS:
            sys.exit(0)
        raise


def start_tensorflow() -> Any:
    """Imports TensorFlow without its start-up noise unless `--verbose`; returns the module."""
    return startup.import_tensorflow(verbose=flags.FLAGS["verbose"].value)
