"""bin/benchmark_layer.py's kernels case: the convolution-gradient check it runs in a fresh
process per kernel set, and the table it writes."""

from __future__ import annotations

from repflow_tf.benchmarks import layer


def test_the_conv_gradient_check_is_exact_with_tensorflows_default_kernels():
    # The test process keeps TensorFlow's default (Eigen) kernels on a CPU without AVX-512.
    assert layer.conv_gradient_error() < 1e-5


def test_the_kernels_table_shows_each_measurement_and_a_failed_check():
    results = [
        {
            "case": "onednn",
            "impl": "conv_gradient_eigen",
            "direction": "accuracy",
            "rel_error": 1.7e-7,
        },
        {
            "case": "onednn",
            "impl": "conv_gradient_onednn",
            "direction": "accuracy",
            "error": "free(): invalid next size (normal)",
        },
        {"case": "onednn", "impl": "rgb_only_eigen", "direction": "train_step", "ms": 600.0},
        {"case": "onednn", "impl": "rgb_only_onednn", "direction": "train_step", "ms": 300.0},
    ]
    text = layer.report(results, layer.Settings(cases=("onednn",)))
    assert "| relative error | 1.7e-07 | failed (below) |" in text
    assert "| RGB only | 600.0 | 300.0 | 2.00x |" in text
    assert "| learned flow after block 1 | - | - | - |" in text
    assert "failed: onednn conv_gradient_onednn accuracy: free(): invalid next size" in text
