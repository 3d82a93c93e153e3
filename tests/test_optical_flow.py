"""Precomputed TV-L1 optical flow for the two-stream baselines: its accuracy on a known shift of
a real image, the 8-bit storage, the converter's records and manifest, the reader's crops and
flips, and a two-stream model trained from converted data through the command line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import skimage.data
import skimage.transform
import tensorflow as tf
from test_training import CONFIGS, run_cli, set_args

from repflow_tf import data, evaluation
from repflow_tf.data import optical_flow
from repflow_tf.data.splits import SplitList, VideoEntry

BOUND = data.DEFAULT_FLOW_BOUND
STEP = BOUND / optical_flow.LEVELS


def _shifted_pair(dx: float, dy: float, size: int = 96) -> np.ndarray:
    """Two RGB frames of a real photograph (scikit-image's astronaut), the second one the
    first with its content moved by (dx, dy) pixels (sub-pixel, spline-interpolated)."""
    image = skimage.transform.resize(skimage.data.astronaut(), (size, size), anti_aliasing=True)
    moved = skimage.transform.warp(
        image, skimage.transform.AffineTransform(translation=(-dx, -dy)), order=3, mode="edge"
    )
    return (np.stack([image, moved]) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("dx, dy", [(1.5, -0.75), (-3.0, 2.25)])
def test_tvl1_recovers_a_known_shift_of_a_real_image(dx, dy):
    flow = data.TVL1()(_shifted_pair(dx, dy))
    assert flow.shape == (1, 96, 96, 2) and flow.dtype == np.float32
    inner = flow[0, 8:-8, 8:-8]  # the border has no content to match
    error = np.hypot(inner[..., 0] - dx, inner[..., 1] - dy)
    assert np.median(error) < 0.1, np.median(error)


def test_tvl1_does_not_depend_on_the_previous_video():
    pair = _shifted_pair(1.5, -0.75, size=48)
    fresh = data.TVL1()(pair)
    tvl1 = data.TVL1()
    tvl1(_shifted_pair(2.0, 1.0, size=32))  # another size first, as a converter worker would
    np.testing.assert_array_equal(tvl1(pair), fresh)


def test_quantisation_round_trip_is_within_half_a_step():
    flow = np.random.default_rng(0).uniform(-30, 30, (4, 8, 8, 2)).astype(np.float32)
    levels = data.quantize_flow(flow, BOUND)
    assert levels.dtype == np.uint8
    restored = data.dequantize_flow(levels, BOUND)
    np.testing.assert_array_less(np.abs(restored - np.clip(flow, -BOUND, BOUND)), STEP / 2 + 1e-5)
    assert data.dequantize_flow(data.quantize_flow(np.zeros(1), BOUND), BOUND)[0] == 0.0
    assert levels.min() >= 1 and np.abs(restored).max() == pytest.approx(BOUND)


def _translating_video(path: str, speed: int, num_frames: int = 6, size: int = 64) -> None:
    """Real-image content scrolling right by `speed` pixels per frame (wrapping around)."""
    image = (skimage.transform.resize(skimage.data.astronaut(), (size, size)) * 255).astype(
        np.uint8
    )
    data.write_video(path, np.stack([np.roll(image, speed * t, axis=1) for t in range(num_frames)]))


@pytest.fixture(scope="module")
def flow_split(tmp_path_factory):
    """A converted split with optical flow: two translating videos and one rejected video."""
    root = tmp_path_factory.mktemp("flow")
    entries = []
    for name, speed in (("fast", 4), ("slow", 2)):
        path = str(root / f"{name}.mp4")
        _translating_video(path, speed)
        entries.append(VideoEntry(path, name))
    entries.append(VideoEntry(str(root / "missing.mp4"), "slow"))
    options = data.ConvertOptions(short_side=64, min_frames=2, optical_flow="tvl1")
    split_list = SplitList(tuple(entries), ("fast", "slow"))
    data.convert_split(split_list, str(root / "out"), "val", options, num_workers=1, log=None)
    return str(root / "out" / "val"), split_list, options


def test_the_converter_stores_flow_per_frame_pair_and_records_it(flow_split):
    split_dir, split_list, options = flow_split
    manifest = data.load_manifest(split_dir)
    assert manifest.options["optical_flow"] == "tvl1"
    assert manifest.options["flow_bound"] == BOUND
    assert (manifest.num_accepted, manifest.num_rejected) == (2, 1)
    (path,) = [os.path.join(split_dir, shard.file) for shard in manifest.shards]
    for record in tf.data.TFRecordDataset(path):
        parsed = data.parse_sequence_example(record, optical_flow=True)
        assert int(parsed["num_frames"]) == 6
        assert parsed["flow_x"].shape == parsed["flow_y"].shape == (5,)
        levels = tf.io.decode_png(parsed["flow_x"][2]).numpy()
        speed = 4 if parsed["label_text"].numpy() == b"fast" else 2
        assert levels.shape == (64, 64, 1)
        assert np.median(data.dequantize_flow(levels, BOUND)) == pytest.approx(speed, abs=STEP)
    # A re-run keeps the shard (same videos, same options) ...
    before = os.stat(path).st_mtime_ns
    data.convert_split(
        split_list, os.path.dirname(split_dir), "val", options, num_workers=1, log=None
    )
    assert os.stat(path).st_mtime_ns == before
    # ... and RGB-only records are unchanged by the new fields.
    rgb = data.ConvertOptions(short_side=64, min_frames=2)
    assert "optical_flow" not in rgb.record() and rgb.record() == {
        "short_side": 64,
        "fps": None,
        "jpeg_quality": 90,
        "min_frames": 2,
        "videos_per_shard": 100,
    }


def test_a_one_frame_video_is_rejected_for_optical_flow(tmp_path):
    path = str(tmp_path / "still.mp4")
    _translating_video(path, 0, num_frames=1)
    options = data.ConvertOptions(short_side=64, min_frames=1, optical_flow="tvl1")
    manifest = data.convert_split(
        SplitList((VideoEntry(path, "a"),), ("a",)), str(tmp_path), "val", options, log=None
    )
    assert [r.reason for r in manifest.rejected] == ["too short for optical flow: 1 frame"]


def test_reading_flow_from_an_rgb_only_split_names_it(tmp_path):
    dirs = data.make_synthetic_dataset(
        str(tmp_path), num_train=0, num_val=2, num_frames=4, log=None
    )
    with pytest.raises(data.DataError, match=r"val: converted without optical flow.*tvl1"):
        data.video_dataset(dirs["val"], training=False, inputs="optical_flow")


def test_flow_is_in_pixels_of_the_crop_and_a_flip_negates_x(flow_split):
    split_dir, _, _ = flow_split
    common = dict(
        training=True,
        num_frames=4,
        crop_size=32,
        area_range=(1.0, 1.0),
        aspect_ratio_range=(1.0, 1.0),
        inputs="rgb+optical_flow",
        seed=3,
        shuffle_buffer=1,
    )
    plain = list(data.video_dataset(split_dir, flip=False, **common).repeat(4))
    flipped = list(data.video_dataset(split_dir, flip=True, **common).repeat(4))
    mirrored = 0
    for (a, label), (b, _) in zip(plain, flipped, strict=True):
        assert a["frames"].shape == (4, 32, 32, 3) and a["optical_flow"].shape == (3, 32, 32, 2)
        # The whole 64 x 64 frame resized to 32 x 32: 4 (2) px per frame become 2 (1) px.
        speed = 2.0 if int(label) == 0 else 1.0
        inner = a["optical_flow"].numpy()[:, 4:-4, 4:-4]
        assert np.median(inner[..., 0]) == pytest.approx(speed, abs=0.15)
        assert np.median(np.abs(inner[..., 1])) < 0.15
        if np.array_equal(a["frames"], b["frames"]):
            np.testing.assert_array_equal(a["optical_flow"], b["optical_flow"])
            continue
        mirrored += 1
        np.testing.assert_array_equal(b["frames"], a["frames"][:, :, ::-1])
        np.testing.assert_allclose(
            b["optical_flow"], a["optical_flow"][:, :, ::-1] * np.array([-1.0, 1.0]), atol=1e-5
        )
    assert 0 < mirrored < len(plain)


def test_evaluation_clips_align_flow_with_frames(flow_split):
    split_dir, _, _ = flow_split
    dataset = data.video_dataset(
        split_dir, training=False, num_frames=4, crop_size=32, num_clips=2, inputs="optical_flow"
    )
    features, _ = next(iter(dataset))
    assert list(features) == ["optical_flow"]
    assert features["optical_flow"].shape == (2, 3, 32, 32, 2)


def test_two_stream_trains_and_evaluates_from_converted_data(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = os.path.join(CONFIGS, "demo_two_stream.toml")
    root = str(tmp_path / "data")
    extra = ('model.flow_position="none"', "trainer.epochs=1")
    code, out, err = run_cli(
        [f"--config={config}", f"--workdir={workdir}", *set_args(root, *extra)], capsys
    )
    assert code == 0, err
    manifest = data.load_manifest(os.path.join(root, "tfrecords", "train"))
    assert manifest.options["optical_flow"] == "tvl1"
    with open(os.path.join(workdir, "summary.json")) as file:
        assert np.isfinite(json.load(file)["loss"])
    result, paths = evaluation.evaluate_workdir(workdir, num_clips=2, log=None)
    assert result.num_videos == 8
    assert os.path.isfile(paths["metrics.json"])


@pytest.mark.slow
def test_a_two_stream_export_predicts_what_evaluation_computes(tmp_path):
    """The export takes uint8 frames and float32 flow; `predict_video` computes TV-L1 for a
    real video as the converter did, so its probabilities are the evaluation pipeline's."""
    from test_export import REAL_VIDEO

    from repflow_tf import export, models
    from repflow_tf.config import ModelConfig

    options = data.ConvertOptions(short_side=48, min_frames=2, optical_flow="tvl1")
    split_list = SplitList((VideoEntry(REAL_VIDEO, "car"),), ("car", "other"))
    data.convert_split(split_list, str(tmp_path), "val", options, num_workers=1, log=None)
    config = ModelConfig(
        depth=18, base_width=4, num_classes=2, flow_position="none", inputs="rgb+optical_flow"
    )
    model = models.build(config)
    pre = export.Preprocessing(
        num_frames=4,
        crop_size=32,
        num_clips=2,
        short_side=48,
        jpeg_quality=90,
        optical_flow="tvl1",
        flow_bound=BOUND,
    )
    path = export.export_model(model, str(tmp_path / "export"), ["car", "other"], pre)
    exported = export.load_exported(path)
    inputs = exported.signature.structured_input_signature[1]
    assert {name: spec.dtype for name, spec in inputs.items()} == {
        "frames": tf.uint8,
        "optical_flow": tf.float32,
    }
    features, _ = next(
        iter(
            data.video_dataset(
                str(tmp_path / "val"),
                training=False,
                num_frames=4,
                crop_size=32,
                num_clips=2,
                inputs="rgb+optical_flow",
            )
        )
    )
    # predict_video's inputs are the evaluation pipeline's: the flow, once the signature has
    # quantised it as the converter stored it, to float rounding (the same TV-L1 on the same
    # frames); the frames to the JPEG decoders' one grey level (see tests/test_export.py).
    video = data.read_video(REAL_VIDEO, short_side=48)
    flow = export.sample_flow_clips(video, pre)
    quantised = np.round(np.clip(flow, -BOUND, BOUND) / STEP) * STEP
    np.testing.assert_allclose(quantised, features["optical_flow"], atol=1e-4)
    clips = export.sample_clips(video, pre)
    assert np.abs(clips.astype(np.float32) - features["frames"].numpy()).max() <= 1.0
    # The export computes the Keras model on them, and predict_video averages its clips.
    inputs = {"frames": clips.astype(np.float32), "optical_flow": quantised}
    keras_probabilities = tf.nn.softmax(model(inputs, training=False)).numpy()
    np.testing.assert_allclose(
        exported(clips, flow)["probabilities"], keras_probabilities, atol=1e-5
    )
    prediction = export.predict_video(exported, REAL_VIDEO)
    np.testing.assert_allclose(prediction.probabilities, keras_probabilities.mean(0), atol=1e-5)
    pipeline = tf.nn.softmax(model(features, training=False)).numpy().mean(axis=0)
    np.testing.assert_allclose(prediction.probabilities, pipeline, atol=1e-2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="one field per pair"):
        exported(clips, flow[:, :2])


def test_the_table_9_benchmark_times_every_row_and_reads_the_demo_accuracies(tmp_path):
    from repflow_tf.benchmarks import two_stream

    eval_dir = tmp_path / "demo_two_stream" / "eval_val"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text(json.dumps({"video_top1": 0.875}))
    tiny = two_stream.Setting("tiny", num_frames=3, frame_size=32, crop_size=32, base_width=4)
    rows = two_stream.measure(tiny, repeats=1, log=lambda line: None)
    assert [row["model"] for row in rows] == list(two_stream.ROWS)
    timed = {row["model"]: row for row in rows}
    assert timed["Two-stream (TV-L1)"]["tvl1_ms"] > 0 and timed["RGB CNN"]["tvl1_ms"] == 0
    assert all(row["cnn_ms"] > 0 for row in rows)
    table = two_stream.report({"tiny": rows}, str(tmp_path)).splitlines()
    two_stream_line = next(line for line in table if line.startswith("| Two-stream"))
    assert two_stream_line.endswith("| 8546 | 38.0 | 0.875 |")
    assert next(line for line in table if line.startswith("| RGB CNN")).endswith("| — |")
