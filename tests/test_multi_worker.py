"""MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG on 127.0.0.1), each reading
its own shards, train with the custom loop to the weights and metrics of one process with the
same global batch; only the chief writes the workdir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_training import DEMO, tiny_overrides

from repflow_tf import data

# Each process trains, then dumps its final weights and its summary.
WORKER = """
import json, sys
import numpy as np
from repflow_tf import training
from repflow_tf.config import load_config

config = load_config(sys.argv[1], sys.argv[4:])
result = training.train(config, sys.argv[2])
np.savez(sys.argv[3], *[np.asarray(w) for w in result.model.get_weights()])
with open(sys.argv[3] + ".json", "w") as file:
    json.dump(result.summary, file)
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def make_sharded_data(root: str) -> str:
    """16 training videos in 4 shards of 4 (2 per worker, 8 clips each); 20 validation videos
    in shards of 6, 6, 6, 2, which two workers split unevenly (12 and 8 clips)."""
    for split, count, per_shard in (("train", 16, 4), ("val", 20, 6)):
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
