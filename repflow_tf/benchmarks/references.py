"""Reference implementations that repflow_tf's own code is compared against.

`autodiff_iterate` is Algorithm 1 as a plain `tf.while_loop` over `repflow_tf.ops`'s forward
step, differentiated by TensorFlow's autodiff through the loop: the exact gradient the
hand-written reverse pass of `ops.tvl1_iterate` must reproduce, and the speed it must beat.
Not for training: autodiff through the loop is slow, and outside XLA grappler's memory
optimizer breaks it in realistic `model.fit` runs (DESIGN.md).
"""

from __future__ import annotations

import tensorflow as tf

from repflow_tf import ops


def autodiff_iterate(
    frame1: tf.Tensor,
    frame2: tf.Tensor,
    *,
    image_kernels: tuple[tf.Tensor, tf.Tensor],
    difference_kernels: tuple[tf.Tensor, tf.Tensor],
    divergence_kernels: tuple[tf.Tensor, tf.Tensor],
    theta: tf.Tensor,
    lambda_: tf.Tensor,
    tau: tf.Tensor,
    num_iter: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """`ops.tvl1_iterate` as one plain while loop whose gradient is TensorFlow's autodiff.

    Same arguments and outputs; computes in the dtype of `frame1` (float32 or float64).

    >>> import numpy as np
    >>> kx, ky = ops.image_gradient_kernels("sobel", 1)
    >>> dx, dy = ops.difference_kernels(1)
    >>> f1 = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 1)).astype("float32")
    >>> u_x, u_y = autodiff_iterate(f1, np.roll(f1, 1, axis=2), image_kernels=(kx, ky),
    ...     difference_kernels=(dx, dy), divergence_kernels=(dx, dy), theta=0.3,
    ...     lambda_=0.15, tau=0.25, num_iter=5)
    >>> u_x.shape
    TensorShape([1, 8, 8, 1])
    """
    frame1 = tf.convert_to_tensor(frame1)
    dtype = frame1.dtype if frame1.dtype == tf.float64 else tf.float32
    kernels = [
        tf.cast(kernel, dtype)
        for kernel in (*image_kernels, *difference_kernels, *divergence_kernels)
    ]
    frame1 = tf.cast(frame1, dtype)
    frame2 = tf.cast(frame2, dtype)
    theta, lambda_, tau = (tf.cast(value, dtype) for value in (theta, lambda_, tau))
    fields = ops._fields(frame1, frame2, kernels[0], kernels[1])
    stencils = ops._stencils(kernels)
    scalars = ops._scalars(theta, lambda_, tau)
    state = ops._zeros_state(frame1)
    outputs = tf.while_loop(
        lambda *_: True,
        lambda *s: ops._step(s, fields, stencils, scalars),
        state,
        maximum_iterations=num_iter,
    )
    return outputs[0][0], outputs[0][1]
