"""Video models: 2D, (2+1)D and 3D ResNets with representation flow, fusion variants, baselines.

>>> from repflow_tf.config import ModelConfig
>>> model = build(ModelConfig(kind="2d", depth=34, flow_position="block3"))  # the paper's default
"""

from repflow_tf.models.backbone import (
    FoldTime,
    SpatialAveragePooling,
    UnfoldTime,
    build_backbone,
    input_spec,
)
from repflow_tf.models.classifier import INPUT_NAMES, build, classifier_head, streams
from repflow_tf.models.inflate import inflate_2d_weights, inflate_into
from repflow_tf.models.pretrained import (
    PretrainedError,
    copy_matching_weights,
    load_pretrained,
    resnet50_weights,
)

__all__ = [
    "INPUT_NAMES",
    "FoldTime",
    "PretrainedError",
    "SpatialAveragePooling",
    "UnfoldTime",
    "build",
    "build_backbone",
    "classifier_head",
    "copy_matching_weights",
    "inflate_2d_weights",
    "inflate_into",
    "input_spec",
    "load_pretrained",
    "resnet50_weights",
    "streams",
]
