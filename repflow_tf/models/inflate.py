"""Inflation of a trained 2D (per-frame) ResNet into the 3D one (Carreira & Zisserman, 2017)."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np


def _leaf_layers(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.Layer]]:
    """(qualified name, layer) of every non-model layer, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def inflate_2d_weights(model_2d: keras.Model, model_3d: keras.Model) -> None:
    """Copies a 2D model's weights into the 3D model built from the same config (kind="3d").

    Layers are matched by (qualified) name. Each Conv2D kernel (kh, kw, in, out) becomes the
    Conv3D kernel (kt, kh, kw, in, out) repeated over time and divided by kt, so a clip of one
    repeated frame gives the 2D features of that frame (away from the zero-padded clip ends);
    every other layer (batch norm, flow, classifier) is copied as is.

    Example:

    >>> import dataclasses
    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf.models import build
    >>> config = ModelConfig(depth=18, num_classes=3, base_width=4, flow_position="none")
    >>> model_3d = build(dataclasses.replace(config, kind="3d"))
    >>> inflate_2d_weights(build(config), model_3d)
    """
    source = dict(_leaf_layers(model_2d))
    for name, layer in _leaf_layers(model_3d):
        if not layer.weights:
            continue
        if name not in source:
            raise ValueError(
                f"The 2D model has no layer {name!r}; inflation maps a 2D model onto the 3D "
                f"model built from the same config (kind='3d')."
            )
        weights = source[name].get_weights()
        if isinstance(layer, keras.layers.Conv3D) and isinstance(source[name], keras.layers.Conv2D):
            temporal = layer.kernel.shape[0]
            weights[0] = np.repeat(weights[0][None], temporal, axis=0) / temporal
        layer.set_weights(weights)
