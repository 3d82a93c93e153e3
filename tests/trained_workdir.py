"""Builds "trained" workdirs as training writes them (tiny untrained models), once per session.

Test modules share them through `get(tmp_path_factory)`; the result is cached, so the synthetic
data set and the model are made once however many modules ask.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from repflow_tf import models
from repflow_tf.config import DataConfig, ExperimentConfig, ModelConfig, save_config
from repflow_tf.data import load_manifest, make_synthetic_dataset
from repflow_tf.layers import FlowBlock
from repflow_tf.workdir import CLASS_NAMES_FILE, CONFIG_FILE, MODEL_FILE, write_class_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4
MODEL = ModelConfig(
    depth=18,
    num_classes=NUM_CLASSES,
    base_width=4,
    flow_position="block1",
    flow_iterations=2,
    flow_channels=4,
)


@dataclasses.dataclass(frozen=True)
class Workdirs:
    """`trained`: a consistent workdir; the others each break one rule (see `_make`)."""

    root: str
    data_root: str
    trained: str
    other_architecture: str
    other_classes: str
    class_names: tuple[str, ...]


def open_flow_blocks(model, seed: int = 0):
    """Gives every FlowBlock a non-zero batch-norm scale, so the flow path reaches the output.

    A freshly built block is the identity (scale 0): a test of such a model would pass whatever
    the flow layer computed.
    """
    rng = np.random.default_rng(seed)
    blocks = [layer for layer in model._flatten_layers() if isinstance(layer, FlowBlock)]
    for block in blocks:
        gamma = block.norm.gamma
        gamma.assign(rng.uniform(0.5, 1.5, gamma.shape).astype("float32"))
    return blocks


def write_workdir(path: str, config: ExperimentConfig, class_names, model=None) -> str:
    """Writes config.toml, class_names.json and model.keras (built from the config if None,
    with its flow blocks opened)."""
    os.makedirs(os.path.join(path, "logs"), exist_ok=True)
    save_config(config, os.path.join(path, CONFIG_FILE))
    write_class_names(os.path.join(path, CLASS_NAMES_FILE), class_names)
    if model is None:
        model = models.build(config.model)
        open_flow_blocks(model)
    model.save(os.path.join(path, MODEL_FILE))
    return path


@functools.cache
def _make(root: str) -> Workdirs:
    dirs = make_synthetic_dataset(
        os.path.join(root, "data"),
        num_train=0,
        num_val=8,
        num_classes=NUM_CLASSES,
        num_frames=8,
        size=32,
        log=None,
    )
    data_root = os.path.dirname(dirs["val"])
    names = load_manifest(dirs["val"]).class_names
    config = ExperimentConfig(
        data=DataConfig(root=data_root, num_frames=4, crop_size=32, eval_clips=2, batch_size=3),
        model=MODEL,
    )
    trained = write_workdir(os.path.join(root, "trained"), config, names)
    # A checkpoint of another width than config.toml says (same number of classes).
    other_architecture = os.path.join(root, "other_architecture")
    shutil.copytree(trained, other_architecture)
    models.build(dataclasses.replace(MODEL, base_width=8)).save(
        os.path.join(other_architecture, MODEL_FILE)
    )
    # A consistent 2-class model, evaluated on the 4-class data.
    two_classes = dataclasses.replace(config, model=dataclasses.replace(MODEL, num_classes=2))
    other_classes = write_workdir(os.path.join(root, "other_classes"), two_classes, names[:2])
    return Workdirs(root, data_root, trained, other_architecture, other_classes, tuple(names))


def get(tmp_path_factory) -> Workdirs:
    """The session's workdirs (made on first use)."""
    return _make(str(tmp_path_factory.getbasetemp() / "workdirs"))


def start_cli(script: str, cases: list[list[str]], output: str) -> subprocess.Popen:
    """Starts `tests/cli_driver.py`: runs bin/<script>.py's main() once per argument list."""
    with open(output + ".cases.json", "w") as f:
        json.dump(cases, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "tests", "cli_driver.py"),
            script,
            output + ".cases.json",
            output,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_cli(process: subprocess.Popen, output: str) -> list[dict]:
    """Waits for `start_cli` and returns one {argv, code, stdout, stderr} per argument list."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout + stderr
    with open(output) as f:
        return json.load(f)


def check_error_lines(results: dict, expected: dict[str, str], script: str) -> None:
    """Each `results[name]` (from `finish_cli`) exited 2 with exactly one stderr line,
    `<script>: error: ...` containing `expected[name]`."""
    for name, text in expected.items():
        result = results[name]
        lines = result["stderr"].splitlines()
        assert result["code"] == 2 and len(lines) == 1, (name, result)
        assert lines[0].startswith(f"{script}: error: ") and text in lines[0], (name, lines)
