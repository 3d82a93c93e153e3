"""video_dataset: temporal sampling, crops, flips, determinism, sharding, and error reporting.

The shards are written directly from arrays whose pixels say which video and frame they come
from: green = 20 + 6 * frame index (< 40 frames), blue = 10 + 12 * video index, red = a
horizontal ramp.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from repflow_tf.data import (
    FRAME_RANGE,
    DataError,
    Manifest,
    ShardInfo,
    make_sequence_example,
    shard_name,
    video_dataset,
)
from repflow_tf.data.manifest import write_manifest

CLASSES = ("a", "b", "c")
HEIGHT, WIDTH = 32, 40


def _frames(video, length):
    frames = np.zeros((length, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 0] = np.linspace(0, 255, WIDTH)[None, None, :]
    frames[..., 1] = (20 + 6 * np.arange(length))[:, None, None]
    frames[..., 2] = 10 + 12 * video
    return frames


def _record(video, length):
    encoded = [tf.io.encode_jpeg(f, quality=95).numpy() for f in _frames(video, length)]
    return make_sequence_example(encoded, video % 3, CLASSES[video % 3], f"v{video}.mp4")


def _write_split(directory, lengths, num_shards, manifest=True):
    """Video v goes to shard v % num_shards; returns the split directory."""
    os.makedirs(directory, exist_ok=True)
    shards = []
    for s in range(num_shards):
        name = shard_name("train", s, num_shards)
        videos = range(s, len(lengths), num_shards)
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for v in videos:
                writer.write(_record(v, lengths[v]))
        shards.append(ShardInfo(name, len(videos), os.path.getsize(os.path.join(directory, name))))
    if manifest:
        counts = {c: sum(v % 3 == i for v in range(len(lengths))) for i, c in enumerate(CLASSES)}
        write_manifest(
            Manifest("train", CLASSES, tuple(shards), counts, (), len(lengths)), directory
        )
    return str(directory)


def _decode_clip(clip):
    """(video id, frame indices, ramp slope sign per frame) of one (T, H, W, 3) clip."""
    video = np.round((clip[..., 2].mean() - 10) / 12).astype(int)
    indices = np.round((clip[..., 1].mean(axis=(1, 2)) - 20) / 6).astype(int)
    slope = np.sign(clip[:, :, -1, 0].mean(axis=1) - clip[:, :, 0, 0].mean(axis=1))
    return int(video), indices, slope


LENGTHS = [30, 12, 5, 25, 20, 16]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return _write_split(tmp_path_factory.mktemp("split"), LENGTHS, num_shards=2)


def test_training_clips(split):
    ds = video_dataset(
        split, training=True, num_frames=8, stride=2, crop_size=24, batch_size=4, seed=0
    )
    assert ds.element_spec[0].shape.as_list() == [4, 8, 24, 24, 3]
    seen, slopes = [], []
    for _ in range(3):  # epochs
        for frames, labels in ds:  # 6 videos, batch 4: the incomplete batch is dropped
            assert frames.dtype == tf.float32 and labels.dtype == tf.int32
            assert FRAME_RANGE[0] <= frames.numpy().min() and frames.numpy().max() <= FRAME_RANGE[1]
            for clip, label in zip(frames.numpy(), labels.numpy(), strict=True):
                video, indices, slope = _decode_clip(clip)
                seen.append(video)
                assert label == video % 3
                # Consecutive frames `stride` apart, looping in videos shorter than the clip.
                length = LENGTHS[video]
                np.testing.assert_array_equal(indices, (indices[0] + 2 * np.arange(8)) % length)
                if length >= 15:
                    assert indices[0] + 14 < length  # a long video is not looped
                assert len(set(slope)) == 1  # one flip decision for the whole clip
                slopes.append(slope[0])
    assert len(seen) == 12 and set(seen) <= set(range(6))
    assert set(slopes) == {-1, 1}  # flipped and unflipped clips both occur


def test_seed_makes_training_reproducible(split):
    def run(seed):
        ds = video_dataset(
            split, training=True, num_frames=4, crop_size=16, batch_size=2, seed=seed
        )
        return [x.numpy() for _ in range(2) for x, _ in ds]

    first, again, other = run(7), run(7), run(8)
    assert len(first) == 6
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    # Epochs differ from each other (reshuffled, re-augmented), deterministically.
    assert not np.array_equal(first[0], first[3])


def test_evaluation_clips_evenly_spaced_and_centre_crop(tmp_path):
    directory = _write_split(tmp_path / "eval", [40, 5, 30], num_shards=1)
    ds = video_dataset(directory, training=False, num_frames=8, stride=2, crop_size=24, num_clips=3)
    elements = [(x.numpy(), int(y)) for x, y in ds]
    assert [label for _, label in elements] == [0, 1, 2]  # file order, one element per video
    clips = elements[0][0]
    assert clips.shape == (3, 8, 24, 24, 3)
    # Span 15 of 40 frames: starts 0, 12.5 -> 12, 25 (first to last possible start).
    starts = [_decode_clip(clip)[1][0] for clip in clips]
    assert starts == [0, 12, 25]
    for clip in clips:
        _, indices, slope = _decode_clip(clip)
        np.testing.assert_array_equal(np.diff(indices), 2)
        assert set(slope) == {1}  # never flipped
    # A 5-frame video loops.
    np.testing.assert_array_equal(_decode_clip(elements[1][0][0])[1], [0, 2, 4, 1, 3, 0, 2, 4])
    # Centre crop of 24 from a width of 40: the ramp starts at column 8.
    np.testing.assert_allclose(clips[0, 0, :, 0, 0].mean(), 255 * 8 / 39, atol=4)

    single = video_dataset(directory, training=False, num_frames=8, crop_size=24, batch_size=2)
    frames, labels = next(iter(single))
    assert frames.shape == (2, 8, 24, 24, 3) and labels.numpy().tolist() == [0, 1]
    # One centre clip: 40 frames, span 8 -> start (40 - 8) // 2 = 16.
    np.testing.assert_array_equal(_decode_clip(frames[0].numpy())[1], np.arange(16, 24))
    assert len(list(single)) == 2  # evaluation keeps the incomplete last batch


def test_shards_split_between_input_pipelines(tmp_path):
    directory = _write_split(tmp_path / "four", list(range(10, 18)), num_shards=4)
    videos = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        ds = video_dataset(
            directory, training=False, num_frames=2, crop_size=8, input_context=context
        )
        videos.append({_decode_clip(x.numpy())[0] for x, _ in ds})
    assert videos[0].isdisjoint(videos[1]) and videos[0] | videos[1] == set(range(8))
    many = tf.distribute.InputContext(num_input_pipelines=5, input_pipeline_id=0)
    with pytest.raises(DataError, match="4 shards cannot be split over 5 input pipelines"):
        video_dataset(directory, training=True, input_context=many)


def test_distribute_datasets_from_function(split):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def dataset_fn(context):
        batch = context.get_per_replica_batch_size(4)
        return video_dataset(
            split,
            training=True,
            num_frames=4,
            crop_size=16,
            batch_size=batch,
            input_context=context,
            seed=1,
        )

    frames, labels = next(iter(strategy.distribute_datasets_from_function(dataset_fn)))
    per_replica = strategy.experimental_local_results(frames)
    assert len(per_replica) == 2 and per_replica[0].shape == (2, 4, 16, 16, 3)


def test_construction_errors_name_the_file(tmp_path):
    directory = _write_split(tmp_path / "s", [6, 6, 6], num_shards=3)
    shard = os.path.join(directory, shard_name("train", 1, 3))
    with pytest.raises(DataError, match="no files match"):
        video_dataset(str(tmp_path / "nothing-*.tfrecord"), training=True)

    with open(shard, "ab") as f:
        f.write(b"extra")
    with pytest.raises(DataError, match=f"{shard}: .* bytes but its manifest records"):
        video_dataset(directory, training=True)
    os.remove(shard)
    with pytest.raises(
        DataError, match=f"{shard}: listed in the manifest of its folder but missing"
    ):
        video_dataset(directory, training=True)

    with open(os.path.join(directory, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="manifest.json: not valid JSON"):
        video_dataset(directory, training=True)

    with pytest.raises(ValueError, match="Received: num_frames=0"):
        video_dataset(directory, training=True, num_frames=0)
    with pytest.raises(ValueError, match="`num_clips` is for evaluation"):
        video_dataset(directory, training=True, num_clips=2)


def _first_error(ds):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in ds:
            pass
    return str(info.value)


def test_count_disagreeing_with_manifest_names_the_shard(tmp_path):
    directory = _write_split(tmp_path / "s", [6, 6, 6, 6], num_shards=2)
    manifest_file = os.path.join(directory, "manifest.json")
    with open(manifest_file) as f:
        text = f.read()
    # The manifest claims one more record in shard 0 (and one more listed video).
    text = text.replace('"num_records": 2', '"num_records": 3', 1)
    text = text.replace('"num_listed": 4', '"num_listed": 5')
    with open(manifest_file, "w") as f:
        f.write(text)
    shard = os.path.join(directory, shard_name("train", 0, 2))
    message = _first_error(video_dataset(directory, training=False, num_frames=2, crop_size=8))
    assert f"{shard}: 2 valid records but 3 expected" in message


@pytest.mark.parametrize(
    "records, expected",
    [
        ([_record(0, 4), b"garbage", _record(1, 4)], "record 1 is malformed"),
        ([_record(0, 4), b"garbage"], "1 valid records but 2 expected"),
        ([make_sequence_example([], 0, "a", "empty.mp4"), _record(1, 4)], "record 0 is malformed"),
    ],
    ids=["middle", "last", "no-frames"],
)
def test_malformed_record_names_the_shard(tmp_path, records, expected):
    path = str(tmp_path / "foreign-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    ds = video_dataset(str(tmp_path / "*.tfrecord"), training=False, num_frames=2, crop_size=8)
    assert f"{path}: {expected}" in _first_error(ds)
