"""The demo dataset: motion tells the class, single frames do not; generated and converted fast."""

import os
import time

import numpy as np
import pytest

from repflow_tf.data import class_names, load_manifest, make_synthetic_dataset, video_dataset
from repflow_tf.data.synthetic import render_clip

_STEPS = {
    "right": (1, 0),
    "down_right": (1, 1),
    "down": (0, 1),
    "down_left": (-1, 1),
    "left": (-1, 0),
    "up_left": (-1, -1),
    "up": (0, -1),
    "up_right": (1, -1),
}


def _motion_class(clip, names, threshold=8.0):
    """Classic block matching: among pixels that change between frames, how many are explained
    by shifting the previous frame 2 or 3 pixels in each candidate direction."""
    grey = np.asarray(clip, np.float32).mean(axis=-1)
    changed = np.abs(grey[1:] - grey[:-1]) > threshold
    scores = []
    for name in names:
        dx, dy = _STEPS[name]
        best = 0
        for step in (2, 3):
            shifted = np.roll(grey[:-1], (step * dy, step * dx), axis=(1, 2))
            best = max(best, ((np.abs(grey[1:] - shifted) < threshold) & changed).sum())
        scores.append(best)
    return int(np.argmax(scores))


def test_motion_tells_the_class_and_single_frames_do_not():
    names = class_names(8)
    rng = np.random.default_rng(0)
    labels = np.arange(320) % 8
    clips = np.stack([render_clip(rng, names[c], num_frames=6, size=64) for c in labels])
    assert clips.shape == (320, 6, 64, 64, 3)

    motion = np.array([_motion_class(clip, names, threshold=1.0) for clip in clips])
    assert (motion == labels).mean() >= 0.97

    # A per-frame classifier (nearest class mean of 8x8 colour thumbnails) is at chance level.
    thumbs = clips.reshape(320, 6, 8, 8, 8, 8, 3).mean(axis=(3, 5)).reshape(320, 6, -1)
    train, test = slice(0, 240), slice(240, 320)
    means = np.stack([thumbs[train][labels[train] == c].reshape(-1, 192).mean(0) for c in range(8)])
    frames = thumbs[test].reshape(-1, 192)
    predicted = ((frames[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = (predicted == np.repeat(labels[test], 6)).mean()
    assert accuracy < 0.25, accuracy  # chance: 0.125


def test_appearance_is_randomised_per_video():
    first = render_clip(np.random.default_rng(1), "up", num_frames=2)
    second = render_clip(np.random.default_rng(2), "up", num_frames=2)
    assert np.abs(first.astype(float) - second).mean() > 20
    assert first[0].std() > 10  # textured, not flat


def test_make_synthetic_dataset_end_to_end(tmp_path):
    start = time.monotonic()
    dirs = make_synthetic_dataset(
        str(tmp_path), num_train=16, num_val=8, num_frames=12, size=48, log=None
    )
    assert time.monotonic() - start < 30
    names = class_names(8)
    assert dirs == {s: str(tmp_path / "tfrecords" / s) for s in ("train", "val")}
    for split, count in (("train", 16), ("val", 8)):
        manifest = load_manifest(dirs[split])
        assert manifest.class_names == names
        assert (manifest.num_listed, manifest.num_accepted, manifest.num_rejected) == (
            count,
            count,
            0,
        )
        assert set(manifest.counts_per_class.values()) == {count // 8}
        with open(tmp_path / f"{split}.csv") as f:
            assert len(f.read().splitlines()) == count + 1  # header + one line per video
    assert os.path.isfile(tmp_path / "videos" / "train" / "up" / "train_00006.mp4")

    # Decoded from the shards (H.264 then JPEG), the motion still gives the label.
    ds = video_dataset(dirs["val"], training=False, num_frames=12, crop_size=48)
    results = [(_motion_class(x.numpy(), names), int(y)) for x, y in ds]
    assert len(results) == 8
    assert sum(p == y for p, y in results) >= 7

    shard = os.path.join(dirs["train"], load_manifest(dirs["train"]).shards[0].file)
    mtime = os.stat(shard).st_mtime_ns
    assert (
        make_synthetic_dataset(
            str(tmp_path), num_train=16, num_val=8, num_frames=12, size=48, log=None
        )
        == dirs
    )
    assert os.stat(shard).st_mtime_ns == mtime  # re-running reuses videos and shards

    with pytest.raises(ValueError, match="Received: num_classes=3"):
        make_synthetic_dataset(str(tmp_path), num_classes=3)
