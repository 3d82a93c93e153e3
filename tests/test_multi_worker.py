"""MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG on 127.0.0.1) train with the
custom loop and end with identical weights; only the chief writes the workdir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_training import DEMO, make_tiny_data, tiny_overrides

# Each worker trains, then dumps its final weights (as the chief and the other worker see them).
WORKER = """
import sys
import numpy as np
from repflow_tf import training
from repflow_tf.config import load_config

config = load_config(sys.argv[1], sys.argv[4:])
result = training.train(config, sys.argv[2])
np.savez(sys.argv[3], *[np.asarray(w) for w in result.model.get_weights()])
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(tmp_path):
    data_root = make_tiny_data(str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    overrides = tiny_overrides(
        data_root,
        'runtime.strategy="multi_worker"',
        "data.batch_size=4",  # 2 per worker
        "trainer.epochs=2",
        "trainer.steps_per_epoch=2",
        "trainer.checkpoint_every_steps=1",
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    DEMO,
                    workdir,
                    str(tmp_path / f"w{index}.npz"),
                    *overrides,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=240)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    chief, other = (np.load(tmp_path / f"w{index}.npz") for index in range(2))
    assert len(chief.files) == len(other.files) > 10
    for key in chief.files:
        np.testing.assert_array_equal(chief[key], other[key])
    # Only the chief logs and writes the workdir; the other worker's checkpoints went to a
    # temporary directory that is gone.
    assert "done: 2 epochs, 4 steps" in outputs[0] and "done:" not in outputs[1]
    assert "epoch 2/2 done" in outputs[0]
    assert sorted(os.listdir(workdir)) == [
        "checkpoints",
        "class_names.json",
        "config.toml",
        "logs",
        "model.keras",
        "summary.json",
    ]
    with open(os.path.join(workdir, "summary.json")) as file:
        summary = json.load(file)
    assert summary["replicas"] == 2 and summary["strategy"] == "multi_worker"
    assert np.isfinite(summary["val_accuracy"])
