"""Metrics against hand-computed references, the evaluation loop on a workdir, repflow-evaluate."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
import trained_workdir
from reference_model import reference_logits

from repflow_tf import data
from repflow_tf.evaluation import (
    ClassificationMetrics,
    compute_metrics,
    correct_at_k,
    evaluate_model,
    evaluate_workdir,
    format_summary,
)
from repflow_tf.visualize import render_confusion
from repflow_tf.workdir import WorkdirError, load_trained, read_workdir


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return trained_workdir.get(tmp_path_factory)


# Three videos of two clips each over six classes; every value below is worked out by hand.
LOGITS = np.array(
    [
        # video 0, label 0: clip top-1 right / wrong (class 1); mean [2.5, 5, 0...] -> class 1.
        [[5, 4, 0, 0, 0, 0], [0, 6, 0, 0, 0, 0]],
        # video 1, label 2: clip right / wrong (class 3); mean [0, 0, 2, 1.5, 0, 0] -> class 2.
        [[0, 0, 3, 1, 0, 0], [0, 0, 1, 2, 0, 0]],
        # video 2, label 5: clip 1 ranks it last (not top-5), clip 2 right; mean -> class 5.
        [[6, 5, 4, 3, 2, 1], [1, 1, 1, 1, 1, 9]],
    ],
    np.float32,
)
LABELS = np.array([0, 2, 5])
NAMES = ("a", "b", "c", "d", "e", "f")


def test_metrics_match_hand_computed_reference():
    result = compute_metrics(LOGITS, LABELS, NAMES)
    assert result.num_videos == 3 and result.clips_per_video == 2
    assert result.clip_top1 == pytest.approx(3 / 6)
    assert result.clip_top5 == pytest.approx(5 / 6)
    assert result.video_top1 == pytest.approx(2 / 3)  # video 0 is wrong after averaging
    assert result.video_top5 == 1.0
    expected = np.zeros((6, 6), np.int64)
    expected[0, 1] = expected[2, 2] = expected[5, 5] = 1
    np.testing.assert_array_equal(result.confusion, expected)
    per_class = result.per_class_accuracy
    assert per_class[0] == 0.0 and per_class[2] == 1.0 and per_class[5] == 1.0
    assert all(math.isnan(per_class[i]) for i in (1, 3, 4))  # no videos of these classes
    assert result.mean_class_accuracy == pytest.approx(2 / 3)
    report = result.to_json()
    assert report["per_class"]["b"] == {"accuracy": None, "videos": 0}
    assert report["per_class"]["a"] == {"accuracy": 0.0, "videos": 1}
    json.dumps(report, allow_nan=False)  # strict JSON


def test_clip_loss_is_the_mean_cross_entropy_of_every_clip():
    logits = np.random.default_rng(0).normal(0, 30, (5, 3, 4))  # large: needs a stable softmax
    labels = np.array([0, 3, 1, 1, 2])
    expected = keras.losses.categorical_crossentropy(
        np.eye(4)[np.repeat(labels, 3)], logits.reshape(15, 4), from_logits=True
    )
    result = compute_metrics(logits, labels, ["a", "b", "c", "d"])
    assert result.clip_loss == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert math.isfinite(result.clip_loss) and result.to_json()["clip_loss"] == result.clip_loss


def test_top_k_ties_follow_argmax_and_small_class_counts():
    scores = np.array([[1.0, 1.0, 0.0], [0.2, 0.5, 0.3]])
    np.testing.assert_array_equal(correct_at_k(scores, np.array([1, 0]), 1), [False, False])
    np.testing.assert_array_equal(correct_at_k(scores, np.array([1, 0]), 2), [True, False])
    np.testing.assert_array_equal(correct_at_k(scores, np.array([1, 0]), 3), [True, True])
    # Fewer classes than 5: top-5 is top-all, always right.
    result = compute_metrics(np.array([[0.0, 1.0], [1.0, 0.0]]), [0, 0], ["x", "y"])
    assert result.video_top1 == 0.5 and result.video_top5 == 1.0
    assert "top-2" in format_summary(result)


def test_streaming_updates_equal_one_shot():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(23, 3, 7))
    labels = rng.integers(0, 7, 23)
    metrics = ClassificationMetrics(7)
    for start in range(0, 23, 5):
        metrics.update(logits[start : start + 5], labels[start : start + 5])
    streamed, once = metrics.result("abcdefg"), compute_metrics(logits, labels, "abcdefg")
    assert streamed.to_json() == once.to_json()
    np.testing.assert_array_equal(streamed.confusion, once.confusion)


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (np.zeros((2, 1, 4)), [0, 1], r"\(videos, clips, 3\)"),
        (np.zeros((2, 1, 3)), [0], "Expected 2 labels"),
        (np.zeros((2, 1, 3)), [0, 3], "must be < 3"),
    ],
)
def test_metrics_reject_bad_input(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        ClassificationMetrics(3).update(logits, np.array(labels))


@pytest.mark.slow
def test_workdir_errors_name_the_files(workdirs, tmp_path):
    # (Architecture, data class count, missing workdir, bad --set and split: see the CLI test.)
    broken = str(tmp_path / "broken")
    shutil.copytree(workdirs.trained, broken, ignore=shutil.ignore_patterns("logs", "eval_*"))
    with open(os.path.join(broken, "class_names.json"), "w") as f:
        json.dump(["up", "down"], f)
    with pytest.raises(WorkdirError, match="json lists 2 classes but .*model.num_classes=4"):
        read_workdir(broken)
    with open(os.path.join(broken, "class_names.json"), "w") as f:
        json.dump(["w", "x", "y", "z"], f)  # right count, but not the data's classes
    with pytest.raises(WorkdirError, match="class 0 is .* in its manifest.json but 'w'"):
        evaluate_workdir(broken, log=None)
    with open(os.path.join(broken, "model.keras"), "wb") as f:
        f.write(b"not a zip file")
    with pytest.raises(WorkdirError, match="broken/model.keras: cannot load the Keras model"):
        read_workdir(broken).load()
    os.remove(os.path.join(broken, "model.keras"))
    with pytest.raises(WorkdirError, match="broken/model.keras: model file not found"):
        read_workdir(broken)
    with pytest.raises(WorkdirError, match="both a model"):
        read_workdir(model_path=os.path.join(broken, "model.keras"))


@pytest.fixture(scope="module")
def cli(workdirs, tmp_path_factory):
    """repflow-evaluate's main() on good and bad workdirs (in the background, one process)."""
    tmp = tmp_path_factory.mktemp("evaluate_cli")
    missing = str(tmp / "missing")
    cases = {
        "ok": [f"--workdir={workdirs.trained}", "--log_every=1"],
        "one_clip": [
            f"--workdir={workdirs.trained}",
            "--num_clips=1",
            "--batch_size=4",
            f"--output_dir={tmp / 'one_clip'}",
        ],
        "architecture": [f"--workdir={workdirs.other_architecture}"],
        "classes": [f"--workdir={workdirs.other_classes}"],
        "missing": [f"--workdir={missing}"],
        "bad_set": [f"--workdir={workdirs.trained}", "--set=data.eval_clips=0"],
        "bad_split": [f"--workdir={workdirs.trained}", "--split=nope"],
        "no_workdir": [],
    }
    output = str(tmp / "results.json")
    driver = trained_workdir.start_cli("evaluate", list(cases.values()), output)
    yield lambda: dict(zip(cases, trained_workdir.finish_cli(driver, output), strict=True))
    driver.kill()
    driver.wait()


def _reference(workdirs, num_clips):
    """Metrics of the Keras model over the split, one video at a time (no evaluation code)."""
    trained = load_trained(workdirs.trained)
    dataset = data.video_dataset(
        os.path.join(workdirs.data_root, "val"),
        training=False,
        num_frames=4,
        crop_size=32,
        num_clips=None if num_clips == 1 else num_clips,
    )
    logits, labels = [], []
    for frames, label in dataset:
        clips = frames[None] if num_clips == 1 else frames
        logits.append(reference_logits(trained.model, clips))
        labels.append(int(label))
    return compute_metrics(np.stack(logits), labels, workdirs.class_names)


@pytest.mark.slow
def test_cli_report_matches_direct_computation(cli, workdirs):
    references = {k: _reference(workdirs, k) for k in (2, 1)}  # while the CLI runs
    results = cli()
    ok = results["ok"]
    assert ok["code"] == 0, ok["stderr"]
    # Progress: 8 videos in batches of data.batch_size=3, then the summary table.
    assert [line for line in ok["stdout"].splitlines() if "batch" in line] == [
        line for line in ok["stdout"].splitlines() if line.startswith("eval val: batch ")
    ]
    assert "eval val: batch 3/3, 8 videos" in ok["stdout"]
    assert "val: 8 videos x 2 clips, 4 classes" in ok["stdout"] and "per class" in ok["stdout"]
    assert results["one_clip"]["code"] == 0, results["one_clip"]["stderr"]
    assert "batch 2/2, 8 videos" in results["one_clip"]["stdout"]

    report_dirs = {2: os.path.join(workdirs.trained, "eval_val"), 1: ""}
    report_dirs[1] = results["one_clip"]["argv"][-1].split("=", 1)[1]
    for num_clips, report in report_dirs.items():
        reference = references[num_clips]
        with open(os.path.join(report, "metrics.json")) as f:
            metrics = json.load(f)
        assert metrics["split"] == "val" and metrics["num_videos"] == 8
        assert metrics["clips_per_video"] == num_clips
        for name in ("clip_top1", "clip_top5", "video_top1", "video_top5"):
            assert metrics[name] == pytest.approx(getattr(reference, name)), name
        # Continuous, unlike the accuracies: it moves when the flow is computed differently.
        assert metrics["clip_loss"] == pytest.approx(reference.clip_loss, rel=1e-4)
        assert metrics["per_class"] == json.loads(json.dumps(reference.to_json()["per_class"]))
        with open(os.path.join(report, "confusion.json")) as f:
            assert json.load(f)["matrix"] == reference.confusion.tolist()
        assert sum(map(sum, reference.confusion.tolist())) == 8
        png = tf.io.decode_png(tf.io.read_file(os.path.join(report, "confusion.png"))).numpy()
        expected = render_confusion(reference.confusion, reference.class_names)
        np.testing.assert_array_equal(png, expected)  # the figure, with names and counts
    events = glob.glob(os.path.join(workdirs.trained, "logs", "eval_val", "events.*"))
    tags = {
        value.tag
        for path in events
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
    }
    assert {"confusion_matrix", "accuracy/video_top1", "accuracy/clip_top5", "summary"} <= tags


@pytest.mark.slow
def test_cli_errors_are_one_line(cli):
    results = cli()
    expected = {
        "architecture": "other_architecture/model.keras is not the architecture",
        "classes": "val has 4 classes (its manifest.json) but",
        "missing": "missing: no such directory (--workdir)",
        "bad_set": "--set data.eval_clips=0: [data] `eval_clips` must be an integer >= 1",
        "bad_split": "nope: no such split directory",
        "no_workdir": "--workdir",
    }
    trained_workdir.check_error_lines(results, expected, "repflow-evaluate")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_evaluation_shows_a_bar_on_a_terminal_and_lines_in_a_log(workdirs, terminal):
    log = _Terminal() if terminal else io.StringIO()
    trained = load_trained(workdirs.trained)
    split = os.path.join(workdirs.data_root, "val")
    evaluate_model(trained, split, num_clips=2, batch_size=3, log_every=1, log=log)
    text = log.getvalue()
    if terminal:
        assert "\r" in text and "eval val: 100%" in text and "3/3" in text and "top1=" in text
        assert "batch 1/3" not in text
    else:
        assert [line.split(",")[0] for line in text.splitlines()] == [
            f"eval val: batch {index}/3" for index in (1, 2, 3)
        ]
