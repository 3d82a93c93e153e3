"""Inflation of 2D (per-frame) ResNet weights into the 3D and (2+1)D ones (Carreira & Zisserman,
2017), from a trained 2D model or from 2D weights by layer name (`repflow_tf.models.pretrained`).

The three kinds built from one config share their layer names (`conv1`, `conv1_bn`,
`group1_block1_conv2`, ...), except that a (2+1)D conv `X` with a temporal extent is the pair
`X_spatial` -> `X_spatial_bn` -> ReLU -> `X_temporal` followed by `X_bn`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import keras
import numpy as np

from repflow_tf.config import INFLATIONS


def _leaf_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.Layer]]:
    """(qualified name, layer) of every non-model layer, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def temporal_weights(temporal: int, mode: str = "mean") -> np.ndarray:
    """The weight of each time step of an inflated kernel: `mode` `"mean"` (I3D: 1 / temporal
    each) or `"center"` (1 on the middle step).

    >>> temporal_weights(3, "mean").tolist(), temporal_weights(3, "center").tolist()
    ([0.3333333432674408, 0.3333333432674408, 0.3333333432674408], [0.0, 1.0, 0.0])
    """
    if mode not in INFLATIONS:
        raise ValueError(f"`mode` must be one of {INFLATIONS}. Received: mode={mode!r}")
    if mode == "mean":
        return np.full(temporal, 1.0 / temporal, "float32")
    weights = np.zeros(temporal, "float32")
    weights[temporal // 2] = 1.0
    return weights


def inflate_kernel(kernel: np.ndarray, temporal: int, mode: str = "mean") -> np.ndarray:
    """A Conv2D kernel `(kh, kw, in, out)` as a Conv3D kernel `(temporal, kh, kw, in, out)`.

    >>> inflate_kernel(np.ones((3, 3, 2, 4)), 3).shape
    (3, 3, 3, 2, 4)
    """
    steps = temporal_weights(temporal, mode).reshape((temporal,) + (1,) * kernel.ndim)
    return (steps * kernel[None]).astype(kernel.dtype)


def _split_weights(
    name: str, layer: keras.Layer, layers: Mapping[str, keras.Layer], source, mode: str
) -> list[np.ndarray] | None:
    """The (2+1)D parts of the 2D conv `base` (with its BN `base_bn`), or None if `name` is none.

    `X_spatial` gets the 2D kernel on its first F of `middle` channels and `X_spatial_bn` the 2D
    batch norm there (the other channels keep their initialisation); `X_temporal` passes channel
    i to output i with `temporal_weights` and ignores the others; `X_bn` is the identity (at
    inference). Without a ReLU after the 2D conv, channels F..2F repeat the kernel with the batch
    norm's gamma and beta negated, so they carry -v (in training too), and the temporal conv
    subtracts them: relu(v) - relu(-v) = v.
    """
    for suffix in ("_spatial", "_spatial_bn", "_temporal", "_bn"):
        base = name.removesuffix(suffix)
        if name.endswith(suffix) and f"{base}_temporal" in layers and base in source:
            break
    else:
        return None
    copies = 1 if f"{base}_relu" in layers else 2
    weights = [np.array(w) for w in layer.get_weights()]
    if suffix == "_bn":  # gamma 1, beta 0, mean 0: x / sqrt(variance + epsilon) = x
        return [np.ones_like(weights[0]), *(np.zeros_like(w) for w in weights[1:3]),
                np.full_like(weights[3], 1.0 - layer.epsilon)]  # fmt: skip
    kernel = np.asarray(source[base][0])
    filters = kernel.shape[-1]
    middle = layers[f"{base}_spatial"].kernel.shape[-1]
    if middle < copies * filters:
        raise ValueError(
            f"{base}_spatial has {middle} channels, fewer than the {copies} x {filters} that "
            f"carry the 2D conv {base!r}"
        )
    signs = (1.0, -1.0)[:copies]
    if suffix == "_spatial":
        for copy in range(copies):
            weights[0][0, ..., copy * filters : (copy + 1) * filters] = kernel
        return weights
    if suffix == "_spatial_bn":
        gamma, beta, mean, variance = (np.asarray(w) for w in source[f"{base}_bn"])
        for copy, sign in enumerate(signs):
            part = slice(copy * filters, (copy + 1) * filters)
            for index, value in enumerate((sign * gamma, sign * beta, mean, variance)):
                weights[index][part] = value
        return weights
    temporal = weights[0].shape[0]
    steps = temporal_weights(temporal, mode)
    kernel_t = np.zeros_like(weights[0])  # (temporal, 1, 1, middle, filters)
    for copy, sign in enumerate(signs):
        for channel in range(filters):
            kernel_t[:, 0, 0, copy * filters + channel, channel] = sign * steps
    return [kernel_t]


def inflate_into(
    source: Mapping[str, Sequence[np.ndarray]], model: keras.Model, mode: str = "mean"
) -> list[str]:
    """Sets the layers of `model` (of any kind) from 2D weights by (qualified) layer name.

    A Conv2D kernel becomes a Conv3D kernel by `inflate_kernel`, a 2D conv the (2+1)D parts
    described in `_split_weights`; every other layer is copied as is. With `"center"` the
    inflated model gives every frame its 2D features; with `"mean"` a clip of one repeated frame
    does, away from the (zero-padded) clip ends. Returns the names of the layers set; layers
    without a counterpart keep their weights. Raises ValueError naming a layer whose shapes
    differ.
    """
    layers = dict(_leaf_layers(model))
    loaded = []
    for name, layer in layers.items():
        if not layer.weights:
            continue
        weights = _split_weights(name, layer, layers, source, mode)
        if weights is None and name in source:
            weights = [np.asarray(w) for w in source[name]]
            if isinstance(layer, keras.layers.Conv3D) and weights[0].ndim == 4:
                weights[0] = inflate_kernel(weights[0], layer.kernel.shape[0], mode)
        if weights is None:
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(w.shape) for w in weights] != expected:
            raise ValueError(
                f"layer {name!r} has weights of shapes {expected}, the 2D weights give "
                f"{[tuple(w.shape) for w in weights]}"
            )
        layer.set_weights(weights)
        loaded.append(name)
    return loaded


def inflate_2d_weights(model_2d: keras.Model, model_3d: keras.Model, mode: str = "mean") -> None:
    """Copies a 2D model's weights into the 3D model built from the same config (kind="3d").

    Every layer with weights must have a 2D counterpart of the same (qualified) name, so a
    (2+1)D model, whose convs are split, is refused (`inflate_into` maps 2D weights onto it).
    See `inflate_into`: with the default `"mean"` each
    Conv2D kernel (kh, kw, in, out) becomes the Conv3D kernel (kt, kh, kw, in, out) repeated
    over time and divided by kt, so a clip of one repeated frame gives the 2D features of that
    frame (away from the zero-padded clip ends); `"center"` puts it on the middle time step, so
    every frame gives its 2D features. Every other layer (batch norm, flow, classifier) is
    copied as is.

    Example:

    >>> import dataclasses
    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf.models import build
    >>> config = ModelConfig(depth=18, num_classes=3, base_width=4, flow_position="none")
    >>> model_3d = build(dataclasses.replace(config, kind="3d"))
    >>> inflate_2d_weights(build(config), model_3d)
    """
    source = {name: layer.get_weights() for name, layer in _leaf_layers(model_2d) if layer.weights}
    for name, layer in _leaf_layers(model_3d):
        if layer.weights and name not in source:
            raise ValueError(
                f"The 2D model has no layer {name!r}; inflation maps a 2D model onto the 3D "
                f"model built from the same config (kind='3d')."
            )
    inflate_into(source, model_3d, mode)
