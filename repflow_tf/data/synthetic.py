"""The embedded demo dataset: the class is the direction of motion, and nothing else.

Each video shows a textured object sliding over a textured background in one of 8 (or 4, or 2)
directions, a few pixels per frame, wrapping around the borders. Every appearance property (both
textures and palettes, object shape, size and start position, speed) is drawn at random per video
and the object's position is uniform over the frame at every time, so no single frame tells the
class; two consecutive frames do. The videos are written as real H.264 files with PyAV and then
converted by the same converter as real datasets, so the demo exercises the path a user takes.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from typing import TextIO

import numpy as np

from repflow_tf.data.convert import ConvertOptions, convert_split
from repflow_tf.data.splits import parse_csv
from repflow_tf.data.video import write_video
from repflow_tf.fileio import atomic_output, write_atomic

# Image coordinates: x grows to the right, y grows downwards.
_DIRECTIONS = {
    "right": (1, 0),
    "down_right": (1, 1),
    "down": (0, 1),
    "down_left": (-1, 1),
    "left": (-1, 0),
    "up_left": (-1, -1),
    "up": (0, -1),
    "up_right": (1, -1),
}
_CLASS_SETS = {
    2: ("right", "left"),
    4: ("right", "down", "left", "up"),
    8: tuple(_DIRECTIONS),
}


def class_names(num_classes: int = 8) -> tuple[str, ...]:
    """The direction names used as classes, for 2, 4 or 8 classes.

    >>> class_names(4)
    ('right', 'down', 'left', 'up')
    """
    if num_classes not in _CLASS_SETS:
        raise ValueError(f"`num_classes` must be 2, 4 or 8. Received: num_classes={num_classes}")
    return _CLASS_SETS[num_classes]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random (size, size, 3) float texture: random gratings plus grain in a random palette."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    pattern = np.zeros((size, size), np.float32)
    for _ in range(3):
        # Whole cycles per frame keep the texture seamless where the object wraps around.
        fx, fy = rng.integers(-8, 9, size=2)
        pattern += np.sin(2 * np.pi * (fx * x + fy * y) / size + rng.uniform(0, 2 * np.pi))
    pattern += rng.uniform(0.3, 1.0) * rng.standard_normal((size, size))
    pattern = (pattern - pattern.min()) / (np.ptp(pattern) + 1e-6)
    dark, bright = rng.uniform(0, 255, size=(2, 3))
    return dark + pattern[..., None] * (bright - dark)


def render_clip(
    rng: np.random.Generator,
    direction: str,
    *,
    num_frames: int = 24,
    size: int = 64,
    speed: tuple[int, int] = (2, 3),
) -> np.ndarray:
    """One (num_frames, size, size, 3) uint8 clip of an object moving in `direction`.

    The object moves by `s * (dx, dy)` pixels per frame (s drawn from `speed`, inclusive), so
    content moving "right" has a positive x displacement.

    >>> clip = render_clip(np.random.default_rng(0), "up", num_frames=4, size=32)
    >>> clip.shape, clip.dtype
    ((4, 32, 32, 3), dtype('uint8'))
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"`direction` must be one of {tuple(_DIRECTIONS)}. Received: {direction}")
    background = _texture(rng, size)
    texture = _texture(rng, size)
    extent = int(rng.integers(size // 5, size // 3 + 1))
    y, x = np.mgrid[0:size, 0:size]
    if rng.random() < 0.5:
        mask = (np.abs(x - extent / 2) <= extent / 2) & (np.abs(y - extent / 2) <= extent / 2)
    else:
        mask = (x - extent / 2) ** 2 + (y - extent / 2) ** 2 <= (extent / 2) ** 2
    step = int(rng.integers(speed[0], speed[1] + 1))
    dx, dy = (step * d for d in _DIRECTIONS[direction])
    x0, y0 = rng.integers(0, size, size=2)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        shift = (y0 + dy * t, x0 + dx * t)
        # The texture travels with the object (rolled together with its mask).
        moved_mask = np.roll(mask, shift, axis=(0, 1))
        moved_texture = np.roll(texture, shift, axis=(0, 1))
        frames[t] = np.where(moved_mask[..., None], moved_texture, background).round()
    return frames


def make_synthetic_dataset(
    output_dir: str,
    *,
    num_train: int = 512,
    num_val: int = 128,
    num_classes: int = 8,
    num_frames: int = 24,
    size: int = 64,
    seed: int = 0,
    videos_per_shard: int = 64,
    num_workers: int | None = 1,
    optical_flow: str | None = None,
    log: TextIO | None = sys.stderr,
) -> dict[str, str]:
    """Writes the motion dataset as videos + CSV lists and converts it; returns the split dirs
    (a split with 0 videos is skipped).

    Layout: `<output_dir>/videos/<split>/<class>/<split>_<i>.mp4`, `<output_dir>/<split>.csv`
    (`path,label`), `<output_dir>/tfrecords/<split>/` (shards of `videos_per_shard` videos +
    manifest.json). Classes are balanced; frames are `size` x `size`. Re-running reuses existing
    videos and shards. The defaults take about 30 s on a busy 2-core machine; with
    `optical_flow="tvl1"` (also store TV-L1 flow, for the two-stream baselines; needs OpenCV)
    about 70 ms more per frame pair and core.

    >>> import tempfile
    >>> dirs = make_synthetic_dataset(tempfile.mkdtemp(), num_train=8, num_val=4, log=None)
    >>> sorted(dirs)
    ['train', 'val']
    """
    names = class_names(num_classes)
    if num_frames < 2 or size < 16:
        raise ValueError(
            f"Need num_frames >= 2 and size >= 16. Received: num_frames={num_frames}, size={size}"
        )
    split_dirs = {}
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        if count == 0:
            continue
        rows = []
        for i in range(count):
            label = names[i % num_classes]
            relative = os.path.join("videos", split, label, f"{split}_{i:05d}.mp4")
            path = os.path.join(output_dir, relative)
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                rng = np.random.default_rng([seed, split_id, i])
                clip = render_clip(rng, label, num_frames=num_frames, size=size)
                with atomic_output(path) as temporary:
                    write_video(temporary, clip)
            rows.append((relative, label))
        list_path = os.path.join(output_dir, f"{split}.csv")
        text = io.StringIO()
        csv.writer(text).writerows([("path", "label"), *rows])
        write_atomic(list_path, text.getvalue())
        convert_split(
            parse_csv(list_path, class_names=names),
            os.path.join(output_dir, "tfrecords"),
            split,
            ConvertOptions(
                short_side=size,
                min_frames=num_frames,
                videos_per_shard=videos_per_shard,
                optical_flow=optical_flow,
            ),
            num_workers=num_workers,
            seed=seed,
            log=log,
        )
        split_dirs[split] = os.path.join(output_dir, "tfrecords", split)
    return split_dirs
