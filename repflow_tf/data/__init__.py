"""Video data: list parsers, video -> TFRecord conversion, the tf.data clip pipeline, demo data.

Independent of the models (it never imports repflow_tf.ops, layers or models). The names below
load on first use (PEP 562), so that a command can use the TensorFlow-free parts (the list
formats, the optical flow options) to check its flags before TensorFlow starts.

>>> from repflow_tf.data import make_synthetic_dataset, video_dataset
"""

from __future__ import annotations

import importlib
from typing import Any

# public name: (submodule, name there)
_EXPORTS = {
    "centre_window": ("pipeline", "centre_window"),
    "class_names": ("synthetic", "class_names"),
    "clip_indices": ("pipeline", "clip_indices"),
    "convert_dataset": ("convert", "convert_dataset"),
    "convert_split": ("convert", "convert_split"),
    "ConvertOptions": ("convert", "ConvertOptions"),
    "crop_flow": ("pipeline", "crop_flow"),
    "DataError": ("schema", "DataError"),
    "DEFAULT_FLOW_BOUND": ("optical_flow", "DEFAULT_BOUND"),
    "dequantize_flow": ("optical_flow", "dequantize_flow"),
    "encode_frame": ("convert", "encode_frame"),
    "encode_video": ("convert", "encode_video"),
    "evaluation_starts": ("pipeline", "evaluation_starts"),
    "FILENAME_KEY": ("schema", "FILENAME_KEY"),
    "flow_indices": ("pipeline", "flow_indices"),
    "FLOW_X_KEY": ("schema", "FLOW_X_KEY"),
    "FLOW_Y_KEY": ("schema", "FLOW_Y_KEY"),
    "FORMATS": ("splits", "FORMATS"),
    "FRAME_RANGE": ("pipeline", "FRAME_RANGE"),
    "IMAGE_KEY": ("schema", "IMAGE_KEY"),
    "iter_frames": ("video", "iter_frames"),
    "jpeg_round_trip": ("convert", "jpeg_round_trip"),
    "LABEL_INDEX_KEY": ("schema", "LABEL_INDEX_KEY"),
    "LABEL_TEXT_KEY": ("schema", "LABEL_TEXT_KEY"),
    "list_shards": ("pipeline", "list_shards"),
    "check_synthetic_variant": ("synthetic", "check_synthetic_variant"),
    "ListFormatError": ("splits", "ListFormatError"),
    "load_manifest": ("manifest", "load_manifest"),
    "make_sequence_example": ("schema", "make_sequence_example"),
    "make_synthetic_dataset": ("synthetic", "make_synthetic_dataset"),
    "Manifest": ("manifest", "Manifest"),
    "OPTICAL_FLOW_METHODS": ("optical_flow", "METHODS"),
    "parse_csv": ("splits", "parse_csv"),
    "parse_hmdb51": ("splits", "parse_hmdb51"),
    "parse_kinetics": ("splits", "parse_kinetics"),
    "parse_sequence_example": ("schema", "parse_sequence_example"),
    "parse_ucf101": ("splits", "parse_ucf101"),
    "quantize_flow": ("optical_flow", "quantize_flow"),
    "read_class_list": ("splits", "read_class_list"),
    "read_split_lists": ("splits", "read_split_lists"),
    "read_video": ("video", "read_video"),
    "Rejection": ("manifest", "Rejection"),
    "render_clip": ("synthetic", "render_clip"),
    "report_rejections": ("convert", "report_rejections"),
    "shard_name": ("schema", "shard_name"),
    "ShardInfo": ("manifest", "ShardInfo"),
    "SplitList": ("splits", "SplitList"),
    "TVL1": ("optical_flow", "TVL1"),
    "video_dataset": ("pipeline", "video_dataset"),
    "VideoDecodeError": ("video", "VideoDecodeError"),
    "VideoEntry": ("splits", "VideoEntry"),
    "write_video": ("video", "write_video"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
