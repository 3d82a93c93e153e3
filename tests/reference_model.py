"""Runs a model's flow layers through the independent NumPy reference instead of repflow_tf.ops.

A test that compares an export (or a CLI's output) with the Keras model in the same process
passes whatever ops.py computes, as long as it computes it twice. Under `reference_flow()` the
Keras model's flow comes from `reference_flow.tvl1_flow` (float64, written from the paper), so
the comparison fails when the flow in the export is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
from reference_flow import tvl1_flow

from repflow_tf import ops

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def _taps(kernel: tf.Tensor) -> np.ndarray:
    """The spatial taps shared by every channel of a depthwise (h, w, C, 1) kernel."""
    values = np.asarray(kernel, np.float64)[..., 0]
    if not np.all(values == values[..., :1]):
        raise NotImplementedError("reference_flow: per-channel kernels differ")
    return values[..., 0]


def _reference_iterate(
    frame1,
    frame2,
    *,
    image_kernels,
    difference_kernels,
    divergence_kernels,
    theta,
    lambda_,
    tau,
    num_iter,
    **_,
):
    if not np.allclose(_taps(image_kernels[0]), SOBEL_X) or not np.allclose(
        _taps(image_kernels[1]), SOBEL_X.T
    ):
        raise NotImplementedError("reference_flow: only the Sobel image gradient")
    if not all(np.array_equal(_taps(k).ravel(), [-1.0, 1.0]) for k in difference_kernels):
        raise NotImplementedError("reference_flow: only the [-1, 1] forward difference")
    div_x, div_y = (tuple(_taps(k).ravel()) for k in divergence_kernels)
    scalars = [float(value) for value in (theta, lambda_, tau)]

    def flow(first, second):
        u_x, u_y = tvl1_flow(
            first,
            second,
            num_iter=num_iter,
            theta=scalars[0],
            lambda_=scalars[1],
            tau=scalars[2],
            divergence_x=div_x,
            divergence_y=div_y,
        )
        return u_x.astype(np.float32), u_y.astype(np.float32)

    u_x, u_y = tf.numpy_function(flow, [frame1, frame2], [tf.float32, tf.float32])
    return tf.ensure_shape(u_x, frame1.shape), tf.ensure_shape(u_y, frame1.shape)


@contextlib.contextmanager
def reference_flow() -> Iterator[None]:
    """Within: every RepresentationFlow layer called eagerly computes its flow with the reference
    (untrained kernels only: Sobel gradient, [-1, 1] differences; θ, λ, τ and the divergence
    taps as the layer holds them)."""
    original = ops.tvl1_iterate
    ops.tvl1_iterate = _reference_iterate
    try:
        yield
    finally:
        ops.tvl1_iterate = original


def reference_logits(model, frames) -> np.ndarray:
    """`model(frames)` in inference mode, its flow computed by the reference."""
    with reference_flow():
        return np.asarray(model(tf.convert_to_tensor(frames, tf.float32), training=False))
