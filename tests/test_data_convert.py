"""Conversion: decoding/resizing/resampling, records, rejections, manifest, resume, workers."""

import os
import re

import av
import numpy as np
import pytest
import tensorflow as tf

from repflow_tf.data import (
    ConvertOptions,
    SplitList,
    VideoEntry,
    convert_split,
    iter_frames,
    load_manifest,
    parse_sequence_example,
    read_video,
    report_rejections,
    write_video,
)
from repflow_tf.data.manifest import manifest_path
from repflow_tf.data.video import VideoDecodeError, resized_shape

CLASSES = ("left", "right", "up")


def _ramp_video(num_frames, height=36, width=48):
    """Frame t: grey level 8 t plus a horizontal ramp in the red channel (survives H.264)."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 1] = (8 * np.arange(num_frames) + 20)[:, None, None]
    frames[..., 0] = np.linspace(0, 255, width)[None, None, :]
    return frames


def _zero_frame_avi(path):
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 32, 32
        container.start_encoding()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """7 good videos (3 classes) and one of each kind of bad input."""
    root = tmp_path_factory.mktemp("videos")
    entries = []
    for i in range(7):
        path = str(root / f"good_{i}.mp4")
        write_video(path, _ramp_video(20 + i))
        entries.append(VideoEntry(path, CLASSES[i % 3]))
    corrupt = str(root / "corrupt.mp4")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(0).bytes(2000))
    zero = str(root / "zero.avi")
    _zero_frame_avi(zero)
    short = str(root / "short.mp4")
    write_video(short, _ramp_video(5))
    bad = [
        (VideoEntry(str(root / "missing.mp4"), "left"), "missing file"),
        (VideoEntry(corrupt, "up"), "unreadable container"),
        (VideoEntry(zero, "up"), "zero frames decoded"),
        (VideoEntry(entries[0].path, "down"), "label 'down' not in the class list (3 classes)"),
        (VideoEntry(short, "right"), "too short: 5 frames < min_frames=8"),
    ]
    return entries, bad


OPTIONS = ConvertOptions(short_side=24, min_frames=8, videos_per_shard=4, jpeg_quality=95)


def _records(path):
    return [parse_sequence_example(r) for r in tf.data.TFRecordDataset(path)]


def test_read_video_resizes_and_resamples(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, _ramp_video(20, 36, 48), fps=25)
    assert resized_shape(36, 48, 24) == (24, 32)
    frames = read_video(path, short_side=24)
    assert frames.shape == (20, 24, 32, 3) and frames.dtype == np.uint8
    # Frame identity from the grey level: 25 -> 12.5 fps keeps every other frame (same duration),
    # 25 -> 50 fps shows every frame twice.
    index = lambda clip: np.round((clip[..., 1].mean(axis=(1, 2)) - 20) / 8).astype(int)  # noqa: E731
    np.testing.assert_array_equal(index(frames), np.arange(20))
    np.testing.assert_array_equal(index(read_video(path, fps=12.5)), np.arange(0, 20, 2))
    np.testing.assert_array_equal(index(read_video(path, fps=50)), np.repeat(np.arange(20), 2))


def test_decode_errors_have_reasons(videos):
    _, bad = videos
    for entry, reason in bad[:3]:
        with pytest.raises(VideoDecodeError, match=reason) as info:
            list(iter_frames(entry.path))
        assert str(info.value).startswith(entry.path)
    folder = os.path.dirname(bad[0][0].path)
    with pytest.raises(VideoDecodeError, match=f"^{folder}: is a directory, expected a video"):
        list(iter_frames(folder))


def test_convert_records_rejections_and_manifest(videos, tmp_path):
    good, bad = videos
    listed = SplitList(tuple(good) + tuple(entry for entry, _ in bad), CLASSES)
    manifest = convert_split(listed, str(tmp_path), "train", OPTIONS, num_workers=1, log=None)

    # Nothing lost silently: every listed video is accepted or rejected with its reason.
    assert manifest.num_listed == 12
    assert (manifest.num_accepted, manifest.num_rejected) == (7, 5)
    reasons = {r.path + "|" + r.label: r.reason for r in manifest.rejected}
    for entry, reason in bad:
        assert reason in reasons[entry.path + "|" + entry.label]
    assert manifest.counts_per_class == {"left": 3, "right": 2, "up": 2}
    assert manifest.class_names == CLASSES
    assert [s.file for s in manifest.shards] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    assert load_manifest(str(tmp_path / "train")) == manifest

    by_name = {os.path.basename(e.path): e for e in good}
    seen = []
    for shard in manifest.shards:
        path = tmp_path / "train" / shard.file
        assert os.path.getsize(path) == shard.num_bytes
        records = _records(str(path))
        assert len(records) == shard.num_records
        for record in records:
            name = record["filename"].numpy().decode()
            entry = by_name[name]
            seen.append(name)
            assert record["label_text"].numpy().decode() == entry.label
            assert CLASSES[int(record["label"])] == entry.label
            expected = read_video(entry.path, short_side=24)
            decoded = np.stack([tf.io.decode_jpeg(f).numpy() for f in record["frames"]])
            assert decoded.shape == expected.shape == (int(record["num_frames"]), 24, 32, 3)
            assert np.abs(decoded.astype(float) - expected).mean() < 3
    assert sorted(seen) == sorted(by_name)


def test_resume_keeps_finished_shards(videos, tmp_path):
    good, _ = videos
    listed = SplitList(tuple(good), CLASSES)
    first = convert_split(listed, str(tmp_path), "val", OPTIONS, num_workers=1, log=None)
    directory = tmp_path / "val"
    shards = [directory / s.file for s in first.shards]
    assert len(shards) == 2
    mtimes = [os.stat(p).st_mtime_ns for p in shards]

    # Simulate a kill: the second shard never got renamed into place, a temp file was left.
    os.remove(shards[1])
    with open(str(shards[1]) + ".tmp", "wb") as f:
        f.write(b"half a shard")
    log = _Log()
    second = convert_split(listed, str(tmp_path), "val", OPTIONS, num_workers=1, log=log)
    assert second == first
    assert os.stat(shards[0]).st_mtime_ns == mtimes[0]  # finished shard not rewritten
    assert os.path.exists(shards[1]) and not os.path.exists(str(shards[1]) + ".tmp")
    assert "7 accepted, 0 rejected of 7 listed -> 2 shards" in log.text
    assert "(1 reused" in log.text

    # Changed options invalidate every shard; shards of the old, larger plan are removed.
    third = convert_split(
        listed, str(tmp_path), "val", ConvertOptions(short_side=16, min_frames=8), log=None
    )
    assert [s.file for s in third.shards] == ["val-00000-of-00001.tfrecord"]
    assert sorted(p for p in os.listdir(directory) if p.endswith(".tfrecord")) == [
        "val-00000-of-00001.tfrecord"
    ]
    assert (
        tf.io.decode_jpeg(_records(str(directory / third.shards[0].file))[0]["frames"][0]).shape[0]
        == 16
    )


class _Log:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def isatty(self):
        return False

    def flush(self):
        pass


def test_worker_processes_match_in_process(videos, tmp_path):
    good, bad = videos
    listed = SplitList(tuple(good) + (bad[0][0],), CLASSES)
    log = _Log()
    parallel = convert_split(listed, str(tmp_path / "a"), "train", OPTIONS, num_workers=2, log=log)
    serial = convert_split(listed, str(tmp_path / "b"), "train", OPTIONS, num_workers=1, log=None)
    assert parallel == serial
    assert (parallel.num_accepted, parallel.num_rejected) == (7, 1)
    for shard in parallel.shards:
        # Byte-identical shards, whichever process wrote them (deterministic serialisation).
        a, b = (tmp_path / d / "train" / shard.file for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
        assert len(_records(str(a))) == shard.num_records
    # Per-video progress from the workers, then the summary line.
    assert "8/8" in log.text and "rejected=1" in log.text
    assert (
        log.text.rstrip().splitlines()[-1].startswith("train: 7 accepted, 1 rejected of 8 listed")
    )


def test_report_rejections_sets_the_exit_status(videos, tmp_path):
    good, bad = videos
    listed = SplitList((good[0],) + tuple(entry for entry, _ in bad), CLASSES)
    manifests = {
        "test": convert_split(listed, str(tmp_path), "test", OPTIONS, num_workers=1, log=None)
    }
    log = _Log()
    assert report_rejections(manifests, stream=log, limit=2) == 1
    lines = log.text.splitlines()
    assert len(lines) == 4 and lines[2] == "  ... 3 more in the test manifest"
    assert lines[3].startswith("5 videos rejected") and "--allow_rejects" in lines[3]
    assert report_rejections(manifests, allow_rejects=True, stream=_Log()) == 0
    clean = {
        "test": convert_split(
            listed._replace(entries=(good[0],)),
            str(tmp_path),
            "t2",
            OPTIONS,
            num_workers=1,
            log=None,
        )
    }
    assert report_rejections(clean, stream=log) == 0


def test_invalid_options_and_split():
    with pytest.raises(ValueError, match="Received: jpeg_quality=0"):
        ConvertOptions(jpeg_quality=0)
    with pytest.raises(ValueError, match="Received: split='a/b'"):
        convert_split(SplitList((), ("x",)), "/tmp", "a/b")
    with pytest.raises(ValueError, match="must be unique"):
        convert_split(SplitList((), ("x", "x")), "/tmp", "train")
    assert manifest_path("/no/such/file.json") == "/no/such/file.json"


def _encode(path, num_frames, codec):
    """A video of distinct random frames written with PyAV directly (any codec / container)."""
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            image = np.random.default_rng(i).integers(0, 255, (48, 64, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    "name, codec, reason",
    [
        # AVI declares its frame count in the header: FFmpeg decodes up to the cut and stops.
        ("cut.avi", "mpeg4", r"truncated: \d+ of 40 frames"),
        # Matroska declares a duration only.
        ("cut.mkv", "libx264", r"truncated: \d+ frames, [\d.]+ of 1\.60 s"),
        # MP4 keeps its index at the end: the cut file does not even open.
        ("cut.mp4", "libx264", "unreadable container"),
    ],
)
def test_truncated_videos_are_rejected(tmp_path, name, codec, reason):
    whole = str(tmp_path / f"whole_{name}")
    _encode(whole, 40, codec)
    assert read_video(whole).shape[0] == 40  # the complete file passes the check
    with open(whole, "rb") as f:
        data = f.read()
    cut = str(tmp_path / name)
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match=f"^{re.escape(cut)}: {reason}"):
        read_video(cut)
    listed = SplitList((VideoEntry(whole, "up"), VideoEntry(cut, "up")), ("up",))
    options = ConvertOptions(short_side=24, min_frames=8, videos_per_shard=4)
    manifest = convert_split(
        listed, str(tmp_path / "out"), "train", options, num_workers=1, log=None
    )
    assert manifest.num_accepted == 1 and manifest.num_rejected == 1


_KILLED_CONVERSION = """
import sys
import numpy as np
from repflow_tf.data import write_video
from repflow_tf.data.convert import ConvertOptions, convert_split
from repflow_tf.data.splits import SplitList, VideoEntry

root, out = sys.argv[1], sys.argv[2]
entries = []
for i in range(60):
    path = f"{root}/v{i}.mp4"
    write_video(path, np.random.default_rng(i).integers(0, 255, (24, 48, 64, 3), np.uint8))
    entries.append(VideoEntry(path, "up"))
options = ConvertOptions(short_side=48, min_frames=8, videos_per_shard=1)
convert_split(SplitList(tuple(entries), ("up",)), out, "train", options, num_workers=2, log=None)
"""


def _children(pid):
    """PIDs of the live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the workers")
def test_workers_exit_when_the_converter_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    main = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CONVERSION, str(tmp_path), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # Kill the main process mid-conversion: once the workers have written a shard.
        while not list(out.glob("train/train-*.tfrecord")):
            assert main.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline, "no shard written in 120 s"
            time.sleep(0.2)
        workers = [pid for pid in _children(main.pid) if _alive(pid)]
        assert workers, "no worker processes found"
        main.send_signal(signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in workers if _alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers {left} outlived the killed converter"
    finally:
        if main.poll() is None:
            main.kill()
