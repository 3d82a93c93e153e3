"""Tests of repflow_tf.models and ModelConfig: every option builds, trains, saves and inflates.

Coverage of the combination sweep (a full cartesian product, 3 kinds x 7 positions x 3 stacks x
6 fusions x 3 depths x 3 inputs, is far too slow on CPU): for EACH backbone kind, `_sweep_cases`
builds one model per flow position; the fusions, flow stacks and depths are rotated over those
positions (shifted per kind), so every kind sees every position, every fusion, every stack and
every depth at least once, plus the two optical flow baselines (whose RGB stream is the plain RGB
model). The RGB-input fusions add/multiply (channel tiling) and concat, which the rotation reaches
for one kind only, get extra 2D cases. All models are tiny (base width 4, flow channels 4, 2 flow
iterations) and run forward + backward on batch 2, 8 frames, 64x64 with unknown batch and time.
The sweep runs the flow layers on their plain-graph path, except after block1 (one model per
kind), which keeps the default XLA path: XLA compiling every flow layer of every model for its
shape took most of the sweep's time (about 9 of 12 s for a flow-of-flow ResNet-34), and the flow
layer's XLA path is checked against its plain path in test_ops and test_layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from repflow_tf import config as config_lib
from repflow_tf.config import ModelConfig, model_config_from_dict
from repflow_tf.export_formats import plain_graph_flow
from repflow_tf.models import build, inflate_2d_weights

TINY = {"num_classes": 5, "base_width": 4, "flow_iterations": 2, "flow_channels": 4}
BATCH, FRAMES, SIZE = 2, 8, 64
_POSITIONS = ("input", "stem", "block1", "block2", "block3", "block4")
_DEPTHS = (18, 34, 18, 50, 18, 18)
_XLA_POSITION = "block1"  # the sweep's models that keep the flow's default (XLA) path


def _sweep_cases() -> list[dict]:
    cases = []
    for k, kind in enumerate(config_lib.KINDS):
        for i, position in enumerate(_POSITIONS):
            cases.append(
                {
                    "kind": kind,
                    "flow_position": position,
                    "fusion": config_lib.FUSIONS[(i + 2 * k) % 6],
                    "flow_stack": config_lib.FLOW_STACKS[(i + k) % 3],
                    "depth": _DEPTHS[(i + k) % 6],
                }
            )
        for inputs in ("optical_flow", "rgb+optical_flow"):
            cases.append({"kind": kind, "flow_position": "none", "inputs": inputs, "depth": 18})
    for fusion, stack in (("add", "single"), ("multiply", "fcf"), ("concat", "fof")):
        cases.append(
            {
                "kind": "2d",
                "flow_position": "input",
                "fusion": fusion,
                "flow_stack": stack,
                "depth": 18,
            }
        )
    return cases


def _case_id(case: dict) -> str:
    return "-".join(str(value) for value in case.values())


def _inputs(config: ModelConfig, batch=BATCH, frames=FRAMES, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    frames_in = tf.constant(rng.uniform(0, 255, (batch, frames, size, size, 3)), tf.float32)
    optical_flow = tf.constant(rng.normal(0, 3, (batch, frames - 1, size, size, 2)), tf.float32)
    if config.inputs == "rgb":
        return frames_in
    if config.inputs == "optical_flow":
        return {"optical_flow": optical_flow}
    return {"frames": frames_in, "optical_flow": optical_flow}


def test_sweep_covers_every_option_for_every_kind():
    for kind in config_lib.KINDS:
        cases = [c for c in _sweep_cases() if c["kind"] == kind]
        with_flow = [c for c in cases if c["flow_position"] != "none"]
        assert {c["flow_position"] for c in cases} == set(config_lib.FLOW_POSITIONS)
        assert {c["fusion"] for c in with_flow} == set(config_lib.FUSIONS)
        assert {c["flow_stack"] for c in with_flow} == set(config_lib.FLOW_STACKS)
        assert {c["depth"] for c in cases} == set(config_lib.DEPTHS)
        assert {c.get("inputs", "rgb") for c in cases} == set(config_lib.INPUTS)


@pytest.mark.parametrize("case", _sweep_cases(), ids=_case_id)
def test_builds_forward_backward(case):
    config = ModelConfig(**TINY, **case)
    model = build(config)
    inputs = model.inputs if isinstance(model.input, dict) else [model.input]
    for tensor in inputs:  # unknown batch and time
        assert tuple(tensor.shape[:2]) == (None, None)
    default_path = config.flow_position == _XLA_POSITION
    with contextlib.nullcontext() if default_path else plain_graph_flow(model):
        with tf.GradientTape() as tape:
            logits = model(_inputs(config), training=True)
            loss = tf.reduce_mean(tf.square(logits))
        grads = tape.gradient(loss, model.trainable_variables)
    assert logits.shape == (BATCH, TINY["num_classes"])
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    missing = [v.path for v, g in zip(model.trainable_variables, grads, strict=True) if g is None]
    assert not missing
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    if config.flow_position != "none":
        assert any("representation_flow" in v.path for v in model.trainable_variables)


def test_symbolic_unknown_shapes_and_other_batch_and_time():
    config = ModelConfig(**TINY, depth=18, flow_position="input", fusion="add", flow_stack="fcf")
    model = build(config)
    traced = tf.function(
        model, input_signature=[tf.TensorSpec((None, None, SIZE, SIZE, 3), tf.float32)]
    )
    for batch, frames in ((1, 5), (3, 3)):
        assert traced(_inputs(config, batch, frames)).shape == (batch, TINY["num_classes"])
    unknown_size = traced.get_concrete_function().structured_outputs
    assert unknown_size.shape.as_list() == [None, TINY["num_classes"]]


def test_time_alignment_and_spatial_shapes():
    # After block 3 of a 64x64 input: 64 / 16 = 4; FcF drops two frames.
    for kind in config_lib.KINDS:
        config = ModelConfig(**TINY, kind=kind, depth=18, flow_position="block3", flow_stack="fcf")
        backbone = build(config).get_layer("flow_backbone")
        features = backbone(_inputs(config))
        assert features.shape == (BATCH, FRAMES - 2, 2, 2, 8 * TINY["base_width"])


def test_late_fusion_and_two_stream_have_two_backbones():
    late = build(ModelConfig(**TINY, depth=18, fusion="late", flow_position="block1"))
    names = {layer.name for layer in late.layers}
    assert {"rgb_backbone", "flow_backbone", "logits"} <= names
    assert not any("representation_flow" in v.path for v in late.get_layer("rgb_backbone").weights)
    two_stream = build(
        ModelConfig(**TINY, depth=18, flow_position="none", inputs="rgb+optical_flow")
    )
    assert sorted(two_stream.input) == ["frames", "optical_flow"]
    assert two_stream.input["optical_flow"].shape[-1] == 2
    rgb = build(ModelConfig(**TINY, depth=18, flow_position="none"))
    # Two streams: about twice the RGB model (the optical flow stem has 2 input channels, not 3).
    assert 1.9 < two_stream.count_params() / rgb.count_params() < 2.0


@pytest.mark.parametrize(
    "case",
    [
        {"kind": "2d", "flow_position": "block2", "flow_stack": "fcf", "fusion": "layer_multiply"},
        {"kind": "2plus1d", "flow_position": "input", "flow_stack": "fof", "fusion": "add"},
        {"kind": "3d", "flow_position": "block1", "flow_stack": "single", "fusion": "late"},
        {"kind": "2d", "flow_position": "none", "inputs": "rgb+optical_flow"},
    ],
    ids=_case_id,
)
def test_keras_round_trip(case, tmp_path):
    config = ModelConfig(**TINY, depth=18, num_frames=FRAMES, image_size=SIZE, **case)
    model = build(config)
    inputs = _inputs(config)
    expected = model(inputs, training=False)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(inputs, training=False).numpy(), expected.numpy())
    # The flow parameters stay selectable by path, e.g. for a 0.01 x lr OptimizerMap.
    optimizer_map = keras.optimizers.OptimizerMap(
        keras.optimizers.SGD(0.1), {".*representation_flow.*": keras.optimizers.SGD(0.001)}
    )
    for restored in (model, loaded):
        selected = [
            v for v in restored.trainable_variables if float(optimizer_map(v).learning_rate) < 0.01
        ]
        if config.flow_position == "none":
            assert not selected
        else:
            names = {re.sub(r".*/", "", v.path) for v in selected}
            assert names == {
                "log_theta",
                "log_lambda",
                "log_tau",
                "forward_difference_x",
                "forward_difference_y",
                "divergence_x",
                "divergence_y",
            }


def test_conv_between_two_input_flows_keeps_its_layers():
    config = ModelConfig(**TINY, depth=18, kind="3d", flow_position="input", flow_stack="fcf")
    backbone = build(config).get_layer("flow_backbone")
    conv, norm = backbone.get_layer("flow_conv"), backbone.get_layer("flow_conv_bn")
    assert (conv.filters, conv.kernel_size, conv.padding, conv.use_bias) == (
        6,
        (1, 3, 3),
        "same",
        False,
    )
    assert (norm.momentum, norm.epsilon, norm.synchronized) == (0.9, 1e-5, False)
    assert [w.path for w in conv.weights + norm.weights] == [
        "flow_conv/kernel",
        *(f"flow_conv_bn/{name}" for name in ("gamma", "beta", "moving_mean", "moving_variance")),
    ]
    assert backbone.get_layer("flow_conv_relu").output.shape[-1] == 6


def _randomize(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        shape = variable.shape
        if name == "moving_variance" or name == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("moving_mean", "beta", "bias"):
            value = rng.normal(0, 0.1, shape)
        else:
            continue  # conv kernels keep their (random) He initialisation
        variable.assign(value.astype("float32"))


def test_inflate_2d_weights_constant_clip_matches_2d_features():
    config = ModelConfig(**TINY, depth=18, flow_position="none")
    model_2d = build(config)
    _randomize(model_2d)
    model_3d = build(dataclasses.replace(config, kind="3d"))
    inflate_2d_weights(model_2d, model_3d)
    kernel_2d = model_2d.get_layer("rgb_backbone").get_layer("conv1").kernel.numpy()
    kernel_3d = model_3d.get_layer("rgb_backbone").get_layer("conv1").kernel.numpy()
    np.testing.assert_allclose(kernel_3d, np.repeat(kernel_2d[None], 3, axis=0) / 3, rtol=1e-6)
    # Temporal "same" padding uses zeros, so frames within the temporal receptive radius of the
    # clip ends differ from the 2D features; ResNet-18 3D: the stem and 16 3x3x3 convs each reach
    # one frame further, radius 17, so a 36-frame clip has 2 interior steps (17 and 18).
    radius, frames = 17, 36
    frame = np.random.default_rng(1).uniform(0, 255, (1, 1, 32, 32, 3)).astype("float32")
    clip = np.repeat(frame, frames, axis=1)
    features_2d = model_2d.get_layer("rgb_backbone")(frame, training=False).numpy()
    features_3d = model_3d.get_layer("rgb_backbone")(clip, training=False).numpy()
    interior = features_3d[:, radius : frames - radius]
    assert interior.shape[1] == 2
    scale = np.abs(features_2d).max()
    np.testing.assert_allclose(interior, np.repeat(features_2d, 2, axis=1), atol=1e-4 * scale)
    assert np.abs(features_3d[:, 0] - features_2d[:, 0]).max() > 1e-3 * scale  # padding effect


def test_inflate_copies_flow_weights_and_rejects_2plus1d():
    config = ModelConfig(**TINY, depth=18, flow_position="block1", fusion="layer_multiply")
    model_2d = build(config)
    for variable in model_2d.weights:
        if "representation_flow" in variable.path or "fusion_conv" in variable.path:
            variable.assign(variable.numpy() + 0.25)
    model_3d = build(dataclasses.replace(config, kind="3d"))
    inflate_2d_weights(model_2d, model_3d)
    flow_2d = {v.path: v.numpy() for v in model_2d.weights if "flow_stack" in v.path}
    flow_3d = {v.path: v.numpy() for v in model_3d.weights if "flow_stack" in v.path}
    assert flow_2d.keys() == flow_3d.keys() and flow_2d
    for path, value in flow_2d.items():
        np.testing.assert_array_equal(flow_3d[path], value)
    with pytest.raises(ValueError, match="no layer"):
        inflate_2d_weights(model_2d, build(dataclasses.replace(config, kind="2plus1d")))


def test_synchronized_bn_under_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        config = ModelConfig(**TINY, depth=18, flow_position="block1", synchronized_bn=True)
        model = build(config)
    norms = [
        layer
        for layer in model.get_layer("flow_backbone")._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.synchronized for layer in norms)
    inputs = _inputs(config, batch=2, frames=3, size=32)

    @tf.function
    def step(x):
        return strategy.run(lambda x: model(x, training=True), args=(x,))

    outputs = strategy.experimental_local_results(step(inputs))
    assert len(outputs) == 2 and all(o.shape == (2, TINY["num_classes"]) for o in outputs)


def test_mixed_precision_head_is_float32():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build(ModelConfig(**TINY, depth=18, flow_position="block1"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("classifier").dtype_policy.name == "float32"
    inputs = _inputs(ModelConfig(), batch=2, frames=3, size=32)

    # Eager GradientTape returns None for autocast variables in Keras 3.15; fit runs in a graph.
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.square(logits))
        return logits, tape.gradient(loss, model.trainable_variables)

    logits, grads = step(inputs)
    assert logits.dtype == tf.float32 and logits.shape == (2, TINY["num_classes"])
    assert all(g is not None for g in grads)


# === Config ===


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "4d"),
        ("depth", 101),
        ("num_classes", 0),
        ("base_width", 2.5),
        ("flow_position", "block5"),
        ("flow_stack", "fcfcf"),
        ("flow_iterations", 0),
        ("flow_learn", ("sobel", "everything")),
        ("flow_channels", True),
        ("flow_gradient", "prewitt"),
        ("fusion", "max"),
        ("inputs", "depth"),
        ("dropout", 1.0),
        ("synchronized_bn", "yes"),
        ("input_normalization", "none"),
        ("num_frames", 1),
        ("image_size", 16),
        ("name", ""),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`.*{re.escape(repr(value))}"):
        ModelConfig(**{field: value})


def test_config_cross_field_rules_and_from_dict():
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(flow_position="none", fusion="add")
    with pytest.raises(ValueError, match="optical flow"):
        ModelConfig(flow_position="block3", inputs="rgb+optical_flow")
    with pytest.raises(ValueError, match="num_frames"):
        ModelConfig(flow_stack="fcf", num_frames=2)  # FcF needs 3 frames
    with pytest.raises(ValueError, match="Unknown key 'flow_iters'"):
        model_config_from_dict({"depth": 18, "flow_iters": 10})
    config = model_config_from_dict({"flow_learn": ["hyper", "divergence"], "depth": 50})
    assert config == ModelConfig(depth=50)
    assert config.flow_learn == ("divergence", "hyper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 18
