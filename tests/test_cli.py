"""The installed commands as a user meets them: the first line is ours, TensorFlow's start-up
noise is gone unless --verbose, --help lists the flags, and a bad flag or config answers before
TensorFlow starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

COMMANDS = {
    "repflow-train": ("train", "--config"),
    "repflow-evaluate": ("evaluate", "--workdir"),
    "repflow-export": ("export", "--workdir"),
    "repflow-predict": ("predict", "--model"),
    "repflow-convert": ("convert", "--output_dir"),
    "repflow-visualize": ("visualize", "--workdir"),
}
# What TensorFlow's C++ start-up writes to stderr on a machine like this one.
NOISE = ("absl::InitializeLog", "I0000", "E0000", "W0000", "cuInit", "oneDNN", "cudart")


def _command(name: str) -> str:
    path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def _run(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [_command(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout, env=env
    )


def _tensorflow_loaded_after(module: str, argv: list[str]) -> tuple[bool, str]:
    """Runs `repflow_tf.bin.<module>.main()` with `argv` in a fresh interpreter; returns whether
    TensorFlow was imported by the time it exited, and its stderr."""
    script = (
        "import sys\n"
        f"sys.argv = {argv!r}\n"
        f"from repflow_tf.bin import {module} as cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    return result.stdout.strip().splitlines()[-1] == "True", result.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_flag_is_one_line_before_tensorflow_starts(name):
    module, _ = COMMANDS[name]
    loaded, stderr = _tensorflow_loaded_after(module, [name, "--no_such_flag"])
    assert stderr.splitlines() == [
        f"{name}: error: Unknown command line flag 'no_such_flag' (see --help)"
    ]
    assert not loaded


def test_a_bad_config_is_one_line_before_tensorflow_starts(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\ndepth = 19\n")
    argv = ["repflow-train", f"--config={config}", f"--workdir={tmp_path / 'run'}"]
    loaded, stderr = _tensorflow_loaded_after("train", argv)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("repflow-train: error: ") and "depth" in lines[0]
    assert not loaded
    # The same for a workdir whose config is broken, at evaluation.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text("[model]\ndepth = 19\n")
    (tmp_path / "run" / "model.keras").write_text("")
    loaded, stderr = _tensorflow_loaded_after(
        "evaluate", ["repflow-evaluate", f"--workdir={tmp_path / 'run'}"]
    )
    assert stderr.count("\n") == 1 and "depth" in stderr and not loaded


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_the_flags_of_the_installed_command(name):
    _, flag = COMMANDS[name]
    result = _run(name, "--help", timeout=60)
    assert result.returncode == 0
    assert f"  {flag}:" in result.stdout and "  --[no]verbose:" in result.stdout
    assert "Try --helpfull" in result.stdout


@pytest.mark.slow
def test_tensorflow_start_up_noise_is_gone_unless_verbose(tmp_path):
    argv = ["repflow-convert", "--format=synthetic", "--num_train=4", "--num_val=0"]
    # Two worker processes: each starts its own TensorFlow.
    quiet = _run(*argv, f"--output_dir={tmp_path / 'a'}", "--num_workers=2")
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in quiet.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[0].startswith("train"), quiet.stderr
    assert not [line for line in lines if any(noise in line for noise in NOISE)], quiet.stderr
    verbose = _run(*argv, f"--output_dir={tmp_path / 'b'}", "--num_workers=1", "--verbose")
    assert verbose.returncode == 0
    assert any(noise in verbose.stderr for noise in NOISE), verbose.stderr
