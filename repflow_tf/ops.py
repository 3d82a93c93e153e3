"""Pure math of the representation flow iteration (Algorithm 1 of the paper); no Keras state.

Conventions (see DESIGN.md): channels-last (N, H, W, C) float tensors; every kernel is depthwise
(shape (kh, kw, C, 1)), so no channel ever sees another channel's gradients; image gradients are
Sobel/8 (or central differences) correlated with edge-replicate padding, so flow is in pixels and
points along the motion; ∇u is a forward difference whose last column/row is 0; div(p) zero-pads p
in front and correlates with [-1, 1], the negative adjoint of ∇u.

The gradient of the iteration is written by hand (reverse mode, see `tvl1_iterate`): autodiff is
never run through the loop. Two implementations of the same math: TensorFlow ops in static while
loops (below; XLA-compiled or plain graph functions: what runs on a GPU, inside XLA and in
exports) and the fused CPU kernels of `repflow_tf.native` (the default on a machine without a
GPU), which are tested against these ops and TensorFlow's autodiff of the plain loop.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context, record
from tensorflow.python.ops import control_flow_util
from tensorflow.python.saved_model import save_context

from repflow_tf import native as native_kernels

EPSILON = 1e-12
# Height and width axes of (..., H, W, C) tensors: (N, H, W, C) frames and the (2, N, H, W, C)
# stacks of both flow components the iteration works on.
_Y, _X = -3, -2

# The option names and their checks live in repflow_tf.options (free of TensorFlow, so that a
# config is checked before TensorFlow starts).
from repflow_tf.options import (  # noqa: E402
    LEARNABLE_GROUPS,
    validate_gradient,
    validate_learn,
)

# === Default kernels ===

# Correlation kernels of the positive x derivative; the y kernels are their transposes.
_X_GRADIENT_TAPS = {
    "sobel": np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0,
    "central": np.array([[-0.5, 0.0, 0.5]]),
}
_DIFFERENCE_TAPS = np.array([[-1.0, 1.0]])


def _depthwise(taps: np.ndarray, channels: int) -> np.ndarray:
    """Repeats a 2-D tap array over channels as a depthwise filter (kh, kw, channels, 1)."""
    return np.repeat(taps[:, :, None, None], channels, axis=2).astype("float32")


def image_gradient_kernels(gradient: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Default depthwise (x, y) image-gradient filters for `gradient` in {"sobel", "central"}.

    >>> kx, ky = image_gradient_kernels("sobel", 4)
    >>> kx.shape, ky.shape
    ((3, 3, 4, 1), (3, 3, 4, 1))
    """
    validate_gradient(gradient)
    taps = _X_GRADIENT_TAPS[gradient]
    return _depthwise(taps, channels), _depthwise(taps.T, channels)


def difference_kernels(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Default depthwise [-1, 1] filters along x (1, 2, C, 1) and y (2, 1, C, 1).

    Used both for the forward difference ∇u and for the divergence of p.
    """
    return _depthwise(_DIFFERENCE_TAPS, channels), _depthwise(_DIFFERENCE_TAPS.T, channels)


# === Stencils and their adjoints ===


def _along(x: tf.Tensor, axis: int, start: int | None, stop: int | None) -> tf.Tensor:
    index = [slice(None)] * x.shape.rank
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _pad_along(x: tf.Tensor, axis: int, before: int, after: int) -> tf.Tensor:
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [before, after]
    return tf.pad(x, paddings)


def _sum_per_channel(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x, axis=tuple(range(x.shape.rank - 1)))


def _sums_per_channel(products: list[tf.Tensor]) -> list[tf.Tensor]:
    """Per-channel sums (C,) of several (N, H, W, C) tensors, as one matrix product.

    Under XLA a reduction fuses the computation of its operand; eight reductions of tap
    products then recompute the whole adjoint eight times (measured 4x slower than everything
    else together). A dot's operands are materialised once. (The ones matrix has two rows so
    that XLA does not strength-reduce the dot back into a reduction.)
    """
    channels = products[0].shape[-1]
    columns = tf.concat([tf.reshape(product, [-1, channels]) for product in products], axis=1)
    ones = tf.ones([2, tf.shape(columns)[0]], columns.dtype)
    return tf.split(tf.matmul(ones, columns)[0], len(products))


def _taps(kernel: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The two per-channel taps (C,) of a (1, 2, C, 1) or (2, 1, C, 1) difference kernel."""
    taps = tf.reshape(kernel, [2, -1])
    return taps[0], taps[1]


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


def _edge_padding(kernel: tf.Tensor) -> list[list[int]]:
    kh, kw = kernel.shape[0], kernel.shape[1]
    return [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]]


def _edge_pad(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    # SYMMETRIC padding by (at most) one pixel repeats the border pixel: edge replication.
    return tf.pad(image, _edge_padding(kernel), mode="SYMMETRIC")


def image_gradients(
    image: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(∂x, ∂y) of `image` (N, H, W, C) with edge-replicate padding; same shape as the input."""
    return (
        _correlate(_edge_pad(image, kernel_x), kernel_x),
        _correlate(_edge_pad(image, kernel_y), kernel_y),
    )


def _unpad_edges(padded_grad: tf.Tensor, paddings: list[list[int]]) -> tf.Tensor:
    """Adjoint of edge-replicate padding by at most one pixel: fold the border back in."""
    grad = padded_grad
    for axis in (_Y, _X):
        before, after = paddings[axis]
        size = tf.shape(grad)[axis] - before - after
        inner = _along(grad, axis, before, before + size if after else None)
        if before:
            inner += _pad_along(_along(grad, axis, 0, 1), axis, 0, size - 1)
        if after:
            inner += _pad_along(_along(grad, axis, -1, None), axis, size - 1, 0)
        grad = inner
    return grad


def _image_gradient_vjp(grad, image, kernel, need_kernel):
    """(∂/∂image, ∂/∂kernel or None) of <grad, edge-padded correlation(image, kernel)>.

    The adjoint of a VALID correlation scatters each tap's product back to its window (a
    correlation with the flipped kernel); the edge padding's adjoint adds the border rows and
    columns onto the first / last row and column.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    padded = _edge_pad(image, kernel)
    height, width = tf.shape(grad)[1], tf.shape(grad)[2]
    padded_grad = None
    kernel_grad = []
    for i in range(kh):
        for j in range(kw):
            term = tf.pad(
                grad * kernel[i, j, :, 0], [[0, 0], [i, kh - 1 - i], [j, kw - 1 - j], [0, 0]]
            )
            padded_grad = term if padded_grad is None else padded_grad + term
            if need_kernel:
                window = padded[:, i : i + height, j : j + width, :]
                kernel_grad.append(_sum_per_channel(grad * window))
    image_grad = _unpad_edges(padded_grad, _edge_padding(kernel))
    if not need_kernel:
        return image_grad, None
    return image_grad, tf.reshape(tf.stack(kernel_grad), kernel.shape)


def _forward_difference(field, axis, taps):
    """taps[0] * f[j] + taps[1] * f[j + 1] along `axis`; the last entry is 0."""
    body = taps[0] * _along(field, axis, None, -1) + taps[1] * _along(field, axis, 1, None)
    return _pad_along(body, axis, 0, 1)


def _forward_difference_vjp(grad, field, axis, taps, need_taps):
    """(∂/∂field, (∂/∂tap0, ∂/∂tap1) or None) of <grad, _forward_difference(field)>."""
    inner = _along(grad, axis, None, -1)  # the last entry is the constant 0
    field_grad = _pad_along(taps[0] * inner, axis, 0, 1) + _pad_along(taps[1] * inner, axis, 1, 0)
    if not need_taps:
        return field_grad, None
    # Tap products are zero-padded back to the field's shape so they can be summed together.
    return field_grad, (
        _pad_along(inner * _along(field, axis, None, -1), axis, 0, 1),
        _pad_along(inner * _along(field, axis, 1, None), axis, 0, 1),
    )


def _backward_difference(p, axis, taps):
    """taps[0] * p[j - 1] + taps[1] * p[j] along `axis` with p[-1] = 0 (div(p)'s stencil)."""
    return _pad_along(taps[0] * _along(p, axis, None, -1), axis, 1, 0) + taps[1] * p


def _backward_difference_vjp(grad, p, axis, taps, need_taps):
    """(∂/∂p, (∂/∂tap0, ∂/∂tap1) products or None) of <grad, _backward_difference(p)>."""
    shifted = _along(grad, axis, 1, None)
    p_grad = _pad_along(taps[0] * shifted, axis, 0, 1) + taps[1] * grad
    if not need_taps:
        return p_grad, None
    return p_grad, (_pad_along(shifted * _along(p, axis, None, -1), axis, 0, 1), grad * p)


def forward_gradients(
    field: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Forward differences of `field` along x and y; the last column (x) / row (y) is 0."""
    return (
        _forward_difference(field, _X, _taps(kernel_x)),
        _forward_difference(field, _Y, _taps(kernel_y)),
    )


def divergence(
    p_x: tf.Tensor, p_y: tf.Tensor, kernel_x: tf.Tensor, kernel_y: tf.Tensor
) -> tf.Tensor:
    """div(p) = p_x ⋆ w_x + p_y ⋆ w_y with p zero-padded on the first column / row (Eq. 9)."""
    return _backward_difference(p_x, _X, _taps(kernel_x)) + _backward_difference(
        p_y, _Y, _taps(kernel_y)
    )


# === One iteration, forward ===

# Both flow components are processed as one (2, N, H, W, C) stack: u = (u_x, u_y), and the
# duals p_x = (p_xx, p_yx), p_y = (p_xy, p_yy) of ∂u/∂x and ∂u/∂y. Half the ops, twice the data
# per op: fewer, larger fused kernels under XLA, fewer kernel launches without it.
#
# What stays fixed over the iterations: ∇F2 as a (2, N, H, W, C) stack, 1 / |∇F2|², F2 - F1.
_Fields = collections.namedtuple("_Fields", "grad inv_grad_sq constant")
# The per-channel (C,) tap pairs of the ∇u and div kernels.
_Stencils = collections.namedtuple(
    "_Stencils", "difference_x difference_y divergence_x divergence_y"
)
# θ, λθ (the threshold step), τ/θ.
_Scalars = collections.namedtuple("_Scalars", "theta step ratio")
_STATE_SIZE = 3  # u, p_x, p_y


def _fields(frame1, frame2, image_kernel_x, image_kernel_y):
    grad_x, grad_y = image_gradients(frame2, image_kernel_x, image_kernel_y)
    inv_grad_sq = 1.0 / (grad_x * grad_x + grad_y * grad_y + EPSILON)
    return _Fields(tf.stack([grad_x, grad_y]), inv_grad_sq, frame2 - frame1)


def _dot_components(a, b):
    # Written out: a reduction over the stack axis makes XLA emit slow reduction kernels.
    return a[0] * b[0] + a[1] * b[1]


def _threshold(u, fields, step):
    """The thresholding step: (v, t = -ρ/|∇F2|², clip(t, -λθ, λθ))."""
    rho = fields.constant + _dot_components(fields.grad, u)
    target = -rho * fields.inv_grad_sq
    # The three cases of the thresholding step are one clip: -ρ/|∇F|² limited to ±λθ.
    shift = tf.clip_by_value(target, -step, step)
    return u + shift * fields.grad, target, shift


def _divergence(p_x, p_y, stencils):
    return _backward_difference(p_x, _X, stencils.divergence_x) + _backward_difference(
        p_y, _Y, stencils.divergence_y
    )


def _differences(u, stencils):
    return (
        _forward_difference(u, _X, stencils.difference_x),
        _forward_difference(u, _Y, stencils.difference_y),
    )


def _step(state, fields, stencils, scalars):
    """One iteration of Algorithm 1 on the state (u, p_x, p_y)."""
    u, p_x, p_y = state
    v, _, _ = _threshold(u, fields, scalars.step)
    u = v + scalars.theta * _divergence(p_x, p_y, stencils)
    d_x, d_y = _differences(u, stencils)
    denominator = 1.0 + scalars.ratio * tf.sqrt(d_x * d_x + d_y * d_y + EPSILON)
    return u, (p_x + scalars.ratio * d_x) / denominator, (p_y + scalars.ratio * d_y) / denominator


def _loop(state, steps, fields, stencils, scalars):
    """`steps` iterations from `state`."""
    if steps == 0:
        return state
    return _while(lambda *s: _step(s, fields, stencils, scalars), state, steps)


# === One iteration, reverse mode ===

# Accumulated over iterations: the gradients w.r.t. the fixed fields ∇F2 (stacked) and F2 - F1.
_FieldGrads = collections.namedtuple("_FieldGrads", "grad constant")


def _dual_vjp(p_x, p_y, u, adj_x, adj_y, stencils, ratio, need_taps):
    """Reverse of the dual update p' = (p + r∇u) / (1 + r|∇u|).

    Returns (∂/∂p_x, ∂/∂p_y, ∂/∂u, ∂/∂r summand, tap products of ∇u's kernels or None).
    """
    d_x, d_y = _differences(u, stencils)
    norm = tf.sqrt(d_x * d_x + d_y * d_y + EPSILON)
    inverse = 1.0 / (1.0 + ratio * norm)
    grad_p_x = adj_x * inverse
    grad_p_y = adj_y * inverse
    # ∂/∂denominator = -<adjoint, p'> / denominator.
    grad_denominator = -(grad_p_x * (p_x + ratio * d_x) + grad_p_y * (p_y + ratio * d_y)) * inverse
    along_norm = ratio * grad_denominator / norm
    ratio_summand = grad_p_x * d_x + grad_p_y * d_y + grad_denominator * norm
    grad_d_x = ratio * grad_p_x + along_norm * d_x
    grad_d_y = ratio * grad_p_y + along_norm * d_y
    u_x, taps_x = _forward_difference_vjp(grad_d_x, u, _X, stencils.difference_x, need_taps)
    u_y, taps_y = _forward_difference_vjp(grad_d_y, u, _Y, stencils.difference_y, need_taps)
    taps = (*taps_x, *taps_y) if need_taps else ()
    return grad_p_x, grad_p_y, u_x + u_y, ratio_summand, taps


def _step_vjp(state, adjoint, fields, stencils, scalars, learn, sums):
    """Reverse of `_step`: the adjoint of the step's input state, and updated sums.

    `sums` maps "fields" to a _FieldGrads and "reduced" to (N, H, W, C) accumulators, summed
    per channel once after the last iteration: with "divergence" learned, the 8 tap products
    (∇u x, ∇u y, div x, div y kernels, two taps each), then with "hyper" learned those of
    ∂/∂θ through div, ∂/∂(λθ) and ∂/∂(τ/θ). (11 frame-batch tensors of memory.)
    """
    u, p_x, p_y = state
    adj_u, adj_px, adj_py = adjoint
    need_taps = "divergence" in learn
    v, target, shift = _threshold(u, fields, scalars.step)
    div = _divergence(p_x, p_y, stencils)
    new_u = v + scalars.theta * div

    grad_px, grad_py, extra_u, ratio_summand, dual_taps = _dual_vjp(
        p_x, p_y, new_u, adj_px, adj_py, stencils, scalars.ratio, need_taps
    )
    total_u = adj_u + extra_u

    # u' = v + θ div(p): the divergence's adjoint is a stencil on θ ∂/∂u'.
    theta_u = scalars.theta * total_u
    div_px, taps_x = _backward_difference_vjp(theta_u, p_x, _X, stencils.divergence_x, need_taps)
    div_py, taps_y = _backward_difference_vjp(theta_u, p_y, _Y, stencils.divergence_y, need_taps)

    # Thresholding: v = u + clip(t, -λθ, λθ) ∇F2 with t = -ρ / |∇F2|²; ties go to t, as in the
    # gradients of tf.minimum / tf.maximum that tf.clip_by_value is made of.
    grad_shift = _dot_components(total_u, fields.grad)
    inside = tf.logical_and(target >= -scalars.step, target <= scalars.step)
    grad_target = tf.where(inside, grad_shift, tf.zeros_like(grad_shift))
    grad_rho = -grad_target * fields.inv_grad_sq
    # Through 1 / |∇F2|²: ∂/∂∇F2 = -2 ∇F2 ∂/∂(1/g) / g², with ∂/∂(1/g) = -ρ ∂/∂t = t g ∂/∂t.
    twice_grad_sq = -2.0 * grad_target * target * fields.inv_grad_sq
    new_sums = dict(sums)
    old = sums["fields"]
    new_sums["fields"] = _FieldGrads(
        old.grad + total_u * shift + grad_rho * u + twice_grad_sq * fields.grad,
        old.constant + grad_rho,
    )
    # What the kernels' and θ, λ, τ's gradients sum over N, H, W is accumulated elementwise (it
    # fuses into the kernels computing it) and reduced once at the end: measured 6% (whole
    # batch) to 15% (chunks) faster than one per-channel sum per iteration.
    products = []
    if need_taps:
        products += [*dual_taps, *taps_x, *taps_y]
    if "hyper" in learn:
        clipped = tf.where(
            target > scalars.step,
            grad_shift,
            tf.where(target < -scalars.step, -grad_shift, tf.zeros_like(grad_shift)),
        )
        products += [total_u * div, clipped, ratio_summand]
    if products:
        new_sums["reduced"] = [
            total + _unstacked(product)
            for total, product in zip(sums["reduced"], products, strict=True)
        ]
    new_adjoint = (total_u + grad_rho * fields.grad, grad_px + div_px, grad_py + div_py)
    return new_adjoint, new_sums


# === The iteration with its hand-written gradient ===


def checkpoint_interval(num_iter: int) -> int:
    """Iterations between stored states (⌈√num_iter⌉): memory and recomputation both O(√n).

    >>> checkpoint_interval(20), checkpoint_interval(50)
    (5, 8)
    """
    return max(1, math.ceil(math.sqrt(num_iter)))


def _segments(num_iter: int, interval: int) -> tuple[int, int]:
    """(length of the first segment, number of full segments after it)."""
    full = (num_iter - 1) // interval
    return num_iter - full * interval, full


def _while(body, loop_vars, iterations):
    """`iterations` (static) runs of `body`, one at a time.

    One at a time: outside XLA a while loop may start up to 10 iterations at once, and the
    backward's segment loop would then recompute every segment ahead of its reverse pass,
    holding all their states together (16x the forward's memory at 50 iterations, measured).
    """
    return tf.while_loop(
        lambda *_: True, body, loop_vars, maximum_iterations=iterations, parallel_iterations=1
    )


def _state_arrays(like, size):
    """One TensorArray per state tensor (a stacked state would be copied on every write)."""
    return tuple(
        tf.TensorArray(like.dtype, size=size, element_shape=like.shape, clear_after_read=False)
        for _ in range(_STATE_SIZE)
    )


def _write(arrays, index, state):
    return tuple(array.write(index, value) for array, value in zip(arrays, state, strict=True))


def _read(arrays, index):
    return tuple(array.read(index) for array in arrays)


def _zeros_like_stack(frame):
    """Zeros shaped like a (2, N, H, W, C) stack of `frame`-shaped tensors."""
    zeros = tf.zeros_like(frame)
    return tf.stack([zeros, zeros])


def _zeros_state(frame):
    return (_zeros_like_stack(frame),) * _STATE_SIZE


def _stencils(kernels):
    return _Stencils(*(_taps(kernel) for kernel in kernels[2:]))


def _scalars(theta, lambda_, tau):
    return _Scalars(theta, lambda_ * theta, tau / theta)


def _forward(frame1, frame2, kernels, theta, lambda_, tau, *, num_iter, interval):
    """(u_x, u_y, *checkpoints): the state tensors entering each full segment, stacked."""
    fields = _fields(frame1, frame2, kernels[0], kernels[1])
    stencils = _stencils(kernels)
    scalars = _scalars(theta, lambda_, tau)
    first, full = _segments(num_iter, interval)
    state = _loop(_zeros_state(frame1), first, fields, stencils, scalars)
    if not full:
        empty = tf.zeros([0, 2, 0, 0, 0, frame1.shape[-1]], frame1.dtype)
        return (state[0][0], state[0][1], *(empty,) * _STATE_SIZE)

    def segment(index, stored, state):
        stored = _write(stored, index, state)
        return index + 1, stored, _loop(state, interval, fields, stencils, scalars)

    stored = _state_arrays(state[0], full)
    _, stored, state = _while(segment, (tf.constant(0), stored, state), full)
    return (state[0][0], state[0][1], *(array.stack() for array in stored))


# === Chunks of frame pairs (CPU) ===

# On a CPU the iteration is bound by memory traffic: every fused kernel of one iteration reads and
# writes whole frame-batch tensors (about 1 GB per reverse iteration at the paper's 30 pairs of
# 28 x 28 x 32, from the optimised HLO), far more than the 32 MB L3 cache holds. Frame pairs are
# independent, so the forward and the backward run over chunks of pairs whose frame-batch tensors
# are at most this size: the reverse iteration's ~40 live tensors then stay in the cache. (At the
# paper shape, 30 pairs in one piece vs chunks of 5: fwd+bwd 1220 vs 659 ms; see the README.)
CHUNK_BYTES = 512 * 1024
# What `tvl1_iterate(chunk_bytes=None)` uses; None: CHUNK_BYTES where no GPU is visible, else 0
# (a GPU wants the whole batch at once). Set it (or use `default_chunk_bytes`) before tracing.
DEFAULT_CHUNK_BYTES: int | None = None


def resolved_chunk_bytes(chunk_bytes: int | None = None) -> int:
    """The chunk size `tvl1_iterate` uses for `chunk_bytes` (None: the default, see above)."""
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES
    if chunk_bytes is None:
        return 0 if tf.config.list_logical_devices("GPU") else CHUNK_BYTES
    _check_non_negative_int("chunk_bytes", chunk_bytes)
    return int(chunk_bytes)


@contextlib.contextmanager
def default_chunk_bytes(chunk_bytes: int | None):
    """Within, flow iterations traced anew use `chunk_bytes` by default (0: the whole batch, as
    exports do: the TFLite and ONNX converters do not take the chunked tf.map_fn graph).

    >>> with default_chunk_bytes(0):
    ...     resolved_chunk_bytes()
    0
    """
    with _module_default("DEFAULT_CHUNK_BYTES", chunk_bytes):
        yield


@contextlib.contextmanager
def _module_default(name: str, value):
    """Within, this module's global `name` (a DEFAULT_* setting) is `value`; restored after."""
    saved, globals()[name] = globals()[name], value
    try:
        yield
    finally:
        globals()[name] = saved


def _chunk_pairs(frame, chunk_bytes):
    """Pairs per chunk (a traced scalar): the fewest chunks of at most `chunk_bytes` (at least
    one pair each), then their size evened out (padding: less than one pair per chunk)."""
    shape = tf.shape(frame)
    pair_bytes = shape[1] * shape[2] * shape[3] * frame.dtype.size
    most = tf.maximum(1, chunk_bytes // tf.maximum(pair_bytes, 1))
    count = tf.maximum(1, -(-shape[0] // most))
    return tf.maximum(1, -(-shape[0] // count))


def _frames_spec(frame):
    return tf.TensorSpec([None, None, None, frame.shape[-1]], frame.dtype)


def _split_pairs(tensor, pairs):
    """(N, ...) -> (⌈N / pairs⌉, pairs, ...), zero-padded at the end.

    Zero frames are a fixed point of the iteration (no image gradient, no change), so the
    padded pairs stay 0 and add nothing to any gradient."""
    count = -(-tf.shape(tensor)[0] // pairs)
    paddings = [[0, count * pairs - tf.shape(tensor)[0]]] + [[0, 0]] * (tensor.shape.rank - 1)
    padded = tf.pad(tensor, paddings)
    return tf.reshape(padded, tf.concat([[count, pairs], tf.shape(tensor)[1:]], axis=0))


def _merge_pairs(chunks, size):
    """Inverse of `_split_pairs` for a batch of `size` pairs."""
    shape = tf.shape(chunks)
    return tf.reshape(chunks, tf.concat([[shape[0] * shape[1]], shape[2:]], axis=0))[:size]


def _map_chunks(fn, elements, output_signature):
    # One chunk at a time: chunks run in parallel would share the cache they are cut to fit.
    return tf.map_fn(
        lambda chunk: tuple(fn(chunk)),
        elements,
        fn_output_signature=tuple(output_signature),
        parallel_iterations=1,
    )


def _chunked_forward(
    frame1, frame2, kernels, theta, lambda_, tau, *, num_iter, interval, chunk_bytes
):
    """`_forward` chunk by chunk: (u_x, u_y, *checkpoints with a leading chunk axis)."""
    pairs = _chunk_pairs(frame1, chunk_bytes)

    def one(chunk):
        return _forward(*chunk, kernels, theta, lambda_, tau, num_iter=num_iter, interval=interval)

    frames = _frames_spec(frame1)
    stored = tf.TensorSpec([None, 2, *frames.shape], frame1.dtype)
    outputs = _map_chunks(
        one,
        (_split_pairs(frame1, pairs), _split_pairs(frame2, pairs)),
        [frames, frames, *(stored,) * _STATE_SIZE],
    )
    size = tf.shape(frame1)[0]
    return (_merge_pairs(outputs[0], size), _merge_pairs(outputs[1], size), *outputs[2:])


def _chunked_backward(
    inputs, checkpoints, grad_ux, grad_uy, *, num_iter, interval, learn, chunk_bytes
):
    """`_backward` chunk by chunk: the frames' gradients merged, the others summed."""
    frame1, frame2, *parameters = inputs
    pairs = _chunk_pairs(frame1, chunk_bytes)

    def one(chunk):
        f1, f2, *stored, g_x, g_y = chunk
        return _backward(
            [f1, f2, *parameters],
            stored,
            g_x,
            g_y,
            num_iter=num_iter,
            interval=interval,
            learn=learn,
        )

    split = [_split_pairs(value, pairs) for value in (frame1, frame2)]
    grads = [_split_pairs(value, pairs) for value in (grad_ux, grad_uy)]
    specs = [_frames_spec(frame1)] * 2 + [tf.TensorSpec(p.shape, p.dtype) for p in parameters]
    outputs = _map_chunks(one, (*split, *checkpoints, *grads), specs)
    size = tf.shape(frame1)[0]
    return [
        _merge_pairs(outputs[0], size),
        _merge_pairs(outputs[1], size),
        *(tf.reduce_sum(grad, axis=0) for grad in outputs[2:]),
    ]


def _segment_vjp(start, length, adjoint, sums, fields, stencils, scalars, learn):
    """Recomputes a segment's states from `start`, then walks them back in reverse."""
    states = _write(_state_arrays(start[0], length), 0, start)

    def recompute(index, states, state):
        state = _step(state, fields, stencils, scalars)
        return index + 1, _write(states, index, state), state

    if length > 1:
        states = _while(recompute, (tf.constant(1), states, start), length - 1)[1]

    def reverse(index, state, adjoint, sums):
        adjoint, sums = _step_vjp(state, adjoint, fields, stencils, scalars, learn, sums)
        # The next state travels as a loop variable: XLA then materialises it once instead of
        # fusing the TensorArray's dynamic slice into every consumer.
        return index - 1, _read(states, tf.maximum(index - 1, 0)), adjoint, sums

    last = tf.constant(length - 1)
    loop_vars = (last, _read(states, last), adjoint, sums)
    _, _, adjoint, sums = _while(reverse, loop_vars, length)
    return adjoint, sums


def _reduced_count(learn):
    return 8 * ("divergence" in learn) + 3 * ("hyper" in learn)


def _unstacked(product):
    """A (2, N, H, W, C) stack summed over the stack; (N, H, W, C) as it is."""
    return product[0] + product[1] if product.shape.rank == 5 else product


def _initial_sums(frame, learn):
    sums = {"fields": _FieldGrads(_zeros_like_stack(frame), tf.zeros_like(frame))}
    if _reduced_count(learn):
        sums["reduced"] = [tf.zeros_like(frame)] * _reduced_count(learn)
    return sums


def _backward(inputs, checkpoints, grad_ux, grad_uy, *, num_iter, interval, learn):
    """Gradients of <grad_ux, u_x> + <grad_uy, u_y> w.r.t. all 11 inputs of the iteration."""
    frame1, frame2, *kernels = inputs[:8]
    theta, lambda_, tau = inputs[8:]
    fields = _fields(frame1, frame2, kernels[0], kernels[1])
    stencils = _stencils(kernels)
    scalars = _scalars(theta, lambda_, tau)
    grad_u = tf.stack([grad_ux, grad_uy])
    zeros = tf.zeros_like(grad_u)
    adjoint = (grad_u, zeros, zeros)
    sums = _initial_sums(frame1, learn)
    first, full = _segments(num_iter, interval)
    run = functools.partial(
        _segment_vjp, fields=fields, stencils=stencils, scalars=scalars, learn=learn
    )
    if full:

        def segment(index, adjoint, sums):
            start = tuple(checkpoint[index] for checkpoint in checkpoints)
            adjoint, sums = run(start, interval, adjoint, sums)
            return index - 1, adjoint, sums

        _, adjoint, sums = _while(segment, (tf.constant(full - 1), adjoint, sums), full)
    _, sums = run(_zeros_state(frame1), first, adjoint, sums)
    return _input_gradients(inputs, fields, sums, learn)


def _input_gradients(inputs, fields, sums, learn):
    frame1, frame2, image_x, image_y, diff_x, diff_y, div_x, div_y, theta, lambda_, tau = inputs
    field_grads = sums["fields"]
    need_image = "sobel" in learn
    frame2_x, image_x_grad = _image_gradient_vjp(field_grads.grad[0], frame2, image_x, need_image)
    frame2_y, image_y_grad = _image_gradient_vjp(field_grads.grad[1], frame2, image_y, need_image)
    frame2_grad = field_grads.constant + frame2_x + frame2_y
    grads = [-field_grads.constant, frame2_grad, image_x_grad, image_y_grad]
    reduced = list(sums.get("reduced", ()))
    if reduced:
        reduced = _sums_per_channel(reduced)
    if "divergence" in learn:
        taps, reduced = reduced[:8], reduced[8:]
        grads += [
            tf.reshape(tf.stack(taps[2 * k : 2 * k + 2]), kernel.shape)
            for k, kernel in enumerate((diff_x, diff_y, div_x, div_y))
        ]
    else:
        grads += [None] * 4
    if "hyper" in learn:
        theta_div, step, ratio = (tf.reduce_sum(total) for total in reduced)
        # λθ and τ/θ: ∂/∂θ = Σ∂div + λ ∂(λθ) - τ/θ² ∂(τ/θ).
        grads += [
            theta_div + lambda_ * step - tau / (theta * theta) * ratio,
            theta * step,
            ratio / theta,
        ]
    else:
        grads += [None] * 3
    return [
        tf.zeros_like(value) if grad is None else grad
        for value, grad in zip(inputs, grads, strict=True)
    ]


_KERNEL_SLOTS = 6


@contextlib.contextmanager
def without_grappler_memory_optimizer():
    """Function calls created inside are optimised without grappler's memory optimizer.

    Outside XLA, grappler's memory optimizer rewrites AddN nodes (autodiff's gradient sums, and
    the sums its arithmetic optimizer makes of chains of adds) into TemporaryVariable
    accumulators once a graph's estimated memory passes 80% of the device limit (256 MB on a
    CPU); inside while loops they collide between iterations ("AlreadyExistsError ...
    TemporaryVariable ... iter:N"). The call ops (tf.function calls, eager or traced) created
    here carry a config with that optimizer off; the caller's own graph keeps its config. The
    thread-local function-call options are the only handle TensorFlow offers for this.

    >>> with without_grappler_memory_optimizer():
    ...     y = tf.function(lambda x: x + 1)(tf.constant(1.0))
    """
    ctx = context.context()
    saved = ctx.function_call_options
    config = config_pb2.ConfigProto()
    config.ParseFromString(saved.config_proto_serialized)
    rewrite = config.graph_options.rewrite_options
    rewrite.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    ctx.function_call_options = context.FunctionCallOptions(
        executor_type=saved.executor_type, config_proto=config
    )
    try:
        yield
    finally:
        ctx.function_call_options = saved


def _grappler_options(jit_compile):
    # XLA functions never reach grappler's memory optimizer.
    return contextlib.nullcontext() if jit_compile else without_grappler_memory_optimizer()


# How often each function of the iteration was traced (tests check one trace serves all shapes).
TRACE_COUNTS: collections.Counter = collections.Counter()


def _signature(dtype, channels, kernel_shapes):
    """The iteration's inputs with N, H, W unknown: frames, six kernels, θ, λ, τ."""
    frames = tf.TensorSpec([None, None, None, channels], dtype)
    scalar = tf.TensorSpec([], dtype)
    kernels = (tf.TensorSpec(shape, dtype) for shape in kernel_shapes)
    return [frames, frames, *kernels, scalar, scalar, scalar]


def _graph_function(fn, signature, jit_compile):
    # Outside XLA each function stays a separate call (not inlined into the caller's graph), so
    # that it runs with the call options of _grappler_options, whatever the caller's graph is.
    function = tf.function(
        fn,
        input_signature=signature,
        jit_compile=jit_compile,
        autograph=False,
        experimental_attributes=None if jit_compile else {"_noinline": True},
    )
    # TensorFlow counts traces per code object, so every configuration's first (and only)
    # trace would count as a retrace of the last one's and warn after five.
    function._omit_frequent_tracing_warning = True
    return function


@functools.cache
def _forward_functions(
    num_iter, interval, jit_compile, chunk_bytes, dtype, channels, kernel_shapes
):
    """The forward (returning the checkpoints too) and the inference-only forward.

    Keyed without the learned groups, which only the backward reads: layers that learn
    different groups (the ablations of Table 2 and 3) share one trace and, per shape, one XLA
    executable of each.
    """
    run_forward = (
        functools.partial(_chunked_forward, chunk_bytes=chunk_bytes) if chunk_bytes else _forward
    )

    def forward(frame1, frame2, *rest):
        TRACE_COUNTS["forward"] += 1
        kernels = rest[:_KERNEL_SLOTS]
        return run_forward(
            frame1, frame2, kernels, *rest[_KERNEL_SLOTS:], num_iter=num_iter, interval=interval
        )

    def inference(frame1, frame2, *rest):
        TRACE_COUNTS["inference"] += 1
        kernels = rest[:_KERNEL_SLOTS]
        # One segment of num_iter steps: nothing stored.
        outputs = run_forward(
            frame1, frame2, kernels, *rest[_KERNEL_SLOTS:], num_iter=num_iter, interval=num_iter
        )
        return outputs[:2]

    signature = _signature(dtype, channels, kernel_shapes)
    return tuple(_graph_function(fn, signature, jit_compile) for fn in (forward, inference))


@functools.cache
def _backward_function(
    num_iter, interval, learn, jit_compile, chunk_bytes, dtype, channels, kernel_shapes
):
    """The hand-written reverse pass from the forward's inputs, checkpoints and output adjoints."""
    run_backward = (
        functools.partial(_chunked_backward, chunk_bytes=chunk_bytes) if chunk_bytes else _backward
    )

    def backward(*args):
        TRACE_COUNTS["backward"] += 1
        inputs, checkpoints = args[:11], args[11 : 11 + _STATE_SIZE]
        grad_ux, grad_uy = args[11 + _STATE_SIZE :]
        return run_backward(
            inputs,
            checkpoints,
            grad_ux,
            grad_uy,
            num_iter=num_iter,
            interval=interval,
            learn=learn,
        )

    signature = _signature(dtype, channels, kernel_shapes)
    frames = signature[0]
    # Chunked checkpoints carry a leading chunk axis.
    checkpoint_spec = tf.TensorSpec(
        [None] * bool(chunk_bytes) + [None, 2, None, None, None, channels], dtype
    )
    return _graph_function(
        backward, [*signature, *(checkpoint_spec,) * _STATE_SIZE, frames, frames], jit_compile
    )


@functools.cache
def _iteration_op(
    num_iter, interval, learn, jit_compile, chunk_bytes, dtype, channels, kernel_shapes
):
    """The iteration as a differentiable op: a forward and a hand-written backward function.

    Each traced once for any batch / frame size (the signature leaves N, H, W unknown; XLA
    still compiles per concrete shape). With `chunk_bytes` > 0 both run over chunks of frame
    pairs (`_chunked_forward`).
    """
    shared = (jit_compile, chunk_bytes, dtype, channels, kernel_shapes)
    forward_fn, inference_fn = _forward_functions(num_iter, interval, *shared)
    backward_fn = _backward_function(num_iter, interval, learn, *shared)

    def differentiable(store_checkpoints):
        @tf.custom_gradient
        def iteration(*inputs):
            held = [tf.stop_gradient(value) for value in inputs]
            with _grappler_options(jit_compile):
                if store_checkpoints:
                    u_x, u_y, *checkpoints = forward_fn(*held)
                else:
                    (u_x, u_y), checkpoints = inference_fn(*held), None

            def gradient(grad_ux, grad_uy):
                with _grappler_options(jit_compile):
                    stored = checkpoints if checkpoints is not None else forward_fn(*held)[2:]
                    return backward_fn(*held, *stored, grad_ux, grad_uy)

            return (u_x, u_y), gradient

        return iteration

    with_checkpoints, without_checkpoints = differentiable(True), differentiable(False)

    def call(*inputs):
        # Storing checkpoints costs ~15% of a forward: only when a gradient tape may record
        # this call. A function traced without a tape and differentiated later (tf.function's
        # own gradient) still gets its gradient: the backward then recomputes them.
        recording = record.could_possibly_record()
        return (with_checkpoints if recording else without_checkpoints)(*inputs)

    return call


# === The fused CPU kernels ===

# Whether `tvl1_iterate(native=None)` runs the fused CPU kernels of repflow_tf.native: None picks
# them where no GPU is visible and they could be built; True / False forces the choice. Set it
# (or use `default_native`) before the model is traced.
DEFAULT_NATIVE: bool | None = None
_warned_unavailable = False


def _custom_ops_unwelcome() -> bool:
    """Whether ops created now go into an XLA-compiled function (which cannot run custom ops)
    or are traced by `tf.saved_model.save` (a SavedModel holding them would load only where
    repflow_tf's kernels are built and loaded)."""
    return save_context.in_save_context() or control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def resolved_native(native: bool | None = None) -> bool:
    """Whether `tvl1_iterate(native=native)` runs the fused CPU kernels (outside XLA).

    None is `DEFAULT_NATIVE`; where that is None too: the kernels where no GPU is visible and
    they can be built (on first use, see repflow_tf.native), else the TensorFlow ops (with a
    one-time warning when the kernels failed to build). True raises if they are unavailable.
    """
    global _warned_unavailable
    if native is None:
        native = DEFAULT_NATIVE
    if native is not None:
        if not isinstance(native, bool):
            raise ValueError(f"`native` must be True, False or None. Received: native={native!r}")
        if native:
            native_kernels.library()  # raises NativeKernelsUnavailable with the reason
        return native
    if tf.config.list_logical_devices("GPU"):
        return False
    if native_kernels.available():
        return True
    reason = native_kernels.unavailable_reason()
    if not _warned_unavailable and native_kernels.SWITCH_VARIABLE not in reason:
        _warned_unavailable = True
        tf.get_logger().warning(
            f"repflow_tf: {reason}; the flow layer runs its XLA path on this CPU instead "
            f"(several times slower; {native_kernels.SWITCH_VARIABLE}=0 silences this)"
        )
    return False


@contextlib.contextmanager
def default_native(native: bool | None):
    """Within, flow iterations traced anew use `native` by default (False: TensorFlow ops only,
    as exports need: a SavedModel holding the custom ops loads only where they are built).

    >>> with default_native(False):
    ...     resolved_native()
    False
    """
    with _module_default("DEFAULT_NATIVE", native):
        yield


@contextlib.contextmanager
def portable_graph():
    """Within, flow iterations traced anew use TensorFlow ops on the whole batch: no custom op,
    no chunked tf.map_fn graph (which the TFLite and ONNX converters do not take). Exports
    trace their graphs inside, since an export may run anywhere.

    >>> with portable_graph():
    ...     resolved_native(), resolved_chunk_bytes()
    (False, 0)
    """
    with default_native(False), default_chunk_bytes(0):
        yield


@functools.cache
def _native_op(num_iter: int, interval: int, learn: tuple[str, ...]):
    """The fused kernels as one differentiable op: RepflowTvl1 and, as its gradient,
    RepflowTvl1Grad (which recomputes the forward per frame pair: nothing is stored between
    the two). `interval` 0 lets the kernel choose how many states it keeps."""
    library = native_kernels.library()
    grad_attrs = {
        "num_iter": num_iter,
        "checkpoint_every": interval,
        "learn_sobel": "sobel" in learn,
        "learn_divergence": "divergence" in learn,
        "learn_hyper": "hyper" in learn,
    }

    @tf.custom_gradient
    def iteration(*inputs):
        flow = library.repflow_tvl1(*inputs, num_iter=num_iter)

        def gradient(grad_x, grad_y):
            return library.repflow_tvl1_grad(*inputs, grad_x, grad_y, **grad_attrs)

        return tuple(flow), gradient

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
    learn: Iterable[str] = LEARNABLE_GROUPS,
    jit_compile: bool = True,
    checkpoint_every: int | None = None,
    chunk_bytes: int | None = None,
    native: bool | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs Algorithm 1 with explicit (possibly learnable) kernels and θ, λ, τ.

    Computes in float64 when `frame1` is float64, else in float32. Returns (u_x, u_y), each
    shaped like `frame1`. The graph size does not depend on `num_iter` (static while loops,
    or one op).

    Gradient: a hand-written reverse-mode pass, never autodiff through the loop. Gradients
    reach only the groups in `learn` (a subset of LEARNABLE_GROUPS; the others get zeros and
    cost nothing) and always both frames. With the TensorFlow ops, the forward stores the
    state (u, p: 6 tensors the size of a frame batch) every `checkpoint_every` iterations
    (default ⌈√num_iter⌉); the backward walks the segments in reverse, recomputes each
    segment's states from its checkpoint and applies every iteration's hand-derived VJP.
    Memory: about 6 (num_iter / k + k) frame-batch tensors for interval k; compute: one more
    forward.

    `native` (None: `resolved_native()`, the kernels on a machine without a GPU) runs the fused
    CPU kernels of repflow_tf.native instead of TensorFlow ops, except inside an XLA-compiled
    function, which cannot hold them, and while `tf.saved_model.save` traces (a function
    traced before and saved then holds them: load such a SavedModel after
    `native.library()`). They recompute the forward inside the gradient, per frame pair,
    keeping every state of a pair (or, past 8 MB, every k-th) in a per-thread scratch: nothing
    the size of the batch is stored between forward and backward. `jit_compile` and
    `chunk_bytes` do not apply to them; `checkpoint_every` does, per pair.

    The TensorFlow ops: `jit_compile` runs the forward and backward as XLA-compiled functions
    (what a GPU wants); with False they are plain graph functions (no must-compile function).
    `chunk_bytes` > 0 runs both over chunks of frame pairs whose frame-batch tensors hold at
    most that many bytes (at least one pair), so that an iteration's tensors stay in the CPU's
    cache (`CHUNK_BYTES` is the measured best on a 2-core CPU); 0 runs the whole batch at once
    (what a GPU wants); None is `resolved_chunk_bytes()` (chunks where no GPU is visible, the
    whole batch with a GPU, unless DEFAULT_CHUNK_BYTES says otherwise). The result is the same.

    >>> import numpy as np
    >>> kx, ky = image_gradient_kernels("sobel", 1)
    >>> dx, dy = difference_kernels(1)
    >>> f1 = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 1)).astype("float32")
    >>> u_x, u_y = tvl1_iterate(f1, np.roll(f1, 1, axis=2), image_kernels=(kx, ky),
    ...     difference_kernels=(dx, dy), divergence_kernels=(dx, dy), theta=0.3,
    ...     lambda_=0.15, tau=0.25, num_iter=5)
    >>> u_x.shape
    TensorShape([1, 8, 8, 1])
    """
    validate_num_iter(num_iter)
    learn = validate_learn(learn)
    interval = checkpoint_interval(num_iter) if checkpoint_every is None else checkpoint_every
    if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
        raise ValueError(
            "`checkpoint_every` must be a positive integer or None. "
            f"Received: checkpoint_every={checkpoint_every!r}"
        )
    # Where the kernels cannot go, they are not even built (nor warned about).
    use_native = not _custom_ops_unwelcome() and resolved_native(native)
    frame1 = tf.convert_to_tensor(frame1)
    dtype = tf.float64 if frame1.dtype == tf.float64 else tf.float32
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
    inputs = [tf.cast(value, dtype) for value in inputs]
    chunk_bytes = resolved_chunk_bytes(chunk_bytes)  # checked whichever path runs
    if use_native:
        return _native_op(int(num_iter), 0 if checkpoint_every is None else int(interval), learn)(
            *inputs
        )
    channels = inputs[0].shape[-1]
    kernel_shapes = tuple(tuple(kernel.shape.as_list()) for kernel in inputs[2:8])
    op = _iteration_op(
        int(num_iter),
        int(interval),
        learn,
        bool(jit_compile),
        int(chunk_bytes),
        dtype,
        channels,
        kernel_shapes,
    )
    return op(*inputs)


def _check_non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer. Received: {name}={value!r}")


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
    validate_gradient(gradient)
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
