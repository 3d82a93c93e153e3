"""The demo dataset: motion tells the class, single frames do not; generated and converted fast."""

import os
import time

import numpy as np
import pytest

from repflow_tf.data import (
    class_names,
    load_manifest,
    make_synthetic_dataset,
    synthetic,
    video_dataset,
)
from repflow_tf.data.synthetic import check_synthetic_variant, render_clip

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


def _motion_class(clip, names, threshold=8.0, steps=(2, 3), standardise=False):
    """Classic block matching: among pixels that change between frames, how many are explained
    by shifting the previous frame by one of `steps` pixels in each candidate direction.
    `standardise` first maps every frame to zero mean and unit variance (undoing a flicker)."""
    grey = np.asarray(clip, np.float32).mean(axis=-1)
    if standardise:
        grey = (grey - grey.mean(axis=(1, 2), keepdims=True)) / grey.std(axis=(1, 2), keepdims=True)
    changed = np.abs(grey[1:] - grey[:-1]) > threshold
    scores = []
    for name in names:
        dx, dy = _STEPS[name]
        best = 0
        for step in steps:
            shifted = np.roll(grey[:-1], (step * dy, step * dx), axis=(1, 2))
            best = max(best, ((np.abs(grey[1:] - shifted) < threshold) & changed).sum())
        scores.append(best)
    return int(np.argmax(scores))


def _single_frame_accuracy(clips, labels):
    """A per-frame classifier (nearest class mean of 8x8 colour thumbnails), trained on the first
    3/4 of the clips, on the frames of the rest."""
    count, frames = clips.shape[:2]
    thumbs = (
        clips.reshape(count, frames, 8, 8, 8, 8, 3).mean(axis=(3, 5)).reshape(count, frames, -1)
    )
    split = count * 3 // 4
    train, test = slice(0, split), slice(split, count)
    means = np.stack([thumbs[train][labels[train] == c].reshape(-1, 192).mean(0) for c in range(8)])
    test_frames = thumbs[test].reshape(-1, 192)
    predicted = ((test_frames[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    return (predicted == np.repeat(labels[test], frames)).mean()


def test_motion_tells_the_class_and_single_frames_do_not():
    names = class_names(8)
    rng = np.random.default_rng(0)
    labels = np.arange(320) % 8
    clips = np.stack([render_clip(rng, names[c], num_frames=6, size=64) for c in labels])
    assert clips.shape == (320, 6, 64, 64, 3)

    motion = np.array([_motion_class(clip, names, threshold=1.0) for clip in clips])
    assert (motion == labels).mean() >= 0.97

    accuracy = _single_frame_accuracy(clips, labels)
    assert accuracy < 0.25, accuracy  # chance: 0.125


def test_the_hard_variant_breaks_pixel_brightness_constancy_and_motion_still_tells_the_class():
    names = class_names(8)
    labels = np.arange(240) % 8
    clips = {}
    for variant in ("easy", "hard"):
        rng = np.random.default_rng(0)
        clips[variant] = np.stack(
            [
                render_clip(rng, names[c], num_frames=6, size=64, **synthetic._VARIANTS[variant])
                for c in labels
            ]
        )
    hard = clips["hard"]
    # Single frames still tell nothing.
    assert _single_frame_accuracy(hard, labels) < 0.25
    # Two frames do, through motion of 3-5 px once each frame's flicker is undone ...
    motion = [_motion_class(c, names, 0.5, steps=(3, 4, 5), standardise=True) for c in hard]
    assert (np.array(motion) == labels).mean() >= 0.9
    # The flicker: consecutive frames' mean brightness differs by ~10 grey levels (easy: ~0).
    means = {
        variant: clip.astype(np.float32).mean(axis=(2, 3, 4)) for variant, clip in clips.items()
    }
    changes = {variant: np.median(np.abs(np.diff(m, axis=1))) for variant, m in means.items()}
    assert changes["hard"] > 4 and changes["easy"] < 0.5, changes

    # The noise: the same clip rendered without it differs by σ = 3 grey levels per pixel.
    settings = {**synthetic._VARIANTS["hard"], "num_frames": 6, "size": 64}
    noisy = render_clip(np.random.default_rng(5), "up", **settings).astype(np.float32)
    clean = render_clip(np.random.default_rng(5), "up", **{**settings, "noise": 0.0})
    assert 2.5 < (noisy - clean).std() < 3.5


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


def test_tvl1_data_is_cut_into_smaller_shards_so_a_small_split_uses_every_core(tmp_path):
    shapes = {"num_train": 0, "num_val": 20, "num_frames": 2, "size": 16, "log": None}
    rgb = make_synthetic_dataset(str(tmp_path / "rgb"), **shapes)
    flow = make_synthetic_dataset(str(tmp_path / "flow"), optical_flow="tvl1", **shapes)
    assert [s.num_records for s in load_manifest(rgb["val"]).shards] == [20]
    assert [s.num_records for s in load_manifest(flow["val"]).shards] == [16, 4]
    assert load_manifest(flow["val"]).options["optical_flow"] == "tvl1"


def test_a_dataset_of_another_variant_is_refused_not_mixed_in(tmp_path):
    make_synthetic_dataset(str(tmp_path), num_train=8, num_val=0, num_frames=4, size=32, log=None)
    listed = sorted(os.listdir(tmp_path / "videos" / "train"))
    with pytest.raises(ValueError) as error:
        make_synthetic_dataset(
            str(tmp_path), num_train=8, num_val=0, num_frames=4, size=32, variant="hard", log=None
        )
    assert str(error.value) == (
        f"{tmp_path} holds the 'easy' synthetic variant, not 'hard'; "
        "use another directory or delete it"
    )
    assert sorted(os.listdir(tmp_path / "videos" / "train")) == listed
    with pytest.raises(ValueError, match="`variant` must be one of \\('easy', 'hard'\\)"):
        make_synthetic_dataset(str(tmp_path), variant="medium")


def test_a_dataset_from_before_the_record_counts_as_the_easy_variant(tmp_path):
    make_synthetic_dataset(str(tmp_path), num_train=8, num_val=0, num_frames=4, size=32, log=None)
    os.remove(tmp_path / "synthetic.json")
    make_synthetic_dataset(str(tmp_path), num_train=8, num_val=0, num_frames=4, size=32, log=None)
    with pytest.raises(ValueError, match="holds the 'easy' synthetic variant, not 'hard'"):
        check_synthetic_variant(str(tmp_path), "hard")
