"""Video files through PyAV (its wheel bundles FFmpeg): decoding to uint8 RGB arrays, and encoding
(for the synthetic dataset and tests).

Resizing happens in FFmpeg's swscale (area filter) while decoding, so full-resolution frames never
pile up in memory; frame-rate resampling picks, for every output time, the frame on screen then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from repflow_tf.data.schema import DataError


class VideoDecodeError(DataError):
    """A video that cannot be used; `reason` is the short text recorded in the manifest."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def resized_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) scaled so that the shorter side is `short_side` (None keeps the size).

    >>> resized_shape(272, 640, 128)
    (128, 301)
    """
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def iter_frames(
    path: str, *, short_side: int | None = None, fps: float | None = None
) -> Iterator[np.ndarray]:
    """Yields the frames of a video as (H, W, 3) uint8 RGB arrays.

    Args:
      path: a local video file (anything FFmpeg reads).
      short_side: resize so the shorter side has this many pixels; None keeps the size.
      fps: resample to this frame rate (repeating or dropping frames); None keeps every frame.

    Raises `VideoDecodeError` (reason: missing file, a directory, unreadable container, no
    video stream, decode error, zero frames decoded, truncated: fewer frames than the container
    declares); frames yielded before the error stay yielded.

    >>> try:
    ...     frames = list(iter_frames("/no/such/video.mp4"))
    ... except VideoDecodeError as error:
    ...     print(error.reason)
    missing file
    """
    if fps is not None and fps <= 0:
        raise ValueError(f"`fps` must be positive or None. Received: fps={fps}")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "is a directory, expected a video file")
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "missing file")
    try:
        container = av.open(path)
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise VideoDecodeError(path, f"unreadable container ({error})") from None
    count = 0
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        decoded = [0, 0.0]  # frames decoded (before resampling) and their end time
        frames = _resample(_decode(container, stream, rate, decoded), fps, 1.0 / rate)
        # One reformatter per video keeps its scaling context; frame.to_ndarray(width=...) would
        # build a new one for every frame, which costs more than decoding small frames.
        reformatter = VideoReformatter()
        try:
            for frame in frames:
                if count == 0:
                    height, width = resized_shape(frame.height, frame.width, short_side)
                rgb = reformatter.reformat(
                    frame, width=width, height=height, format="rgb24", interpolation="AREA"
                )
                yield rgb.to_ndarray()
                count += 1
        except av.FFmpegError as error:
            raise VideoDecodeError(path, f"decode error after {count} frames ({error})") from None
        declared = _declared_length(container, stream)
    if count == 0:
        raise VideoDecodeError(path, "zero frames decoded")
    _check_complete(path, decoded, declared, rate)


def _declared_length(container, stream) -> tuple[int, float | None]:
    """(frames, seconds) the container declares: 0 / None where it does not say."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
    else:
        seconds = None
    return stream.frames, seconds


def _check_complete(path: str, decoded: list, declared: tuple, rate: float) -> None:
    """FFmpeg stops quietly at the end of a cut-off file: compare with what the container says.

    `decoded` is [frames, end time of the last frame]. A frame or 2% short is tolerated
    (headers round; some muxers count a trailing frame).
    """
    frames, seconds = declared
    if frames:
        if frames - decoded[0] > max(1, frames // 50):
            raise VideoDecodeError(path, f"truncated: {decoded[0]} of {frames} frames")
    elif seconds and seconds - decoded[1] > max(2.0 / rate, 0.02 * seconds):
        raise VideoDecodeError(
            path, f"truncated: {decoded[0]} frames, {decoded[1]:.2f} of {seconds:.2f} s"
        )


def _decode(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    rate: float,
    decoded: list[int],
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds, frame) pairs; frames without a timestamp are placed at index / rate.

    `decoded` holds the number of frames decoded so far and the end time of the last one.
    """
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / rate
        decoded[:] = [index + 1, time + 1.0 / rate]
        yield time, frame


def _resample(
    timed_frames: Iterator[tuple[float, av.VideoFrame]], fps: float | None, duration: float
) -> Iterator[av.VideoFrame]:
    """Frames at `fps`: output k shows the frame on screen at time k / fps (like FFmpeg's fps)."""
    if fps is None:
        for _, frame in timed_frames:
            yield frame
        return
    previous, start, k = None, None, 0
    for time, frame in timed_frames:
        if previous is None:
            start = time
        else:
            # Every output timestamp before this frame's shows the previous frame.
            while start + k / fps < time:
                yield previous
                k += 1
        previous = frame
        last_time = time
    if previous is not None:
        while start + k / fps < last_time + duration:
            yield previous
            k += 1


def read_video(path: str, *, short_side: int | None = None, fps: float | None = None) -> np.ndarray:
    """All frames of a video as one (T, H, W, 3) uint8 array; see `iter_frames`.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.mp4")
    >>> write_video(path, np.zeros((8, 32, 48, 3), np.uint8))
    >>> read_video(path, short_side=16).shape
    (8, 16, 24, 3)
    """
    return np.stack(list(iter_frames(path, short_side=short_side, fps=fps)))


def write_video(
    path: str, frames: np.ndarray, *, fps: int = 25, codec: str = "libx264", crf: int = 12
) -> None:
    """Encodes (T, H, W, 3) uint8 RGB frames as a video file (container from the file extension).

    H.264 needs even sizes in 4:2:0; odd sizes are padded by one edge row/column. `crf` (H.264's
    quality, 0 lossless .. 51) defaults to near-lossless so tests can compare pixels.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ramp.mp4")
    >>> write_video(path, np.full((4, 16, 16, 3), 128, np.uint8))
    >>> read_video(path).shape
    (4, 16, 16, 3)
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"`frames` must be a (T, H, W, 3) uint8 array. Received: {frames.dtype} {frames.shape}"
        )
    pad = ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0))
    frames = np.pad(frames, pad, mode="edge")
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
