"""MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG on 127.0.0.1), each reading
its own shards, train with the custom loop to the weights and metrics of one process with the
same global batch; only the chief writes the workdir; a split with fewer shards than workers is
refused; a run killed mid-epoch on one worker resumes on both to an uninterrupted run's weights."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_training import DEMO, tiny_overrides

from repflow_tf import data, training
from repflow_tf.benchmarks.scaling import free_ports

# Each process trains, then dumps its final weights and its summary. With EXIT_AT_STEP=k in its
# environment, the process dies (as on a crash) at the end of global step k instead.
WORKER = """
import json, os, sys
import keras
import numpy as np
from repflow_tf import training
from repflow_tf.config import load_config


class ExitAt(keras.callbacks.Callback):  # after the built-in callbacks: the step's checkpoint
    def __init__(self, step):
        super().__init__()
        self.step, self.done = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done == self.step:
            os._exit(3)


callbacks = []
if os.environ.get("EXIT_AT_STEP"):
    callbacks.append(ExitAt(int(os.environ["EXIT_AT_STEP"])))
config = load_config(sys.argv[1], sys.argv[4:])
try:
    result = training.train(config, sys.argv[2], callbacks=callbacks)
except training.TrainingError as error:
    print("TrainingError:", error)
    sys.exit(2)
np.savez(sys.argv[3], *[np.asarray(w) for w in result.model.get_weights()])
with open(sys.argv[3] + ".json", "w") as file:
    json.dump(result.summary, file)
"""


def make_sharded_data(root: str) -> str:
    """16 training videos in 4 shards of 4 (2 per worker, 8 clips each); 20 validation videos
    in shards of 6, 6, 6, 2, which two workers split unevenly (12 and 8 clips)."""
    _split_dirs(root, train=(16, 4), val=(20, 6))
    return root


def deterministic_overrides(root: str, *extra: str) -> list[str]:
    """Full-batch steps (global batch = the 16 training clips) on clips that do not depend on
    the random stream (whole 4-frame videos, full-frame crops, no flips, no dropout): one
    process and two workers then compute the same gradient, whatever each worker's order.

    No flow layer: the comparison needs a gradient that is smooth in float rounding. Measured
    here, a 1e-4 change of the pixels moves this tiny model's gradient by 2e-5 without flow, by
    2e-3 with flow on the (flat, synthetic) frames and by 6e-2 with flow after block1, where
    channels spanning ~1e-6 get rescaled to [0, 255]; two runs that only sum in another order
    would not agree. (The flow layer under a distribution strategy: test_layers.)
    """
    return tiny_overrides(
        root,
        # The converted splits as they are: not checked against (or regenerated with) the
        # synthetic dataset's own settings, which would want longer videos.
        f'data.root="{os.path.join(root, "tfrecords")}"',
        "data.synthetic=false",
        'model.flow_position="none"',
        "data.batch_size=16",
        "data.synthetic_val=20",
        "data.flip=false",
        "data.crop_area=[1.0, 1.0]",
        "data.crop_aspect_ratio=[1.0, 1.0]",
        "model.dropout=0.0",
        "trainer.epochs=3",
        "trainer.checkpoint_every_steps=1",
        *extra,
    )


def start(script, workdir, output, overrides, tf_config=None) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, str(script), DEMO, workdir, output, *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def load_run(output: str) -> tuple[list[np.ndarray], dict]:
    weights = np.load(output)
    with open(output + ".json") as file:
        summary = json.load(file)
    return [weights[f"arr_{i}"] for i in range(len(weights.files))], summary


@pytest.mark.slow
def test_two_workers_match_one_process_and_count_each_validation_clip_once(tmp_path):
    data_root = make_sharded_data(str(tmp_path / "data"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    single = start(
        script,
        str(tmp_path / "single"),
        str(tmp_path / "single.npz"),
        deterministic_overrides(data_root, 'runtime.strategy="one_device"'),
    )
    finish([single])
    workdir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    overrides = deterministic_overrides(data_root, 'runtime.strategy="multi_worker"')
    workers = [
        start(
            script,
            workdir,
            str(tmp_path / f"w{index}.npz"),
            overrides,
            {"cluster": cluster, "task": {"type": "worker", "index": index}},
        )
        for index in range(2)
    ]
    outputs = finish(workers)

    reference, reference_summary = load_run(str(tmp_path / "single.npz"))
    chief, summary = load_run(str(tmp_path / "w0.npz"))
    other, _ = load_run(str(tmp_path / "w1.npz"))
    assert summary["steps"] == reference_summary["steps"] == 3
    assert len(chief) == len(reference) > 10
    # Every training clip once per global batch, the loss averaged over the global batch,
    # gradients summed over the workers, batch norm over both workers' halves: the weights of
    # one process. A worker reading every shard, or a per-worker mean, would differ.
    for mine, theirs, single_process in zip(chief, other, reference, strict=True):
        np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_allclose(mine, single_process, rtol=1e-4, atol=1e-5)
    # Validation of (nearly) the same weights over the same 20 clips: each counted once although
    # one worker has 12 and the other 8 (with repeats, the second would count 16).
    for key in ("val_loss", "val_accuracy", "loss", "accuracy"):
        np.testing.assert_allclose(summary[key], reference_summary[key], rtol=1e-4, err_msg=key)

    # Only the chief logs and writes the workdir; the other worker's checkpoints went to a
    # temporary directory that is gone.
    assert "done: 3 epochs, 3 steps" in outputs[0] and "done:" not in outputs[1]
    assert sorted(os.listdir(workdir)) == [
        "checkpoints",
        "class_names.json",
        "config.toml",
        "logs",
        "model.keras",
        "summary.json",
    ]
    assert summary["replicas"] == 2 and summary["strategy"] == "multi_worker"


def _split_dirs(root: str, train: tuple[int, int], val: tuple[int, int]) -> dict:
    """Synthetic splits of (videos, videos per shard), listed as `training.prepare_data` does."""
    splits = {}
    for split, (count, per_shard) in (("train", train), ("val", val)):
        splits.update(
            data.make_synthetic_dataset(
                root,
                num_train=count if split == "train" else 0,
                num_val=count if split == "val" else 0,
                num_classes=4,
                num_frames=4,
                size=32,
                videos_per_shard=per_shard,
                log=None,
            )
        )
    return {**splits, "num_train": train[0], "num_val": val[0]}


def test_fewer_shards_than_workers_are_refused_and_fewer_than_two_each_warned(tmp_path):
    splits = _split_dirs(str(tmp_path), train=(6, 2), val=(2, 2))  # 3 and 1 shards
    both_train = {**splits, "val": splits["train"], "num_val": 6}
    stream = io.StringIO()
    training.check_worker_shards(both_train, 1, stream)
    assert stream.getvalue() == ""
    for workers in (2, 3):
        stream = io.StringIO()
        training.check_worker_shards(both_train, workers, stream)
        assert stream.getvalue() == (
            f"warning: {splits['train']}: 3 training shards for {workers} workers, fewer than "
            "the 2 per worker recommended; reconvert it with --videos_per_shard=1 or less\n"
        )
    with pytest.raises(training.TrainingError) as error:
        training.check_worker_shards(both_train, 4, stream)
    assert str(error.value) == (
        f"{splits['train']}: 3 training shards for 4 workers, each of which must read its own "
        "shards; reconvert it with --videos_per_shard=1 or less (>= 8 shards)"
    )
    with pytest.raises(training.TrainingError, match="1 validation shard for 2 workers"):
        training.check_worker_shards(splits, 2, None)


def _cluster(count: int) -> list[dict]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(count)]


@pytest.mark.slow
def test_two_workers_refuse_one_training_shard(tmp_path):
    splits = _split_dirs(str(tmp_path / "data"), train=(8, 8), val=(8, 4))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    overrides = tiny_overrides(
        str(tmp_path / "data" / "tfrecords"),
        "data.synthetic=false",
        'runtime.strategy="multi_worker"',
    )
    workers = [
        start(script, str(tmp_path / "run"), str(tmp_path / f"w{i}.npz"), overrides, tf_config)
        for i, tf_config in enumerate(_cluster(2))
    ]
    outputs = [process.communicate(timeout=300)[0] for process in workers]
    expected = (
        f"TrainingError: {splits['train']}: 1 training shard for 2 workers, each of which must "
        "read its own shards; reconvert it with --videos_per_shard=2 or less (>= 4 shards)"
    )
    for process, output in zip(workers, outputs, strict=True):
        assert process.returncode == 2 and expected in output.splitlines(), output[-2000:]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    """2 steps per epoch, 2 epochs; worker 1 dies at the end of step 3 (epoch 2, batch 1), the
    chief is killed too (it would wait for worker 1 in the next step's all-reduce); the same
    command on both resumes from the chief's last checkpoint. (Each step is a full batch: what
    this shows is the weights, optimizer and counters of the resume on both workers; which
    batches a resumed epoch skips is test_training's.)"""
    data_root = make_sharded_data(str(tmp_path / "data"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    overrides = deterministic_overrides(
        data_root,
        'runtime.strategy="multi_worker"',
        "trainer.epochs=2",
        "trainer.steps_per_epoch=2",
        "trainer.validation_steps=1",  # the rest only costs time here
        "trainer.flow_images_every_epochs=0",
        "trainer.histograms_every_epochs=0",
    )

    def run(workdir: str, tf_configs: list[dict], exit_at: int | None = None):
        processes = []
        for index, tf_config in enumerate(tf_configs):
            if index == 1 and exit_at:
                os.environ["EXIT_AT_STEP"] = str(exit_at)
            try:
                output = str(tmp_path / f"{os.path.basename(workdir)}{index}.npz")
                processes.append(start(script, workdir, output, overrides, tf_config))
            finally:
                os.environ.pop("EXIT_AT_STEP", None)
        return processes

    reference = run(str(tmp_path / "reference"), _cluster(2))
    finish(reference)

    workdir = str(tmp_path / "run")
    chief, worker = run(workdir, _cluster(2), exit_at=3)
    worker_output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 3, worker_output[-3000:]
    try:
        chief.wait(timeout=5)
    except subprocess.TimeoutExpired:
        chief.kill()
    chief.communicate()
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    outputs = finish(run(workdir, _cluster(2)))  # the same command again, on new ports
    assert re.search(r"resumed from \S+ckpt-\d+: epoch 2, [01] of 2 batches done", outputs[0])
    expected, expected_summary = load_run(str(tmp_path / "reference0.npz"))
    resumed, summary = load_run(str(tmp_path / "run0.npz"))
    other, _ = load_run(str(tmp_path / "run1.npz"))
    assert summary["steps"] == expected_summary["steps"] == 4
    assert summary["steps_this_run"] < 4
    for mine, theirs, uninterrupted in zip(resumed, other, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_allclose(mine, uninterrupted, rtol=1e-5, atol=1e-7)
