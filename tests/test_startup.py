"""Starting TensorFlow the way repflow_tf does: its oneDNN CPU kernels are on by default, a
user's `TF_ENABLE_ONEDNN_OPTS` is kept, and nothing changes once TensorFlow is running."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from repflow_tf.startup import ONEDNN_VARIABLE


def _fresh(script: str, **env: str) -> list[str]:
    """Runs `script` in a fresh interpreter (TensorFlow reads the variable at import); its
    printed lines."""
    environment = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


_REPORT = (
    "import os\n"
    "from repflow_tf.startup import onednn_enabled\n"
    f"print(os.environ.get({ONEDNN_VARIABLE!r}, 'unset'), onednn_enabled())\n"
)


def test_importing_repflow_tf_turns_on_the_onednn_kernels():
    assert _fresh("import repflow_tf\nimport tensorflow\n" + _REPORT) == ["1", "True"]


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_users_onednn_setting_is_kept(value):
    lines = _fresh("import repflow_tf\n" + _REPORT, **{ONEDNN_VARIABLE: value})
    assert lines == [value, str(value == "1")]


def test_nothing_is_set_once_tensorflow_was_imported_first():
    script = "import tensorflow\nimport repflow_tf\n" + _REPORT
    assert _fresh(script)[0] == "unset"
