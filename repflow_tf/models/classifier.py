"""Video classifier task: backbone(s) + per-timestep head averaged over time (Eq. 11, Fig. 1)."""

from __future__ import annotations

import dataclasses

import keras

from repflow_tf.config import ModelConfig
from repflow_tf.models.backbone import SpatialAveragePooling, build_backbone, input_spec

# Names of the model inputs, by modality.
INPUT_NAMES = {"rgb": "frames", "optical_flow": "optical_flow"}


# === Layers ===


def classifier_head(features, num_classes: int, dropout: float = 0.5, prefix: str = ""):
    """Per-timestep logits averaged over time: pool -> dropout -> Dense (float32) -> mean.

    `features` `(batch, time, h, w, C)` -> logits `(batch, num_classes)`, float32 even under a
    mixed precision policy.
    """
    x = SpatialAveragePooling(name=f"{prefix}pool")(features)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{prefix}dropout")(x)
    x = keras.layers.Dense(num_classes, dtype="float32", name=f"{prefix}classifier")(x)
    return keras.layers.GlobalAveragePooling1D(dtype="float32", name=f"{prefix}logits")(x)


# === Functional Model ===


def streams(config: ModelConfig) -> list[tuple[str, str, ModelConfig]]:
    """The model's streams as `(stream name, input modality, backbone config)`.

    >>> [s[:2] for s in streams(ModelConfig(flow_position="block3", fusion="late"))]
    [('rgb', 'rgb'), ('flow', 'rgb')]
    """
    if config.inputs == "optical_flow":
        return [("optical_flow", "optical_flow", config)]
    if config.inputs == "rgb+optical_flow":
        return [("rgb", "rgb", config), ("optical_flow", "optical_flow", config)]
    if config.fusion == "late":
        rgb = dataclasses.replace(config, flow_position="none", fusion="none")
        return [("rgb", "rgb", rgb), ("flow", "rgb", dataclasses.replace(config, fusion="none"))]
    return [("flow" if config.flow_position != "none" else "rgb", "rgb", config)]


def default_name(config: ModelConfig) -> str:
    """A readable model name from the options, e.g. `resnet34_2d_flow_block3_single`."""
    name = f"resnet{config.depth}_{config.kind}"
    if config.inputs != "rgb":
        return f"{name}_{'two_stream' if config.inputs == 'rgb+optical_flow' else 'optical_flow'}"
    if config.flow_position != "none":
        name += f"_flow_{config.flow_position}_{config.flow_stack}"
    if config.fusion != "none":
        name += f"_{config.fusion}"
    return name


def build(config: ModelConfig) -> keras.Model:
    """Builds the video classifier described by `config`: inputs -> logits `(batch, classes)`.

    Inputs are raw frames `"frames"` `(batch, time, height, width, 3)` in [0, 255] and, for the
    optical flow baselines, `"optical_flow"` `(batch, time - 1, height, width, 2)` in pixels; a
    model that reads optical flow takes a dict by these names. Two streams (late fusion,
    two-stream) average their logits.

    Example:

    >>> import tensorflow as tf
    >>> config = ModelConfig(depth=18, num_classes=5, base_width=8, flow_position="block1",
    ...                      flow_iterations=2, flow_channels=4)
    >>> model = build(config)
    >>> model(tf.zeros((2, 8, 64, 64, 3))).shape
    TensorShape([2, 5])
    """
    inputs: dict[str, keras.KerasTensor] = {}
    all_streams = streams(config)
    logits = []
    for stream, modality, stream_config in all_streams:
        if modality not in inputs:
            inputs[modality] = keras.Input(
                input_spec(config, modality), dtype="float32", name=INPUT_NAMES[modality]
            )
        backbone = build_backbone(stream_config, modality, name=f"{stream}_backbone")
        prefix = "" if len(all_streams) == 1 else f"{stream}_"
        logits.append(
            classifier_head(backbone(inputs[modality]), config.num_classes, config.dropout, prefix)
        )
    if len(logits) == 1:
        outputs = logits[0]
    else:
        outputs = keras.layers.Average(dtype="float32", name="logits")(logits)
    # RGB models take a tensor; models reading optical flow take a dict by input name, the
    # element structure of `data.video_dataset(inputs=...)`.
    model_inputs = (
        inputs["rgb"]
        if list(inputs) == ["rgb"]
        else {INPUT_NAMES[modality]: tensor for modality, tensor in inputs.items()}
    )
    return keras.Model(model_inputs, outputs, name=config.name or default_name(config))
