"""Tests of repflow_tf.layers: RepresentationFlow, FlowBlock, flow_stack, normalize_per_channel.

Shapes are tiny and iteration counts small so the file runs in well under a minute and a half on
two CPU cores. Gradients are checked against central finite differences, across eager /
tf.function / XLA, under mixed precision, MirroredStrategy and model.fit.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from repflow_tf import ops, options
from repflow_tf.benchmarks import references
from repflow_tf.layers import (
    ClipByValue,
    ConvBNReLU,
    FlowBlock,
    RepresentationFlow,
    flow_stack,
    normalize_per_channel,
)

ALL_GROUPS = ("sobel", "divergence", "hyper")
# Which learnable group (paper Table 2) every weight of RepresentationFlow belongs to.
WEIGHT_GROUPS = {
    "image_gradient_x": "sobel",
    "image_gradient_y": "sobel",
    "forward_difference_x": "divergence",
    "forward_difference_y": "divergence",
    "divergence_x": "divergence",
    "divergence_y": "divergence",
    "log_theta": "hyper",
    "log_lambda": "hyper",
    "log_tau": "hyper",
}


# === Helpers ===


def moving_clips(shape, scale=10.0, seed=0):
    """Smooth sinusoidal patterns moving by a sub-pixel amount per frame, plus a little noise.

    Every (example, channel) gets its own frequencies, phase and velocity, so the flow is neither
    trivial nor identical across channels; values lie roughly in [-scale, scale].
    """
    rng = np.random.default_rng(seed)
    batch, time, height, width, channels = shape
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    t = np.arange(time)[:, None, None]
    clips = np.empty(shape)
    for b in range(batch):
        for c in range(channels):
            fx, fy = rng.uniform(0.3, 0.9, 2)
            phase = rng.uniform(0.0, 6.0)
            vx, vy = rng.uniform(-0.7, 0.7, 2)
            clips[b, ..., c] = np.sin(fx * (xx - vx * t) + phase) * np.cos(fy * (yy - vy * t))
    clips += 0.1 * rng.normal(size=shape)
    return (scale * clips).astype("float32")


def rel_diff(a, b) -> float:
    """max|a - b| / max|b|: a relative error that is not blown up by near-zero entries of b."""
    a = np.asarray(tf.cast(a, tf.float64))
    b = np.asarray(tf.cast(b, tf.float64))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def group_of(variable) -> str:
    return WEIGHT_GROUPS[variable.path.split("/")[-1]]


@pytest.fixture
def reset_policy():
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


# === Normalisation ===


def test_normalize_per_channel_spans_exactly_0_to_255_per_example_and_channel():
    rng = np.random.default_rng(0)
    # Very different ranges per example and channel, including negative values.
    scales = rng.uniform(1e-3, 1e3, (3, 1, 1, 1, 4))
    offsets = rng.uniform(-1e3, 1e3, (3, 1, 1, 1, 4))
    clips = tf.constant(rng.uniform(0, 1, (3, 4, 5, 6, 4)) * scales + offsets, tf.float32)
    out = normalize_per_channel(clips).numpy()
    np.testing.assert_array_equal(out.min(axis=(1, 2, 3)), 0.0)
    np.testing.assert_array_equal(out.max(axis=(1, 2, 3)), 255.0)
    # Per example: normalising one clip alone gives the same values.
    np.testing.assert_array_equal(normalize_per_channel(clips[1:2]).numpy(), out[1:2])


def test_normalize_per_channel_constant_channel_is_zero_with_finite_gradient():
    clips = tf.Variable(tf.concat([tf.fill((2, 3, 4, 4, 1), 7.0), tf.ones((2, 3, 4, 4, 1))], -1))
    with tf.GradientTape() as tape:
        out = normalize_per_channel(clips)
        loss = tf.reduce_sum(out * out)
    np.testing.assert_array_equal(out.numpy(), 0.0)
    assert np.all(np.isfinite(tape.gradient(loss, clips).numpy()))


# === Gradients ===


@pytest.mark.parametrize("normalize", [False, True])
def test_gradients_match_central_finite_differences(normalize):
    # Conditioning in float32: the flow is only piecewise smooth (the thresholding step clips
    # -rho/|grad F|^2 at +-lambda*theta), so the check perturbs one coordinate at a time
    # (a random direction over all pixels crosses some kink and measures another piece) with a
    # step h = 1e-3 on data of scale ~10: the relative perturbation 1e-4 is ~1000x float32's
    # epsilon (small cancellation error) and small enough to rarely cross a kink.
    # normalize=False checks every weight group. With normalize=True the flow runs on 0..255
    # data, so the same h on an image-gradient kernel tap moves grad F by ~255h and crosses
    # kinks; there the input (through normalize_per_channel), divergence and hyper groups
    # are checked and the Sobel taps are left to the normalize=False case.
    h = 1e-3
    x = tf.constant(moving_clips((1, 3, 6, 7, 2), seed=2))
    layer = RepresentationFlow(num_iter=3, normalize=normalize, learn=ALL_GROUPS)
    weights = tf.constant(np.random.default_rng(5).normal(size=(1, 2, 6, 7, 4)), tf.float64)

    def per_clip_losses(clips):
        return tf.reduce_sum(tf.cast(layer(clips), tf.float64) * weights, axis=[1, 2, 3, 4])

    with tf.GradientTape() as tape:  # eager autodiff
        tape.watch(x)
        loss = per_clip_losses(x)[0]
    variables = [
        v for v in layer.trainable_variables if normalize is False or group_of(v) != "sobel"
    ]
    grads = tape.gradient(loss, [x, *variables])
    assert len(variables) == (9 if not normalize else 7)

    fast_losses = tf.function(per_clip_losses)

    def check(name, autodiff, numeric):
        autodiff = np.asarray(autodiff, np.float64).ravel()
        assert np.max(np.abs(autodiff)) > 0, f"no gradient reaches {name}"
        error = np.max(np.abs(numeric - autodiff)) / np.max(np.abs(autodiff))
        assert error < 1e-2, f"{name}: finite differences disagree (relative error {error:.3g})"

    # Input: every coordinate at once, as a batch of perturbed copies (clips are independent).
    clip = x.numpy()[0]
    steps = h * np.eye(clip.size, dtype="float32").reshape((clip.size, *clip.shape))
    losses = fast_losses(np.concatenate([clip + steps, clip - steps])).numpy()
    check("inputs", grads[0], (losses[: clip.size] - losses[clip.size :]) / (2 * h))

    # Weights (log theta / log lambda / log tau and the kernels), one entry at a time.
    for variable, grad in zip(variables, grads[1:], strict=True):
        start = variable.numpy()
        numeric = np.empty(start.size)
        for j in range(start.size):
            step = np.zeros(start.size, "float32")
            step[j] = h
            variable.assign(start + step.reshape(start.shape))
            plus = float(fast_losses(x)[0])
            variable.assign(start - step.reshape(start.shape))
            minus = float(fast_losses(x)[0])
            numeric[j] = (plus - minus) / (2 * h)
        variable.assign(start)
        check(variable.path, grad, numeric)


def test_gradients_agree_in_eager_tf_function_and_xla():
    x = tf.constant(moving_clips((2, 3, 6, 7, 2), seed=3))
    layer = RepresentationFlow(num_iter=3, learn=ALL_GROUPS)
    layer(x)
    weights = tf.constant(np.random.default_rng(1).normal(size=(2, 2, 6, 7, 4)), tf.float32)

    def outputs_and_grads(clips):
        with tf.GradientTape() as tape:
            tape.watch(clips)
            out = layer(clips)
            loss = tf.reduce_sum(out * weights)
        return out, tape.gradient(loss, [clips, *layer.trainable_variables])

    eager_out, eager_grads = outputs_and_grads(x)
    assert len(eager_grads) == 10 and all(g is not None for g in eager_grads)
    for jit_compile in (False, True):
        out, grads = tf.function(outputs_and_grads, jit_compile=jit_compile)(x)
        assert rel_diff(out, eager_out) < 1e-5, jit_compile
        for grad, expected in zip(grads, eager_grads, strict=True):
            assert rel_diff(grad, expected) < 1e-4, jit_compile


@pytest.mark.parametrize("jit_compile", [False, True])
def test_model_fit_two_steps_updates_flow_parameters(jit_compile):
    # jit_compile=False: the layer's plain-graph forward and backward inside an un-compiled
    # train step; True: the layer is XLA, and so is the whole train step.
    inputs = keras.Input((3, 6, 7, 3))
    block = FlowBlock(channels_reduced=2, num_iter=2, learn=ALL_GROUPS, jit_compile=jit_compile)
    features = block(inputs)
    flow = RepresentationFlow(num_iter=2, learn=ALL_GROUPS, jit_compile=jit_compile)(features)
    # Flatten, not global pooling: the spatial mean of div(p) telescopes to 0, so with 2
    # iterations a pooled loss has an exactly zero gradient for some flow parameters.
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(flow))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=jit_compile)
    flow_weights = [w for w in model.weights if "representation_flow" in w.path]
    assert len(flow_weights) == 18
    before = [w.numpy() for w in flow_weights]
    clips = np.abs(moving_clips((4, 3, 6, 7, 3), seed=4))
    history = model.fit(clips, np.ones((4, 1), "float32"), batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for weight, start in zip(flow_weights, before, strict=True):
        assert not np.array_equal(weight.numpy(), start), weight.path


@pytest.mark.parametrize("learn", [("divergence", "hyper"), ("sobel",), ()])
def test_optimizer_step_changes_exactly_the_learnable_groups(learn):
    x = tf.constant(moving_clips((1, 3, 6, 7, 2), seed=6))
    layer = RepresentationFlow(num_iter=2, learn=learn)
    dense = keras.layers.Dense(1)  # something trainable even when learn=()
    weights = tf.constant(np.random.default_rng(2).normal(size=(1, 2, 6, 7, 4)), tf.float32)
    dense(tf.zeros((1, 4)))
    layer(x)
    assert len(layer.weights) == 9
    for variable in layer.weights:
        assert variable.trainable == (group_of(variable) in learn), variable.path
    before = {v.path: v.numpy() for v in layer.weights}
    trainable = layer.trainable_variables + dense.trainable_variables
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_sum(out * weights) + tf.reduce_sum(dense(tf.reduce_mean(out, [1, 2, 3])))
    grads = tape.gradient(loss, trainable)
    keras.optimizers.SGD(0.1).apply_gradients(zip(grads, trainable, strict=True))
    for variable in layer.weights:
        changed = not np.array_equal(variable.numpy(), before[variable.path])
        assert changed == (group_of(variable) in learn), variable.path


def test_hyperparameters_stay_positive_and_finite_after_a_huge_step():
    x = tf.constant(moving_clips((1, 3, 6, 7, 2), seed=7))
    layer = RepresentationFlow(num_iter=2)
    weights = tf.constant(np.random.default_rng(3).normal(size=(1, 2, 6, 7, 4)), tf.float32)
    layer(x)
    start = {k: float(v) for k, v in layer.hyperparameters().items()}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * weights)
    grads = tape.gradient(loss, layer.trainable_variables)
    keras.optimizers.SGD(1e3).apply_gradients(zip(grads, layer.trainable_variables, strict=True))
    after = {k: float(v) for k, v in layer.hyperparameters().items()}
    assert after != start
    for name, value in after.items():
        assert 0 < value < np.inf, (name, value)
    assert np.all(np.isfinite(layer(x).numpy()))
    # Even a direct assignment far outside the range cannot make them 0 or inf.
    layer.log_theta.assign(-1e4)
    layer.log_tau.assign(1e4)
    for name, value in layer.hyperparameters().items():
        assert 0 < float(value) < np.inf, (name, float(value))
    assert np.all(np.isfinite(layer(x).numpy()))


# === Precision, compilation, shapes, distribution ===


@pytest.mark.parametrize(
    "policy, dtype", [("mixed_float16", tf.float16), ("mixed_bfloat16", tf.bfloat16)]
)
def test_mixed_precision_matches_float32(policy, dtype, reset_policy):
    x = tf.constant(moving_clips((2, 3, 8, 9, 2), seed=8))
    reference = RepresentationFlow(num_iter=5)
    expected = reference(x)
    keras.mixed_precision.set_dtype_policy(policy)
    layer = RepresentationFlow(num_iter=5)
    out = layer(x)
    assert out.dtype == dtype
    assert all(v.dtype == "float32" for v in layer.weights)
    assert np.all(np.isfinite(tf.cast(out, tf.float32).numpy()))
    assert rel_diff(out, expected) < 1e-2
    # Inputs already in the compute dtype (as from a previous mixed-precision layer): the same
    # result as float32 on those rounded values, up to rounding the output.
    rounded = tf.cast(x, dtype)
    assert rel_diff(layer(rounded), reference(tf.cast(rounded, tf.float32))) < 1e-2
    block_out = FlowBlock(channels_reduced=2, num_iter=2)(tf.abs(x))
    assert block_out.dtype == dtype
    assert np.all(np.isfinite(tf.cast(block_out, tf.float32).numpy()))


@pytest.mark.parametrize("autocast", [None, True, False])
def test_inputs_reach_the_flow_unrounded_whatever_autocast(autocast, reset_policy):
    x = tf.constant(moving_clips((2, 3, 8, 9, 2), seed=21))
    expected = RepresentationFlow(num_iter=3)(x)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    layer = RepresentationFlow(num_iter=3, **({} if autocast is None else {"autocast": autocast}))
    assert layer.autocast is (autocast is not False)  # the caller's choice (or Keras's default)
    # float32 inputs are not rounded to float16 on the way in: the float32 result, rounded once.
    np.testing.assert_array_equal(layer(x).numpy(), tf.cast(expected, tf.float16).numpy())
    assert all(v.dtype == "float32" for v in layer.weights)


def _realistic_fit(plain_autodiff):
    """model.fit of a FlowBlock at the paper's feature-map size, layer XLA off.

    At this size grappler's memory optimizer (estimated memory > 80% of the 256 MB it assumes
    for a CPU) rewrites the AddN nodes of an autodiffed while loop's gradient into
    TemporaryVariables, which collide between iterations. Whether it does depends on its static
    estimate of the whole graph: 24 channels instead of 32 stopped triggering it once.
    """
    with references.autodiff_layers() if plain_autodiff else contextlib.nullcontext():
        return _fit_flow_block()


def _fit_flow_block():
    inputs = keras.Input((16, 28, 28, 32))
    features = FlowBlock(channels_reduced=32, num_iter=3, jit_compile=False)(inputs)
    logits = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling3D()(features))
    model = keras.Model(inputs, logits)
    model.compile(
        keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    rng = np.random.default_rng(0)
    clips = rng.uniform(0, 1, (4, 16, 28, 28, 32)).astype("float32")
    return model.fit(clips, rng.integers(0, 4, 4), batch_size=2, epochs=1, verbose=0)


def test_realistic_fit_with_autodiff_through_the_loop_fails_under_grappler():
    """The failure the hand-written gradient exists for, reproduced (expected to fail)."""
    with pytest.raises(tf.errors.AlreadyExistsError, match="TemporaryVariable"):
        _realistic_fit(plain_autodiff=True)


@pytest.mark.parametrize("native", [False, True])
def test_realistic_fit_with_the_hand_written_gradient_and_xla_off_passes(native):
    """The same fit passes with the TensorFlow ops' hand-written gradient (their while loops in
    plain graph functions, under grappler) and with the fused CPU kernels."""
    with ops.default_native(native):
        history = _realistic_fit(plain_autodiff=False)
    assert np.all(np.isfinite(history.history["loss"]))


def test_saved_model_without_xla_holds_no_must_compile_function(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    def must_compile_functions(jit_compile):
        inputs = keras.Input((3, 6, 7, 2))
        model = keras.Model(inputs, RepresentationFlow(num_iter=3, jit_compile=jit_compile)(inputs))
        path = str(tmp_path / f"jit_{jit_compile}")
        # Traced by the save itself: the fused CPU kernels (the default here) stay out of it.
        signature = tf.function(
            model.call, input_signature=[tf.TensorSpec([None, None, 6, 7, 2], tf.float32)]
        )
        tf.saved_model.save(model, path, signatures=signature)
        saved = saved_model_pb2.SavedModel()
        with open(f"{path}/saved_model.pb", "rb") as file:
            saved.ParseFromString(file.read())
        library = saved.meta_graphs[0].graph_def.library.function
        op_types = {node.op for f in library for node in f.node_def}
        assert not op_types & {"RepflowTvl1", "RepflowTvl1Grad"}
        flagged = [f.signature.name for f in library if f.attr["_XlaMustCompile"].b]
        loaded = tf.saved_model.load(path)
        clips = tf.constant(moving_clips((2, 3, 6, 7, 2), seed=30))
        out = loaded.signatures["serving_default"](clips)
        assert rel_diff(list(out.values())[0], model(clips)) < 1e-5
        return flagged

    assert must_compile_functions(jit_compile=True)  # the check can see them
    assert must_compile_functions(jit_compile=False) == []


def test_whole_train_step_compiled_matches_uncompiled():
    clips = tf.constant(moving_clips((2, 4, 6, 7, 2), seed=31))
    weights = tf.constant(np.random.default_rng(6).normal(size=(2, 3, 6, 7, 4)), tf.float32)
    layer = RepresentationFlow(num_iter=4, learn=ALL_GROUPS, jit_compile=False)
    layer(clips)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * weights)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    expected = step(clips)
    compiled = tf.function(step, jit_compile=True)(clips)
    for got, want in zip(compiled, expected, strict=True):
        assert rel_diff(got, want) < 1e-4


def test_input_spec_refuses_other_channel_counts():
    layer = RepresentationFlow(num_iter=2)
    layer(tf.zeros((1, 3, 6, 7, 1)))
    with pytest.raises(ValueError, match=r"expected axis -1.*value 1.*shape \(1, 3, 6, 7, 3\)"):
        layer(tf.zeros((1, 3, 6, 7, 3)))
    block = FlowBlock(channels_reduced=2, num_iter=2)
    block(tf.zeros((1, 3, 6, 7, 4)))
    with pytest.raises(ValueError, match=r"expected axis -1.*value 4"):
        block(tf.zeros((1, 3, 6, 7, 5)))


def test_unknown_batch_and_time_in_tf_function_and_functional_model():
    layer = RepresentationFlow(num_iter=3)
    small = tf.constant(moving_clips((1, 2, 6, 7, 2), seed=9))
    large = tf.constant(moving_clips((3, 4, 6, 7, 2), seed=10))

    traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 6, 7, 2])])
    concrete = traced.get_concrete_function()
    assert concrete.structured_outputs.shape.as_list() == [None, None, 6, 7, 4]
    for clips in (small, large):
        out = traced(clips)
        assert out.shape == (clips.shape[0], clips.shape[1] - 1, 6, 7, 4)
        assert rel_diff(out, layer(clips)) < 1e-5

    inputs = keras.Input((None, 6, 7, 2))
    model = keras.Model(inputs, RepresentationFlow(num_iter=3)(inputs))
    assert tuple(model.output.shape) == (None, None, 6, 7, 4)
    for clips in (small, large):
        out = model(clips)
        assert out.shape == (clips.shape[0], clips.shape[1] - 1, 6, 7, 4)
        assert rel_diff(out, layer(clips)) < 1e-5


def test_mirrored_strategy_replicas_match_single_device():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    clips = [moving_clips((2, 3, 6, 7, 2), seed=11 + i) for i in range(2)]
    with strategy.scope():
        layer = RepresentationFlow(num_iter=3)
        layer.build((None, 3, 6, 7, 2))
    values = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(clips[context.replica_id_in_sync_group])
    )
    outputs = tf.function(lambda v: strategy.run(layer, args=(v,)))(values)
    replica_outputs = strategy.experimental_local_results(outputs)
    single = RepresentationFlow(num_iter=3)
    assert len(replica_outputs) == 2
    for clip, out in zip(clips, replica_outputs, strict=True):
        np.testing.assert_allclose(out.numpy(), single(clip).numpy(), rtol=1e-5, atol=1e-5)


# === Batch independence ===


def test_output_of_a_clip_does_not_depend_on_its_batch():
    clip = moving_clips((1, 3, 6, 7, 2), seed=12)
    others = [
        moving_clips((1, 3, 6, 7, 2), scale=1e4, seed=13) + 5e4,
        moving_clips((1, 3, 6, 7, 2), scale=1e-3, seed=14),
        np.full((1, 3, 6, 7, 2), -3.0, "float32"),
    ]
    layer = RepresentationFlow(num_iter=4)
    alone = layer(clip).numpy()
    batched = layer(np.concatenate([others[0], clip, *others[1:]])).numpy()
    scale = np.max(np.abs(alone))
    np.testing.assert_allclose(batched[1], alone[0], rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(batched[3], 0.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_constant_channel_gives_zero_flow_and_finite_gradient(normalize):
    clips = moving_clips((2, 3, 6, 7, 2), seed=15)
    clips[..., 1] = 42.0
    x = tf.constant(clips)
    layer = RepresentationFlow(num_iter=4, normalize=normalize, learn=ALL_GROUPS)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x)
        loss = tf.reduce_sum(out * out) + tf.reduce_sum(out)
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    out = out.numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[..., 1], 0.0)  # x flow of channel 1
    np.testing.assert_array_equal(out[..., 3], 0.0)  # y flow of channel 1
    assert np.max(np.abs(out[..., [0, 2]])) > 0
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy()))


# === FlowBlock and flow_stack ===


@pytest.mark.parametrize("training", [False, True])
def test_flow_block_with_zero_init_residual_starts_as_identity(training):
    x = tf.constant(np.abs(moving_clips((2, 4, 6, 7, 5), seed=16)))
    block = FlowBlock(channels_reduced=2, num_iter=2, zero_init_residual=True)
    out = block(x, training=training)
    np.testing.assert_array_equal(out.numpy(), x.numpy()[:, 1:])
    assert FlowBlock.from_config(block.get_config()).zero_init_residual


def test_flow_block_adds_its_flow_from_the_start_and_trains_the_reduction_in_step_one():
    x = tf.constant(np.abs(moving_clips((2, 4, 6, 7, 5), seed=16)))
    block = FlowBlock(channels_reduced=2, num_iter=2)
    with tf.GradientTape() as tape:
        out = block(x, training=True)
        loss = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, (1, 2)))
    assert np.abs(out.numpy() - x.numpy()[:, 1:]).max() > 0.1
    gradient = tape.gradient(loss, block.reduce.kernel)
    assert np.abs(gradient.numpy()).max() > 0
    identity = FlowBlock(channels_reduced=2, num_iter=2, zero_init_residual=True)
    with tf.GradientTape() as tape:
        out = identity(x, training=True)
        loss = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, (1, 2)))
    assert np.abs(tape.gradient(loss, identity.reduce.kernel).numpy()).max() == 0


@pytest.mark.parametrize("kind, blocks", [("single", 1), ("fof", 2), ("fcf", 2)])
def test_flow_stack_kinds(kind, blocks):
    stack = flow_stack(kind, channels_reduced=2, num_iter=2)
    out = stack(tf.random.uniform((1, 5, 6, 7, 4)))
    assert out.shape == (1, 5 - blocks, 6, 7, 4)
    flow_blocks = [layer for layer in stack.layers if isinstance(layer, FlowBlock)]
    assert len(flow_blocks) == blocks
    assert len(stack.layers) == (3 if kind == "fcf" else blocks)
    flow_paths = [w.path for w in stack.weights if w.path.split("/")[-1] in WEIGHT_GROUPS]
    assert len(flow_paths) == 9 * blocks
    assert all("representation_flow" in path for path in flow_paths)


def test_conv_bn_weights_keep_their_names_order_and_settings():
    # Saved .keras files, checkpoints and optimizer variables depend on these names and order.
    block = FlowBlock(channels_reduced=2, num_iter=2, name="flow_block_1")
    block.build((None, 3, 6, 7, 4))
    paths = [w.path.removeprefix("flow_block_1/") for w in block.weights]
    flow_paths = ["representation_flow/" + w.path.split("/")[-1] for w in block.flow.weights]
    norm = ["norm/gamma", "norm/beta", "norm/moving_mean", "norm/moving_variance"]
    assert paths == [*flow_paths, "reduce/kernel", "expand/kernel", *norm]
    assert tuple(block.expand.kernel.shape) == (1, 3, 3, 4, 4) and block.expand.padding == "same"
    np.testing.assert_array_equal(block.norm.gamma.numpy(), np.ones(4))  # zero_init_residual off
    conv = ConvBNReLU(synchronized_bn=True, name="flow_conv")
    conv.build((None, 3, 6, 7, 4))
    assert [w.path for w in conv.weights] == ["flow_conv/conv/kernel"] + [
        f"flow_conv/{path}" for path in norm
    ]
    assert tuple(conv.conv.kernel.shape) == (1, 3, 3, 4, 4) and not conv.conv.use_bias
    assert conv.norm.synchronized and conv.norm.momentum == 0.99
    np.testing.assert_array_equal(conv.norm.gamma.numpy(), np.ones(4))


def test_flow_parameter_paths_contain_representation_flow():
    layer = RepresentationFlow(num_iter=2)
    layer.build((None, 3, 6, 7, 2))
    assert len(layer.weights) == 9
    assert all("representation_flow" in w.path for w in layer.weights)


# === Serialization ===


def _perturb_weights(model):
    """Moves every weight off its initial value, so a lost weight shows up in the outputs."""
    rng = np.random.default_rng(17)
    for weight in model.weights:
        delta = rng.uniform(0.05, 0.2, weight.shape).astype("float32")
        weight.assign(weight.numpy() + delta)  # also keeps moving variances positive


@pytest.mark.parametrize("kind", ["layer", "fcf"])
def test_keras_save_load_round_trip(kind, tmp_path):
    inputs = keras.Input((None, 6, 7, 4))
    if kind == "layer":
        outputs = RepresentationFlow(num_iter=3, learn=("sobel",), gradient="central")(inputs)
    else:
        outputs = flow_stack("fcf", channels_reduced=2, num_iter=2)(inputs)
    model = keras.Model(inputs, outputs)
    _perturb_weights(model)
    clips = np.abs(moving_clips((2, 4, 6, 7, 4), seed=18))
    expected = model(clips, training=False).numpy()
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(clips, training=False).numpy(), expected)
    assert len(loaded.weights) == len(model.weights)
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        # Keras 3.15 drops the nested Sequential's name from the loaded paths; compare the ends.
        assert saved.path.endswith(restored.path), (saved.path, restored.path)
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())


def _save_under_former_name(path, old_path):
    """Rewrites a .keras file as the code before ConvBNReLU's rename wrote it: the config names
    `_ConvBNReLU`, and the weights sit under the snake-cased former class name."""
    import h5py

    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    config = members["config.json"].decode()
    assert config.count('"registered_name": "repflow_tf>ConvBNReLU"') == 1
    config = config.replace('"class_name": "ConvBNReLU"', '"class_name": "_ConvBNReLU"')
    config = config.replace('"repflow_tf>ConvBNReLU"', '"repflow_tf>_ConvBNReLU"')
    members["config.json"] = config.encode()
    weights = old_path.with_suffix(".h5")
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as file:
        file.move(
            "layers/sequential/layers/conv_bn_re_lu", "layers/sequential/layers/__conv_bn_re_lu"
        )
    members["model.weights.h5"] = weights.read_bytes()
    with zipfile.ZipFile(old_path, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)


def test_conv_bn_relu_loads_when_saved_under_its_former_name(tmp_path):
    layer = ConvBNReLU(synchronized_bn=True, name="flow_conv")
    serialized = keras.saving.serialize_keras_object(layer)
    assert (serialized["class_name"], serialized["registered_name"]) == (
        "ConvBNReLU",
        "repflow_tf>ConvBNReLU",
    )
    former = {
        **serialized,
        "class_name": "_ConvBNReLU",
        "registered_name": "repflow_tf>_ConvBNReLU",
    }
    restored = keras.saving.deserialize_keras_object(former)
    assert isinstance(restored, ConvBNReLU) and restored.get_config() == layer.get_config()

    inputs = keras.Input((None, 6, 7, 4))
    model = keras.Model(inputs, flow_stack("fcf", channels_reduced=2, num_iter=2)(inputs))
    _perturb_weights(model)
    clips = np.abs(moving_clips((2, 4, 6, 7, 4), seed=22))
    expected = model(clips, training=False).numpy()
    model.save(tmp_path / "new.keras")
    _save_under_former_name(tmp_path / "new.keras", tmp_path / "former.keras")
    loaded = keras.models.load_model(tmp_path / "former.keras")
    assert isinstance(loaded.get_layer("flow_stack_fcf").get_layer("flow_conv"), ConvBNReLU)
    np.testing.assert_array_equal(loaded(clips, training=False).numpy(), expected)


def test_clip_by_value_constraint_round_trips_and_bounds_the_log_hyperparameters():
    constraint = ClipByValue(-2.0, 3.0)
    serialized = keras.constraints.serialize(constraint)
    assert serialized["registered_name"] == "repflow_tf>ClipByValue"
    restored = keras.constraints.deserialize(serialized)
    assert isinstance(restored, ClipByValue) and restored.get_config() == constraint.get_config()
    assert restored(tf.constant([-5.0, 1.0, 7.0])).numpy().tolist() == [-2.0, 1.0, 3.0]
    with pytest.raises(ValueError, match=r"min_value=1\.0, max_value=0\.0"):
        ClipByValue(1.0, 0.0)
    layer = RepresentationFlow(num_iter=2)
    layer.build((None, 3, 6, 7, 2))
    for weight in layer.weights:
        if weight.path.split("/")[-1].startswith("log_"):
            bounds = (np.log(1e-4), np.log(1e4))
            assert isinstance(weight.constraint, ClipByValue), weight.path
            np.testing.assert_allclose(list(weight.constraint.get_config().values()), bounds)
        else:
            assert weight.constraint is None, weight.path


def _init_arguments(cls):
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    return [p.name for p in parameters if p.kind != p.VAR_KEYWORD]


def test_representation_flow_config_round_trip():
    layer = RepresentationFlow(
        num_iter=7,
        gradient="central",
        learn=("sobel",),
        theta=0.5,
        lambda_=0.2,
        tau=0.1,
        normalize=False,
        name="custom_flow",
    )
    config = layer.get_config()
    for argument in _init_arguments(RepresentationFlow):
        assert argument in config, argument
    assert config["num_iter"] == 7 and config["gradient"] == "central"
    assert config["theta"] == 0.5 and config["lambda_"] == 0.2 and config["tau"] == 0.1
    assert list(config["learn"]) == ["sobel"] and config["normalize"] is False
    clone = RepresentationFlow.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 3, 6, 7, 2))
    assert {group_of(v) for v in clone.trainable_weights} == {"sobel"}
    np.testing.assert_allclose(float(clone.hyperparameters()["theta"]), 0.5, rtol=1e-6)


def test_flow_block_config_round_trip():
    block = FlowBlock(
        channels_reduced=3,
        num_iter=7,
        gradient="central",
        learn=("sobel",),
        theta=0.5,
        lambda_=0.2,
        tau=0.1,
        synchronized_bn=True,
    )
    config = block.get_config()
    for argument in _init_arguments(FlowBlock):
        assert argument in config, argument
    clone = FlowBlock.from_config(config)
    assert clone.get_config() == config
    flow_config = clone.flow.get_config()
    assert flow_config["num_iter"] == 7 and flow_config["gradient"] == "central"
    assert list(flow_config["learn"]) == ["sobel"] and flow_config["theta"] == 0.5


# === Bad input ===


@pytest.mark.parametrize(
    "inputs, message",
    [
        (tf.zeros((2, 4, 4, 2)), r"rank 5.*inputs\.shape=\(2, 4, 4, 2\)"),
        (tf.zeros((1, 1, 4, 4, 2)), r"time >= 2.*inputs\.shape=\(1, 1, 4, 4, 2\)"),
        (tf.zeros((1, 3, 4, 4, 2), tf.int32), r"inputs\.dtype=int32"),
    ],
)
def test_bad_inputs_raise(inputs, message):
    with pytest.raises(ValueError, match=message):
        RepresentationFlow(num_iter=2)(inputs)


def test_static_time_one_in_functional_model_raises():
    with pytest.raises(ValueError, match=r"time >= 2.*inputs\.shape=\(None, 1, 4, 4, 2\)"):
        RepresentationFlow()(keras.Input((1, 4, 4, 2)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gradient": "sobol"},
        {"learn": ("sobel", "hypr")},
        {"num_iter": 0},
        {"num_iter": -3},
        {"num_iter": 2.5},
        {"num_iter": True},
        {"theta": 0.0},
        {"theta": -0.3},
        {"lambda_": 0},
        {"tau": -1.0},
        {"jit_compile": "yes"},
        {"jit_compile": 1},
    ],
)
def test_bad_arguments_raise(kwargs):
    ((name, value),) = kwargs.items()
    shown = repr(tuple(value)) if name == "learn" else repr(value)
    with pytest.raises(ValueError, match=f"`{name}`.*{re.escape(f'{name}={shown}')}"):
        RepresentationFlow(**kwargs)
    with pytest.raises(ValueError, match=re.escape(f"{name}={shown}")):
        FlowBlock(**kwargs)


@pytest.mark.parametrize("channels_reduced", [0, -2, 2.5, True])
def test_flow_block_bad_channels_reduced(channels_reduced):
    expected = re.escape(f"channels_reduced={channels_reduced!r}")
    with pytest.raises(ValueError, match=f"`channels_reduced`.*{expected}"):
        FlowBlock(channels_reduced=channels_reduced)


def test_flow_block_bad_rank_and_flow_stack_bad_kind():
    with pytest.raises(ValueError, match=r"rank 5.*inputs\.shape=\(2, 4, 4, 3\)"):
        FlowBlock(channels_reduced=2, num_iter=2)(tf.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"`kind`.*kind='ff'"):
        flow_stack("ff")


def test_option_names_are_defined_once_in_ops():
    from repflow_tf import layers

    assert layers.FLOW_STACKS is options.FLOW_STACKS
    assert layers.LEARNABLE_GROUPS is options.LEARNABLE_GROUPS


def test_the_default_runs_the_fused_cpu_kernels_and_jit_compile_true_runs_xla():
    """No GPU here: "auto" and False run the fused kernels, True XLA; all give the same flow."""
    clips = tf.constant(moving_clips((2, 3, 6, 7, 2), seed=40))

    def op_types(layer):
        def flow_and_gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = layer(x)
                loss = tf.reduce_sum(out * out)
            return out, tape.gradient(loss, x)

        graph = tf.function(flow_and_gradient).get_concrete_function(clips).graph.as_graph_def()
        nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        return {node.op for node in nodes}, flow_and_gradient(clips)

    results = {}
    for jit_compile in ("auto", False, True):
        types, results[jit_compile] = op_types(RepresentationFlow(3, jit_compile=jit_compile))
        assert ("RepflowTvl1Grad" in types) is (jit_compile is not True), jit_compile
    for jit_compile in (False, True):
        for got, want in zip(results[jit_compile], results["auto"], strict=True):
            assert rel_diff(got, want) < 1e-4, jit_compile
