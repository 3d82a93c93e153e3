"""Frozen dataclass configs; every field is validated on construction.

>>> config = model_config_from_dict({"depth": 18, "flow_position": "block1"})
>>> config.depth, config.flow_position, config.flow_learn
(18, 'block1', ('divergence', 'hyper'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

KINDS = ("2d", "2plus1d", "3d")
DEPTHS = (18, 34, 50)
FLOW_POSITIONS = ("none", "input", "stem", "block1", "block2", "block3", "block4")
FLOW_STACKS = ("single", "fof", "fcf")
FLOW_LEARN_GROUPS = ("sobel", "divergence", "hyper")
FLOW_GRADIENTS = ("sobel", "central")
FUSIONS = ("none", "late", "add", "multiply", "layer_multiply", "concat")
INPUTS = ("rgb", "optical_flow", "rgb+optical_flow")
INPUT_NORMALIZATIONS = ("imagenet", "symmetric")

_Config = TypeVar("_Config")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}"
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which video model to build (`repflow_tf.models.build`); the defaults are the paper's.

    Attributes:
        kind: backbone kind, `"2d"` (per-frame ResNet), `"2plus1d"` (Tran et al. 2018) or `"3d"`
            (inflated, I3D style).
        depth: ResNet depth, 18, 34 or 50.
        num_classes: number of classes of the classifier.
        base_width: channels of the stem and the first residual group (64 in the paper; small
            values make cheap test models).
        flow_position: where the representation flow goes (Table 1): `"none"`, `"input"` (on the
            raw RGB frames), `"stem"` (after conv1 + max pool), `"block1"` ... `"block4"` (after
            residual group k; `"block3"` is the paper's default).
        flow_stack: `"single"`, flow-of-flow `"fof"` or flow-conv-flow `"fcf"` (Table 5).
        flow_iterations: TV-L1 iterations (Table 3).
        flow_learn: learnable groups, a subset of `("sobel", "divergence", "hyper")` (Table 2).
        flow_channels: channels the flow is computed on inside the network (C' = 32).
        flow_gradient: image gradient kernel, `"sobel"` or `"central"`.
        fusion: fusion of RGB and flow features (Table 4, Fig. 2): `"none"`, `"late"` (a second,
            flow-free RGB stream; predictions averaged), `"add"`, `"multiply"`,
            `"layer_multiply"` (1x1 conv on the RGB features, then multiply) or `"concat"`.
        inputs: `"rgb"`; the baselines `"optical_flow"` (a CNN on precomputed optical flow) and
            `"rgb+optical_flow"` (two-stream: RGB and optical flow CNNs, predictions averaged).
        dropout: dropout rate before the classifier (0.5 for Kinetics, 0.8 for HMDB).
        synchronized_bn: `BatchNormalization(synchronized=True)` everywhere (distributed training).
        input_normalization: how the model maps raw [0, 255] frames: `"imagenet"` (mean/std) or
            `"symmetric"` ([-1, 1]).
        num_frames: static number of input frames, or None (any); the optical flow input then
            has `num_frames - 1` fields.
        image_size: static input height = width, or None (any).
        name: model name; derived from the options when None.
    """

    kind: str = "2d"
    depth: int = 34
    num_classes: int = 400
    base_width: int = 64
    flow_position: str = "block3"
    flow_stack: str = "single"
    flow_iterations: int = 20
    flow_learn: tuple[str, ...] = ("divergence", "hyper")
    flow_channels: int = 32
    flow_gradient: str = "sobel"
    fusion: str = "none"
    inputs: str = "rgb"
    dropout: float = 0.5
    synchronized_bn: bool = False
    input_normalization: str = "imagenet"
    num_frames: int | None = None
    image_size: int | None = None
    name: str | None = None

    def __post_init__(self):
        _check_choice("kind", self.kind, KINDS)
        _check_choice("depth", self.depth, DEPTHS)
        _check_int("num_classes", self.num_classes, 1)
        _check_int("base_width", self.base_width, 1)
        _check_choice("flow_position", self.flow_position, FLOW_POSITIONS)
        _check_choice("flow_stack", self.flow_stack, FLOW_STACKS)
        _check_int("flow_iterations", self.flow_iterations, 1)
        learn = (self.flow_learn,) if isinstance(self.flow_learn, str) else self.flow_learn
        if not isinstance(learn, (list, tuple)) or any(g not in FLOW_LEARN_GROUPS for g in learn):
            raise ValueError(
                f"`flow_learn` must be a subset of {FLOW_LEARN_GROUPS}. "
                f"Received: flow_learn={self.flow_learn!r}"
            )
        # Canonical order, so equal configs compare equal (TOML gives lists).
        object.__setattr__(self, "flow_learn", tuple(g for g in FLOW_LEARN_GROUPS if g in learn))
        _check_int("flow_channels", self.flow_channels, 1)
        _check_choice("flow_gradient", self.flow_gradient, FLOW_GRADIENTS)
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("inputs", self.inputs, INPUTS)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0 <= self.dropout < 1
        ):
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={self.dropout!r}")
        if not isinstance(self.synchronized_bn, bool):
            raise ValueError(
                "`synchronized_bn` must be a bool. "
                f"Received: synchronized_bn={self.synchronized_bn!r}"
            )
        _check_choice("input_normalization", self.input_normalization, INPUT_NORMALIZATIONS)
        # Each flow layer drops a frame; precomputed optical flow has num_frames - 1 fields.
        min_frames = 2 if self.inputs != "rgb" else 1 + self.flow_layers
        _check_int("num_frames", self.num_frames, min_frames, allow_none=True)
        _check_int("image_size", self.image_size, 32, allow_none=True)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")
        # Cross-field rules.
        if self.fusion != "none" and self.flow_position == "none":
            raise ValueError(
                "`fusion` needs a flow layer; set `flow_position`. "
                f"Received: fusion={self.fusion!r} with flow_position='none'"
            )
        if self.inputs != "rgb" and self.flow_position != "none":
            raise ValueError(
                "The optical flow baselines have no representation flow layer. Received: "
                f"inputs={self.inputs!r} with flow_position={self.flow_position!r}"
            )

    @property
    def flow_layers(self) -> int:
        """Number of stacked flow layers (0, 1 or 2); each shortens time by one frame."""
        if self.flow_position == "none":
            return 0
        return 1 if self.flow_stack == "single" else 2


def from_dict(cls: type[_Config], values: Mapping[str, Any]) -> _Config:
    """Builds the dataclass `cls` from `values`, rejecting keys that are not fields of `cls`.

    >>> from_dict(ModelConfig, {"dept": 18})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown key 'dept' for ModelConfig. Valid keys: kind, depth, ...
    """
    fields = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in fields:
            raise ValueError(
                f"Unknown key {key!r} for {cls.__name__}. Valid keys: {', '.join(fields)}"
            )
    return cls(**values)


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """`ModelConfig` from a dict (e.g. a TOML table); unknown keys raise a ValueError."""
    return from_dict(ModelConfig, values)
