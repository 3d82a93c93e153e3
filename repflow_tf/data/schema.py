"""The on-disk format: SequenceExample keys, shard names and the errors the data package raises.

One tf.train.SequenceExample per video, the layout TF Model Garden, DMVR and Scenic read:

- context `clip/label/index` (int64), `clip/label/text` (bytes), `video/filename` (bytes);
- feature list `image/encoded`: one JPEG per frame;
- optionally (`repflow-convert --optical_flow=tvl1`, for the two-stream baselines) feature lists
  `optical_flow/x/encoded` and `optical_flow/y/encoded`: one one-channel 8-bit PNG per pair of
  consecutive frames (T - 1 of each), quantised by `repflow_tf.data.optical_flow.quantize_flow`
  with the bound the manifest records (`options.flow_bound`).

Shards are named `<split>-00000-of-00004.tfrecord`; a `manifest.json` next to them records the
class names, counts and the number of records per shard (see `repflow_tf.data.manifest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
IMAGE_KEY = "image/encoded"
FLOW_X_KEY = "optical_flow/x/encoded"
FLOW_Y_KEY = "optical_flow/y/encoded"

SHARD_SUFFIX = ".tfrecord"
MANIFEST_NAME = "manifest.json"


class DataError(ValueError):
    """Bad input data (list file, video, shard or manifest); the message names the file."""


def shard_name(split: str, index: int, num_shards: int) -> str:
    """File name of shard `index` of `num_shards` for `split`.

    >>> shard_name("train", 3, 12)
    'train-00003-of-00012.tfrecord'
    """
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_glob(split: str) -> str:
    """Glob matching every shard of `split`, whatever the shard count.

    >>> shard_glob("val")
    'val-?????-of-?????.tfrecord'
    """
    return f"{split}-?????-of-?????{SHARD_SUFFIX}"


def make_sequence_example(
    encoded_frames: Sequence[bytes],
    label_index: int,
    label_text: str,
    filename: str,
    encoded_flow: tuple[Sequence[bytes], Sequence[bytes]] | None = None,
) -> bytes:
    """Serialises one video (already JPEG-encoded frames) as a SequenceExample; with
    `encoded_flow`, also its optical flow as (x PNGs, y PNGs), one of each per frame pair.

    >>> record = make_sequence_example([b"jpeg0", b"jpeg1"], 2, "wave", "a/wave_01.avi")
    >>> int(parse_sequence_example(record)["num_frames"])
    2
    """

    import tensorflow as tf  # here, so that the names above load without TensorFlow

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    context = tf.train.Features(
        feature={
            LABEL_INDEX_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label_index])),
            LABEL_TEXT_KEY: _bytes(label_text.encode("utf-8")),
            FILENAME_KEY: _bytes(filename.encode("utf-8")),
        }
    )

    def _list(images: Sequence[bytes]) -> tf.train.FeatureList:
        return tf.train.FeatureList(feature=[_bytes(image) for image in images])

    lists = {IMAGE_KEY: _list(encoded_frames)}
    if encoded_flow is not None:
        flow_x, flow_y = encoded_flow
        if not len(flow_x) == len(flow_y) == len(encoded_frames) - 1:
            raise ValueError(
                f"Need one x and one y flow image per frame pair ({len(encoded_frames) - 1}). "
                f"Received: {len(flow_x)} x and {len(flow_y)} y images"
            )
        lists.update({FLOW_X_KEY: _list(flow_x), FLOW_Y_KEY: _list(flow_y)})
    example = tf.train.SequenceExample(
        context=context, feature_lists=tf.train.FeatureLists(feature_list=lists)
    )
    # Deterministic: protobuf map order otherwise varies by process, and so would the shards.
    return example.SerializeToString(deterministic=True)


def parse_sequence_example(record: tf.Tensor, optical_flow: bool = False) -> dict[str, tf.Tensor]:
    """Parses one serialised record (graph-friendly) into frames, label and names.

    Returns a dict with `frames` (1-D string tensor of JPEGs), `num_frames` (int32), `label`
    (int32), `label_text` and `filename`; with `optical_flow`, also `flow_x` and `flow_y`
    (1-D string tensors of PNGs). Fails on a record lacking any of the keys.

    >>> parsed = parse_sequence_example(make_sequence_example([b"x"], 0, "a", "v.mp4"))
    >>> int(parsed["label"]), parsed["filename"].numpy()
    (0, b'v.mp4')
    """
    import tensorflow as tf

    context, sequence = tf.io.parse_single_sequence_example(
        record,
        context_features={
            LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
            LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
            FILENAME_KEY: tf.io.FixedLenFeature([], tf.string),
        },
        sequence_features={
            key: tf.io.FixedLenSequenceFeature([], tf.string)
            for key in ((IMAGE_KEY, FLOW_X_KEY, FLOW_Y_KEY) if optical_flow else (IMAGE_KEY,))
        },
    )
    frames = sequence[IMAGE_KEY]
    flow = {"flow_x": sequence[FLOW_X_KEY], "flow_y": sequence[FLOW_Y_KEY]} if optical_flow else {}
    return {
        **flow,
        "frames": frames,
        "num_frames": tf.shape(frames, out_type=tf.int32)[0],
        "label": tf.cast(context[LABEL_INDEX_KEY], tf.int32),
        "label_text": context[LABEL_TEXT_KEY],
        "filename": context[FILENAME_KEY],
    }
