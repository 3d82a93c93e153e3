"""Pure math of the representation flow iteration (Algorithm 1 of the paper); no Keras state.

Conventions (see DESIGN.md): channels-last (N, H, W, C) float tensors; every kernel is depthwise
(shape (kh, kw, C, 1)), so no channel ever sees another channel's gradients; image gradients are
Sobel/8 (or central differences) correlated with edge-replicate padding, so flow is in pixels and
points along the motion; ∇u is a forward difference whose last column/row is 0; div(p) zero-pads p
in front and correlates with [-1, 1], the negative adjoint of ∇u.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

EPSILON = 1e-12
GRADIENTS = ("sobel", "central")

# Correlation kernels of the positive x derivative; the y kernels are their transposes.
_X_GRADIENT_TAPS = {
    "sobel": np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0,
    "central": np.array([[-0.5, 0.0, 0.5]]),
}
_DIFFERENCE_TAPS = np.array([[-1.0, 1.0]])


def _validate_gradient(gradient: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"`gradient` must be one of {GRADIENTS}. Received: gradient={gradient!r}")


def _depthwise(taps: np.ndarray, channels: int) -> np.ndarray:
    """Repeats a 2-D tap array over channels as a depthwise filter (kh, kw, channels, 1)."""
    return np.repeat(taps[:, :, None, None], channels, axis=2).astype("float32")


def image_gradient_kernels(gradient: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Default depthwise (x, y) image-gradient filters for `gradient` in {"sobel", "central"}.

    >>> kx, ky = image_gradient_kernels("sobel", 4)
    >>> kx.shape, ky.shape
    ((3, 3, 4, 1), (3, 3, 4, 1))
    """
    _validate_gradient(gradient)
    taps = _X_GRADIENT_TAPS[gradient]
    return _depthwise(taps, channels), _depthwise(taps.T, channels)


def difference_kernels(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Default depthwise [-1, 1] filters along x (1, 2, C, 1) and y (2, 1, C, 1).

    Used both for the forward difference ∇u and for the divergence of p.
    """
    return _depthwise(_DIFFERENCE_TAPS, channels), _depthwise(_DIFFERENCE_TAPS.T, channels)


def _correlate(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """VALID depthwise correlation of (N, H, W, C) `x` with a (kh, kw, C, 1) kernel.

    Written as a sum of shifted slices times per-channel taps rather than a depthwise
    convolution: the kernels are tiny (at most 3x3), and elementwise ops fuse under XLA, where
    depthwise convolutions on the CPU are slow.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    out_h = tf.shape(x)[1] - kh + 1
    out_w = tf.shape(x)[2] - kw + 1
    result = None
    for i in range(kh):
        for j in range(kw):
            term = x[:, i : i + out_h, j : j + out_w, :] * kernel[i, j, :, 0]
            result = term if result is None else result + term
    return result


def image_gradients(
    image: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(∂x, ∂y) of `image` (N, H, W, C) with edge-replicate padding; same shape as the input."""

    def correlate_edge_padded(kernel):
        kh, kw = kernel.shape[0], kernel.shape[1]
        # SYMMETRIC padding by one pixel repeats the border pixel: edge replication.
        padded = tf.pad(
            image,
            [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]],
            mode="SYMMETRIC",
        )
        return _correlate(padded, kernel)

    return correlate_edge_padded(kernel_x), correlate_edge_padded(kernel_y)


def forward_gradients(
    field: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Forward differences of `field` along x and y; the last column (x) / row (y) is 0."""
    grad_x = tf.pad(_correlate(field, kernel_x), [[0, 0], [0, 0], [0, 1], [0, 0]])
    grad_y = tf.pad(_correlate(field, kernel_y), [[0, 0], [0, 1], [0, 0], [0, 0]])
    return grad_x, grad_y


def divergence(
    p_x: tf.Tensor, p_y: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tf.Tensor:
    """div(p) = p_x ⋆ w_x + p_y ⋆ w_y with p zero-padded on the first column / row (Eq. 9)."""
    div_x = _correlate(tf.pad(p_x, [[0, 0], [0, 0], [1, 0], [0, 0]]), kernel_x)
    div_y = _correlate(tf.pad(p_y, [[0, 0], [1, 0], [0, 0], [0, 0]]), kernel_y)
    return div_x + div_y


def _iterate(frame1, frame2, kernels, theta, lambda_, tau, num_iter):
    image_x, image_y, difference_x, difference_y, divergence_x, divergence_y = kernels
    grad_x, grad_y = image_gradients(frame2, image_x, image_y)
    inv_grad_sq = 1.0 / (grad_x * grad_x + grad_y * grad_y + EPSILON)
    constant = frame2 - frame1
    step = lambda_ * theta
    tau_over_theta = tau / theta

    def dual_step(p_x, p_y, field):
        d_x, d_y = forward_gradients(field, difference_x, difference_y)
        denominator = 1.0 + tau_over_theta * tf.sqrt(d_x * d_x + d_y * d_y + EPSILON)
        return (
            (p_x + tau_over_theta * d_x) / denominator,
            (p_y + tau_over_theta * d_y) / denominator,
        )

    def body(u_x, u_y, p_xx, p_xy, p_yx, p_yy):
        rho = constant + grad_x * u_x + grad_y * u_y
        # The three cases of the thresholding step are one clip: -ρ/|∇F|² limited to ±λθ.
        shift = tf.clip_by_value(-rho * inv_grad_sq, -step, step)
        v_x = u_x + shift * grad_x
        v_y = u_y + shift * grad_y
        u_x = v_x + theta * divergence(p_xx, p_xy, divergence_x, divergence_y)
        u_y = v_y + theta * divergence(p_yx, p_yy, divergence_x, divergence_y)
        p_xx, p_xy = dual_step(p_xx, p_xy, u_x)
        p_yx, p_yy = dual_step(p_yx, p_yy, u_y)
        return u_x, u_y, p_xx, p_xy, p_yx, p_yy

    zeros = tf.zeros_like(frame1)
    outputs = tf.while_loop(lambda *_: True, body, (zeros,) * 6, maximum_iterations=num_iter)
    return outputs[0], outputs[1]


@functools.cache
def _compiled_iteration(num_iter: int):
    """The iteration as an op whose forward and backward are each one XLA-compiled function.

    Why not a plain while loop: outside XLA, TensorFlow's grappler memory optimizer rewrites the
    AddN nodes of a while loop's gradient into TemporaryVariable accumulators once the graph's
    estimated memory exceeds 80% of the device's memory limit (256 MB for a CPU), and those
    collide between loop iterations ("AlreadyExistsError ... TemporaryVariable ... iter:N") in
    any realistic model.fit. Inside XLA the gradient loop never reaches grappler. The backward
    recomputes the forward under a tape (the loop's intermediates stay inside XLA), so the
    gradient is the exact gradient of the same loop, at the cost of one more forward pass.
    """

    def forward(frame1, frame2, kernels, theta, lambda_, tau):
        return _iterate(frame1, frame2, kernels, theta, lambda_, tau, num_iter)

    compiled_forward = tf.function(forward, jit_compile=True, autograph=False)

    @tf.function(jit_compile=True, autograph=False)
    def compiled_backward(inputs, output_gradients):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = forward(inputs[0], inputs[1], inputs[2:8], *inputs[8:])
        return tape.gradient(
            outputs, inputs, output_gradients=output_gradients, unconnected_gradients="zero"
        )

    @tf.custom_gradient
    def iteration(*inputs):
        # The gradient comes from `gradient` below; a tape recording the compiled forward would
        # ask XLA for the loop's TensorList accumulators, which cannot leave an XLA function.
        held = [tf.stop_gradient(value) for value in inputs]
        outputs = compiled_forward(held[0], held[1], held[2:8], *held[8:])

        def gradient(grad_x, grad_y):
            return compiled_backward(list(inputs), [grad_x, grad_y])

        return outputs, gradient

    return iteration


def tvl1_iterate(
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
    """Runs Algorithm 1 with explicit (possibly learnable) kernels and θ, λ, τ; float32 throughout.

    All iterations are one `tf.while_loop` op (inside an XLA-compiled function), so the graph
    size does not depend on `num_iter`. Returns (u_x, u_y), each shaped like `frame1`.
    """
    inputs = [
        frame1,
        frame2,
        *image_kernels,
        *difference_kernels,
        *divergence_kernels,
        theta,
        lambda_,
        tau,
    ]
    inputs = [tf.cast(value, tf.float32) for value in inputs]
    return _compiled_iteration(int(num_iter))(*inputs)


def validate_num_iter(num_iter) -> None:
    if isinstance(num_iter, bool) or not isinstance(num_iter, (int, np.integer)) or num_iter < 1:
        raise ValueError(f"`num_iter` must be a positive integer. Received: num_iter={num_iter!r}")


def tvl1_flow(
    frame1,
    frame2,
    *,
    num_iter: int = 20,
    theta: float = 0.3,
    lambda_: float = 0.15,
    tau: float = 0.25,
    gradient: str = "sobel",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Single-scale, warp-free TV-L1 flow from `frame1` to `frame2`, per channel.

    Frames are float tensors shaped (N, H, W, C); returns (flow_x, flow_y), each (N, H, W, C),
    in pixels along the motion. No normalisation is applied.

    >>> import numpy as np
    >>> f1 = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 1)).astype("float32")
    >>> f2 = np.roll(f1, 1, axis=2)  # content moves one pixel to the right
    >>> flow_x, flow_y = tvl1_flow(f1, f2, num_iter=10)
    >>> flow_x.shape
    TensorShape([1, 16, 16, 1])
    """
    validate_num_iter(num_iter)
    _validate_gradient(gradient)
    for name, value in (("theta", theta), ("lambda_", lambda_), ("tau", tau)):
        if not value > 0:
            raise ValueError(f"`{name}` must be positive. Received: {name}={value!r}")
    frame1 = tf.convert_to_tensor(frame1)
    frame2 = tf.convert_to_tensor(frame2)
    for name, frame in (("frame1", frame1), ("frame2", frame2)):
        if not frame.dtype.is_floating:
            raise ValueError(
                f"`{name}` must be a floating-point tensor. "
                f"Received: {name}.dtype={frame.dtype.name}"
            )
        if frame.shape.rank != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (N, H, W, C). Received: {name}.shape={frame.shape}"
            )
    if not frame1.shape.is_compatible_with(frame2.shape):
        raise ValueError(
            "`frame1` and `frame2` must have the same shape. "
            f"Received: frame1.shape={frame1.shape}, frame2.shape={frame2.shape}"
        )
    channels = frame1.shape[-1] or frame2.shape[-1]
    if channels is None:
        raise ValueError("The channel dimension of `frame1` / `frame2` must be known.")
    return tvl1_iterate(
        frame1,
        frame2,
        image_kernels=image_gradient_kernels(gradient, channels),
        difference_kernels=difference_kernels(channels),
        divergence_kernels=difference_kernels(channels),
        theta=theta,
        lambda_=lambda_,
        tau=tau,
        num_iter=int(num_iter),
    )
