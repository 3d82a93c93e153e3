"""Runs a bin/ script's `main()` once per argument list, in one process (one TensorFlow import).

    python tests/cli_driver.py evaluate cases.json results.json

`cases.json` is a list of argument lists; `results.json` gets, per case, the exit status and
what the script wrote to stdout and stderr. An exception other than SystemExit is recorded as
status "exception" with its traceback in stderr: the scripts must never end that way.
"""

import contextlib
import importlib
import io
import json
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(script: str, cases: list[list[str]]) -> list[dict]:
    from absl import flags

    module = importlib.import_module(f"repflow_tf.bin.{script}")
    results = []
    for argv in cases:
        flags.FLAGS.unparse_flags()
        sys.argv = [f"repflow-{script}", *argv]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                module.main()
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            except BaseException:  # noqa: BLE001 - recorded for the test to fail on
                traceback.print_exc()
                code = "exception"
        results.append(
            {"argv": argv, "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
        )
    return results


if __name__ == "__main__":
    script, cases_path, output = sys.argv[1:4]
    with open(cases_path) as f:
        results = run(script, json.load(f))
    with open(output, "w") as f:
        json.dump(results, f)
