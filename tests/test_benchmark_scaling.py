"""The scaling benchmark's arithmetic and report (the run itself: bin/benchmark_scaling.py
--quick, minutes, not part of the suite)."""

import pytest

from repflow_tf.benchmarks import scaling


def test_ring_allreduce_and_projection():
    # 8 GPUs: each sends 2 * 7/8 of the bytes; 100 MB at 25 GB/s -> 7 ms.
    assert scaling.ring_allreduce_ms(100e6, 8, 25.0) == pytest.approx(7.0)
    assert scaling.ring_allreduce_ms(100e6, 1, 25.0) == 0.0
    settings = scaling.ScalingSettings(gpus=8, bandwidth_gb_s=10.0, gpu_step_ms=100.0)
    (row,) = scaling.projection({"m": 25_000_000}, settings)
    assert row["bytes_per_step"] == 100_000_000
    assert row["allreduce_ms"] == pytest.approx(17.5)
    assert row["efficiency_not_overlapped"] == pytest.approx(100 / 117.5)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="global_batch=6"):
        scaling.ScalingSettings(workers=(1, 4), global_batch=6)
    with pytest.raises(ValueError, match="num_videos=4"):
        scaling.ScalingSettings(workers=(1, 4), num_videos=4)


def test_markdown_report():
    row = {
        "workers": 1,
        "per_worker_batch": 16,
        "step_ms": 500.0,
        "steps_per_s": 2.0,
        "clips_per_s": 32.0,
        "fixed_step_ms": 450.0,
        "allreduce_ms": 5.0,
        "compute_ms": 445.0,
        "input_wait_ms": 50.0,
        "input_ms": 20.0,
        "parameters": 700_000,
        "model": "2d ResNet-18 (configs/demo.toml)",
    }
    two = {**row, "workers": 2, "per_worker_batch": 8, "clips_per_s": 48.0, "steps_per_s": 3.0}
    settings = scaling.ScalingSettings()
    results = {
        "settings": vars(settings) | {"workers": [1, 2]},
        "machine": {"cpu_count": 2},
        "rows": [row, two],
        "projection": scaling.projection({row["model"]: row["parameters"]}, settings),
    }
    text = scaling.format_markdown(results)
    assert "| 1 | 16 | 2.00 | 32.0 | 1.00 | 500 | 445 | 5.0 | 50 | 20 |" in text
    assert "| 2 | 8 | 3.00 | 48.0 | 0.75 |" in text
    assert "| 2d ResNet-18 (configs/demo.toml) | 0.70M | 2.8 | 0.2 | 0.999 |" in text
    assert scaling.format_row(row) == (
        "1 workers: 2.00 steps/s, 32.0 clips/s (step 500 ms = compute 445 + all-reduce 5 + "
        "input wait 50)"
    )
