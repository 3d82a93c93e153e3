"""Video data: list parsers, video -> TFRecord conversion, the tf.data clip pipeline, demo data.

Independent of the models (it never imports repflow_tf.ops, layers or models).

>>> from repflow_tf.data import make_synthetic_dataset, video_dataset
"""

from repflow_tf.data.convert import (
    ConvertOptions,
    convert_dataset,
    convert_split,
    encode_frame,
    encode_video,
    jpeg_round_trip,
    report_rejections,
)
from repflow_tf.data.manifest import Manifest, Rejection, ShardInfo, load_manifest
from repflow_tf.data.optical_flow import DEFAULT_BOUND as DEFAULT_FLOW_BOUND
from repflow_tf.data.optical_flow import METHODS as OPTICAL_FLOW_METHODS
from repflow_tf.data.optical_flow import TVL1, dequantize_flow, quantize_flow
from repflow_tf.data.pipeline import (
    FRAME_RANGE,
    centre_window,
    clip_indices,
    crop_flow,
    evaluation_starts,
    flow_indices,
    list_shards,
    video_dataset,
)
from repflow_tf.data.schema import (
    FILENAME_KEY,
    FLOW_X_KEY,
    FLOW_Y_KEY,
    IMAGE_KEY,
    LABEL_INDEX_KEY,
    LABEL_TEXT_KEY,
    DataError,
    make_sequence_example,
    parse_sequence_example,
    shard_name,
)
from repflow_tf.data.splits import (
    FORMATS,
    ListFormatError,
    SplitList,
    VideoEntry,
    parse_csv,
    parse_hmdb51,
    parse_kinetics,
    parse_ucf101,
    read_class_list,
    read_split_lists,
)
from repflow_tf.data.synthetic import class_names, make_synthetic_dataset, render_clip
from repflow_tf.data.video import VideoDecodeError, iter_frames, read_video, write_video

__all__ = [
    "DEFAULT_FLOW_BOUND",
    "FILENAME_KEY",
    "FLOW_X_KEY",
    "FLOW_Y_KEY",
    "OPTICAL_FLOW_METHODS",
    "TVL1",
    "FORMATS",
    "FRAME_RANGE",
    "IMAGE_KEY",
    "LABEL_INDEX_KEY",
    "LABEL_TEXT_KEY",
    "ConvertOptions",
    "DataError",
    "ListFormatError",
    "Manifest",
    "Rejection",
    "ShardInfo",
    "SplitList",
    "VideoDecodeError",
    "VideoEntry",
    "class_names",
    "convert_dataset",
    "convert_split",
    "dequantize_flow",
    "quantize_flow",
    "encode_frame",
    "encode_video",
    "jpeg_round_trip",
    "iter_frames",
    "list_shards",
    "centre_window",
    "clip_indices",
    "crop_flow",
    "flow_indices",
    "evaluation_starts",
    "load_manifest",
    "make_sequence_example",
    "make_synthetic_dataset",
    "parse_csv",
    "parse_hmdb51",
    "parse_kinetics",
    "parse_sequence_example",
    "parse_ucf101",
    "read_class_list",
    "read_split_lists",
    "read_video",
    "render_clip",
    "report_rejections",
    "shard_name",
    "video_dataset",
    "write_video",
]
