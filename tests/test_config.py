"""Experiment configs: TOML round trip, overrides, and errors naming the file and the key."""

import re

import pytest

from repflow_tf import config as config_lib
from repflow_tf import options
from repflow_tf.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    config_to_toml,
    load_config,
    save_config,
)


def test_defaults_are_the_paper_setup():
    config = load_config(None)
    assert config == ExperimentConfig()
    assert (config.model.kind, config.model.depth, config.model.flow_position) == (
        "2d",
        34,
        "block3",
    )
    assert config.optimizer.momentum == 0.9 and config.optimizer.flow_lr_multiplier == 0.01


def test_file_and_overrides(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text(
        '[model]\ndepth = 18\nflow_learn = ["hyper", "divergence"]\n'
        "[trainer]\nepochs = 4\n[schedule]\ndecay_epochs = [3, 2]\n"
    )
    config = load_config(
        str(path), ["trainer.epochs=7", "data.root=some/dir", "runtime.jit_compile=true"]
    )
    assert config.model.depth == 18
    assert config.model.flow_learn == ("divergence", "hyper")  # canonical order
    assert config.trainer.epochs == 7  # the override wins over the file
    assert config.data.root == "some/dir"  # a bare word is a string
    assert config.runtime.jit_compile is True
    assert config.schedule.decay_epochs == (2, 3)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(
        None, ["model.num_frames=8", "optimizer.name=adam", "schedule.kind=cosine"]
    )
    path = tmp_path / "config.toml"
    save_config(config, str(path))
    assert load_config(str(path)) == config
    assert config_to_toml(load_config(str(path))) == path.read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[trainer]\nepoch = 3\n", r"bad\.toml: \[trainer\] Unknown key 'epoch'"),
        ('[trainer]\nepochs = "ten"\n', r"bad\.toml: \[trainer\] `epochs` must be an integer"),
        ("[trainer]\nepochs = 1.5\n", r"`epochs` must be an integer >= 1\. Received: epochs=1\.5"),
        ("[traner]\nepochs = 3\n", r"bad\.toml: unknown section \[traner\]"),
        ("[model]\nkind = '4d'\n", r"bad\.toml: \[model\] `kind` must be one of"),
        ("[runtime]\njit_compile = 1\n", r"`jit_compile` must be true or false"),
        ("[schedule]\ndecay_epochs = [0]\n", r"`decay_epochs` must be a list of positive"),
        ("[trainer\n", r"bad\.toml: not valid TOML"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_override_errors_name_the_override(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text("[trainer]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"--set optimizer\.learning_rate=-1: \[optimizer\]"):
        load_config(str(path), ["optimizer.learning_rate=-1"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(str(path), ["no_equals_sign"])
    with pytest.raises(ConfigError, match=r"section\.key"):
        load_config(str(path), ["epochs=3"])
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(str(tmp_path / "missing.toml"))


def test_flow_options_are_the_flow_layers_own():
    # One definition each (ops); the config accepts exactly what the flow layers accept.
    assert config_lib.FLOW_GRADIENTS is options.GRADIENTS
    assert config_lib.FLOW_LEARN_GROUPS is options.LEARNABLE_GROUPS
    assert config_lib.FLOW_STACKS is options.FLOW_STACKS
    message = "`flow_gradient` must be one of ('sobel', 'central'). Received: flow_gradient=True"
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig(flow_gradient=True)
    with pytest.raises(ValueError, match=re.escape(message.replace("flow_gradient", "gradient"))):
        options.validate_gradient(True)
    assert options.validate_gradient("central") == "central"


def test_a_config_is_checked_before_tensorflow_starts():
    """config (and the CLI plumbing and file output it needs) import no TensorFlow, so a bad
    flag or config answers at once, without TensorFlow's start-up time and log lines."""
    import subprocess
    import sys

    code = (
        "import sys, repflow_tf.config, repflow_tf.cli, repflow_tf.fileio, repflow_tf.options; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
