"""tf.data input pipeline: converted shards -> (clip, label) pairs for training and evaluation.

Shards are read in parallel (interleave), each record is parsed and checked, the clip's frame
indices are drawn first and only those JPEGs are decoded, directly into the crop window
(`decode_and_crop_jpeg`). Training shuffles after sampling, when an element is only the clip's
`num_frames` JPEGs, so a large shuffle buffer stays cheap.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from repflow_tf.data import optical_flow as optical_flow_lib
from repflow_tf.data.manifest import load_manifest
from repflow_tf.data.schema import (
    MANIFEST_NAME,
    SHARD_SUFFIX,
    DataError,
    parse_sequence_example,
)
from repflow_tf.options import INPUTS

# Frames come out as float32 RGB in [0, 255] (not rescaled): the flow layer normalises each
# channel itself and the models rescale their RGB input.
FRAME_RANGE = (0.0, 255.0)

_UNKNOWN = -1


def list_shards(source: str | Sequence[str]) -> list[tuple[str, int]]:
    """The shard files of `source` with their expected record counts (-1: no manifest).

    `source` is a converted split directory (its manifest.json lists the shards), a directory of
    `*.tfrecord` files, a file pattern, or a list of these. Shards named in a manifest must exist
    with the size the manifest records; otherwise a `DataError` names the file.

    >>> list_shards("/no/such/dir/*.tfrecord")
    Traceback (most recent call last):
    ...
    repflow_tf.data.schema.DataError: /no/such/dir/*.tfrecord: no files match
    """
    sources = [source] if isinstance(source, str) else list(source)
    manifests: dict[str, dict[str, Any]] = {}
    shards = []
    for pattern in sources:
        if tf.io.gfile.isdir(pattern):
            if tf.io.gfile.exists(os.path.join(pattern, MANIFEST_NAME)):
                files = [os.path.join(pattern, name) for name in _manifest_of(pattern, manifests)]
            else:
                files = sorted(tf.io.gfile.glob(os.path.join(pattern, "*" + SHARD_SUFFIX)))
        else:
            files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise DataError(f"{pattern}: no files match")
        for path in files:
            info = _manifest_of(os.path.dirname(path), manifests).get(os.path.basename(path))
            if info is None:
                shards.append((path, _UNKNOWN))
                continue
            if not tf.io.gfile.exists(path):
                raise DataError(f"{path}: listed in the manifest of its folder but missing")
            size = tf.io.gfile.stat(path).length
            if size != info.num_bytes:
                raise DataError(
                    f"{path}: {size} bytes but its manifest records {info.num_bytes}; the shard "
                    "changed after conversion (re-run bin/convert.py to rewrite it)"
                )
            shards.append((path, info.num_records))
    return shards


def _manifest_of(directory: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{shard file name: ShardInfo} from `directory`'s manifest, {} if it has none."""
    if directory not in cache:
        has_manifest = tf.io.gfile.exists(os.path.join(directory, MANIFEST_NAME))
        shards = load_manifest(directory).shards if has_manifest else ()
        cache[directory] = {shard.file: shard for shard in shards}
    return cache[directory]


def _empty_record(optical_flow: bool) -> dict[str, tf.Tensor]:
    flow = {"flow_x": tf.zeros([0], tf.string), "flow_y": tf.zeros([0], tf.string)}
    return {
        **(flow if optical_flow else {}),
        "frames": tf.zeros([0], tf.string),
        "num_frames": tf.constant(0, tf.int32),
        "label": tf.constant(0, tf.int32),
        "label_text": tf.constant(""),
        "filename": tf.constant(""),
    }


def _parse_checked(record: tf.Tensor, optical_flow: bool) -> dict[str, tf.Tensor]:
    parsed = parse_sequence_example(record, optical_flow)
    checks = [tf.debugging.assert_positive(parsed["num_frames"], message="record without frames")]
    if optical_flow:
        for key in ("flow_x", "flow_y"):
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(parsed[key])[0], parsed["num_frames"] - 1, message="flow count"
                )
            )
    with tf.control_dependencies(checks):
        parsed["frames"] = tf.identity(parsed["frames"])
    return parsed


def _read_shard(path: tf.Tensor, expected: tf.Tensor, optical_flow: bool) -> tf.data.Dataset:
    """The parsed records of one shard; fails with a message naming the shard when a record is
    malformed or the number of records disagrees with the manifest."""
    records = tf.data.TFRecordDataset(path)
    # A record that does not parse is dropped here and detected below as a gap in the record
    # numbers, which is the only place where the error can still name the file and record.
    parsed = records.enumerate().map(lambda i, r: (i, _parse_checked(r, optical_flow)))
    parsed = parsed.ignore_errors()
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), _empty_record(optical_flow)))
    expected_keys = "clip/label/index, clip/label/text, video/filename and image/encoded"
    if optical_flow:
        expected_keys = expected_keys.replace(" and", ",") + (
            " and one optical_flow/x|y/encoded image per frame pair"
        )
    if_unknown = tf.cond(
        expected < 0,
        lambda: records.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1),
        lambda: expected,
    )

    def check(next_index: tf.Tensor, element: tuple[tf.Tensor, Any]) -> tuple[tf.Tensor, Any]:
        index, _ = element
        at_end = index < 0
        in_order = tf.debugging.Assert(
            tf.logical_or(at_end, tf.equal(index, next_index)),
            [
                _message(
                    path,
                    ": record ",
                    next_index,
                    f" is malformed (expected a SequenceExample with {expected_keys})",
                )
            ],
        )
        complete = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(at_end), tf.equal(next_index, if_unknown)),
            [
                _message(
                    path,
                    ": ",
                    next_index,
                    " valid records but ",
                    if_unknown,
                    " expected (from "
                    "the manifest, else the file): a record is malformed or the shard changed "
                    "after conversion",
                )
            ],
        )
        with tf.control_dependencies([in_order, complete]):
            return next_index + 1, (tf.identity(index), element[1])

    checked = parsed.concatenate(end).scan(tf.constant(0, tf.int64), check)
    return checked.filter(lambda index, _: index >= 0).map(lambda _, record: record)


def _message(*parts: str | tf.Tensor) -> tf.Tensor:
    """Joins strings and scalar tensors (without the quotes tf.strings.format adds)."""
    return tf.strings.join(
        [
            p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p)
            for p in parts
        ]
    )


def clip_indices(
    length: tf.Tensor,
    starts: tf.Tensor,
    num_frames: int,
    stride: int,
) -> tf.Tensor:
    """Frame indices (len(starts) * num_frames,) of clips at `starts`, looping short videos.

    >>> clip_indices(5, tf.constant([0, 3]), num_frames=3, stride=2).numpy().tolist()
    [0, 2, 4, 3, 0, 2]
    """
    offsets = tf.range(num_frames, dtype=tf.int32) * stride
    return tf.reshape((starts[:, None] + offsets[None, :]) % length, [-1])


def evaluation_starts(
    length: tf.Tensor, num_frames: int, stride: int, num_clips: int | None
) -> tf.Tensor:
    """First frames of the evaluation clips: the centre clip (`num_clips` None or 1), or
    `num_clips` evenly spaced from the first to the last possible start. Prediction samples
    with this same function (`repflow_tf.export.sample_clips`).

    >>> evaluation_starts(100, num_frames=16, stride=2, num_clips=3).numpy().tolist()
    [0, 34, 69]
    """
    max_start = _last_start(length, num_frames, stride)
    if num_clips is None or num_clips == 1:
        return tf.reshape(max_start // 2, [1])
    spaced = tf.linspace(0.0, tf.cast(max_start, tf.float32), num_clips)
    return tf.cast(tf.round(spaced), tf.int32)


def _last_start(length: tf.Tensor, num_frames: int, stride: int) -> tf.Tensor:
    """The last frame a whole clip can start at (0 for videos shorter than a clip)."""
    return tf.maximum(tf.cast(length, tf.int32) - (num_frames - 1) * stride - 1, 0)


def flow_indices(indices: tf.Tensor, num_frames: int, length: tf.Tensor) -> tf.Tensor:
    """The stored flow fields of clips with frame `indices` (`clip_indices`): the flow from
    each clip frame but the last to the next video frame (a video's last frame has no next
    one and takes the field before), `num_frames - 1` per clip.

    >>> flow_indices(tf.constant([0, 2, 4, 3, 0, 2]), num_frames=3, length=5).numpy().tolist()
    [0, 2, 3, 0]
    """
    pairs = tf.reshape(indices, [-1, num_frames])[:, :-1]
    return tf.reshape(tf.minimum(pairs, tf.cast(length, indices.dtype) - 2), [-1])


def crop_flow(flow: tf.Tensor, window: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Flow fields (N, H, W, 2) in pixels -> the `window` [y, x, h, w] resized to `crop_size`,
    in pixels of the resized crop (displacements scale with the image).

    >>> crop_flow(tf.ones([1, 8, 8, 2]), tf.constant([0, 0, 4, 8]), 16)[0, 0, 0].numpy().tolist()
    [2.0, 4.0]
    """
    top, left, height, width = tf.unstack(window)
    flow = tf.image.resize(flow[:, top : top + height, left : left + width], [crop_size] * 2)
    size = float(crop_size)
    scale = tf.stack([size / tf.cast(width, tf.float32), size / tf.cast(height, tf.float32)])
    return flow * scale


def centre_window(height: tf.Tensor, width: tf.Tensor, crop_size: int) -> tf.Tensor:
    """The evaluation crop [y, x, side, side]: the centre square of `crop_size` (smaller when a
    side is smaller; the crop is then resized up to `crop_size`).

    >>> centre_window(40, 60, 32).numpy().tolist()
    [4, 14, 32, 32]
    """
    side = tf.minimum(crop_size, tf.minimum(height, width))
    return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def _crop_window(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float],
    aspect_ratio_range: tuple[float, float],
) -> tf.Tensor:
    """A random [y, x, h, w] window: area a fraction of the short side's square, jittered aspect."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    short = tf.cast(tf.minimum(height, width), tf.float32)
    area = tf.random.stateless_uniform([], seeds[0], *area_range) * short * short
    log_ratio = tf.random.stateless_uniform(
        [], seeds[1], math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
    )
    ratio = tf.exp(log_ratio)
    crop_h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), 1, height)
    crop_w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), 1, width)
    y = tf.random.stateless_uniform([], seeds[2], 0, height - crop_h + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], seeds[3], 0, width - crop_w + 1, dtype=tf.int32)
    return tf.stack([y, x, crop_h, crop_w])


def video_dataset(
    source: str | Sequence[str],
    *,
    training: bool,
    num_frames: int = 16,
    stride: int = 1,
    crop_size: int = 112,
    num_clips: int | None = None,
    batch_size: int | None = None,
    shuffle_buffer: int = 1024,
    area_range: tuple[float, float] = (0.4, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    seed: int | None = None,
    input_context: tf.distribute.InputContext | None = None,
    cycle_length: int = 8,
    inputs: str = "rgb",
    flow_bound: float | None = None,
) -> tf.data.Dataset:
    """Clips and labels from converted shards.

    Each element is `(frames, label)`: `frames` float32 RGB in `FRAME_RANGE` = [0, 255],
    shape (num_frames, crop_size, crop_size, 3), or (num_clips, num_frames, crop_size, crop_size,
    3) in evaluation with `num_clips`; `label` an int32 class index (order of the manifest's
    `class_names`). With `batch_size`, a leading batch axis is added.

    With `inputs="optical_flow"` or `"rgb+optical_flow"` (splits converted with
    `--optical_flow=tvl1`), the first element is a dict instead: `"optical_flow"` float32
    (num_frames - 1, crop_size, crop_size, 2), the stored flow from each clip frame to the next
    video frame (x, y), dequantised and in pixels of the output crop (scaled with the crop's
    resize; a horizontal flip negates x), and with RGB also `"frames"` as above, both from the
    same crop and flip.

    Training: shards and clips are shuffled; one clip per video at a random temporal offset;
    a random crop covering `area_range` of the short side's square, with aspect ratio in
    `aspect_ratio_range`, resized to `crop_size`; a random horizontal flip (same for all frames);
    incomplete last batch dropped. Evaluation: fixed order; the centre clip, or `num_clips` clips
    evenly spaced from the first to the last possible start (for video-level accuracy, average
    the model's outputs over that axis); a centre `crop_size` crop (resized up if the frames are
    smaller). Clip frames are `stride` frames apart; videos shorter than the clip loop.

    Args:
      source: a split directory written by bin/convert.py, a file pattern, or a list of them.
      training: training (random) or evaluation (deterministic) behaviour, see above.
      num_frames: frames per clip.
      stride: temporal stride between clip frames.
      crop_size: output height and width.
      num_clips: evaluation only: clips per video (None: one centre clip, no clip axis).
      batch_size: batch size of this pipeline (per replica under a distribution strategy, see
        `input_context.get_per_replica_batch_size`); None: unbatched.
      shuffle_buffer: training shuffle buffer, in clips.
      area_range, aspect_ratio_range, flip: training augmentation, see above.
      seed: makes training reproducible (same clips, crops, flips and order per epoch);
        None: non-deterministic, and faster.
      input_context: from `strategy.distribute_datasets_from_function`; each input pipeline
        reads its own subset of the shards (needs at least as many shards as pipelines).
      cycle_length: shards read in parallel.
      inputs: "rgb", "optical_flow" or "rgb+optical_flow", as `ModelConfig.inputs`.
      flow_bound: the stored flow's bound in pixels; None: from the manifests (needed when a
        source has none).

    Raises:
      DataError: (now) no shards, a shard missing or changed since conversion, a broken manifest;
        (while iterating, as tf.errors.InvalidArgumentError) a malformed record or a record count
        that disagrees with the manifest, naming the shard.

    >>> import tempfile
    >>> from repflow_tf.data.synthetic import make_synthetic_dataset
    >>> dirs = make_synthetic_dataset(tempfile.mkdtemp(), num_train=8, num_val=8, log=None)
    >>> ds = video_dataset(dirs["val"], training=False, num_frames=8, crop_size=48, num_clips=2)
    >>> frames, label = next(iter(ds))
    >>> frames.shape, frames.dtype, label.dtype
    (TensorShape([2, 8, 48, 48, 3]), tf.float32, tf.int32)
    """
    _check_arguments(
        num_frames=num_frames,
        stride=stride,
        crop_size=crop_size,
        num_clips=num_clips,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        cycle_length=cycle_length,
    )
    if training and num_clips is not None:
        raise ValueError(
            f"`num_clips` is for evaluation (training=False). Received: num_clips={num_clips}"
        )
    if not (0 < area_range[0] <= area_range[1] <= 1):
        raise ValueError(f"`area_range` must satisfy 0 < low <= high <= 1. Received: {area_range}")
    if not (0 < aspect_ratio_range[0] <= aspect_ratio_range[1]):
        raise ValueError(f"`aspect_ratio_range` must be positive. Received: {aspect_ratio_range}")

    if inputs not in INPUTS:
        raise ValueError(f"`inputs` must be one of {INPUTS}. Received: inputs={inputs!r}")
    optical_flow = inputs != "rgb"
    shards = _pipeline_shards(source, input_context)
    if optical_flow:
        flow_bound = _flow_bound(source, flow_bound)
    deterministic = seed is not None or not training
    records = _records(shards, training, seed, cycle_length, deterministic, optical_flow)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    sampling = _Sampling(
        training,
        num_frames,
        stride,
        crop_size,
        num_clips,
        area_range,
        aspect_ratio_range,
        flip,
        inputs,
        flow_bound,
    )
    clips = tf.data.Dataset.zip((records, seeds)).map(
        sampling.select, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if training:
        clips = clips.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    clips = clips.map(
        sampling.decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if batch_size is not None:
        clips = clips.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = deterministic
    return clips.with_options(options).prefetch(tf.data.AUTOTUNE)


def _pipeline_shards(source, input_context) -> list[tuple[str, int]]:
    """The shards this input pipeline reads: all, or its round-robin share of them."""
    shards = list_shards(source)
    if input_context is None or input_context.num_input_pipelines == 1:
        return shards
    count, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    if len(shards) < count:
        raise DataError(
            f"{source}: {len(shards)} shards cannot be split over {count} input pipelines; "
            "convert with a smaller --videos_per_shard"
        )
    return shards[index::count]


def _flow_bound(source: str | Sequence[str], flow_bound: float | None) -> float:
    """The flow bound of `source`'s manifests (all equal to `flow_bound` when given); a
    `DataError` naming a split converted without optical flow."""
    bounds = set() if flow_bound is None else {float(flow_bound)}
    for pattern in [source] if isinstance(source, str) else list(source):
        directory = pattern if tf.io.gfile.isdir(pattern) else os.path.dirname(pattern)
        if not tf.io.gfile.exists(os.path.join(directory, MANIFEST_NAME)):
            continue
        options = load_manifest(directory).options
        if options.get("optical_flow") is None:
            raise DataError(
                f"{directory}: converted without optical flow, which this model reads "
                "(convert it again with --optical_flow=tvl1)"
            )
        bounds.add(float(options.get("flow_bound", optical_flow_lib.DEFAULT_BOUND)))
    if len(bounds) != 1:
        found = "no manifest records it" if not bounds else f"the sources disagree: {bounds}"
        raise DataError(f"{source}: cannot tell the optical flow's bound ({found}; flow_bound=)")
    return bounds.pop()


def _records(shards, training: bool, seed, cycle_length: int, deterministic: bool, flow: bool):
    """Parsed, checked records of `shards`, read in parallel (shuffled shard order in training)."""
    files = tf.data.Dataset.from_tensor_slices(
        ([path for path, _ in shards], tf.constant([n for _, n in shards], tf.int64))
    )
    if training:
        files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(
        lambda path, expected: _read_shard(path, expected, flow),
        cycle_length=min(cycle_length, len(shards)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


@dataclasses.dataclass(frozen=True)
class _Sampling:
    """How `video_dataset` turns a record into a clip: `select` picks the clip's JPEGs (and flow
    PNGs) before the shuffle, so its buffer holds only those; `decode` decodes them into the
    crop."""

    training: bool
    num_frames: int
    stride: int
    crop_size: int
    num_clips: int | None
    area_range: tuple[float, float]
    aspect_ratio_range: tuple[float, float]
    flip: bool
    inputs: str = "rgb"
    flow_bound: float | None = None

    def select(self, record: dict[str, tf.Tensor], seed_pair: tf.Tensor):
        length = record["num_frames"]
        sample_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed_pair, 2))
        if self.training:
            max_start = _last_start(length, self.num_frames, self.stride)
            starts = tf.random.stateless_uniform([1], sample_seed, 0, max_start + 1, dtype=tf.int32)
        else:
            starts = evaluation_starts(length, self.num_frames, self.stride, self.num_clips)
        indices = clip_indices(length, starts, self.num_frames, self.stride)
        encoded = {}
        if self.inputs != "optical_flow":
            encoded["frames"] = tf.gather(record["frames"], indices)
        if self.inputs != "rgb":
            pairs = flow_indices(indices, self.num_frames, length)
            encoded["flow_x"] = tf.gather(record["flow_x"], pairs)
            encoded["flow_y"] = tf.gather(record["flow_y"], pairs)
        return encoded, record["label"], crop_seed

    def decode(self, encoded: dict[str, tf.Tensor], label: tf.Tensor, crop_seed: tf.Tensor):
        flow_levels = None
        if "frames" in encoded:
            shape = tf.io.extract_jpeg_shape(encoded["frames"][0])
        else:
            flow_levels = self._decode_flow_levels(encoded)
            shape = tf.shape(flow_levels)[1:3]
        height, width = shape[0], shape[1]
        if self.training:
            window = _crop_window(
                height, width, crop_seed, self.area_range, self.aspect_ratio_range
            )
        else:
            window = centre_window(height, width, self.crop_size)
        mirrored = tf.constant(False)
        if self.training and self.flip:
            flip_seed = tf.random.experimental.stateless_fold_in(crop_seed, 1)
            mirrored = tf.random.stateless_uniform([], flip_seed) < 0.5
        clip_axis = [] if self.num_clips is None else [self.num_clips]
        outputs = {}
        if "frames" in encoded:
            frames = self._decode_frames(encoded["frames"], window, mirrored)
            outputs["frames"] = tf.reshape(frames, [*clip_axis, self.num_frames, *frames.shape[1:]])
        if self.inputs == "rgb":
            return outputs["frames"], label
        if flow_levels is None:
            flow_levels = self._decode_flow_levels(encoded)
        flow = self._flow_pixels(flow_levels, window, mirrored)
        outputs["optical_flow"] = tf.reshape(
            flow, [*clip_axis, self.num_frames - 1, *flow.shape[1:]]
        )
        return outputs, label

    def _decode_frames(self, jpegs: tf.Tensor, window: tf.Tensor, mirrored: tf.Tensor):
        frames = tf.map_fn(
            lambda jpeg: tf.image.decode_and_crop_jpeg(jpeg, window, channels=3),
            jpegs,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        )
        frames = tf.image.resize(frames, [self.crop_size, self.crop_size])
        frames = tf.cond(mirrored, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
        return tf.ensure_shape(
            tf.clip_by_value(frames, *FRAME_RANGE), [None, self.crop_size, self.crop_size, 3]
        )

    def _decode_flow_levels(self, encoded: dict[str, tf.Tensor]) -> tf.Tensor:
        """(pairs, H, W, 2) uint8: the x and y PNGs of each pair, stacked."""

        def decode(pngs: tf.Tensor) -> tf.Tensor:
            return tf.map_fn(
                lambda png: tf.io.decode_png(png, channels=1),
                pngs,
                fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
            )

        return tf.concat([decode(encoded["flow_x"]), decode(encoded["flow_y"])], axis=-1)

    def _flow_pixels(self, levels: tf.Tensor, window: tf.Tensor, mirrored: tf.Tensor):
        """Quantised flow -> float32 pixels of the output crop, cropped, resized and flipped
        like the frames."""
        scale = self.flow_bound / optical_flow_lib.LEVELS
        flow = (tf.cast(levels, tf.float32) - optical_flow_lib.ZERO_LEVEL) * scale
        flow = crop_flow(flow, window, self.crop_size)
        flow = tf.cond(
            mirrored, lambda: tf.reverse(flow, axis=[2]) * tf.constant([-1.0, 1.0]), lambda: flow
        )
        return tf.ensure_shape(flow, [None, self.crop_size, self.crop_size, 2])


def _check_arguments(**values: int | None) -> None:
    optional = ("num_clips", "batch_size")
    for name, value in values.items():
        if value is None and name in optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
