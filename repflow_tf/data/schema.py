"""The on-disk format: SequenceExample keys, shard names and the errors the data package raises.

One tf.train.SequenceExample per video, the layout TF Model Garden, DMVR and Scenic read:

- context `clip/label/index` (int64), `clip/label/text` (bytes), `video/filename` (bytes);
- feature list `image/encoded`: one JPEG per frame.

Shards are named `<split>-00000-of-00004.tfrecord`; a `manifest.json` next to them records the
class names, counts and the number of records per shard (see `repflow_tf.data.manifest`).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
IMAGE_KEY = "image/encoded"

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
    encoded_frames: Sequence[bytes], label_index: int, label_text: str, filename: str
) -> bytes:
    """Serialises one video (already JPEG-encoded frames) as a SequenceExample.

    >>> record = make_sequence_example([b"jpeg0", b"jpeg1"], 2, "wave", "a/wave_01.avi")
    >>> int(parse_sequence_example(record)["num_frames"])
    2
    """

    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    context = tf.train.Features(
        feature={
            LABEL_INDEX_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label_index])),
            LABEL_TEXT_KEY: _bytes(label_text.encode("utf-8")),
            FILENAME_KEY: _bytes(filename.encode("utf-8")),
        }
    )
    frames = tf.train.FeatureList(feature=[_bytes(frame) for frame in encoded_frames])
    example = tf.train.SequenceExample(
        context=context, feature_lists=tf.train.FeatureLists(feature_list={IMAGE_KEY: frames})
    )
    # Deterministic: protobuf map order otherwise varies by process, and so would the shards.
    return example.SerializeToString(deterministic=True)


def parse_sequence_example(record: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialised record (graph-friendly) into frames, label and names.

    Returns a dict with `frames` (1-D string tensor of JPEGs), `num_frames` (int32), `label`
    (int32), `label_text` and `filename`. Fails on a record lacking any of the keys.

    >>> parsed = parse_sequence_example(make_sequence_example([b"x"], 0, "a", "v.mp4"))
    >>> int(parsed["label"]), parsed["filename"].numpy()
    (0, b'v.mp4')
    """
    context, sequence = tf.io.parse_single_sequence_example(
        record,
        context_features={
            LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
            LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string),
            FILENAME_KEY: tf.io.FixedLenFeature([], tf.string),
        },
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    frames = sequence[IMAGE_KEY]
    return {
        "frames": frames,
        "num_frames": tf.shape(frames, out_type=tf.int32)[0],
        "label": tf.cast(context[LABEL_INDEX_KEY], tf.int32),
        "label_text": context[LABEL_TEXT_KEY],
        "filename": context[FILENAME_KEY],
    }
