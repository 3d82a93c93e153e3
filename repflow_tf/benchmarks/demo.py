"""The paper's central claim at small scale: flow vs RGB-only on the synthetic motion dataset.

`run` trains every config into `<workdir_root>/<config name>` (resuming finished or killed runs)
and returns one row per model; `format_table` prints them (bin/benchmark_demo.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from repflow_tf.config import ExperimentConfig


def run(configs: dict[str, ExperimentConfig], workdir_root: str) -> list[dict[str, Any]]:
    """Trains each `{path: config}` and returns its row: validation accuracy, epochs, wall
    time, parameters. Raises `repflow_tf.training.TrainingError` (one line) for a bad setup."""
    from repflow_tf import training  # TensorFlow starts here, after the configs were checked.

    rows = []
    for path, config in configs.items():
        name = os.path.splitext(os.path.basename(path))[0]
        result = training.train(config, os.path.join(workdir_root, name))
        summary = result.summary
        rows.append(
            {
                "config": path,
                "flow_position": config.model.flow_position,
                "val_accuracy": summary["val_accuracy"],
                "epochs": summary["epochs"],
                "wall_seconds": summary["wall_time_s"],
                "parameters": result.model.count_params(),
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]], num_classes: int) -> str:
    """The rows as a plain-text table, with the chance level of `num_classes` classes.

    >>> row = {"config": "configs/demo.toml", "flow_position": "input", "val_accuracy": 0.95,
    ...        "epochs": 24, "wall_seconds": 396.0, "parameters": 1234567}
    >>> print(format_table([row], 8))
    <BLANKLINE>
    config                           flow  val acc epochs     wall    params
    configs/demo.toml               input    0.950     24    6.6 m 1,234,567
    chance: 0.125
    """
    lines = [
        "",
        f"{'config':<28} {'flow':>8} {'val acc':>8} {'epochs':>6} {'wall':>8} {'params':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['config']:<28} {row['flow_position']:>8} {row['val_accuracy']:>8.3f} "
            f"{row['epochs']:>6} {row['wall_seconds'] / 60:>6.1f} m {row['parameters']:>9,}"
        )
    lines.append(f"chance: {1 / num_classes:.3f}")
    return "\n".join(lines)
