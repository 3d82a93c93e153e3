"""bin/convert.py and bin/benchmark_data.py run as a user runs them (from the repo root).

The scripts start in parallel: each pays TensorFlow's import once, so this keeps the test short.
"""

import os
import subprocess
import sys

import numpy as np

from repflow_tf.data import (
    ConvertOptions,
    convert_split,
    load_manifest,
    parse_csv,
    write_video,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [sys.executable, os.path.join("bin", script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=300)
    # Drop TensorFlow's start-up chatter, which it prints before any flag is read.
    lines = [line for line in stderr.splitlines() if line[:5] not in ("I0000", "E0000", "WARNI")]
    return process.returncode, stdout, "\n".join(lines)


def test_scripts(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["path,label"]
    for i in range(4):
        write_video(str(tmp_path / f"{i}.mp4"), rng.integers(0, 255, (6, 24, 32, 3), np.uint8))
        lines.append(f"{i}.mp4,{'ab'[i % 2]}")
    lines.append("gone.mp4,a")
    with open(tmp_path / "train.csv", "w") as f:
        f.write("\n".join(lines) + "\n")
    common = [
        "--format=csv",
        f"--lists=train={tmp_path / 'train.csv'}",
        "--short_side=16",
        "--min_frames=4",
        "--num_workers=1",
    ]
    # A split for the benchmark, written in-process.
    listed = parse_csv(str(tmp_path / "train.csv"))
    convert_split(
        listed, str(tmp_path / "bench"), "train", ConvertOptions(16, min_frames=4), log=None
    )

    processes = {
        "rejects": _start("convert.py", *common, f"--output_dir={tmp_path / 'out1'}"),
        "bad_flag": _start("convert.py", "--format=avi", f"--output_dir={tmp_path}"),
        "bad_workers": _start(
            "convert.py", *common, "--num_workers=-1", f"--output_dir={tmp_path / 'out2'}"
        ),
        "benchmark": _start(
            "benchmark_data.py",
            f"--data={tmp_path / 'bench' / 'train'}",
            "--batch_size=2",
            "--num_frames=4",
            "--crop_size=16",
            "--num_batches=3",
            "--warmup_batches=1",
            "--steps_per_second=1000",
        ),
    }
    results = {name: _finish(process) for name, process in processes.items()}

    code, _, err = results["rejects"]
    assert code == 1, err
    assert "train: 4 accepted, 1 rejected of 5 listed -> 1 shards" in err
    assert f"rejected (train): {tmp_path / 'gone.mp4'}: missing file" in err
    assert "pass --allow_rejects" in err
    manifest = load_manifest(str(tmp_path / "out1" / "train"))
    assert manifest.num_accepted + manifest.num_rejected == manifest.num_listed == 5

    code, _, err = results["bad_flag"]
    assert code == 2
    assert err.strip().splitlines() == [
        "convert.py: error: flag --format=avi: value should be one of "
        "<hmdb51|ucf101|kinetics|csv|synthetic> (see --help)"
    ]

    code, _, err = results["bad_workers"]
    assert code == 2
    assert err.strip().splitlines() == [
        "convert.py: error: flag --num_workers=-1: -1 is not a positive integer (see --help)"
    ], err
    assert not os.path.exists(tmp_path / "out2")

    code, out, err = results["benchmark"]
    assert code == 0, err
    assert "input pipeline:" in out and "clips/s (4x16x16, batch 2" in out
    assert "model step: 2000.0 clips/s" in out and "the bottleneck is the INPUT PIPELINE" in out
