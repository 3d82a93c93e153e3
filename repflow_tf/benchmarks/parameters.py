"""Parameter counts of the paper's models: RGB, + flow, + FcF, two-stream (bin/model_summary.py).

The paper (Sec. 4, "Computation time") gives 21M for its ResNet-34 2D with representation flow
and 42M for the two-stream model; `table` prints ours beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

PAPER = {("2d", 34, "rgb + flow"): "21M", ("2d", 34, "two-stream (RGB + optical flow)"): "42M"}

VARIANTS = {
    "rgb": {"flow_position": "none"},
    "rgb + flow": {},
    "rgb + flow (FcF)": {"flow_stack": "fcf"},
    "two-stream (RGB + optical flow)": {"flow_position": "none", "inputs": "rgb+optical_flow"},
}


def trainable_parameters(model) -> int:
    """The number of trainable weights of a Keras model (what the gradients all-reduce).

    >>> import keras
    >>> trainable_parameters(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    8
    """
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


def _millions(count: int) -> str:
    return f"{count / 1e6:8.3f}M"


def table(
    kinds: Iterable[str],
    depths: Iterable[int],
    *,
    num_classes: int = 400,
    image_size: int = 224,
    flow_position: str = "block3",
) -> str:
    """Trainable and total parameters of every variant, relative to the RGB model."""
    from repflow_tf.config import ModelConfig
    from repflow_tf.models import build

    lines = [
        f"Trainable parameters, {image_size}x{image_size} input, {num_classes} classes, flow at "
        f"{flow_position} (C'=32, 20 iterations)",
        f"{'model':<50} {'trainable':>10} {'total':>10} {'vs rgb':>9}  paper",
    ]
    for kind in kinds:
        for depth in depths:
            rgb_count = None
            for variant, options in VARIANTS.items():
                config = ModelConfig(
                    **{
                        "kind": kind,
                        "depth": depth,
                        "num_classes": num_classes,
                        "image_size": image_size,
                        "flow_position": flow_position,
                        **options,
                    }
                )
                model = build(config)
                trainable = trainable_parameters(model)
                rgb_count = rgb_count or trainable
                ratio = trainable / rgb_count
                relative = f"{ratio:8.2f}x" if ratio > 1.5 else f"{100 * (ratio - 1):+8.2f}%"
                lines.append(
                    f"{f'ResNet-{depth} {kind} {variant}':<50} {_millions(trainable)} "
                    f"{_millions(model.count_params())} {relative:>9}  "
                    f"{PAPER.get((kind, depth, variant), '')}"
                )
        lines.append("")
    return "\n".join(lines)
