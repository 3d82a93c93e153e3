"""The one definition of each option's choices (the flow layer's, the inputs, the export
formats), and their checks.

Free of TensorFlow (and of every other repflow_tf module), so that `repflow_tf.config` can check a
config before TensorFlow starts; `ops`, `layers` and `config` all take the names from here.
"""

from __future__ import annotations

from collections.abc import Iterable

GRADIENTS = ("sobel", "central")
# Learnable groups of the paper's Table 2: image-gradient kernels, div / ∇u kernels, θ λ τ.
LEARNABLE_GROUPS = ("sobel", "divergence", "hyper")
# Flow stacks of the paper's Table 5 (`layers.flow_stack`): one flow block, flow-of-flow,
# flow-conv-flow.
FLOW_STACKS = ("single", "fof", "fcf")
# What a model reads (`ModelConfig.inputs`) and so what the reader yields: RGB frames, precomputed
# optical flow (the paper's "Flow CNN" baseline), or both (two-stream).
INPUTS = ("rgb", "optical_flow", "rgb+optical_flow")
# Variants of the embedded synthetic dataset (`repflow_tf.data.synthetic`): the original 8
# directions at 2-3 px per frame, and the one where flow inside the network matters.
SYNTHETIC_VARIANTS = ("easy", "hard")
# `repflow-export --format` (`repflow_tf.export_formats`).
EXPORT_FORMATS = ("saved_model", "tflite", "onnx")


def validate_gradient(gradient: str, name: str = "gradient") -> str:
    """Returns `gradient` if it is one of GRADIENTS, else raises a ValueError naming `name`.

    >>> validate_gradient("prewitt")
    Traceback (most recent call last):
    ...
    ValueError: `gradient` must be one of ('sobel', 'central'). Received: gradient='prewitt'
    """
    if gradient not in GRADIENTS:
        raise ValueError(f"`{name}` must be one of {GRADIENTS}. Received: {name}={gradient!r}")
    return gradient


def validate_learn(learn: str | Iterable[str] | None) -> tuple[str, ...]:
    """`learn` as a tuple in LEARNABLE_GROUPS order; raises ValueError naming unknown groups."""
    if isinstance(learn, str):
        learn = (learn,)
    learn = tuple(learn or ())
    unknown = [group for group in learn if group not in LEARNABLE_GROUPS]
    if unknown:
        raise ValueError(
            f"`learn` must be a subset of {LEARNABLE_GROUPS}. Received: learn={learn!r} "
            f"(unknown: {unknown})"
        )
    return tuple(group for group in LEARNABLE_GROUPS if group in learn)
