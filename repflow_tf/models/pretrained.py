"""Pretrained starts: `keras.applications.ResNet50` (ImageNet) weights in our ResNet-50 backbones
(`ModelConfig.pretrained`), and the weights of another trained model (`TrainerConfig.init_from`).

Our ResNet-50 with `resnet_variant="v1"` and `input_normalization="caffe"` computes what
`keras.applications.ResNet50` computes on `keras.applications.resnet50.preprocess_input(frames)`:
the weights map layer by layer (`conv2_block1_1_conv` -> `group1_block1_conv1`, `*_0_*` -> the
shortcut), with three exact rewrites, since our convs have no bias, our batch norm's epsilon is
1e-5 (theirs 1.001e-5) and our frames stay RGB (theirs are BGR):

- each conv's bias b moves into its batch norm: moving_mean - b (in training the batch mean
  absorbs it);
- the epsilon difference moves into the moving variance: variance + 1.001e-5 - 1e-5;
- conv1's input channels are reversed (BGR -> RGB).

The 3D and (2+1)D backbones get the 2D weights inflated (`inflate.inflate_into`).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from repflow_tf.config import ModelConfig
from repflow_tf.models.backbone import BATCH_NORM, RESNET_BLOCKS
from repflow_tf.models.classifier import streams
from repflow_tf.models.inflate import _leaf_layers, inflate_into


class PretrainedError(ValueError):
    """Pretrained weights that cannot be had or do not fit; the message is one line."""


def _first_line(error: BaseException, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]


def keras_resnet50(source: str) -> keras.Model:
    """`keras.applications.ResNet50` without its top, with the weights `source`: `"imagenet"`
    (Keras downloads them, or finds them in its cache) or a weights file (with or without top).

    Raises `PretrainedError`, naming `model.pretrained`, when they cannot be had.
    """
    if source == "imagenet":
        try:
            return keras.applications.ResNet50(weights="imagenet", include_top=False)
        except Exception as error:  # urllib, HTTP, hash and file errors alike
            raise PretrainedError(
                "model.pretrained='imagenet': cannot get the keras.applications.ResNet50 "
                f"ImageNet weights ({_first_line(error, 300)}); offline, fetch them where there "
                "is network (keras.applications.ResNet50(weights='imagenet', include_top=False) "
                "keeps them in ~/.keras/models/) and set model.pretrained to that file"
            ) from None
    if not os.path.isfile(source):
        raise PretrainedError(f"model.pretrained={source!r}: no such weights file")
    try:
        return keras.applications.ResNet50(weights=source, include_top=False)
    except Exception as error:  # Keras raises many types for a foreign file
        raise PretrainedError(
            f"model.pretrained={source!r}: not keras.applications.ResNet50 weights "
            f"({_first_line(error)})"
        ) from None


def _layer_pairs() -> list[tuple[str, str]]:
    """(our 2D ResNet-50 conv name, keras.applications' prefix), e.g. ("conv1", "conv1")."""
    pairs = [("conv1", "conv1")]
    for group, blocks in enumerate(RESNET_BLOCKS[50][1], start=1):
        for block in range(1, blocks + 1):
            ours, theirs = f"group{group}_block{block}", f"conv{group + 1}_block{block}"
            pairs += [(f"{ours}_conv{i}", f"{theirs}_{i}") for i in (1, 2, 3)]
            if block == 1:
                pairs.append((f"{ours}_shortcut", f"{theirs}_0"))
    return pairs


def resnet50_weights(resnet50: keras.Model) -> dict[str, list[np.ndarray]]:
    """A `keras.applications.ResNet50`'s weights under our 2D backbone's layer names (`conv1`,
    `conv1_bn`, `group1_block1_conv1`, ...), rewritten as the module doc describes."""
    weights = {}
    for ours, theirs in _layer_pairs():
        kernel, bias = resnet50.get_layer(f"{theirs}_conv").get_weights()
        norm = resnet50.get_layer(f"{theirs}_bn")
        gamma, beta, mean, variance = norm.get_weights()
        if ours == "conv1":
            kernel = kernel[:, :, ::-1, :]  # BGR -> RGB input channels
        weights[ours] = [np.ascontiguousarray(kernel)]
        variance = variance + (norm.epsilon - BATCH_NORM["epsilon"])
        weights[f"{ours}_bn"] = [gamma, beta, mean - bias, variance]
    return weights


def load_pretrained(model: keras.Model, config: ModelConfig) -> str:
    """Loads `config.pretrained` into every RGB backbone of `model` (built from `config`),
    inflated by `config.pretrained_inflation` in 3D and (2+1)D; returns a one-line report.

    Raises `PretrainedError` when the weights cannot be had or do not fit.
    """
    weights = resnet50_weights(keras_resnet50(config.pretrained))
    backbones = [f"{name}_backbone" for name, modality, _ in streams(config) if modality == "rgb"]
    for backbone in backbones:
        try:
            loaded = inflate_into(weights, model.get_layer(backbone), config.pretrained_inflation)
        except ValueError as error:
            raise PretrainedError(
                f"model.pretrained={config.pretrained!r}: {backbone} {_first_line(error)}"
            ) from None
        covered = {name.removesuffix("_spatial") for name in loaded}
        missing = [name for name in weights if not name.endswith("_bn") and name not in covered]
        if missing:
            raise PretrainedError(
                f"model.pretrained={config.pretrained!r}: {backbone} has no layer for "
                f"{', '.join(missing[:3])}"
            )
    inflation = "" if config.kind == "2d" else f", {config.pretrained_inflation} inflation"
    return (
        f"model.pretrained={config.pretrained!r}: keras.applications.ResNet50 weights in "
        f"{', '.join(backbones)} ({len(_layer_pairs())} convs with their batch norms"
        f"{inflation}); the flow layers and the classifier keep their initialisation"
    )


def copy_matching_weights(source: keras.Model, target: keras.Model) -> tuple[list[str], list[str]]:
    """Copies into `target` every layer of `source` with the same qualified name and weight
    shapes. Returns (names copied, names of `target`'s layers with weights left as they were).

    >>> from repflow_tf.models import build
    >>> config = ModelConfig(depth=18, base_width=4, num_classes=3, flow_position="none")
    >>> import dataclasses
    >>> copied, kept = copy_matching_weights(build(config),
    ...                                      build(dataclasses.replace(config, num_classes=4)))
    >>> kept
    ['classifier']
    """
    layers = dict(_leaf_layers(source))
    copied, kept = [], []
    for name, layer in _leaf_layers(target):
        if not layer.weights:
            continue
        other = layers.get(name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            kept.append(name)
            continue
        layer.set_weights(other.get_weights())
        copied.append(name)
    return copied, kept
