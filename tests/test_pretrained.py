"""Pretrained starts: keras.applications.ResNet50 weights in our 2D, (2+1)D and 3D ResNet-50s
(`model.pretrained`), and fine-tuning another workdir's model (`trainer.init_from`).

The ResNet-50s run on 32 x 32 frames; the keras.applications model is randomly initialised
(`weights=None`), given random biases and batch norm statistics, and saved to a file: nothing is
downloaded.
"""

from __future__ import annotations

import dataclasses
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.utils import file_utils
from test_training import DEMO, make_tiny_data, run_cli, set_args, tiny_overrides

from repflow_tf import data, models, training
from repflow_tf.config import ConfigError, ModelConfig, load_config
from repflow_tf.models import inflate_into, pretrained
from repflow_tf.models.inflate import _leaf_layers

SIZE = 32
# keras.applications.ResNet50's block outputs and ours (the stem after its ReLU, every block).
BLOCKS = [("conv1_relu", "conv1_relu")] + [
    (f"conv{group + 1}_block{block}_out", f"group{group}_block{block}_out")
    for group, blocks in enumerate((3, 4, 6, 3), start=1)
    for block in range(1, blocks + 1)
]
PRETRAINED = {"depth": 50, "resnet_variant": "v1", "input_normalization": "caffe"}


def _randomized_resnet50(seed: int = 0) -> keras.Model:
    """keras.applications.ResNet50(weights=None) with random conv biases, batch norm scales and
    offsets, and moving statistics near those of random frames (so activations stay O(1)).

    A quarter of each batch norm's channels then get variance 0, their gamma rescaled so they
    compute the same: there the epsilon (1.001e-5 in keras.applications, 1e-5 in ours) decides
    the scale, as in the near-dead channels of trained networks.
    """
    resnet = keras.applications.ResNet50(weights=None, include_top=False)
    rng = np.random.default_rng(seed)
    norms = [layer for layer in resnet.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in resnet.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape).astype("float32"))
    for layer in norms:
        layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
        layer.beta.assign(rng.normal(0, 0.2, layer.beta.shape).astype("float32"))
        layer.momentum = 0.0  # one training call sets the moving statistics to the batch's
    frames = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
    resnet(keras.applications.resnet50.preprocess_input(frames), training=True)
    for layer in norms:
        layer.momentum = 0.99
        for variable in (layer.moving_mean, layer.moving_variance):
            value = variable.numpy() * rng.uniform(0.8, 1.2, variable.shape)
            variable.assign(value.astype("float32"))
        variance, gamma = layer.moving_variance.numpy(), layer.gamma.numpy()
        tiny = slice(0, len(variance) // 4)
        gamma[tiny] *= np.sqrt(layer.epsilon / (variance[tiny] + layer.epsilon))
        variance[tiny] = 0.0
        layer.moving_variance.assign(variance)
        layer.gamma.assign(gamma)
    return resnet


@pytest.fixture(autouse=True, scope="module")
def _float32_matmuls():
    """Full float32 convolutions: on GPUs TensorFloat-32 (on by default) rounds to 1e-3."""
    previous = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(previous)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory) -> tuple[str, keras.Model]:
    path = str(tmp_path_factory.mktemp("resnet50") / "resnet50.weights.h5")
    resnet = _randomized_resnet50()
    resnet.save_weights(path)
    return path, resnet


def _keras_blocks(resnet: keras.Model, frames: np.ndarray) -> list[np.ndarray]:
    """keras.applications' block outputs on `frames` (..., H, W, 3) RGB in [0, 255]."""
    probe = keras.Model(resnet.input, [resnet.get_layer(name).output for name, _ in BLOCKS])
    flat = frames.reshape((-1, *frames.shape[-3:]))
    outputs = probe(keras.applications.resnet50.preprocess_input(flat.copy()), training=False)
    return [np.asarray(output) for output in outputs]


def _our_blocks(model: keras.Model, clips: np.ndarray) -> list[np.ndarray]:
    """Our backbone's block outputs on `clips` (batch, time, H, W, 3), as (batch * time, ...)."""
    backbone = model.get_layer("rgb_backbone")
    probe = keras.Model(backbone.input, [backbone.get_layer(name).output for _, name in BLOCKS])
    outputs = probe(clips, training=False)
    return [np.asarray(output).reshape((-1, *output.shape[-3:])) for output in outputs]


def _build(path: str, **options) -> tuple[ModelConfig, keras.Model]:
    config = ModelConfig(
        **{**PRETRAINED, "flow_position": "none", "num_classes": 5, "image_size": SIZE, **options},
        pretrained=path,
    )
    return config, models.build(config)


def test_2d_resnet50_from_keras_applications_gives_its_block_outputs(resnet50_file):
    path, resnet = resnet50_file
    config, model = _build(path)
    report = models.load_pretrained(model, config)
    assert "rgb_backbone" in report and "53 convs" in report
    clips = np.random.default_rng(1).uniform(0, 255, (2, 2, SIZE, SIZE, 3)).astype("float32")
    worst = 0.0
    for (name, _), theirs, ours in zip(
        BLOCKS, _keras_blocks(resnet, clips), _our_blocks(model, clips), strict=True
    ):
        assert ours.shape == theirs.shape, name
        difference = np.abs(ours - theirs).max()
        worst = max(worst, difference)
        scale = float(max(1.0, np.abs(theirs).max()))
        assert difference < 1e-4 * scale, f"{name}: {difference:.3g} (values up to {scale:.3g})"
    print(f"max |difference| over the block outputs: {worst:.2e}")


@pytest.mark.slow  # two 3D ResNet-50s
@pytest.mark.parametrize("kind", ["3d", "2plus1d"])
def test_inflated_resnet50_gives_the_2d_block_outputs(resnet50_file, kind):
    """Center inflation: every frame of any clip; mean inflation: a clip of one repeated frame
    away from its ends (the stem and each block's 3x3 conv reach one frame further)."""
    path, resnet = resnet50_file
    rng = np.random.default_rng(2)
    frames = 6
    clips = rng.uniform(0, 255, (1, frames, SIZE, SIZE, 3)).astype("float32")
    expected = _keras_blocks(resnet, clips)
    config, model = _build(path, kind=kind, pretrained_inflation="center")
    models.load_pretrained(model, config)
    backbone = model.get_layer("rgb_backbone")
    if kind == "3d":
        assert backbone.get_layer("conv1").kernel.shape == (3, 7, 7, 3, 64)
        assert backbone.get_layer("group1_block1_conv2").kernel.shape == (3, 3, 3, 64, 64)
    else:
        assert backbone.get_layer("conv1_spatial").kernel.shape == (1, 7, 7, 3, 83)
        assert backbone.get_layer("conv1_temporal").kernel.shape == (3, 1, 1, 83, 64)
    for (name, _), theirs, ours in zip(BLOCKS, expected, _our_blocks(model, clips), strict=True):
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()))

    config, model = _build(path, kind=kind, pretrained_inflation="mean")
    models.load_pretrained(model, config)
    constant = np.repeat(clips[:, :1], frames, axis=1)
    frame_blocks = _keras_blocks(resnet, clips[:, :1])
    ours = _our_blocks(model, constant)
    for radius, index in ((1, 0), (2, 1), (2, 1)):  # conv1_relu, group1_block1 (twice: cheap)
        theirs = frame_blocks[index]
        interior = ours[index][radius : frames - radius]
        scale = max(1.0, np.abs(theirs).max())
        np.testing.assert_allclose(interior, np.repeat(theirs, len(interior), 0), atol=1e-4 * scale)
        assert np.abs(ours[index][0] - theirs[0]).max() > 1e-3 * scale  # the zero padding


def test_2plus1d_inflation_keeps_the_negative_part_of_convs_without_relu():
    """A basic block's second conv has no ReLU, but the (2+1)D split has one between its spatial
    and temporal convs: the negated copy carries the negative part (ResNet-18, any clip)."""
    config = ModelConfig(
        depth=18, base_width=4, num_classes=3, flow_position="none", pretrained_inflation="center"
    )
    model_2d = models.build(config)
    rng = np.random.default_rng(3)
    for variable in model_2d.weights:
        if variable.path.endswith(("gamma", "moving_variance")):
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
        elif variable.path.endswith(("beta", "moving_mean")):
            variable.assign(rng.normal(0, 0.1, variable.shape).astype("float32"))
    layers = _leaf_layers(model_2d.get_layer("rgb_backbone"))
    source = {name: layer.get_weights() for name, layer in layers if layer.weights}
    model = models.build(dataclasses.replace(config, kind="2plus1d"))
    loaded = inflate_into(source, model.get_layer("rgb_backbone"), "center")
    assert "group1_block1_conv2_temporal" in loaded
    clips = rng.uniform(0, 255, (1, 4, SIZE, SIZE, 3)).astype("float32")
    expected = np.asarray(model_2d.get_layer("rgb_backbone")(clips, training=False))
    ours = np.asarray(model.get_layer("rgb_backbone")(clips, training=False))
    np.testing.assert_allclose(ours, expected, atol=1e-4 * np.abs(expected).max())


def test_pretrained_leaves_the_flow_layers_and_the_classifier_alone(resnet50_file):
    path, resnet = resnet50_file
    config, model = _build(path, flow_position="block3", flow_stack="fcf", flow_iterations=2)
    untouched = {
        variable.path: variable.numpy()
        for variable in model.weights
        if variable.path.startswith(("flow_stack/", "classifier/"))
    }
    assert any("representation_flow" in name for name in untouched)
    models.load_pretrained(model, config)
    for variable in model.weights:
        if variable.path in untouched:
            np.testing.assert_array_equal(variable.numpy(), untouched[variable.path])
    kernel = model.get_layer("flow_backbone").get_layer("group4_block3_conv3").kernel.numpy()
    np.testing.assert_array_equal(kernel, resnet.get_layer("conv5_block3_3_conv").kernel.numpy())


def test_pretrained_needs_the_keras_applications_layout():
    with pytest.raises(ConfigError, match="resnet_variant='v1.5'") as error:
        load_config(DEMO, ['model.pretrained="imagenet"'])
    assert "depth=18" in str(error.value) and "\n" not in str(error.value)
    config = load_config(
        DEMO, ['model.pretrained="w.h5"', *(f'model.{k}="{v}"' for k, v in PRETRAINED.items()
                                          if k != "depth"), "model.depth=50", "model.base_width=64"]
    )  # fmt: skip
    assert config.model.pretrained == "w.h5"  # a file is looked for at training, not here


def test_a_missing_or_foreign_weights_file_is_one_line_naming_it(tmp_path):
    missing = str(tmp_path / "missing.weights.h5")
    with pytest.raises(models.PretrainedError, match="no such weights file") as error:
        pretrained.keras_resnet50(missing)
    assert missing in str(error.value)
    foreign = tmp_path / "foreign.weights.h5"
    foreign.write_bytes(b"not an HDF5 file")
    with pytest.raises(models.PretrainedError, match="not keras.applications.ResNet50") as error:
        pretrained.keras_resnet50(str(foreign))
    assert str(foreign) in str(error.value) and "\n" not in str(error.value)


def test_imagenet_offline_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    """Training asks keras.applications for the ImageNet weights; a failed download (here
    forced, as offline) stops it with one line naming model.pretrained, before writing."""

    def offline(*args, **kwargs):
        raise Exception(  # what keras.utils.get_file raises for a urllib error
            "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
            "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", offline)
    root = make_tiny_data(str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    extra = [*(f'model.{k}="{v}"' for k, v in PRETRAINED.items() if k != "depth")]
    args = set_args(root, "model.depth=50", "model.base_width=64", *extra)
    code, _, err = run_cli(
        [f"--config={DEMO}", f"--workdir={workdir}", *args, '--set=model.pretrained="imagenet"'],
        capsys,
    )
    assert code == 2
    lines = [line for line in err.strip().splitlines() if "model.pretrained" in line]
    assert len(lines) == 1 and "cannot get the keras.applications.ResNet50" in lines[0]
    assert "Temporary failure in name resolution" in lines[0]
    assert not os.path.exists(os.path.join(workdir, "config.toml"))


# === init_from ===


class _Interrupt(Exception):
    pass


class _Weights(keras.callbacks.Callback):
    """The model's weights when training first begins (`start`) and, with `stop_after`, after
    that many batches (`stop`; a kill right after that step's checkpoint)."""

    def __init__(self, stop_after: int = 0):
        super().__init__()
        self.stop_after, self.seen = stop_after, 0
        self.start: list[np.ndarray] | None = None
        self.stop: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = [v.numpy() for v in self.model.weights]

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.stop_after:
            self.stop = [v.numpy() for v in self.model.weights]
            raise _Interrupt


def _train(root: str, workdir: str, *extra: str, stop_after: int = 0) -> tuple[str, _Weights]:
    """Trains the tiny demo variant on `root` for 1 epoch (unless `extra` says otherwise)."""
    weights = _Weights(stop_after)
    quiet = ("trainer.flow_images_every_epochs=0", "trainer.histograms_every_epochs=0")
    config = load_config(DEMO, tiny_overrides(root, "trainer.epochs=1", *quiet, *extra))
    log = io.StringIO()
    try:
        training.train(config, workdir, callbacks=[weights], log=log)
    except _Interrupt:
        pass
    return log.getvalue(), weights


@pytest.mark.slow  # three short trainings
def test_init_from_fine_tunes_another_workdirs_model_onto_other_classes(tmp_path):
    # The source: the demo's tiny variant on 8 synthetic classes; the target has 4.
    source = str(tmp_path / "source")
    data.make_synthetic_dataset(
        str(tmp_path / "data8"), num_train=16, num_val=8, num_classes=8, num_frames=8, size=32,
        log=None,
    )  # fmt: skip
    _train(str(tmp_path / "data8"), source, "model.num_classes=8")
    source_model = keras.models.load_model(os.path.join(source, "model.keras"), compile=False)
    root = make_tiny_data(str(tmp_path / "data4"))
    target = str(tmp_path / "target")
    # 2 epochs of 4 batches, killed after batch 2 (checkpointed).
    options = ("trainer.epochs=2", "trainer.checkpoint_every_steps=2")
    log, weights = _train(root, target, *options, f'trainer.init_from="{source}"', stop_after=2)
    lines = [line for line in log.splitlines() if line.startswith("trainer.init_from=")]
    assert len(lines) == 1, log
    assert "re-initialised (no layer of that name and shape there): classifier" in lines[0]
    backbone = {id(v) for v in source_model.get_layer("flow_backbone").weights}
    assert len(backbone) > 50
    for index, variable in enumerate(source_model.weights):
        if id(variable) in backbone:
            np.testing.assert_array_equal(weights.start[index], variable.numpy())
    classifier = source_model.get_layer("classifier").kernel
    assert classifier.shape == (32, 8)
    index = next(i for i, v in enumerate(source_model.weights) if v is classifier)
    assert weights.start[index].shape == (32, 4)

    # The resume restores its checkpoint: init_from (now a missing workdir) is not even read.
    log, resumed = _train(root, target, *options, 'trainer.init_from="/nonexistent"', stop_after=1)
    assert "resumed from" in log and "trainer.init_from=" not in log
    for restored, saved in zip(resumed.start, weights.stop, strict=True):
        np.testing.assert_array_equal(restored, saved)

    # Weights of another layout (same shapes) are refused.
    with pytest.raises(training.TrainingError, match="resnet_variant='v1.5', this config has 'v1'"):
        _train(
            root, str(tmp_path / "v1"), 'model.resnet_variant="v1"', f'trainer.init_from="{source}"'
        )


def test_init_from_errors_are_one_line(tmp_path):
    root = make_tiny_data(str(tmp_path / "data"))
    missing = str(tmp_path / "nowhere")
    with pytest.raises(
        training.TrainingError, match="trainer.init_from=.*no such directory"
    ) as error:
        _train(root, str(tmp_path / "a"), f'trainer.init_from="{missing}"')
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "a" / "config.toml")
    config = load_config(DEMO, tiny_overrides(root, 'trainer.init_from="x"'))
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, **PRETRAINED, base_width=64, pretrained="w")
    )
    with pytest.raises(training.TrainingError, match="set one"):
        training.train(config, str(tmp_path / "b"))
