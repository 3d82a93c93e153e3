"""Video ResNet backbones (2D per-frame, (2+1)D, inflated 3D) with representation flow and fusion.

A backbone maps raw frames `(batch, time, height, width, 3)` in [0, 255] (or precomputed optical
flow `(batch, time, height, width, 2)` in pixels) to features `(batch, time', h, w, C)`.

Conventions (see the README):

- Input range: the model takes raw [0, 255] frames and rescales them itself (ImageNet mean/std,
  [-1, 1], or minus the ImageNet mean as `keras.applications.ResNet50` expects); the
  representation flow on the input works on the raw frames (it normalises each channel itself).
  Optical flow input is in pixels and divided by 20 (the usual ±20 clip range).
- Time: no temporal striding anywhere (the 3D/(2+1)D kernels pad time with "same"), so T stays
  T until the flow; each flow layer drops one frame: its output at t is aligned to frame t + 1
  (FlowBlock's `inputs[:, 1:]`), so fusion aligns the RGB features by dropping the first frame(s).
- 2D: time is folded into the batch (dynamic shapes, unknown batch and time work) and unfolded
  around the flow layer and at the end.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from repflow_tf.config import ModelConfig
from repflow_tf.layers import RepresentationFlow, flow_stack, frame_conv_bn

_PACKAGE = "repflow_tf"
# block type and blocks per residual group, by depth
RESNET_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
GROUP_STRIDES = (1, 2, 2, 2)  # spatial only; no temporal striding
MODALITY_CHANNELS = {"rgb": 3, "optical_flow": 2}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# keras.applications.resnet50.preprocess_input ("caffe"): BGR minus this mean (here in RGB order;
# the pretrained loader reverses conv1's input channels instead of the frames').
CAFFE_MEAN = (123.68, 116.779, 103.939)
OPTICAL_FLOW_SCALE = 1.0 / 20.0
# Batch norm of the backbone (the torchvision / PyTorch defaults the paper's models use).
BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}


# === Layers ===


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FoldTime(keras.layers.Layer):
    """Folds time into the batch: `(batch, time, h, w, c)` -> `(batch * time, h, w, c)`.

    >>> FoldTime()(tf.zeros((2, 3, 4, 4, 5))).shape
    TensorShape([6, 4, 4, 5])
    """

    def call(self, inputs):
        shape = tf.shape(inputs)
        return tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))

    def compute_output_shape(self, input_shape):
        batch, time = input_shape[:2]
        folded = None if batch is None or time is None else batch * time
        return (folded, *input_shape[2:])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class UnfoldTime(keras.layers.Layer):
    """Inverse of `FoldTime`: `[(batch * time, h, w, c), reference]` -> `(batch, time, h, w, c)`.

    `reference` is the 5-D tensor that was folded; batch and time are read from its shape.

    >>> UnfoldTime()([tf.zeros((6, 2, 2, 8)), tf.zeros((2, 3, 4, 4, 5))]).shape
    TensorShape([2, 3, 2, 2, 8])
    """

    def call(self, inputs):
        folded, reference = inputs
        shape = tf.concat([tf.shape(reference)[:2], tf.shape(folded)[1:]], axis=0)
        return tf.reshape(folded, shape)

    def compute_output_shape(self, input_shape):
        folded_shape, reference_shape = input_shape
        return (*reference_shape[:2], *folded_shape[1:])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SpatialAveragePooling(keras.layers.Layer):
    """Global average over height and width per time step: `(b, t, h, w, c)` -> `(b, t, c)`.

    >>> SpatialAveragePooling()(tf.ones((2, 3, 4, 4, 5))).shape
    TensorShape([2, 3, 5])
    """

    def call(self, inputs):
        return tf.reduce_mean(inputs, axis=(2, 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], input_shape[4])


# === Functional Model ===


def _batch_norm(x, name: str, config: ModelConfig):
    return keras.layers.BatchNormalization(
        synchronized=config.synchronized_bn, name=name, **BATCH_NORM
    )(x)


def _zero_pad(x, spatial: int, temporal: int, name: str, config: ModelConfig):
    """Zero padding by `spatial` pixels on every side (and `temporal` frames in 3D)."""
    if config.kind == "2d":
        return keras.layers.ZeroPadding2D(spatial, name=name)(x)
    return keras.layers.ZeroPadding3D((temporal, spatial, spatial), name=name)(x)


def _conv(
    x,
    filters: int,
    size: int,
    stride: int,
    temporal: int,
    name: str,
    config: ModelConfig,
    symmetric: bool = False,
):
    """A `size`x`size` conv with spatial `stride` in the backbone's kind.

    2D: Conv2D on folded frames. 3D: Conv3D (temporal, size, size). (2+1)D with temporal > 1:
    Conv3D (1, size, size) -> BN -> ReLU -> Conv3D (temporal, 1, 1), with Tran et al.'s middle
    width that matches the 3D conv's parameter count. "same" padding, or with `symmetric` zero
    padding by `size // 2` on every side then none (keras.applications' stem), the same in
    time (3D) since the stride there is 1.
    """
    common = {"use_bias": False, "kernel_initializer": "he_normal"}
    spatial_padding = "same"
    if symmetric:
        spatial_padding = "valid"
        split = config.kind == "2plus1d" and temporal > 1
        pad_time = 0 if split or config.kind != "3d" else temporal // 2
        x = _zero_pad(x, size // 2, pad_time, f"{name}_pad", config)
    if config.kind == "2d":
        return keras.layers.Conv2D(
            filters, size, strides=stride, padding=spatial_padding, name=name, **common
        )(x)
    strides = (1, stride, stride)
    if config.kind == "3d" or temporal == 1:
        kernel = (temporal if config.kind == "3d" else 1, size, size)
        return keras.layers.Conv3D(
            filters, kernel, strides=strides, padding=spatial_padding, name=name, **common
        )(x)
    in_channels = x.shape[-1]
    middle = (temporal * size * size * in_channels * filters) // (
        size * size * in_channels + temporal * filters
    )
    x = keras.layers.Conv3D(
        middle,
        (1, size, size),
        strides=strides,
        padding=spatial_padding,
        name=f"{name}_spatial",
        **common,
    )(x)
    x = _batch_norm(x, f"{name}_spatial_bn", config)
    x = keras.layers.ReLU(name=f"{name}_spatial_relu")(x)
    return keras.layers.Conv3D(
        filters, (temporal, 1, 1), padding="same", name=f"{name}_temporal", **common
    )(x)


def _conv_bn(x, filters, size, stride, temporal, name, config, relu=True, symmetric=False):
    x = _conv(x, filters, size, stride, temporal, name, config, symmetric)
    x = _batch_norm(x, f"{name}_bn", config)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x, filters: int, stride: int, block_type: str, name: str, config):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) block; projection shortcut if needed.

    The bottleneck strides in its 3x3 conv (`resnet_variant="v1.5"`) or its first 1x1 (`"v1"`).
    """
    if block_type == "basic":
        out_channels = filters
        y = _conv_bn(x, filters, 3, stride, 3, f"{name}_conv1", config)
        y = _conv_bn(y, filters, 3, 1, 3, f"{name}_conv2", config, relu=False)
    else:
        out_channels = 4 * filters
        first, middle = (stride, 1) if config.resnet_variant == "v1" else (1, stride)
        y = _conv_bn(x, filters, 1, first, 1, f"{name}_conv1", config)
        y = _conv_bn(y, filters, 3, middle, 3, f"{name}_conv2", config)
        y = _conv_bn(y, out_channels, 1, 1, 1, f"{name}_conv3", config, relu=False)
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _conv_bn(x, out_channels, 1, stride, 1, f"{name}_shortcut", config, relu=False)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _fuse(flow, rgb, config: ModelConfig):
    """Fuses flow features with the time-aligned RGB features (Table 4, Fig. 2c)."""
    if config.fusion in ("none", "late"):
        return flow
    # The flow at step t belongs to frame t + flow_layers: drop the first RGB frame(s).
    shift = config.flow_layers
    rgb = keras.layers.Cropping3D(((shift, 0), (0, 0), (0, 0)), name="fusion_align")(rgb)
    if config.fusion == "concat":
        return keras.layers.Concatenate(name="fusion_concat")([rgb, flow])
    flow_channels = flow.shape[-1]
    if config.fusion == "layer_multiply":
        rgb = keras.layers.Conv3D(flow_channels, 1, name="fusion_conv")(rgb)
    elif rgb.shape[-1] != flow_channels:
        # Flow on the input: x flows of all channels, then y flows (twice more for two layers);
        # repeating the RGB channels pairs every flow channel with the channel it was computed on.
        rgb = keras.layers.Concatenate(name="fusion_tile")([rgb] * (flow_channels // rgb.shape[-1]))
    merge = keras.layers.Add if config.fusion == "add" else keras.layers.Multiply
    return merge(name=f"fusion_{config.fusion}")([rgb, flow])


def _flow_kwargs(config: ModelConfig) -> dict:
    return {
        "num_iter": config.flow_iterations,
        "gradient": config.flow_gradient,
        "learn": config.flow_learn,
    }


def _input_flow(frames, config: ModelConfig):
    """Pure representation flow of the raw RGB frames (no residual): 6 or 12 channels."""
    flow = RepresentationFlow(**_flow_kwargs(config), name="representation_flow")(frames)
    if config.flow_stack == "fcf":
        conv, norm = frame_conv_bn(
            flow.shape[-1],
            conv_name="flow_conv",
            norm_name="flow_conv_bn",
            synchronized_bn=config.synchronized_bn,
            **BATCH_NORM,
        )
        flow = keras.layers.ReLU(name="flow_conv_relu")(norm(conv(flow)))
    if config.flow_stack != "single":
        flow = RepresentationFlow(**_flow_kwargs(config), name="representation_flow_2")(flow)
    return flow


def _feature_flow(features, config: ModelConfig):
    """The paper's flow block(s) (`flow_stack`) on 5-D features, then fusion."""
    flow = flow_stack(
        config.flow_stack,
        channels_reduced=config.flow_channels,
        synchronized_bn=config.synchronized_bn,
        name="flow_stack",
        **_flow_kwargs(config),
    )(features)
    return _fuse(flow, features, config)


def _preprocess(inputs, modality: str, config: ModelConfig):
    if modality == "optical_flow":
        return keras.layers.Rescaling(OPTICAL_FLOW_SCALE, name="rescaling")(inputs)
    if config.input_normalization == "symmetric":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    if config.input_normalization == "caffe":
        return keras.layers.Normalization(
            mean=list(CAFFE_MEAN), variance=[1.0, 1.0, 1.0], name="rescaling"
        )(inputs)
    return keras.layers.Normalization(
        mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name="rescaling"
    )(inputs)


def input_spec(config: ModelConfig, modality: str = "rgb") -> tuple:
    """Shape (without batch) of a model input: `(time, height, width, channels)`, None = any.

    Precomputed optical flow has one field per pair of consecutive frames: `num_frames - 1`.

    >>> input_spec(ModelConfig(num_frames=16, image_size=112), "optical_flow")
    (15, 112, 112, 2)
    """
    size = config.image_size
    frames = config.num_frames
    if modality == "optical_flow" and frames is not None:
        frames -= 1
    return (frames, size, size, MODALITY_CHANNELS[modality])


def _check_modality(config: ModelConfig, modality: str) -> None:
    if modality not in MODALITY_CHANNELS:
        raise ValueError(
            f"`modality` must be one of {tuple(MODALITY_CHANNELS)}. Received: modality={modality!r}"
        )
    if modality == "optical_flow" and config.flow_position != "none":
        raise ValueError("An optical flow backbone takes no representation flow layer.")


class _FlowPlacement:
    """Puts the flow stack on the feature path. The 2D kind folds time into the batch, so there
    the features are unfolded (against `five_d`, the latest 5-D tensor) and folded again."""

    def __init__(self, config: ModelConfig, five_d):
        self.config = config
        self.five_d = five_d

    def __call__(self, x):
        if self.config.kind != "2d":
            return _feature_flow(x, self.config)
        self.five_d = _feature_flow(UnfoldTime(name="flow_unfold")([x, self.five_d]), self.config)
        return FoldTime(name="flow_fold")(self.five_d)


def _stem(x, config: ModelConfig):
    """7x7 conv stride 2 (3x7x7 in 3D), BN, ReLU, 3x3 max pool stride 2; "same" padding, or
    (`resnet_variant="v1"`) zero padding by 3 and 1 pixels then none, as keras.applications."""
    v1 = config.resnet_variant == "v1"
    x = _conv_bn(x, config.base_width, 7, 2, 3, "conv1", config, symmetric=v1)
    padding = "same"
    if v1:  # zeros after a ReLU are no larger than any value: as if the pool ignored them
        x, padding = _zero_pad(x, 1, 0, "pool1_pad", config), "valid"
    if config.kind == "2d":
        return keras.layers.MaxPooling2D(3, 2, padding=padding, name="pool1")(x)
    return keras.layers.MaxPooling3D((1, 3, 3), (1, 2, 2), padding=padding, name="pool1")(x)


def _residual_groups(x, config: ModelConfig, flow: _FlowPlacement):
    """The four groups of residual blocks, with the flow stack after `config.flow_position`."""
    block_type, blocks = RESNET_BLOCKS[config.depth]
    for group, (num_blocks, stride) in enumerate(zip(blocks, GROUP_STRIDES, strict=True), start=1):
        filters = config.base_width * 2 ** (group - 1)
        for block in range(1, num_blocks + 1):
            x = _residual_block(
                x,
                filters,
                stride if block == 1 else 1,
                block_type,
                f"group{group}_block{block}",
                config,
            )
        if config.flow_position == f"block{group}":
            x = flow(x)
    return x


def build_backbone(
    config: ModelConfig, modality: str = "rgb", name: str | None = None
) -> keras.Model:
    """Functional video ResNet: raw frames (or optical flow) -> features `(b, t', h, w, C)`.

    Flow placement, flow stack and fusion come from `config` (`fusion="late"` is built by
    `repflow_tf.models.build` as two backbones; here it means no fusion).

    Example:

    >>> config = ModelConfig(kind="3d", depth=18, base_width=8, flow_position="block1",
    ...                      flow_iterations=2, flow_channels=4)
    >>> backbone = build_backbone(config)
    >>> backbone(tf.zeros((2, 4, 64, 64, 3))).shape
    TensorShape([2, 3, 2, 2, 64])
    """
    _check_modality(config, modality)
    input_name = "frames" if modality == "rgb" else "optical_flow"
    inputs = keras.Input(input_spec(config, modality), name=input_name)
    position = config.flow_position
    x = _preprocess(inputs, modality, config)
    if position == "input":
        x = _fuse(_input_flow(inputs, config), x, config)
    flow = _FlowPlacement(config, x)
    if config.kind == "2d":
        x = FoldTime(name="fold_time")(x)
    x = _stem(x, config)
    if position == "stem":
        x = flow(x)
    x = _residual_groups(x, config, flow)
    if config.kind == "2d":
        x = UnfoldTime(name="unfold_time")([x, flow.five_d])
    return keras.Model(inputs, x, name=name or f"{modality}_backbone")
