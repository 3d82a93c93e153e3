"""Video files -> sharded TFRecords of JPEG frames, in parallel, resumable, with a manifest.

Each split is shuffled once (seeded) and cut into shards of `videos_per_shard` videos, so each shard
mixes classes. A worker process writes one shard at a time to `<shard>.tmp`, records what it
accepted and rejected in `.convert/<shard>.json`, and only then renames the shard into place: a
shard file that exists is complete. A re-run (after a kill, say) keeps every shard whose record
says it was written from the same videos with the same options, and redoes only the rest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import queue as queue_lib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

import numpy as np
import tensorflow as tf
import tqdm

from repflow_tf.data import optical_flow as optical_flow_lib
from repflow_tf.data.manifest import (
    FORMAT,
    Manifest,
    Rejection,
    ShardInfo,
    write_manifest,
)
from repflow_tf.data.schema import make_sequence_example, shard_glob, shard_name
from repflow_tf.data.splits import SplitList, VideoEntry
from repflow_tf.data.video import VideoDecodeError, iter_frames
from repflow_tf.fileio import commit_file, is_local, write_json_atomic
from repflow_tf.startup import exit_with_parent, quiet_process_pool

_STATE_DIR = ".convert"


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """How videos become records.

    Attributes:
      short_side: resize so the shorter side has this many pixels (None: keep the size).
      fps: resample to this frame rate (None: keep every frame).
      jpeg_quality: JPEG quality of the stored frames, 1..100.
      min_frames: videos with fewer (resampled) frames are rejected; the clip length you train
        with is a good value (the reader loops shorter videos, so 1 keeps everything).
      videos_per_shard: target shard size in videos (about 100-200 MB of JPEGs per shard is good
        for tf.data; at short side 128 a 10 s video takes about 1.5 MB).
      optical_flow: None, or "tvl1": also store TV-L1 optical flow per pair of consecutive
        frames for the two-stream baselines (`repflow_tf.data.optical_flow`; needs OpenCV).
      flow_bound: the stored flow is clipped to +-flow_bound pixels (recorded in the manifest).

    >>> ConvertOptions(short_side=256, fps=25.0).jpeg_quality
    90
    """

    short_side: int | None = 128
    fps: float | None = None
    jpeg_quality: int = 90
    min_frames: int = 16
    videos_per_shard: int = 100
    optical_flow: str | None = None
    flow_bound: float = optical_flow_lib.DEFAULT_BOUND

    def __post_init__(self):
        checks = {
            "optical_flow": self.optical_flow is None
            or self.optical_flow in optical_flow_lib.METHODS,
            "flow_bound": self.flow_bound > 0,
            "short_side": self.short_side is None or self.short_side >= 1,
            "fps": self.fps is None or self.fps > 0,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "min_frames": self.min_frames >= 1,
            "videos_per_shard": self.videos_per_shard >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"Invalid `{name}` for ConvertOptions. Received: {name}={value}")

    def record(self) -> dict[str, Any]:
        """The options as the manifest and the resume digests record them (the optical flow
        fields only when flow is stored, so RGB conversions keep their old records)."""
        values = dataclasses.asdict(self)
        if self.optical_flow is None:
            del values["optical_flow"], values["flow_bound"]
        return values


@dataclasses.dataclass(frozen=True)
class _ShardJob:
    directory: str
    file: str
    entries: tuple[VideoEntry, ...]
    class_names: tuple[str, ...]
    options: ConvertOptions
    digest: str

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.file)

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, _STATE_DIR, self.file + ".json")

    @property
    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


def encode_frame(frame: np.ndarray, quality: int) -> bytes:
    """One (H, W, 3) uint8 frame as the JPEG bytes a shard stores."""
    return tf.io.encode_jpeg(frame, quality=quality).numpy()


def jpeg_round_trip(frames: np.ndarray, quality: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames as the training reader sees them after conversion at
    `quality`: encoded (`encode_frame`) and decoded again. Prediction applies it so that served
    pixels match the training pixels.

    >>> frames = np.full((2, 8, 8, 3), 100, np.uint8)
    >>> jpeg_round_trip(frames, 90).shape
    (2, 8, 8, 3)
    """
    return np.stack(
        [tf.io.decode_jpeg(encode_frame(frame, quality), channels=3).numpy() for frame in frames]
    )


def encode_flow_image(levels: np.ndarray) -> bytes:
    """One (H, W) uint8 quantised flow component as the PNG bytes a shard stores."""
    return tf.io.encode_png(levels[:, :, None]).numpy()


@functools.cache
def _tvl1() -> optical_flow_lib.TVL1:
    return optical_flow_lib.TVL1()


def encode_optical_flow(frames: np.ndarray, bound: float) -> tuple[list[bytes], list[bytes]]:
    """TV-L1 flow of (T, H, W, 3) uint8 frames as (x PNGs, y PNGs), T - 1 of each."""
    levels = optical_flow_lib.quantize_flow(_tvl1()(frames), bound)
    return (
        [encode_flow_image(field[:, :, 0]) for field in levels],
        [encode_flow_image(field[:, :, 1]) for field in levels],
    )


@contextlib.contextmanager
def _local_video(path: str) -> Iterator[str]:
    """`path` itself, or for a video on another filesystem (`gs://...`, what Beam workers on a
    cluster read) a local copy of it in a temporary directory that is removed after."""
    if is_local(path):
        yield path
        return
    if not tf.io.gfile.exists(path):
        raise VideoDecodeError(path, "missing file")
    with tempfile.TemporaryDirectory(prefix="repflow_video_") as directory:
        local = os.path.join(directory, os.path.basename(path))
        tf.io.gfile.copy(path, local)
        yield local


def encode_video(entry: VideoEntry, label_index: int, options: ConvertOptions) -> tuple[bytes, int]:
    """Decodes, resizes and JPEG-encodes one video into a serialised SequenceExample (with its
    TV-L1 optical flow when `options.optical_flow`).

    Returns (record, number of frames); raises `VideoDecodeError` when the video is unusable
    (including when it is shorter than `options.min_frames`).

    >>> from repflow_tf.data.video import write_video
    >>> import numpy as np, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.mp4")
    >>> write_video(path, np.zeros((20, 48, 64, 3), np.uint8))
    >>> record, n = encode_video(VideoEntry(path, "up"), 3, ConvertOptions(short_side=32))
    >>> n
    20
    """
    with _local_video(entry.path) as path:
        frames = list(iter_frames(path, short_side=options.short_side, fps=options.fps))
    if len(frames) < options.min_frames:
        raise VideoDecodeError(
            entry.path, f"too short: {len(frames)} frames < min_frames={options.min_frames}"
        )
    flow = None
    if options.optical_flow is not None:
        if len(frames) < 2:
            raise VideoDecodeError(entry.path, "too short for optical flow: 1 frame")
        flow = encode_optical_flow(np.stack(frames), options.flow_bound)
    encoded = [encode_frame(frame, options.jpeg_quality) for frame in frames]
    name = os.path.basename(entry.path)
    return make_sequence_example(encoded, label_index, entry.label, name, flow), len(encoded)


def _convert_entry(
    entry: VideoEntry, label_index: int | None, num_classes: int, options: ConvertOptions
) -> tuple[bytes | None, dict[str, Any]]:
    """One listed video as (record, its manifest entry), or (None, its rejection with the
    reason) when it is unusable; `label_index` None: its label is not in the class list."""
    reason = None
    try:
        if label_index is None:
            raise VideoDecodeError(
                entry.path, f"label {entry.label!r} not in the class list ({num_classes} classes)"
            )
        record, num_frames = encode_video(entry, label_index, options)
    except VideoDecodeError as error:
        reason = error.reason
    except Exception as error:
        # One odd file (an FFmpeg corner case, an exotic pixel format) must not stop a
        # conversion of thousands; it is recorded as rejected with the error instead.
        reason = f"unexpected error ({type(error).__name__}: {error})"
    if reason is not None:
        return None, {"path": entry.path, "label": entry.label, "reason": reason}
    return record, {"path": entry.path, "label": entry.label, "frames": num_frames}


def _write_shard_records(
    job: _ShardJob, outcomes: Iterable[tuple[bytes | None, dict[str, Any]]], temporary: str
) -> dict[str, Any]:
    """Writes the records of `outcomes` (`_convert_entry`'s, in the shard's order) to
    `temporary`, then the state record, then renames the shard into place; returns the state."""
    accepted, rejected = [], []
    with tf.io.TFRecordWriter(temporary) as writer:
        for record, video in outcomes:
            if record is None:
                rejected.append(video)
            else:
                writer.write(record)
                accepted.append(video)
    state = {
        "digest": job.digest,
        "file": job.file,
        "num_records": len(accepted),
        "num_bytes": tf.io.gfile.stat(temporary).length,
        "accepted": accepted,
        "rejected": rejected,
    }
    # State first, shard last: an existing shard file always has its state record.
    write_json_atomic(job.state_path, state)
    commit_file(temporary, job.path)
    return state


def _write_shard(job: _ShardJob, tick: Callable[[bool], None]) -> dict[str, Any]:
    """Writes one shard and its state record; returns the record. `tick(rejected)` per video."""

    label_index = job.label_index  # a property that builds the dict: once per shard

    def outcomes() -> Iterator[tuple[bytes | None, dict[str, Any]]]:
        for entry in job.entries:
            outcome = _convert_entry(
                entry, label_index.get(entry.label), len(job.class_names), job.options
            )
            yield outcome
            tick(outcome[0] is None)

    return _write_shard_records(job, outcomes(), job.path + ".tmp")


_progress_queue = None


def _init_worker(progress_queue: multiprocessing.Queue, parent_pid: int) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    exit_with_parent(parent_pid)


def _write_shard_in_worker(job: _ShardJob) -> dict[str, Any]:
    return _write_shard(job, _progress_queue.put)


def _finished_state(job: _ShardJob) -> dict[str, Any] | None:
    """The state record of an already complete, up-to-date shard, else None."""
    if not (tf.io.gfile.exists(job.path) and tf.io.gfile.exists(job.state_path)):
        return None
    try:
        with tf.io.gfile.GFile(job.state_path) as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if state.get("digest") != job.digest:
        return None
    if tf.io.gfile.stat(job.path).length != state.get("num_bytes"):
        return None
    return state


class _Progress:
    """A tqdm bar over the videos on `stream` (None: silent), with the rejected count; on a file
    or pipe it refreshes at most every 10 s."""

    def __init__(self, total: int, label: str, stream: TextIO | None):
        self.rejected = 0
        tty = stream is not None and stream.isatty()
        self._bar = tqdm.tqdm(
            total=total,
            desc=label.rstrip(":"),
            ascii=not tty,
            unit="video",
            file=stream,
            disable=stream is None or total == 0,
            mininterval=0.2 if tty else 10.0,
            dynamic_ncols=tty,
        )

    def update(self, rejected: bool) -> None:
        self.rejected += int(rejected)
        if rejected:
            self._bar.set_postfix(rejected=self.rejected, refresh=False)
        self._bar.update()

    def close(self) -> None:
        self._bar.close()


def _digest(entries: tuple[VideoEntry, ...], class_names, options: ConvertOptions) -> str:
    content = [FORMAT, [list(e) for e in entries], list(class_names), options.record()]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def convert_split(
    split_list: SplitList,
    output_dir: str,
    split: str,
    options: ConvertOptions | None = None,
    *,
    num_workers: int | None = None,
    seed: int = 0,
    log: TextIO | None = sys.stderr,
) -> Manifest:
    """Converts the videos of one split into `<output_dir>/<split>/` shards plus manifest.json.

    Unusable videos (missing, unreadable, no frames, label not in the class list, too short) are
    rejected with their reason in the manifest and the conversion goes on; the caller decides
    whether rejections are fatal (`bin/convert.py` exits non-zero unless `--allow_rejects`).
    Re-running resumes: shards already written from the same videos and options are kept.

    Args:
      split_list: the videos and class names, from one of the parsers in `repflow_tf.data.splits`.
      output_dir: root folder; the split goes to `<output_dir>/<split>/`.
      split: split name, used for the folder and the shard names.
      options: see `ConvertOptions`.
      num_workers: worker processes (spawned, each with its own TensorFlow); default: CPU count.
        0 or 1 converts in this process.
      seed: seed of the shuffle that spreads videos (and classes) over the shards.
      log: where the progress bar and the summary line go (None: silent).

    Returns:
      The `Manifest` written to `<output_dir>/<split>/manifest.json`.

    >>> import tempfile
    >>> from repflow_tf.data.splits import VideoEntry, SplitList
    >>> split_list = SplitList((VideoEntry("/missing.mp4", "a"),), ("a",))
    >>> manifest = convert_split(split_list, tempfile.mkdtemp(), "val", log=None)
    >>> manifest.num_listed, manifest.num_accepted, manifest.rejected[0].reason
    (1, 0, 'missing file')
    """
    start = time.monotonic()
    options = options or ConvertOptions()
    directory, jobs, states = _plan_split(split_list, output_dir, split, options, seed)
    todo = [job for job in jobs if states[job.file] is None]
    states.update(_convert_shards(todo, num_workers, f"{split}:", log))
    reused = len(jobs) - len(todo)
    return _finish_split(split_list, directory, jobs, states, options, seed, (start, reused), log)


def _plan_split(
    split_list: SplitList, output_dir: str, split: str, options: ConvertOptions, seed: int
) -> tuple[str, list[_ShardJob], dict[str, dict[str, Any] | None]]:
    """Checks the split, assigns its videos to shards and clears stale files; returns (split
    directory, shard jobs, state records by shard file: None for the shards still to write)."""
    if options.optical_flow is not None:
        optical_flow_lib.require_opencv()  # one clear line now, not a rejection per video
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"`split` must be a plain name like 'train'. Received: split={split!r}")
    if len(set(split_list.class_names)) != len(split_list.class_names):
        raise ValueError(f"Class names must be unique. Received: {split_list.class_names}")
    directory = os.path.join(output_dir, split)
    tf.io.gfile.makedirs(os.path.join(directory, _STATE_DIR))
    jobs = _shard_jobs(split_list, directory, split, options, seed)
    _remove_stale_files(directory, split, keep={job.file for job in jobs})
    return directory, jobs, {job.file: _finished_state(job) for job in jobs}


def _finish_split(
    split_list: SplitList,
    directory: str,
    jobs: list[_ShardJob],
    states: Mapping[str, dict[str, Any]],
    options: ConvertOptions,
    seed: int,
    timing: tuple[float, int],
    log: TextIO | None,
) -> Manifest:
    """Writes the split's manifest from every shard's state record, and the summary line;
    `timing` is (the conversion's start on `time.monotonic`, shards reused)."""
    split = os.path.basename(directory)
    manifest = _manifest(split, split_list, jobs, states, options, seed)
    write_manifest(manifest, directory)
    if log is not None:
        start, reused = timing
        log.write(
            f"{split}: {manifest.num_accepted} accepted, {manifest.num_rejected} rejected of "
            f"{manifest.num_listed} listed -> {len(jobs)} shards in {directory} "
            f"({reused} reused, {time.monotonic() - start:.1f} s)\n"
        )
    return manifest


def _shard_jobs(split_list, directory: str, split: str, options, seed: int) -> list[_ShardJob]:
    """The split's videos, shuffled with `seed`, cut into shards of `videos_per_shard`."""
    entries = list(split_list.entries)
    random.Random(seed).shuffle(entries)
    size = options.videos_per_shard
    num_shards = max(1, math.ceil(len(entries) / size))
    jobs = []
    for index in range(num_shards):
        chunk = tuple(entries[index * size : (index + 1) * size])
        jobs.append(
            _ShardJob(
                directory=directory,
                file=shard_name(split, index, num_shards),
                entries=chunk,
                class_names=tuple(split_list.class_names),
                options=options,
                digest=_digest(chunk, split_list.class_names, options),
            )
        )
    return jobs


def _convert_shards(todo, num_workers: int | None, label: str, log) -> dict[str, dict]:
    """Writes the shards of `todo` (in this process, or in worker processes) with a progress
    bar; returns their state records by shard file."""
    progress = _Progress(sum(len(job.entries) for job in todo), label, log)
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    num_workers = min(num_workers, len(todo))
    if num_workers <= 1:
        states = {job.file: _write_shard(job, progress.update) for job in todo}
    else:
        states = _run_workers(todo, num_workers, progress)
    progress.close()
    return states


def _run_workers(
    jobs: list[_ShardJob], num_workers: int, progress: _Progress
) -> dict[str, dict[str, Any]]:
    ticks = multiprocessing.get_context("spawn").Queue()  # the pool's context (quiet_process_pool)
    states = {}

    def drain() -> None:
        while True:
            try:
                progress.update(ticks.get_nowait())
            except queue_lib.Empty:
                return

    # The workers import TensorFlow without its start-up noise.
    with quiet_process_pool(num_workers, __name__, "_init_worker", ticks, os.getpid()) as pool:
        futures = {pool.submit(_write_shard_in_worker, job): job for job in jobs}
        pending = set(futures)
        try:
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.25)
                drain()
                for future in done:
                    states[futures[future].file] = future.result()
        except concurrent.futures.process.BrokenProcessPool:
            raise RuntimeError(
                "A conversion worker died (crash or out of memory); finished shards are kept, "
                "re-run the same command to resume."
            ) from None
        finally:
            for future in pending:
                future.cancel()
    drain()
    return states


def _remove_stale_files(directory: str, split: str, keep: set[str]) -> None:
    """Deletes leftover temporary files and shards of an older plan for this split."""
    for path in tf.io.gfile.glob(os.path.join(directory, shard_glob(split) + "*")):
        if os.path.basename(path) not in keep:
            tf.io.gfile.remove(path)
            state = os.path.join(directory, _STATE_DIR, os.path.basename(path) + ".json")
            if tf.io.gfile.exists(state):
                tf.io.gfile.remove(state)


def _manifest(
    split: str,
    split_list: SplitList,
    jobs: list[_ShardJob],
    states: Mapping[str, dict[str, Any]],
    options: ConvertOptions,
    seed: int,
) -> Manifest:
    counts = dict.fromkeys(split_list.class_names, 0)
    shards, rejected = [], []
    for job in jobs:
        state = states[job.file]
        shards.append(ShardInfo(job.file, state["num_records"], state["num_bytes"]))
        for video in state["accepted"]:
            counts[video["label"]] += 1
        rejected.extend(Rejection(r["path"], r["label"], r["reason"]) for r in state["rejected"])
    manifest = Manifest(
        split=split,
        class_names=tuple(split_list.class_names),
        shards=tuple(shards),
        counts_per_class=counts,
        rejected=tuple(rejected),
        num_listed=len(split_list.entries),
        options={**options.record(), "seed": seed},
    )
    # Every listed video is either in a shard or in `rejected`; anything else is a bug here.
    assert manifest.num_accepted + manifest.num_rejected == manifest.num_listed
    return manifest


def convert_dataset(
    split_lists: Mapping[str, SplitList],
    output_dir: str,
    options: ConvertOptions | None = None,
    *,
    num_workers: int | None = None,
    seed: int = 0,
    log: TextIO | None = sys.stderr,
) -> dict[str, Manifest]:
    """`convert_split` for every split of `split_lists` (e.g. from `read_split_lists`).

    >>> import tempfile
    >>> from repflow_tf.data.splits import SplitList
    >>> manifests = convert_dataset({"train": SplitList((), ("a",))}, tempfile.mkdtemp(), log=None)
    >>> manifests["train"].num_listed
    0
    """
    return {
        split: convert_split(
            split_list, output_dir, split, options, num_workers=num_workers, seed=seed, log=log
        )
        for split, split_list in split_lists.items()
    }


def report_rejections(
    manifests: Mapping[str, Manifest],
    *,
    allow_rejects: bool = False,
    stream: TextIO = sys.stderr,
    limit: int = 5,
) -> int:
    """Lists the first `limit` rejected videos of each split on `stream`; returns the exit
    status for a command line: 1 if any video was rejected (unless `allow_rejects`), else 0.

    >>> import io
    >>> from repflow_tf.data.manifest import Rejection
    >>> m = Manifest("val", ("a",), (), {"a": 0}, (Rejection("x.mp4", "a", "missing file"),), 1)
    >>> out = io.StringIO()
    >>> report_rejections({"val": m}, stream=out), out.getvalue().splitlines()[0]
    (1, '  rejected (val): x.mp4: missing file')
    """
    for split, manifest in manifests.items():
        for rejection in manifest.rejected[:limit]:
            stream.write(f"  rejected ({split}): {rejection.path}: {rejection.reason}\n")
        if manifest.num_rejected > limit:
            stream.write(f"  ... {manifest.num_rejected - limit} more in the {split} manifest\n")
    rejected = sum(manifest.num_rejected for manifest in manifests.values())
    if rejected and not allow_rejects:
        stream.write(
            f"{rejected} videos rejected (listed in each split's manifest.json); "
            "pass --allow_rejects to accept that\n"
        )
        return 1
    return 0
