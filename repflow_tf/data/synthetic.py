"""The embedded demo dataset: the class is the direction of motion, and nothing else.

Each video shows a textured object sliding over a textured background in one of 8 (or 4, or 2)
directions, a few pixels per frame, wrapping around the borders. Every appearance property (both
textures and palettes, object shape, size and start position, speed) is drawn at random per video
and the object's position is uniform over the frame at every time, so no single frame tells the
class; two consecutive frames do. The videos are written as real H.264 files with PyAV and then
converted by the same converter as real datasets, so the demo exercises the path a user takes.

Two variants (`make_synthetic_dataset(variant=...)`, config `data.synthetic_variant`):

- `"easy"`: 2-3 px per frame, clean frames. TV-L1's single-scale, warp-free step linearises the
  image, so it measures displacements up to about a pixel; 2-3 px on the raw frames is within
  its reach on these smooth gratings, and fixed flow on the input frames works (96.9% at the
  demo's budget; learned flow after block 1 95.3%).
- `"hard"` (the demo's): the same classes, with each property there to break flow on the
  *pixels* while leaving it to features: 3-5 px per frame (sub-pixel to ~1 px after a stride-4
  block, beyond the pixel linearisation), a per-frame brightness flicker (gain 0.9-1.1, offset
  ±10 grey levels: brightness constancy fails on the pixels, and a learned zero-mean filter
  removes it) and Gaussian noise σ = 3 per pixel and frame (noisy pixel gradients; features
  average it out). Measured at the demo's budget: learned flow after block 1 95.3%, fixed flow
  on the input frames 81.2%, RGB only 12.5% (README).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import TextIO

import numpy as np

from repflow_tf.data.convert import ConvertOptions, convert_split
from repflow_tf.data.splits import parse_csv
from repflow_tf.data.video import write_video
from repflow_tf.fileio import atomic_output, write_atomic, write_json_atomic
from repflow_tf.options import SYNTHETIC_VARIANTS

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


HARD_SPEED = (3, 5)
HARD_FLICKER = 0.1
HARD_NOISE = 3.0
# render_clip's arguments per variant (`make_synthetic_dataset(variant=...)`). See the module doc.
_VARIANTS = {
    "easy": {},
    "hard": {"speed": HARD_SPEED, "flicker": HARD_FLICKER, "noise": HARD_NOISE},
}
assert tuple(_VARIANTS) == SYNTHETIC_VARIANTS
# Shard sizes: the converter's worker processes take whole shards, so the slow TV-L1 conversion
# (~1 s per video and core) uses smaller shards than RGB-only data, to keep the cores busy on a
# small split (64 videos in one shard ran on one worker, 282 s, while the other core idled).
RGB_VIDEOS_PER_SHARD = 64
FLOW_VIDEOS_PER_SHARD = 16
# What a generated dataset records, so a rerun with another variant is refused, not mixed in.
_RECORD_FILE = "synthetic.json"


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
    flicker: float = 0.0,
    noise: float = 0.0,
) -> np.ndarray:
    """One (num_frames, size, size, 3) uint8 clip of an object moving in `direction`.

    The object moves by `s * (dx, dy)` pixels per frame (s drawn from `speed`, inclusive), so
    content moving "right" has a positive x displacement. `flicker` > 0 multiplies each frame by
    a gain drawn from [1 - flicker, 1 + flicker] and adds an offset from ±100 x flicker grey
    levels; `noise` adds Gaussian noise of that standard deviation (grey levels) to every pixel.
    Both break the brightness constancy that TV-L1 on the raw pixels assumes.

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
    if flicker == 0 and noise == 0:
        return frames  # the easy variant's clips, drawn from the same random stream as before
    gain = rng.uniform(1 - flicker, 1 + flicker, size=(num_frames, 1, 1, 1))
    offset = rng.uniform(-100 * flicker, 100 * flicker, size=(num_frames, 1, 1, 1))
    noisy = frames * gain + offset + rng.normal(0.0, noise, size=frames.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def make_synthetic_dataset(
    output_dir: str,
    *,
    num_train: int = 512,
    num_val: int = 128,
    num_classes: int = 8,
    num_frames: int = 24,
    size: int = 64,
    seed: int = 0,
    videos_per_shard: int | None = None,
    num_workers: int | None = 1,
    optical_flow: str | None = None,
    variant: str = "easy",
    log: TextIO | None = sys.stderr,
) -> dict[str, str]:
    """Writes the motion dataset as videos + CSV lists and converts it; returns the split dirs
    (a split with 0 videos is skipped).

    Layout: `<output_dir>/videos/<split>/<class>/<split>_<i>.mp4`, `<output_dir>/<split>.csv`
    (`path,label`), `<output_dir>/tfrecords/<split>/` (shards of `videos_per_shard` videos +
    manifest.json), `<output_dir>/synthetic.json` (the variant). `videos_per_shard` defaults to
    `RGB_VIDEOS_PER_SHARD`, with `optical_flow` to `FLOW_VIDEOS_PER_SHARD` (the workers convert
    whole shards: small ones spread a small split's TV-L1 over the cores).
    Classes are balanced; frames are `size` x `size`. `variant` is `"easy"` or `"hard"` (see the
    module doc). Re-running reuses existing videos and shards; with another variant it raises a
    ValueError (the videos on disk are the other one's). The defaults take about 30 s on a busy
    2-core machine; with `optical_flow="tvl1"` (also store TV-L1 flow, for the two-stream
    baselines; needs OpenCV) about 70 ms more per frame pair and core.

    >>> import tempfile
    >>> dirs = make_synthetic_dataset(tempfile.mkdtemp(), num_train=8, num_val=4, log=None)
    >>> sorted(dirs)
    ['train', 'val']
    """
    names = class_names(num_classes)
    if variant not in SYNTHETIC_VARIANTS:
        raise ValueError(f"`variant` must be one of {SYNTHETIC_VARIANTS}. Received: {variant!r}")
    if num_frames < 2 or size < 16:
        raise ValueError(
            f"Need num_frames >= 2 and size >= 16. Received: num_frames={num_frames}, size={size}"
        )
    check_synthetic_variant(output_dir, variant)
    if videos_per_shard is None:
        videos_per_shard = RGB_VIDEOS_PER_SHARD if optical_flow is None else FLOW_VIDEOS_PER_SHARD
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
                clip = render_clip(
                    rng, label, num_frames=num_frames, size=size, **_VARIANTS[variant]
                )
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


def check_synthetic_variant(output_dir: str, variant: str = "easy") -> None:
    """Records the variant of a new synthetic dataset in `output_dir`, or raises ValueError if
    the one there is another variant (its videos would be reused as if they were this one).

    A dataset written before the record existed has videos but no record: it is the easy
    variant. Frame count, size and seed are not checked: the reader adapts to them, and runs
    with other seeds (bin/reproduce.py) share one dataset.

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> check_synthetic_variant(root, "hard")
    >>> check_synthetic_variant(root, "easy")
    Traceback (most recent call last):
    ...
    ValueError: ... holds the 'hard' synthetic variant, not 'easy'; use another directory or ...
    """
    path = os.path.join(output_dir, _RECORD_FILE)
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)["variant"]
    elif os.path.isdir(os.path.join(output_dir, "videos")):
        existing = "easy"
    else:
        os.makedirs(output_dir, exist_ok=True)
        write_json_atomic(path, {"variant": variant})
        return
    if existing != variant:
        raise ValueError(
            f"{output_dir} holds the {existing!r} synthetic variant, not {variant!r}; "
            "use another directory or delete it"
        )
