"""Reference implementations that repflow_tf's own code is compared against.

`autodiff_iterate` is Algorithm 1 as a plain `tf.while_loop` over `repflow_tf.ops`'s forward
step, differentiated by TensorFlow's autodiff through the loop: the exact gradient the
hand-written reverse pass of `ops.tvl1_iterate` must reproduce, and the speed it must beat.
Not for training: autodiff through the loop is slow, and outside XLA grappler's memory
optimizer breaks it in realistic `model.fit` runs (DESIGN.md). `autodiff_layers()` makes the
flow layers use it. `ModelGardenStyleFlow` is the same algorithm written the way the widely copied
TensorFlow port writes it.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import ops
from repflow_tf.layers import normalize_per_channel


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


@contextlib.contextmanager
def autodiff_layers():
    """Inside, flow layers traced anew run `autodiff_iterate` instead of `ops.tvl1_iterate`."""
    original = ops.tvl1_iterate

    def iterate(*args, learn=None, jit_compile=None, checkpoint_every=None, native=None, **kwargs):
        del learn, jit_compile, checkpoint_every, native  # autodiff computes every gradient
        return autodiff_iterate(*args, **kwargs)

    ops.tvl1_iterate = iterate
    try:
        yield
    finally:
        ops.tvl1_iterate = original


class ModelGardenStyleFlow(keras.layers.Layer):
    """Algorithm 1 written the way the widely copied TensorFlow port writes it (benchmark only).

    Same inputs, outputs, learnable groups and math as `RepresentationFlow`; different expression:
    the iterations are a Python loop (so the graph holds `num_iter` copies of the body), every
    kernel is a dense (kh, kw, C, C) `tf.nn.conv2d` filter with only the diagonal non-zero, the
    thresholding is three masked `tf.where`s, and each dual update recomputes |∇u|.
    """

    def __init__(self, num_iter=20, gradient="sobel", learn=("divergence", "hyper"), **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.num_iter = num_iter
        self.gradient = gradient
        self.learn = tuple(learn)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        eye = np.eye(channels, dtype="float32")

        def dense_weight(name, depthwise, group):
            # (kh, kw, C, 1) depthwise taps -> (kh, kw, C, C) kernel with an identity mask.
            value = depthwise[:, :, :1, 0][:, :, :, None] * eye[None, None]
            return self.add_weight(
                name=name,
                shape=value.shape,
                initializer=keras.initializers.Constant(value),
                trainable=group in self.learn,
                autocast=False,
            )

        image_x, image_y = ops.image_gradient_kernels(self.gradient, channels)
        diff_x, diff_y = ops.difference_kernels(channels)
        self.img_grad_x = dense_weight("img_grad_x", image_x, "sobel")
        self.img_grad_y = dense_weight("img_grad_y", image_y, "sobel")
        self.f_grad_x = dense_weight("f_grad_x", diff_x, "divergence")
        self.f_grad_y = dense_weight("f_grad_y", diff_y, "divergence")
        self.f_grad_x2 = dense_weight("f_grad_x2", diff_x, "divergence")
        self.f_grad_y2 = dense_weight("f_grad_y2", diff_y, "divergence")
        self.log_hyper = {}
        for name, value in (("theta", 0.3), ("lambda", 0.15), ("tau", 0.25)):
            self.log_hyper[name] = self.add_weight(
                name=f"log_{name}",
                shape=(),
                initializer=keras.initializers.Constant(math.log(value)),
                trainable="hyper" in self.learn,
                autocast=False,
            )

    def call(self, inputs):
        clips = normalize_per_channel(tf.cast(inputs, tf.float32))
        shape = tf.shape(clips)
        frame_shape = tf.stack([shape[0] * (shape[1] - 1), shape[2], shape[3], shape[4]])
        img1 = tf.reshape(clips[:, :-1], frame_shape)
        img2 = tf.reshape(clips[:, 1:], frame_shape)
        theta = tf.exp(self.log_hyper["theta"].value)
        l_t = tf.exp(self.log_hyper["lambda"].value) * theta
        taut = tf.exp(self.log_hyper["tau"].value) / theta

        def conv(x, kernel):
            return tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "VALID")

        def edge_pad(x, kernel):
            kh, kw = kernel.shape[0], kernel.shape[1]
            paddings = [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]]
            return tf.pad(x, paddings, mode="SYMMETRIC")

        def divergence(p1, p2):
            grad_x = conv(tf.pad(p1, [[0, 0], [0, 0], [1, 0], [0, 0]]), self.f_grad_x)
            grad_y = conv(tf.pad(p2, [[0, 0], [1, 0], [0, 0], [0, 0]]), self.f_grad_y)
            return grad_x + grad_y

        def forward_grad(x):
            grad_x = tf.pad(conv(x, self.f_grad_x2), [[0, 0], [0, 0], [0, 1], [0, 0]])
            grad_y = tf.pad(conv(x, self.f_grad_y2), [[0, 0], [0, 1], [0, 0], [0, 0]])
            return grad_x, grad_y

        grad2_x = conv(edge_pad(img2, self.img_grad_x), self.img_grad_x)
        grad2_y = conv(edge_pad(img2, self.img_grad_y), self.img_grad_y)
        grad = grad2_x**2 + grad2_y**2 + 1e-12
        rho_c = img2 - img1
        u1 = tf.zeros_like(img1)
        u2 = tf.zeros_like(img1)
        p11 = tf.zeros_like(img1)
        p12 = tf.zeros_like(img1)
        p21 = tf.zeros_like(img1)
        p22 = tf.zeros_like(img1)
        zeros = tf.zeros_like(img1)
        for _ in range(self.num_iter):
            rho = rho_c + grad2_x * u1 + grad2_y * u2
            mask1 = rho < -l_t * grad
            tmp11 = tf.where(mask1, l_t * grad2_x, zeros)
            tmp12 = tf.where(mask1, l_t * grad2_y, zeros)
            mask2 = rho > l_t * grad
            tmp21 = tf.where(mask2, -l_t * grad2_x, zeros)
            tmp22 = tf.where(mask2, -l_t * grad2_y, zeros)
            mask3 = (~mask1) & (~mask2) & (grad > 1e-12)
            tmp31 = tf.where(mask3, (-rho / grad) * grad2_x, zeros)
            tmp32 = tf.where(mask3, (-rho / grad) * grad2_y, zeros)
            v1 = tmp11 + tmp21 + tmp31 + u1
            v2 = tmp12 + tmp22 + tmp32 + u2
            u1 = v1 + theta * divergence(p11, p12)
            u2 = v2 + theta * divergence(p21, p22)
            u1x, u1y = forward_grad(u1)
            u2x, u2y = forward_grad(u2)
            p11 = (p11 + taut * u1x) / (1.0 + taut * tf.sqrt(u1x**2 + u1y**2 + 1e-12))
            p12 = (p12 + taut * u1y) / (1.0 + taut * tf.sqrt(u1x**2 + u1y**2 + 1e-12))
            p21 = (p21 + taut * u2x) / (1.0 + taut * tf.sqrt(u2x**2 + u2y**2 + 1e-12))
            p22 = (p22 + taut * u2y) / (1.0 + taut * tf.sqrt(u2x**2 + u2y**2 + 1e-12))
        out_shape = tf.concat([shape[:1], shape[1:2] - 1, shape[2:]], axis=0)
        return tf.concat([tf.reshape(u1, out_shape), tf.reshape(u2, out_shape)], axis=-1)
