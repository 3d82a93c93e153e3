"""TFLite (run by LiteRT) and ONNX (run by onnxruntime) exports: logits within 1e-3 of Keras on the
same uint8 frames, the flow loop's iterations all run, dynamic batch and time axes, both inputs of
a two-stream model, the CLI, loading back for prediction, and the one-line errors."""

from __future__ import annotations

import dataclasses
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import trained_workdir
from reference_model import reference_logits

from repflow_tf import data, export_formats, models
from repflow_tf.config import ModelConfig
from repflow_tf.export import (
    ExportError,
    Preprocessing,
    load_exported,
    predict_video,
    sample_clips,
)
from repflow_tf.export_formats import TOLERANCE, export_converted, keras_outputs, plain_graph_flow
from repflow_tf.workdir import load_trained

FORMATS = ("tflite", "onnx")
PRE = Preprocessing(num_frames=4, crop_size=32)
CLASSES = ["a", "b", "c"]
# The demo's model, tiny: 2D ResNet-18 with fixed TV-L1 flow on the input frames.
INPUT_FLOW = ModelConfig(
    depth=18, base_width=4, num_classes=3, flow_position="input", flow_iterations=5, flow_learn=()
)


def clips(seed: int, batch: int = 3, num_frames: int = 4) -> np.ndarray:
    """uint8 (batch, num_frames, 32, 32, 3) clips of objects moving in different directions."""
    rng = np.random.default_rng(seed)
    directions = ("left", "down", "right", "up")
    return np.stack(
        [
            data.render_clip(rng, directions[i % 4], num_frames=num_frames, size=32)
            for i in range(batch)
        ]
    )


def keras_logits(model, frames) -> np.ndarray:
    """The Keras model's logits (its flow on the plain-graph path: no XLA compile per shape)."""
    with plain_graph_flow(model):
        return np.asarray(model(tf.constant(frames, tf.float32), training=False))


def max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def with_iterations(model, config: ModelConfig, num_iter: int):
    """The same model (same weights) with `num_iter` flow iterations."""
    other = models.build(dataclasses.replace(config, flow_iterations=num_iter))
    other.set_weights(model.get_weights())
    return other


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return trained_workdir.get(tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def cli(workdirs, tmp_path_factory):
    """repflow-export --format=tflite|onnx on the trained workdir (a learned FlowBlock after
    block1) and bad input, in a background process started before the first test."""
    tmp = tmp_path_factory.mktemp("formats_cli")
    (tmp / "taken").mkdir()
    (tmp / "taken" / "keep.txt").write_text("precious")
    cases = {
        "tflite": [f"--workdir={workdirs.trained}", "--format=tflite", f"--output={tmp}/tflite"],
        "onnx": [f"--workdir={workdirs.trained}", "--format=onnx", f"--output={tmp}/onnx"],
        "unknown_format": [f"--workdir={workdirs.trained}", "--format=coreml"],
        "taken": [f"--workdir={workdirs.trained}", "--format=onnx", f"--output={tmp}/taken"],
    }
    output = str(tmp / "results.json")
    process = trained_workdir.start_cli("export", list(cases.values()), output)
    cache = {}

    def collect():
        if not cache:
            results = trained_workdir.finish_cli(process, output)
            cache.update(zip(cases, results, strict=True))
        return cache, tmp

    yield collect
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def input_flow(tmp_path_factory):
    """The tiny demo model, its exports in both formats, and what it gives on `clips(5)`."""
    tmp = tmp_path_factory.mktemp("input_flow")
    keras.utils.set_random_seed(1)
    model = models.build(INPUT_FLOW)
    paths = {f: export_converted(model, str(tmp / f), CLASSES, PRE, format=f) for f in FORMATS}
    frames = clips(seed=5)
    logits = {
        "keras": keras_logits(model, frames),
        # The paper's flow (independent float64 NumPy reference) in the same network.
        "reference": reference_logits(model, frames),
        # A loop dropped or cut short would be visible: fewer iterations give other logits.
        **{n: keras_logits(with_iterations(model, INPUT_FLOW, n), frames) for n in (1, 4)},
    }
    return model, paths, frames, logits


@pytest.mark.parametrize("format", FORMATS)
def test_input_flow_export_matches_keras_and_runs_every_iteration(input_flow, format):
    model, paths, frames, expected = input_flow
    exported = load_exported(paths[format])
    assert exported.format == format and exported.class_names == tuple(CLASSES)
    assert sorted(os.listdir(paths[format])) == sorted(
        ["class_names.txt", "preprocessing.json", export_formats.MODEL_FILES[format]]
    )
    outputs = exported(frames)
    difference = max_difference(outputs["logits"], expected["keras"])
    print(f"{format} input flow: max |logit - Keras| = {difference:.2g}")
    assert difference <= TOLERANCE
    assert max_difference(outputs["logits"], expected["reference"]) <= TOLERANCE
    for num_iter in (1, 4):
        assert max_difference(outputs["logits"], expected[num_iter]) > 100 * TOLERANCE, num_iter
    softmax = tf.nn.softmax(expected["keras"]).numpy()
    np.testing.assert_allclose(outputs["probabilities"], softmax, atol=1e-5)


@pytest.mark.parametrize("format", FORMATS)
def test_dynamic_batch_and_time(input_flow, format):
    """Both formats keep the SavedModel's dynamic batch and time axes (README)."""
    model, paths, _, _ = input_flow
    exported = load_exported(paths[format])
    assert exported.loaded.input_shapes == {"frames": (-1, -1, 32, 32, 3)}
    for batch, num_frames in ((1, 6), (2, 2), (4, 9)):
        frames = clips(seed=num_frames, batch=batch, num_frames=num_frames)
        logits = exported(frames)["logits"]
        assert logits.shape == (batch, 3)
        assert max_difference(logits, keras_logits(model, frames)) <= TOLERANCE, num_frames
    # The runtimes fail obscurely on a clip too short for the flow: the loader says why.
    with pytest.raises(ValueError, match=r"at least 2 frames along the time axis"):
        exported(clips(seed=0, batch=1, num_frames=1))


@pytest.mark.slow  # two ResNets converted per format: about 20 s each on 2 shared cores
@pytest.mark.parametrize("format", FORMATS)
def test_two_stream_export_takes_both_inputs(tmp_path, format):
    config = ModelConfig(
        depth=18, base_width=4, num_classes=3, inputs="rgb+optical_flow", flow_position="none"
    )
    model = models.build(config)
    pre = dataclasses.replace(PRE, optical_flow="tvl1", flow_bound=20.0)
    exported = load_exported(export_converted(model, str(tmp_path), CLASSES, pre, format=format))
    assert exported.input_names == ("frames", "optical_flow")
    rng = np.random.default_rng(7)
    inputs = {
        "frames": clips(seed=7, batch=2),
        "optical_flow": rng.uniform(-25, 25, (2, 3, 32, 32, 2)).astype(np.float32),
    }
    logits = exported(inputs["frames"], inputs["optical_flow"])["logits"]
    # Keras through the serving function: flow clipped to +-20 and quantised as stored.
    expected = keras_outputs(model, pre, inputs)["logits"]
    assert max_difference(logits, expected) <= TOLERANCE


def test_flow_block_exports_from_the_cli_match_keras(cli, workdirs):
    results, tmp = cli()
    trained = load_trained(workdirs.trained)
    frames = clips(seed=11)
    expected = keras_logits(trained.model, frames)
    reference = reference_logits(trained.model, frames)
    # The learned FlowBlock's 2 iterations matter: with 1 the logits differ.
    fewer = keras_logits(with_iterations(trained.model, trained_workdir.MODEL, 1), frames)
    assert max_difference(expected, fewer) > 100 * TOLERANCE
    for format in FORMATS:
        result = results[format]
        assert result["code"] == 0 and f"({format})" in result["stdout"], result
        exported = load_exported(str(tmp / format))
        assert exported.class_names == workdirs.class_names
        assert exported.preprocessing.num_frames == 4 and exported.preprocessing.crop_size == 32
        logits = exported(frames)["logits"]
        difference = max_difference(logits, expected)
        print(f"{format} FlowBlock after block1: max |logit - Keras| = {difference:.2g}")
        assert difference <= TOLERANCE
        assert max_difference(logits, reference) <= TOLERANCE
    assert not [p for p in os.listdir(tmp) if ".tmp-" in p or ".old-" in p]


def test_predict_video_runs_a_tflite_export(cli, workdirs, tmp_path):
    _, tmp = cli()
    trained = load_trained(workdirs.trained)
    video = str(tmp_path / "clip.mp4")
    data.write_video(video, data.render_clip(np.random.default_rng(2), "up", num_frames=10))
    exported = load_exported(str(tmp / "tflite"))
    prediction = predict_video(exported, video)
    pre = exported.preprocessing
    sampled = sample_clips(data.read_video(video, short_side=pre.short_side, fps=pre.fps), pre)
    expected = tf.nn.softmax(keras_logits(trained.model, sampled)).numpy().mean(axis=0)
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-4)


def test_cli_errors(cli):
    results, tmp = cli()
    for name, text in {
        "unknown_format": "flag --format=coreml: value should be one of <saved_model|tflite|onnx>",
        "taken": "taken: exists and is not empty; pass --overwrite",
    }.items():
        result = results[name]
        lines = result["stderr"].splitlines()
        assert result["code"] == 2 and len(lines) == 1, (name, result)
        assert lines[0].startswith("repflow-export: error: ") and text in lines[0], lines
    assert os.listdir(tmp / "taken") == ["keep.txt"]


def tiny_model():
    """A flow-free model taking `frames`: the error tests need no ResNet."""
    frames = keras.Input((None, 32, 32, 3), name="frames")
    pooled = keras.layers.GlobalAveragePooling3D()(frames)
    return keras.Model(frames, keras.layers.Dense(3)(pooled))


def raise_error(saved_model):
    raise RuntimeError("op not supported\nlong converter log")


def log_error(saved_model):  # what tf2onnx does for an op it cannot convert, and goes on
    logging.getLogger("tf2onnx.tfonnx").error("Unsupported ops: Counter({'Foo': 1})\nmore")
    return b"an incomplete model"


@pytest.mark.parametrize(
    "format, converter, message",
    [
        ("tflite", raise_error, "tflite conversion failed: RuntimeError: op not supported"),
        ("onnx", log_error, "onnx conversion failed: Unsupported ops: Counter({'Foo': 1})"),
    ],
    ids=["tflite_raises", "onnx_logs"],
)
def test_a_failing_converter_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, format, converter, message
):
    monkeypatch.setattr(export_formats, f"_to_{format}", converter)
    with pytest.raises(ExportError) as error:
        export_converted(tiny_model(), str(tmp_path / "out"), CLASSES, PRE, format=format)
    assert str(error.value) == message
    assert os.listdir(tmp_path) == []


def test_converted_logits_off_by_more_than_the_tolerance_fail_the_export(tmp_path, monkeypatch):
    class Off:
        """A runner whose logits are Keras's + 0.01."""

        def __init__(self, path):
            pass

        def __call__(self, inputs):
            outputs = keras_outputs(model, PRE, inputs)
            return {**outputs, "logits": outputs["logits"] + 0.01}

    model = tiny_model()
    monkeypatch.setattr(export_formats, "_to_onnx", lambda saved_model: b"not used")
    monkeypatch.setitem(export_formats.RUNNERS, "onnx", Off)
    with pytest.raises(ExportError, match=r"^onnx: the converted model's logits differ from "):
        export_converted(model, str(tmp_path / "out"), CLASSES, PRE, format="onnx")
    assert os.listdir(tmp_path) == []
