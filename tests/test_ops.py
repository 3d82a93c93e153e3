"""Tests of repflow_tf.ops (Algorithm 1) against the independent float64 reference.

The math has two implementations: the fused CPU kernels of repflow_tf.native (the default on a
machine without a GPU) and TensorFlow ops (XLA-compiled or plain graph functions). Tests of what
the iteration computes run on both (the `implementation` fixture); tests of how the TensorFlow
ops are traced, chunked and checkpointed pin them with `native=False`.

View the printed end-point-error table (ours vs skimage) with:

    pytest tests/test_ops.py -k real -s
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import reference_flow
import tensorflow as tf

from repflow_tf import native, ops
from repflow_tf.benchmarks import references

GRADIENTS = ("sobel", "central")
# ops.DEFAULT_NATIVE for each implementation: the fused CPU kernels, and TensorFlow ops.
IMPLEMENTATIONS = {"native": True, "tf_ops": False}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request):
    """Runs a test with the fused kernels, then with TensorFlow ops, as the default."""
    with ops.default_native(IMPLEMENTATIONS[request.param]):
        yield request.param


def _frames(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, shape), rng.uniform(0.0, 255.0, shape)


# === Agreement with the reference ===


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("shape", [(2, 9, 13, 3), (1, 16, 16, 1), (1, 7, 20, 2)])
def test_agrees_with_reference(implementation, shape, gradient):
    f1, f2 = _frames(shape, seed=sum(shape))
    flow_x, flow_y = ops.tvl1_flow(
        f1.astype(np.float32), f2.astype(np.float32), num_iter=30, gradient=gradient
    )
    ref_x, ref_y = reference_flow.tvl1_flow(f1, f2, num_iter=30, gradient=gradient)
    assert flow_x.shape == shape and flow_y.shape == shape
    # The flow is O(1..10) px here, so the comparison is not trivially satisfied by zeros.
    assert np.abs(ref_x).max() > 1.0 and np.abs(ref_y).max() > 1.0
    np.testing.assert_array_less(np.abs(flow_x.numpy() - ref_x).max(), 1e-3)
    np.testing.assert_array_less(np.abs(flow_y.numpy() - ref_y).max(), 1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 5, 1), (1, 4, 1, 2), (1, 1, 1, 1)])
def test_agrees_with_reference_on_degenerate_shapes(implementation, shape):
    """Single-row / single-column / single-pixel maps: all the edge handling, no interior."""
    f1, f2 = _frames(shape, seed=5)
    for gradient in GRADIENTS:
        flow = ops.tvl1_flow(
            f1.astype(np.float32), f2.astype(np.float32), num_iter=10, gradient=gradient
        )
        ref = reference_flow.tvl1_flow(f1, f2, num_iter=10, gradient=gradient)
        for got, want in zip(flow, ref, strict=True):
            np.testing.assert_allclose(got.numpy(), want, atol=1e-3)


def test_constant_frames_give_finite_zero_flow(implementation):
    """|grad F2| = 0 everywhere: g = 1e-12 keeps rho / g finite and the flow stays 0, not NaN."""
    frame = np.full((1, 6, 7, 2), 7.0, np.float32)
    for flow in ops.tvl1_flow(frame, frame + 3.0, num_iter=10):
        assert np.all(np.isfinite(flow.numpy()))
        np.testing.assert_array_equal(flow.numpy(), 0.0)


def test_channels_are_independent(implementation):
    """Each channel's flow depends only on that channel (depthwise kernels, no C x C mixing)."""
    f1, f2 = _frames((1, 8, 10, 3), seed=3)
    full_x, full_y = ops.tvl1_flow(f1.astype(np.float32), f2.astype(np.float32), num_iter=10)
    one_x, one_y = ops.tvl1_flow(
        f1[..., 1:2].astype(np.float32), f2[..., 1:2].astype(np.float32), num_iter=10
    )
    np.testing.assert_allclose(full_x.numpy()[..., 1:2], one_x.numpy(), atol=1e-5)
    np.testing.assert_allclose(full_y.numpy()[..., 1:2], one_y.numpy(), atol=1e-5)


# === Direction conventions ===


def _smooth_blob(h=24, w=24):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return 255.0 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (2 * 4.0**2))


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("axis", ["x", "y"])
def test_direction_convention(implementation, axis, gradient):
    """Content moving right gives u_x > 0, content moving down gives u_y > 0."""
    image = _smooth_blob()
    moved = np.roll(image, 1, axis=1 if axis == "x" else 0)  # +1 px right (x) or down (y)
    f1 = image[None, :, :, None].astype(np.float32)
    f2 = moved[None, :, :, None].astype(np.float32)
    flow_x, flow_y = ops.tvl1_flow(f1, f2, num_iter=30, gradient=gradient)
    along, across = (flow_x, flow_y) if axis == "x" else (flow_y, flow_x)
    along = along.numpy()[0, 6:-6, 6:-6, 0]
    across = across.numpy()[0, 6:-6, 6:-6, 0]
    # Where the blob has texture the flow points along the motion and not across it.
    textured = np.hypot(*np.gradient(image))[6:-6, 6:-6] > 5.0
    assert np.median(along[textured]) > 0.5
    assert abs(np.median(across[textured])) < 0.1


# === Real motion ===

# Why the photograph is pre-smoothed (sigma = 1 px) before shifting: Algorithm 1 is single-scale and
# warp-free, i.e. it linearises F2 around the *unmoved* position (rho = c + grad F2 . u).  That
# first-order model only holds while the displacement is small compared with the scale of the
# image texture; on the raw photograph (pixel-scale texture) the linearisation overestimates
# sub-pixel shifts by ~0.1 px.  Classical TV-L1 (Zach et al. 2007, and skimage's implementation)
# pre-smooths / builds a Gaussian pyramid for exactly this reason, so smoothing the input is the
# fair setting for a method without pyramid or warping, not a way to hide an error.
_SHIFTS = (0.25, 0.5, 1.0)
_AXES = ("x", "y")
_MARGIN = 8


@pytest.fixture(scope="module")
def real_motion():
    """All (axis, shift) pairs of one photograph, flowed in one batch per gradient kind."""
    from scipy import ndimage
    from skimage import data
    from skimage.registration import optical_flow_tvl1

    image = ndimage.gaussian_filter(data.camera().astype(np.float64), sigma=1.0)
    cases = [(axis, shift) for axis in _AXES for shift in _SHIFTS]
    frame1, frame2, truths = [], [], []
    for axis, shift in cases:
        # ndimage.shift: out[i, j] = in[i - dy, j - dx], i.e. content moves by +dx right, +dy down.
        offset = (0.0, shift) if axis == "x" else (shift, 0.0)
        moved = ndimage.shift(image, offset, order=3, mode="nearest")
        frame1.append(image[128:256, 128:256])
        frame2.append(moved[128:256, 128:256])
        truths.append((offset[1], offset[0]))  # (true u_x, true u_y)
    f1 = np.stack(frame1)[..., None].astype(np.float32)
    f2 = np.stack(frame2)[..., None].astype(np.float32)

    m = _MARGIN
    results = {}
    for gradient in GRADIENTS:
        flow_x, flow_y = ops.tvl1_flow(f1, f2, num_iter=50, gradient=gradient)
        for k, case in enumerate(cases):
            ux = flow_x.numpy()[k, m:-m, m:-m, 0]
            uy = flow_y.numpy()[k, m:-m, m:-m, 0]
            results[(gradient, *case)] = (ux, uy, truths[k])
    for k, case in enumerate(cases):
        # skimage returns (v_row, v_col) such that moving(x + v) ~ reference(x).  With
        # reference = frame1 and moving = frame2 = frame1 shifted by +d, moving(x + v) =
        # frame1(x + v - d), so v = +d: the same sign as ours, no flip needed.  Its defaults
        # (attachment=15, tightness=0.3) are tuned for images in [0, 1]; on 0..255 data the data
        # term is 255x too strong and its EPE is ~0.15-0.4 px, so give it the range it expects.
        v_row, v_col = optical_flow_tvl1(frame1[k] / 255.0, frame2[k] / 255.0)
        results[("skimage", *case)] = (v_col[m:-m, m:-m], v_row[m:-m, m:-m], truths[k])
    return results


def _epe(ux, uy, truth):
    return float(np.mean(np.hypot(ux - truth[0], uy - truth[1])))


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("shift", _SHIFTS)
@pytest.mark.parametrize("axis", _AXES)
def test_real_motion_subpixel_shift(real_motion, axis, shift, gradient):
    ux, uy, truth = real_motion[gradient, axis, shift]
    along, true_along = (ux, truth[0]) if axis == "x" else (uy, truth[1])
    across = uy if axis == "x" else ux
    median = float(np.median(along))
    assert median > 0, f"wrong sign: median {median} for a +{shift} px shift"
    assert abs(median - true_along) < 0.1, (median, true_along)
    assert abs(float(np.median(across))) < 0.1
    assert _epe(ux, uy, truth) < 0.15


def test_real_motion_epe_table(real_motion):
    """Prints ours (single scale, no warping) vs skimage's multi-scale, warped TV-L1."""
    lines = [
        "",
        "mean end-point error over the interior (px), camera() sigma=1, 128x128, 50 iterations",
        f"{'axis':>4} {'shift':>6} {'ours/sobel':>11} {'ours/central':>13} {'skimage':>8}",
    ]
    for axis in _AXES:
        for shift in _SHIFTS:
            row = [_epe(*real_motion[kind, axis, shift]) for kind in (*GRADIENTS, "skimage")]
            lines.append(f"{axis:>4} {shift:>6.2f} {row[0]:>11.3f} {row[1]:>13.3f} {row[2]:>8.3f}")
    print("\n".join(lines))
    # skimage's answer is a sanity check of the test set-up (truth and sign), not a bound on ours.
    for axis in _AXES:
        for shift in _SHIFTS:
            ux, uy, truth = real_motion["skimage", axis, shift]
            along = ux if axis == "x" else uy
            assert abs(float(np.median(along)) - shift) < 0.1


# === One loop op ===


def _default_iterate(frame1, frame2, num_iter, gradient="sobel", **kwargs):
    """ops.tvl1_iterate with the default kernels and θ, λ, τ."""
    channels = frame1.shape[-1]
    kx, ky = ops.image_gradient_kernels(gradient, channels)
    dx, dy = ops.difference_kernels(channels)
    return ops.tvl1_iterate(
        frame1,
        frame2,
        image_kernels=(kx, ky),
        difference_kernels=(dx, dy),
        divergence_kernels=(dx, dy),
        theta=0.3,
        lambda_=0.15,
        tau=0.25,
        num_iter=num_iter,
        **kwargs,
    )


def _graph_stats(num_iter, jit_compile):
    """(ops in the forward + gradient graph incl. nested functions, while loops in it)."""
    channels = 2

    def loss_and_gradient(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            u_x, u_y = _default_iterate(a, b, num_iter, jit_compile=jit_compile, native=False)
            loss = tf.reduce_sum(u_x) + tf.reduce_sum(u_y)
        return tape.gradient(loss, [a, b])

    spec = tf.TensorSpec((1, 8, 8, channels), tf.float32)
    graph = tf.function(loss_and_gradient).get_concrete_function(spec, spec).graph
    graph_def = graph.as_graph_def()
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return len(nodes), [n.op for n in nodes if n.op in ("While", "StatelessWhile")]


@pytest.mark.parametrize("jit_compile", [True, False])
def test_graph_size_does_not_depend_on_num_iter(jit_compile):
    """Static while loops (forward, segment recomputation, reverse pass), never unrolled."""
    total_5, loops_5 = _graph_stats(5, jit_compile)
    total_50, loops_50 = _graph_stats(50, jit_compile)
    assert total_5 == total_50
    assert loops_5 == loops_50 and len(loops_5) >= 2


# === Bad input ===

_GOOD = np.zeros((1, 5, 6, 1), np.float32)


@pytest.mark.parametrize(
    "frame1, frame2, match",
    [
        (_GOOD[0], _GOOD[0], r"frame1.*rank.*\(5, 6, 1\)"),
        (_GOOD[None], _GOOD[None], r"frame1.*rank.*\(1, 1, 5, 6, 1\)"),
        (_GOOD, _GOOD[0], r"frame2.*\(5, 6, 1\)"),
        (_GOOD.astype(np.int32), _GOOD.astype(np.int32), r"frame1.*int32"),
        (_GOOD.astype(np.uint8), _GOOD.astype(np.uint8), r"frame1.*uint8"),
        (_GOOD, _GOOD.astype(np.uint8), r"frame2.*uint8"),
        (_GOOD, np.zeros((1, 5, 7, 1), np.float32), r"frame1.*frame2.*\(1, 5, 7, 1\)"),
        (_GOOD, np.zeros((1, 5, 6, 2), np.float32), r"frame1.*frame2.*\(1, 5, 6, 2\)"),
    ],
)
def test_bad_frames(frame1, frame2, match):
    with pytest.raises(ValueError, match=match):
        ops.tvl1_flow(frame1, frame2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gradient": "prewitt"}, r"gradient.*prewitt"),
        ({"num_iter": 0}, r"num_iter.*0"),
        ({"num_iter": -1}, r"num_iter.*-1"),
        ({"num_iter": 2.5}, r"num_iter.*2\.5"),
        ({"num_iter": True}, r"num_iter.*True"),
        ({"theta": 0.0}, r"theta.*0\.0"),
        ({"theta": -0.3}, r"theta.*-0\.3"),
        ({"theta": float("nan")}, r"theta.*nan"),
        ({"lambda_": 0.0}, r"lambda_.*0\.0"),
        ({"tau": -0.25}, r"tau.*-0\.25"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.tvl1_flow(_GOOD, _GOOD, **kwargs)


# === Gradients of tvl1_iterate ===

_GRAD_SHAPE = (1, 5, 6, 2)
_GRAD_ITERS = 4


def _iterate_inputs():
    f1, f2 = _frames(_GRAD_SHAPE, seed=11)
    channels = _GRAD_SHAPE[-1]
    image_kx, image_ky = ops.image_gradient_kernels("sobel", channels)
    diff_x, diff_y = ops.difference_kernels(channels)
    params = {
        "frame2": f2,
        "theta": np.float64(0.3),
        "lambda_": np.float64(0.15),
        "tau": np.float64(0.25),
        # A non-default divergence kernel so the test is not at a special point.
        "div_x": np.asarray(diff_x, np.float64) * np.array([1.1, 0.9])[None, None, :, None],
    }
    fixed = {"frame1": f1, "image": (image_kx, image_ky), "diff": (diff_x, diff_y)}
    rng = np.random.default_rng(12)
    # Random directions for the arrays; +1 for the scalars (their steps are scaled below).
    directions = {name: rng.standard_normal(np.shape(value)) for name, value in params.items()}
    directions.update(theta=np.float64(1.0), lambda_=np.float64(1.0), tau=np.float64(1.0))
    weights = rng.standard_normal((2, *_GRAD_SHAPE))  # loss = <w_x, u_x> + <w_y, u_y>
    return params, fixed, directions, weights


def _tf_loss(params, fixed, weights):
    # tf.cast, not tf.constant: under tf.function the NumPy arguments arrive as float64 tensors.
    def f32(x):
        return tf.cast(x, tf.float32)

    u_x, u_y = ops.tvl1_iterate(
        f32(fixed["frame1"]),
        params["frame2"],
        image_kernels=tuple(f32(k) for k in fixed["image"]),
        difference_kernels=tuple(f32(k) for k in fixed["diff"]),
        divergence_kernels=(params["div_x"], f32(fixed["diff"][1])),
        theta=params["theta"],
        lambda_=params["lambda_"],
        tau=params["tau"],
        num_iter=_GRAD_ITERS,
    )
    w = f32(weights)
    return tf.reduce_sum(w[0] * u_x) + tf.reduce_sum(w[1] * u_y)


def _tape_gradients(params, fixed, weights):
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        loss = _tf_loss(params, fixed, weights)
    names = list(params)
    return dict(zip(names, tape.gradient(loss, [params[n] for n in names]), strict=True))


def _reference_loss(params, fixed, weights, return_branches=False):
    div_x = np.asarray(params["div_x"])[0, :, :, 0]  # (2 taps, C)
    out = reference_flow.tvl1_flow(
        fixed["frame1"],
        params["frame2"],
        num_iter=_GRAD_ITERS,
        theta=float(params["theta"]),
        lambda_=float(params["lambda_"]),
        tau=float(params["tau"]),
        gradient="sobel",
        divergence_x=div_x,
        return_branches=return_branches,
    )
    loss = float(np.sum(weights[0] * out[0]) + np.sum(weights[1] * out[1]))
    return (loss, out[2]) if return_branches else loss


def _moved(params, name, direction, step):
    return {**params, name: params[name] + step * direction}


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_iterate_gradients_match_finite_differences(implementation, mode):
    """Directional derivatives: tf.GradientTape vs central differences.

    Algorithm 1 is only piecewise smooth: the thresholding step switches between three cases
    (continuous, with kinks at rho = +-lt g).  A finite difference is a valid check only if the
    segment [x - h d, x + h d] stays on one piece, so the reference records which case every pixel
    took at every iteration and the test asserts the pattern is the same at both ends (random 0..255
    frames have |grad F2| >> 0 everywhere, so rho / g is well conditioned and no pixel sits on a
    kink).  Two finite differences are compared with the tape:
      * float64 central differences of the reference (h = 1e-5), which agrees with the
        implementation to float32 precision -- tight tolerance;
      * float32 central differences of the implementation itself (h = 0.05 on 0..255 data, 1 %
        relative steps for theta/lambda/tau/kernel); float32 rounding of a loss of O(10) over 2h,
        plus the O(h^2) curvature term, limits this to ~1e-3 relative, hence the looser tolerance.
        (Steps much larger than this do cross kinks for frame2 -- the branch check catches it.)
    """
    params, fixed, directions, weights = _iterate_inputs()
    tf_params = {name: tf.constant(value, tf.float32) for name, value in params.items()}
    gradient_fn = _tape_gradients if mode == "eager" else tf.function(_tape_gradients)
    tape = gradient_fn(tf_params, fixed, weights)

    loss_fn = _tf_loss if mode == "eager" else tf.function(_tf_loss)
    for name, direction in directions.items():
        analytic = float(np.sum(tape[name].numpy().astype(np.float64) * direction))

        h64 = 1e-5
        plus, branches_plus = _reference_loss(
            _moved(params, name, direction, h64), fixed, weights, True
        )
        minus, branches_minus = _reference_loss(
            _moved(params, name, direction, -h64), fixed, weights, True
        )
        np.testing.assert_array_equal(branches_plus, branches_minus)
        numeric64 = (plus - minus) / (2 * h64)
        assert abs(numeric64) > 1e-3, f"{name}: degenerate direction"
        np.testing.assert_allclose(analytic, numeric64, rtol=2e-3, err_msg=name)

        h32 = 0.05 if name == "frame2" else 1e-2 * float(np.max(np.abs(params[name])))
        branch_ends = [
            _reference_loss(_moved(params, name, direction, s * h32), fixed, weights, True)[1]
            for s in (1.0, -1.0)
        ]
        np.testing.assert_array_equal(*branch_ends)
        ends = []
        for s in (1.0, -1.0):
            moved = _moved(params, name, direction, s * h32)
            moved = {n: tf.constant(v, tf.float32) for n, v in moved.items()}
            ends.append(float(loss_fn(moved, fixed, weights)))
        numeric32 = (ends[0] - ends[1]) / (2 * h32)
        np.testing.assert_allclose(analytic, numeric32, rtol=5e-3, err_msg=name)


# === The hand-written gradient against autodiff of the plain loop ===

_ALL_INPUTS = (
    "frame1",
    "frame2",
    "image_x",
    "image_y",
    "difference_x",
    "difference_y",
    "divergence_x",
    "divergence_y",
    "theta",
    "lambda_",
    "tau",
)


def _hard_inputs(shape=(2, 9, 11, 3), seed=21):
    """float64 inputs on which every case of the thresholding step occurs, plus flat regions.

    Random frames give large |rho| (clipped, both signs); a region where F2 = F1 + a small ramp
    gives |rho| < lambda theta |grad F2|^2 (the interior case); a region where both frames are
    constant has grad F2 = 0 (g = 1e-12). All kernels are perturbed away from their defaults.
    """
    rng = np.random.default_rng(seed)
    f1 = rng.uniform(0.0, 255.0, shape)
    f2 = rng.uniform(0.0, 255.0, shape)
    ramp = np.linspace(0.0, 40.0, shape[2])[None, None, :, None]
    f2[:, 4:, :6] = f1[:, 4:, :6] = (
        50.0 + ramp[:, :, :6] + 3.0 * np.arange(shape[1] - 4)[None, :, None, None]
    )
    f2[:, 4:, :6] += 0.05
    f1[:, :3, -4:] = f2[:, :3, -4:] = 17.0
    channels = shape[-1]
    kx, ky = ops.image_gradient_kernels("sobel", channels)
    dx, dy = ops.difference_kernels(channels)

    def jitter(kernel):
        return kernel * rng.uniform(0.8, 1.2, kernel.shape)

    # The image kernels are scaled, not jittered: their taps must still sum to 0 so that a
    # constant region has a zero image gradient.
    values = [f1, f2, 1.1 * kx, 0.9 * ky, *(jitter(k) for k in (dx, dy, dx, dy)), 0.3, 0.15, 0.25]
    return [tf.constant(np.asarray(v, np.float64)) for v in values]


def _iterate(fn, inputs, num_iter, **kwargs):
    return fn(
        inputs[0],
        inputs[1],
        image_kernels=inputs[2:4],
        difference_kernels=inputs[4:6],
        divergence_kernels=inputs[6:8],
        theta=inputs[8],
        lambda_=inputs[9],
        tau=inputs[10],
        num_iter=num_iter,
        **kwargs,
    )


def _gradients(fn, inputs, weights, num_iter, **kwargs):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        u_x, u_y = _iterate(fn, inputs, num_iter, **kwargs)
        loss = tf.reduce_sum(weights[0] * u_x) + tf.reduce_sum(weights[1] * u_y)
    return tape.gradient(loss, inputs, unconnected_gradients="zero")


def test_hard_inputs_hit_every_threshold_case_and_a_flat_region():
    inputs = _hard_inputs()
    fields = ops._fields(*inputs[:4])
    state = ops._zeros_state(inputs[0])
    stencils = ops._stencils(inputs[2:8])
    scalars = ops._scalars(*inputs[8:])
    step = float(scalars.step)
    counts = np.zeros(3, int)  # below -lt, inside, above +lt
    for _ in range(6):
        _, target, _ = ops._threshold(state[0], fields, scalars.step)
        target = target.numpy()
        counts += [np.sum(target < -step), np.sum(np.abs(target) < step), np.sum(target > step)]
        state = ops._step(state, fields, stencils, scalars)
    assert np.all(counts > 10), counts
    assert np.any(fields.inv_grad_sq.numpy() > 1e11)  # |grad F2| = 0 somewhere


_CHECKPOINTS = [(1, None), (7, None), (7, 1), (7, 3), (20, None), (20, 20)]
# tvl1_iterate's arguments for each way of running the iteration.
_PATHS = {
    "native": {"native": True},
    "graph": {"native": False, "jit_compile": False},
    "xla": {"native": False, "jit_compile": True},
}


# XLA with the default checkpoint interval (one compile each: most of a case's time); the
# segment walk that other intervals change is the same code with or without XLA.
@pytest.mark.parametrize(
    "num_iter, checkpoint_every, path",
    [(*case, "native") for case in _CHECKPOINTS]
    + [(*case, "graph") for case in _CHECKPOINTS]
    + [(*case, "xla") for case in _CHECKPOINTS if case[1] is None],
)
def test_gradient_equals_autodiff_of_the_plain_loop(num_iter, checkpoint_every, path):
    """float64: w.r.t. both frames, all six kernels and theta, lambda, tau, to 1e-6 relative
    (the fused kernels and the TensorFlow ops, with and without XLA)."""
    inputs = _hard_inputs()
    weights = tf.constant(np.random.default_rng(3).normal(size=(2, *inputs[0].shape)))
    ours = _gradients(
        ops.tvl1_iterate,
        inputs,
        weights,
        num_iter,
        checkpoint_every=checkpoint_every,
        **_PATHS[path],
    )
    reference = _gradients(references.autodiff_iterate, inputs, weights, num_iter)
    for name, got, want in zip(_ALL_INPUTS, ours, reference, strict=True):
        want = want.numpy()
        if num_iter > 1:  # with one iteration p stays 0: no gradient reaches ∇u's kernels, τ
            assert np.max(np.abs(want)) > 0, name
        error = np.max(np.abs(got.numpy() - want)) / max(np.max(np.abs(want)), 1e-300)
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_chunks_of_pairs_give_the_unchunked_flow_and_exact_gradients(jit_compile):
    """3 pairs in chunks of 2 (the last one zero-padded): the same flow as in one piece, and
    gradients equal to autodiff of the plain loop (float64, 1e-6 relative)."""
    inputs = _hard_inputs(shape=(3, 9, 11, 3))
    pair_bytes = 9 * 11 * 3 * 8
    weights = tf.constant(np.random.default_rng(6).normal(size=(2, *inputs[0].shape)))
    tf_ops = {"jit_compile": jit_compile, "native": False}
    whole = _iterate(ops.tvl1_iterate, inputs, 7, chunk_bytes=0, **tf_ops)
    chunked = _iterate(ops.tvl1_iterate, inputs, 7, chunk_bytes=2 * pair_bytes, **tf_ops)
    for got, want in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    ours = _gradients(ops.tvl1_iterate, inputs, weights, 7, chunk_bytes=2 * pair_bytes, **tf_ops)
    reference = _gradients(references.autodiff_iterate, inputs, weights, 7)
    for name, got, want in zip(_ALL_INPUTS, ours, reference, strict=True):
        want = want.numpy()
        assert np.max(np.abs(want)) > 0, name
        error = np.max(np.abs(got.numpy() - want)) / np.max(np.abs(want))
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("chunk_bytes", [-1, 2.5, True])
def test_bad_chunk_bytes(chunk_bytes):
    with pytest.raises(ValueError, match=rf"chunk_bytes.*{chunk_bytes!r}"):
        _iterate(ops.tvl1_iterate, _hard_inputs(), 3, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize(
    ("gpus", "setting", "expected"),
    [([], None, ops.CHUNK_BYTES), (["/device:GPU:0"], None, 0), ([], 0, 0), (["GPU"], 4096, 4096)],
)
def test_the_default_chunk_size_follows_the_visible_devices(monkeypatch, gpus, setting, expected):
    """Chunks by default where only a CPU runs; the whole batch with a GPU; a setting wins."""
    monkeypatch.setattr(
        tf.config, "list_logical_devices", lambda kind=None: gpus if kind == "GPU" else []
    )
    used = []
    monkeypatch.setattr(
        ops, "_iteration_op", lambda *args: used.append(args[4]) or (lambda *inputs: inputs[:2])
    )
    with ops.default_chunk_bytes(setting), ops.default_native(False):
        assert ops.resolved_chunk_bytes() == expected
        _iterate(ops.tvl1_iterate, _hard_inputs(), 3)
    assert used == [expected]
    assert ops.DEFAULT_CHUNK_BYTES is None  # restored


def test_frozen_groups_get_zero_gradients_and_the_others_are_unchanged(implementation):
    # Which groups the backward computes is decided while tracing, the same for every path:
    # the plain whole-batch graph spares six XLA compiles (test_gradient_equals_... covers XLA).
    inputs = _hard_inputs()
    weights = tf.constant(np.random.default_rng(4).normal(size=(2, *inputs[0].shape)))
    plain = {"jit_compile": False, "chunk_bytes": 0}
    full = _gradients(ops.tvl1_iterate, inputs, weights, 5, **plain)
    groups = {"sobel": (2, 3), "divergence": (4, 5, 6, 7), "hyper": (8, 9, 10)}
    for learn in [(), ("sobel",), ("divergence",), ("hyper",), ("divergence", "hyper")]:
        grads = _gradients(ops.tvl1_iterate, inputs, weights, 5, learn=learn, **plain)
        frozen = {i for group, slots in groups.items() if group not in learn for i in slots}
        for i, (got, want) in enumerate(zip(grads, full, strict=True)):
            if i in frozen:
                assert not np.any(got.numpy()), (learn, _ALL_INPUTS[i])
            else:
                np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_traced_once_for_any_batch_and_frame_size(jit_compile):
    """One trace of the forward and backward functions, whatever the static shapes (XLA still
    compiles per shape: with it, two shapes, since that takes most of this test's time)."""
    channels = 5
    before = dict(ops.TRACE_COUNTS)
    shapes = [(1, 6, 7, channels), (3, 6, 7, channels), (2, 9, 4, channels)]
    for shape in shapes[1:] if jit_compile else shapes:
        frames = tf.constant(np.random.default_rng(0).uniform(0, 255, shape), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(frames)
            u_x, _ = _default_iterate(
                frames, frames[::-1], 11, gradient="central", jit_compile=jit_compile, native=False
            )
        assert tape.gradient(u_x, frames).shape == shape
    traced = {key: ops.TRACE_COUNTS[key] - before.get(key, 0) for key in ("forward", "backward")}
    assert traced == {"forward": 1, "backward": 1}


def test_learned_groups_share_the_forward_and_each_get_their_own_backward():
    """The forward does not read `learn`: the ablations' layers (same shape and iterations,
    different learned groups) share its one trace; each set of groups traces its backward."""
    inputs = _hard_inputs(seed=8)
    weights = tf.constant(np.random.default_rng(8).normal(size=(2, *inputs[0].shape)))
    before = dict(ops.TRACE_COUNTS)
    for learn in [("divergence",), ("hyper",), ("divergence",)]:
        # Tracing is the same with and without XLA; the plain graph spares three compiles.
        _gradients(
            ops.tvl1_iterate, inputs, weights, 13, learn=learn, jit_compile=False, native=False
        )
    traced = {key: ops.TRACE_COUNTS[key] - before.get(key, 0) for key in ("forward", "backward")}
    assert traced == {"forward": 1, "backward": 2}


def test_many_configurations_trace_once_each_without_a_retracing_warning(caplog):
    """TensorFlow's frequent-retracing warning keys on the code object, which every
    configuration's functions share: seven configurations, one trace each, no warning. (Plain
    graph functions: tracing and its warning are tf.function's, with or without XLA.)"""
    frames = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 5, 6, 2)), tf.float32)
    before = ops.TRACE_COUNTS["inference"]
    with caplog.at_level(logging.WARNING):
        for num_iter in range(31, 38):
            for _ in range(2):
                _default_iterate(frames, frames[::-1], num_iter, jit_compile=False, native=False)
    assert ops.TRACE_COUNTS["inference"] - before == 7
    assert "retracing" not in caplog.text


@pytest.mark.parametrize("checkpoint_every", [0, -2, 2.5, True])
def test_bad_checkpoint_every(checkpoint_every):
    with pytest.raises(ValueError, match=rf"checkpoint_every.*{checkpoint_every!r}"):
        _iterate(ops.tvl1_iterate, _hard_inputs(), 3, checkpoint_every=checkpoint_every)


def test_plain_graph_calls_run_without_grappler_memory_optimizer():
    """Outside XLA the iteration's function calls carry a config with the memory optimizer off.

    Grappler's memory optimizer turns AddN nodes inside while loops into TemporaryVariable
    accumulators that collide between iterations (seen on this layer's own loops before they
    were restructured); the call ops are the only place that config can be scoped to.
    """
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2

    inputs = [tf.cast(v, tf.float32) for v in _hard_inputs()]
    spec = tf.TensorSpec(inputs[0].shape, tf.float32)

    def loss_and_gradient(a):
        with tf.GradientTape() as tape:
            tape.watch(a)
            u_x, _ = _iterate(
                ops.tvl1_iterate, [a, *inputs[1:]], 4, jit_compile=False, native=False
            )
        return tape.gradient(u_x, a)

    graph = tf.function(loss_and_gradient).get_concrete_function(spec).graph
    calls = [
        op
        for op in graph.get_operations()
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    configs = []
    for op in calls:
        config = config_pb2.ConfigProto()
        config.ParseFromString(op.get_attr("config_proto"))
        configs.append(config.graph_options.rewrite_options.memory_optimization)
    assert len(calls) >= 2  # forward and backward
    assert all(c == rewriter_config_pb2.RewriterConfig.NO_MEM_OPT for c in configs), configs


def test_function_traced_without_a_tape_still_differentiates(implementation):
    """Traced with no tape recording, the forward stores no checkpoints; a gradient taken
    later through the function (tf.function's own gradient) recomputes them."""
    inputs = _hard_inputs()
    weights = tf.constant(np.random.default_rng(5).normal(size=(2, *inputs[0].shape)))

    def loss(frame2):
        # Whether checkpoints are stored is decided while tracing, with or without XLA.
        frames = [inputs[0], frame2, *inputs[2:]]
        u_x, u_y = _iterate(ops.tvl1_iterate, frames, 9, jit_compile=False)
        return tf.reduce_sum(weights[0] * u_x) + tf.reduce_sum(weights[1] * u_y)

    traced = tf.function(loss)
    before = ops.TRACE_COUNTS["inference"]
    traced(inputs[1])  # traced here, outside any tape
    # The TensorFlow ops trace their checkpoint-free forward here; the fused kernels never store.
    assert ops.TRACE_COUNTS["inference"] == before + (implementation == "tf_ops")
    with tf.GradientTape() as tape:
        tape.watch(inputs[1])
        value = traced(inputs[1])
    got = tape.gradient(value, inputs[1])
    want = _gradients(references.autodiff_iterate, inputs, weights, 9)[1]
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9)


# === The fused CPU kernels (repflow_tf.native) ===


def _op_types(fn, *specs):
    graph = tf.function(fn).get_concrete_function(*specs).graph
    graph_def = graph.as_graph_def()
    return {
        n.op
        for n in [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    }


def _loss_and_gradient(frames):
    with tf.GradientTape() as tape:
        tape.watch(frames)
        u_x, u_y = _default_iterate(frames[:-1], frames[1:], 6)
        loss = tf.reduce_sum(u_x * u_x) + tf.reduce_sum(u_y)
    return loss, tape.gradient(loss, frames)


def test_the_fused_kernels_run_by_default_on_a_cpu_and_never_inside_xla():
    """No GPU here: the default is the fused kernels, forward and gradient. Inside an
    XLA-compiled function (which cannot run custom ops) the TensorFlow ops run instead, with
    the same result."""
    spec = tf.TensorSpec((3, 10, 12, 4), tf.float32)
    assert ops.resolved_native()
    assert {"RepflowTvl1", "RepflowTvl1Grad"} <= _op_types(_loss_and_gradient, spec)
    with ops.default_native(False):
        assert not {"RepflowTvl1", "RepflowTvl1Grad"} & _op_types(_loss_and_gradient, spec)
    frames = tf.constant(np.random.default_rng(2).uniform(0, 255, (3, 10, 12, 4)), tf.float32)
    inside_xla = tf.function(_loss_and_gradient, jit_compile=True)
    xla_types = _op_types(inside_xla, spec)
    assert "RepflowTvl1" not in xla_types and xla_types & {"While", "StatelessWhile"}
    native_loss, native_grad = _loss_and_gradient(frames)
    xla_loss, xla_grad = inside_xla(frames)
    np.testing.assert_allclose(xla_loss.numpy(), native_loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(xla_grad.numpy(), native_grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, num_iter",
    [
        ((2, 16, 16, 7), 9),  # float64 at 16 x 16: units of 6 channels, the last one of 1
        ((1, 100, 90, 1), 20),  # 100 x 90: every state of a unit is over 8 MB, every 5th kept
    ],
)
def test_the_fused_kernels_split_channels_and_keep_fewer_states_on_large_maps(shape, num_iter):
    inputs = _hard_inputs(shape=shape, seed=13)
    weights = tf.constant(np.random.default_rng(9).normal(size=(2, *shape)))
    flow = _iterate(ops.tvl1_iterate, inputs, num_iter, native=True)
    want_flow = _iterate(references.autodiff_iterate, inputs, num_iter)
    for got, want in zip(flow, want_flow, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-9)
    ours = _gradients(ops.tvl1_iterate, inputs, weights, num_iter, native=True)
    reference = _gradients(references.autodiff_iterate, inputs, weights, num_iter)
    for name, got, want in zip(_ALL_INPUTS, ours, reference, strict=True):
        want = want.numpy()
        assert np.max(np.abs(want)) > 0, name
        error = np.max(np.abs(got.numpy() - want)) / np.max(np.abs(want))
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


def test_the_fused_kernels_check_their_inputs():
    """The op refuses what would make it read out of bounds (tvl1_iterate checks first)."""
    library = native.library()
    inputs = [tf.cast(value, tf.float32) for value in _hard_inputs()]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image-gradient kernels"):
        library.repflow_tvl1(inputs[0], inputs[1], inputs[2][..., :1, :], *inputs[3:], num_iter=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        library.repflow_tvl1(inputs[0], inputs[1][:1], *inputs[2:], num_iter=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shaped like the frames"):
        library.repflow_tvl1_grad(*inputs, inputs[0][:1], inputs[0], num_iter=2)


def test_a_cached_build_is_loaded_without_compiling(monkeypatch):
    native.library()
    compiler = native._compiler()
    key = native._build_key(compiler)

    def no_compiler(command, **kwargs):
        raise AssertionError(f"compiled again: {command[0]}")

    monkeypatch.setattr(native.subprocess, "run", no_compiler)
    assert native._build(compiler, key).name == f"tvl1_kernels-{key}.so"


@pytest.fixture
def fresh_native_build(monkeypatch, tmp_path):
    """native's loader forgets its library (and ops its warning) for the test, then again after."""
    monkeypatch.setenv(native.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(ops, "_warned_unavailable", False)
    native._load.cache_clear()
    yield tmp_path
    native._load.cache_clear()


def test_without_a_compiler_the_tf_ops_run_after_one_warning(
    fresh_native_build, monkeypatch, caplog
):
    monkeypatch.setenv("CXX", str(fresh_native_build / "no-such-compiler"))
    assert not native.available()
    assert "no C++ compiler" in native.unavailable_reason()
    assert "set CXX" in native.unavailable_reason()
    with caplog.at_level(logging.WARNING):
        assert not ops.resolved_native()
        assert not ops.resolved_native()
    assert caplog.text.count("the flow layer runs its XLA path") == 1
    with pytest.raises(native.NativeKernelsUnavailable, match="no C\\+\\+ compiler"):
        ops.resolved_native(True)
    frames = tf.constant(np.random.default_rng(2).uniform(0, 255, (2, 6, 7, 2)), tf.float32)
    flow_x, _ = _default_iterate(frames[:1], frames[1:], 4)  # TensorFlow ops: still a flow
    assert flow_x.shape == (1, 6, 7, 2) and np.any(flow_x.numpy())


def test_a_failed_build_says_why_and_keeps_its_log(fresh_native_build, monkeypatch):
    compiler = fresh_native_build / "broken-compiler"
    compiler.write_text("#!/bin/sh\necho 'tvl1_kernels.cc:1: error: no headers here' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    assert not native.available()
    reason = native.unavailable_reason()
    assert "compiling tvl1_kernels.cc failed: tvl1_kernels.cc:1: error: no headers here" in reason
    log = reason.split("(log: ")[1].rstrip(")")
    assert "no headers here" in open(log).read()


def test_a_corrupt_cached_build_is_named_with_how_to_rebuild_it(fresh_native_build):
    compiler = native._compiler()
    cached = fresh_native_build / "cache" / f"tvl1_kernels-{native._build_key(compiler)}.so"
    cached.parent.mkdir()
    cached.write_bytes(b"not a shared library")
    assert not native.available()
    assert native.unavailable_reason().startswith(f"loading {cached} failed (")
    assert native.unavailable_reason().endswith("; delete it to build it again")


def test_the_switch_turns_the_kernels_off_without_a_warning(
    fresh_native_build, monkeypatch, caplog
):
    monkeypatch.setenv(native.SWITCH_VARIABLE, "0")
    with caplog.at_level(logging.WARNING):
        assert not ops.resolved_native()
    assert "turned off by REPFLOW_TF_NATIVE=0" in native.unavailable_reason()
    assert "XLA path" not in caplog.text
