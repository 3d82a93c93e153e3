"""Training: the 0.01 x lr flow optimizer, fit + checkpoints + resume, the CLI and its errors,
MirroredStrategy with mixed precision, and the workdir contract. All on tiny models and data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from repflow_tf.bin import train as train_cli

from repflow_tf import data, models, training
from repflow_tf.config import ModelConfig, load_config

NUM_CLASSES = 4
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
DEMO = os.path.join(CONFIGS, "demo.toml")


def tiny_overrides(root: str, *extra: str) -> list[str]:
    """A 2D ResNet-18 of width 4 with 2 flow iterations on 4 x 32 x 32 clips, batch 4."""
    return [
        f'data.root="{root}"',
        "data.synthetic=true",
        'data.synthetic_variant="easy"',
        "data.synthetic_train=16",
        "data.synthetic_val=8",
        "data.synthetic_size=32",
        "data.num_frames=4",
        "data.crop_size=32",
        "data.batch_size=4",
        "data.shuffle_buffer=16",
        f"model.num_classes={NUM_CLASSES}",
        "model.depth=18",
        "model.base_width=4",
        'model.flow_position="block1"',
        'model.flow_learn=["divergence", "hyper"]',  # the demo's flow is fixed; these tests learn
        "model.flow_iterations=2",
        "model.flow_channels=4",
        "model.dropout=0.5",
        "optimizer.learning_rate=0.05",
        "schedule.decay_epochs=[1]",
        "trainer.epochs=2",
        "trainer.log_every_steps=2",
        *extra,
    ]


def make_tiny_data(root: str) -> str:
    """16 training and 8 validation videos of 8 frames of 32 x 32, 4 classes, one shard each."""
    data.make_synthetic_dataset(
        root, num_train=16, num_val=8, num_classes=NUM_CLASSES, num_frames=8, size=32, log=None
    )
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> str:
    return make_tiny_data(str(tmp_path_factory.mktemp("synthetic")))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Runs bin/train.py's main in-process; returns (exit status, stdout, stderr)."""
    train_cli.FLAGS.unparse_flags()
    old_argv = sys.argv
    sys.argv = ["train.py", *argv]
    try:
        train_cli.main()
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    finally:
        sys.argv = old_argv
    out, err = capsys.readouterr()
    return code, out, err


def set_args(root: str, *extra: str) -> list[str]:
    return [f"--set={item}" for item in tiny_overrides(root, *extra)]


@pytest.fixture(scope="session")
def trained_workdir(data_root, tmp_path_factory) -> str:
    """An uninterrupted 2-epoch run through the command line (reused by several tests)."""
    workdir = str(tmp_path_factory.mktemp("run") / "uninterrupted")
    train_cli.FLAGS.unparse_flags()
    old_argv = sys.argv
    sys.argv = ["train.py", f"--config={DEMO}", f"--workdir={workdir}"]
    sys.argv += set_args(data_root, "trainer.checkpoint_every_steps=3")
    try:
        with pytest.raises(SystemExit) as exit:
            train_cli.main()
    finally:
        sys.argv = old_argv
    assert not exit.value.code
    return workdir


# === Optimizer ===


def _tiny_flow_model(learn):
    """A 2D ResNet-18 of width 4 with a 2-iteration flow block after block 1."""
    return models.build(
        ModelConfig(
            depth=18,
            base_width=4,
            num_classes=3,
            flow_position="block1",
            flow_iterations=2,
            flow_channels=4,
            flow_learn=learn,
        )
    )


@pytest.mark.parametrize("learn, logged", [((), ["default"]), (("hyper",), ["default", "flow"])])
def test_only_optimizers_that_step_get_their_learning_rate_logged(learn, logged):
    config = load_config(None, ["trainer.epochs=2"])
    model = _tiny_flow_model(learn)
    _, parts = training.build_optimizer(config, steps_per_epoch=10)
    assert sorted(training.stepping_optimizers(model, parts)) == logged


def test_flow_parameters_get_a_hundredth_of_the_learning_rate():
    config = load_config(
        None,
        [
            "optimizer.learning_rate=0.1",
            "optimizer.momentum=0.0",
            "optimizer.weight_decay=0.5",
            "schedule.decay_epochs=[2]",
            "schedule.warmup_epochs=1.0",
            "trainer.epochs=4",
        ],
    )
    model = _tiny_flow_model(("sobel", "divergence", "hyper"))
    optimizer, parts = training.build_optimizer(config, steps_per_epoch=10)
    variables = model.trainable_variables
    optimizer.build(variables)
    flow = [v for v in variables if "representation_flow" in v.path]
    assert {v.path.rsplit("/", 1)[-1] for v in flow} >= {
        "log_theta",
        "log_lambda",
        "log_tau",
        "divergence_x",
        "forward_difference_y",
        "image_gradient_x",
    }
    # The two schedules: warm-up over epoch 1, x0.1 at epoch 2, flow always 0.01 x default.
    for step, expected in [(0, 0.01), (4, 0.05), (9, 0.1), (19, 0.1), (20, 0.01), (39, 0.01)]:
        for part in parts.values():
            part.iterations.assign(step)
        default, flow_lr = (float(parts[name].learning_rate) for name in ("default", "flow"))
        assert default == pytest.approx(expected, rel=1e-5)
        assert flow_lr == pytest.approx(0.01 * expected, rel=1e-5)
    for part in parts.values():
        part.iterations.assign(9)  # lr 0.1 and 0.001
    # One step with every gradient 1 (and weight decay only on the non-flow parameters).
    before = [v.numpy().copy() for v in variables]
    optimizer.apply([tf.ones_like(v) for v in variables], variables)
    for variable, old in zip(variables, before, strict=True):
        change = old - variable.numpy()
        if "representation_flow" in variable.path:
            np.testing.assert_allclose(change, 0.001, rtol=1e-3)  # no decay, lr 0.01 x 0.1
        else:  # SGD step 0.1 plus decoupled decay lr * wd * w
            np.testing.assert_allclose(change, 0.1 + 0.1 * 0.5 * old, rtol=1e-3, atol=1e-6)


# === fit, checkpoints, resume ===


class Interrupt(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    """Simulates a kill after `step` batches (after that step's checkpoint was written)."""

    def __init__(self, step: int):
        super().__init__()
        self.step, self.seen, self.optimizer_state = step, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            self.optimizer_state = [v.numpy().copy() for v in self.model.optimizer.variables]
            raise Interrupt


class RecordStart(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.optimizer_state, self.batches_per_fit = None, []

    def on_train_begin(self, logs=None):
        if self.optimizer_state is None:
            self.optimizer_state = [v.numpy().copy() for v in self.model.optimizer.variables]
        self.batches_per_fit.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.batches_per_fit[-1] += 1


def test_resume_continues_from_the_saved_step(data_root, trained_workdir, tmp_path):
    config = load_config(DEMO, tiny_overrides(data_root, "trainer.checkpoint_every_steps=3"))
    workdir = str(tmp_path / "interrupted")
    interrupt = InterruptAfter(3)  # 4 steps per epoch: step 3 is in the middle of epoch 1
    with pytest.raises(Interrupt):
        training.train(config, workdir, callbacks=[interrupt], log=open(os.devnull, "w"))
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-3")
    assert not os.path.exists(os.path.join(workdir, "model.keras"))

    record = RecordStart()
    result = training.train(config, workdir, callbacks=[record], log=open(os.devnull, "w"))
    # Optimizer state (iterations and momentum of both sub-optimizers) as it was at step 3.
    assert len(record.optimizer_state) == len(interrupt.optimizer_state) > 2
    for restored, saved in zip(record.optimizer_state, interrupt.optimizer_state, strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert int(result.model.optimizer.iterations) == 8
    # The rest of epoch 1 (1 batch), then epoch 2 (4 batches): not from the epoch start.
    assert record.batches_per_fit == [1, 4]
    assert result.summary["steps"] == 8 and result.summary["steps_this_run"] == 5
    # Same data order and dropout as the uninterrupted run: the same final weights.
    uninterrupted = keras.models.load_model(os.path.join(trained_workdir, "model.keras"))
    for resumed, reference in zip(
        result.model.get_weights(), uninterrupted.get_weights(), strict=True
    ):
        np.testing.assert_allclose(resumed, reference, rtol=1e-4, atol=1e-5)


def scalars(run_dir: str, tag: str) -> list[tuple[int, float]]:
    """Every (step, value) of scalar `tag` in the event files of `run_dir`, in file order."""
    found = []
    for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    found.append((event.step, float(tf.make_ndarray(value.tensor))))
    return found


def test_a_resumed_epoch_reports_the_whole_epoch_and_logs_each_step_once(
    data_root, trained_workdir, tmp_path
):
    config = load_config(DEMO, tiny_overrides(data_root, "trainer.checkpoint_every_steps=3"))
    workdir = str(tmp_path / "interrupted")
    # Killed after step 4 (batch_loss of step 4 logged), resumed from the checkpoint of step 3.
    with pytest.raises(Interrupt):
        training.train(config, workdir, callbacks=[InterruptAfter(4)], log=open(os.devnull, "w"))
    history = keras.callbacks.History()
    training.train(config, workdir, callbacks=[history], log=open(os.devnull, "w"))

    logs, reference = (os.path.join(path, "logs", "train") for path in (workdir, trained_workdir))
    steps = [step for step, _ in scalars(logs, "batch_loss")]
    assert steps == [step for step, _ in scalars(reference, "batch_loss")] == [2, 4, 6, 8]
    for tag in ("epoch_loss", "epoch_accuracy"):
        resumed, uninterrupted = scalars(logs, tag), scalars(reference, tag)
        assert [step for step, _ in resumed] == [0, 1]
        # Epoch 1 was 3 batches before the kill and 1 after: its metrics cover all 4.
        np.testing.assert_allclose(
            [value for _, value in resumed], [value for _, value in uninterrupted], rtol=1e-4
        )
    # What fit returns (History) and summary.json say the same.
    whole_epoch_loss = [value for _, value in scalars(reference, "epoch_loss")]
    np.testing.assert_allclose(history.history["loss"], whole_epoch_loss, rtol=1e-4)
    with open(os.path.join(workdir, "summary.json")) as file:
        np.testing.assert_allclose(json.load(file)["loss"], whole_epoch_loss[-1], rtol=1e-4)


def test_workdir_contract(trained_workdir):
    files = sorted(os.listdir(trained_workdir))
    assert files == [
        "checkpoints",
        "class_names.json",
        "config.toml",
        "logs",
        "model.keras",
        "summary.json",
    ]
    config = load_config(os.path.join(trained_workdir, "config.toml"))
    assert config.model.base_width == 4 and config.trainer.checkpoint_every_steps == 3
    with open(os.path.join(trained_workdir, "class_names.json")) as file:
        assert json.load(file) == list(data.class_names(NUM_CLASSES))
    with open(os.path.join(trained_workdir, "summary.json")) as file:
        summary = json.load(file)
    assert summary["epochs"] == 2 and summary["steps"] == 8
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "wall_time_s"):
        assert np.isfinite(summary[key])
    model = keras.models.load_model(os.path.join(trained_workdir, "model.keras"))
    assert model.input.name == "frames"
    assert model.predict(np.zeros((1, 4, 32, 32, 3), "float32"), verbose=0).shape == (1, 4)
    checkpoints = tf.train.get_checkpoint_state(os.path.join(trained_workdir, "checkpoints"))
    # Steps 3 and 6 (every 3), 4 and 8 (epoch ends); the last three are kept.
    assert [os.path.basename(p) for p in checkpoints.all_model_checkpoint_paths] == [
        "ckpt-4",
        "ckpt-6",
        "ckpt-8",
    ]


@pytest.mark.slow
def test_mirrored_mixed_precision(data_root, tmp_path):
    config = load_config(
        DEMO,
        tiny_overrides(
            data_root,
            'runtime.strategy="mirrored"',
            'runtime.precision="mixed_float16"',
            "trainer.epochs=1",
            "trainer.steps_per_epoch=2",
            "trainer.validation_steps=1",
        ),
    )
    result = training.train(config, str(tmp_path / "mirrored"), log=open(os.devnull, "w"))
    assert keras.config.dtype_policy().name == "float32"  # restored
    assert result.summary["replicas"] == 2 and result.summary["steps"] == 2
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(result.summary["loss"])
    sync = [
        layer
        for layer in result.model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert sync and all(layer.synchronized for layer in sync)


@pytest.mark.slow
def test_jit_compiled_train_step_matches_the_uncompiled_one(data_root, tmp_path):
    """`--jit_compile` end to end: the whole train step in XLA, flow layer included."""
    results = {}
    for jit in (False, True):
        config = load_config(
            DEMO,
            tiny_overrides(
                data_root,
                f"runtime.jit_compile={str(jit).lower()}",
                "trainer.epochs=1",
                "trainer.steps_per_epoch=2",
                "trainer.validation_steps=1",
                "model.dropout=0.0",
            ),
        )
        results[jit] = training.train(
            config, str(tmp_path / f"jit_{jit}"), log=open(os.devnull, "w")
        )
    assert results[True].summary["steps"] == 2
    for compiled, plain in zip(
        results[True].model.get_weights(), results[False].model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(compiled, plain, rtol=1e-3, atol=1e-4)


# === Command line errors: one line, exit status 2, nothing written ===


def test_cli_rejects_a_class_count_that_does_not_match_the_data(data_root, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    code, _, err = run_cli(
        [f"--config={DEMO}", f"--workdir={workdir}", *set_args(data_root, "model.num_classes=5")],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.num_classes=5" in err and f"{NUM_CLASSES} classes" in err
    assert "manifest.json" in err
    assert not os.path.exists(workdir)


def test_cli_rejects_synthetic_data_of_another_variant(data_root, tmp_path, capsys):
    code, _, err = run_cli(
        [
            f"--config={DEMO}",
            f"--workdir={tmp_path / 'w'}",
            *set_args(data_root, 'data.synthetic_variant="hard"'),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds the 'easy' synthetic variant, not 'hard'" in err and data_root in err
    assert not os.path.exists(tmp_path / "w")
    code, _, err = run_cli(
        [f"--config={DEMO}", f"--workdir={tmp_path / 'w'}", '--set=data.synthetic_variant="x"'],
        capsys,
    )
    assert code == 2 and "`synthetic_variant` must be one of ('easy', 'hard')" in err


def test_cli_rejects_missing_data(tmp_path, capsys):
    missing = str(tmp_path / "nothing")
    code, _, err = run_cli(
        [
            f"--config={DEMO}",
            f"--workdir={tmp_path / 'w'}",
            *set_args(missing, "data.synthetic=false"),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and missing in err
    assert not os.path.exists(tmp_path / "w")


def test_cli_rejects_a_workdir_of_another_architecture(data_root, trained_workdir, capsys):
    config_path = os.path.join(trained_workdir, "config.toml")
    before = {
        name: os.stat(os.path.join(trained_workdir, name)).st_mtime_ns
        for name in ("config.toml", "model.keras", "checkpoints/checkpoint")
    }
    code, _, err = run_cli(
        [
            f"--config={DEMO}",
            f"--workdir={trained_workdir}",
            *set_args(data_root, "model.base_width=8"),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert config_path in err and "base_width=4->8" in err
    after = {name: os.stat(os.path.join(trained_workdir, name)).st_mtime_ns for name in before}
    assert after == before


@pytest.mark.parametrize(
    "change, shown",
    [
        ("data.batch_size=2", "data.batch_size=4->2"),
        ("trainer.epochs=5", "trainer.epochs=2->5"),
        ("optimizer.learning_rate=0.5", "optimizer.learning_rate="),
    ],
)
def test_cli_refuses_to_resume_with_changed_step_counting(
    data_root, trained_workdir, capsys, change, shown
):
    config_path = os.path.join(trained_workdir, "config.toml")
    with open(config_path) as f:
        before = f.read()
    code, _, err = run_cli(
        [
            f"--config={DEMO}",
            f"--workdir={trained_workdir}",
            *set_args(data_root, "trainer.checkpoint_every_steps=3", change),
        ],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert config_path in err and shown in err and "step counting or schedule" in err
    with open(config_path) as f:
        assert f.read() == before


def test_cli_rejects_bad_config_keys(data_root, tmp_path, capsys):
    code, _, err = run_cli(
        [f"--config={DEMO}", f"--workdir={tmp_path}", "--set=model.dept=3"], capsys
    )
    assert code == 2 and "'dept'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        [f"--config={DEMO}", f"--workdir={tmp_path}", "--strategy=everywhere"], capsys
    )
    assert code == 2 and "strategy" in err


def test_every_config_loads_with_the_papers_flow_learning_rate():
    names = sorted(os.listdir(CONFIGS))
    assert {"demo.toml", "demo_rgb.toml"} <= set(names) and len(names) >= 5
    for name in names:
        config = load_config(os.path.join(CONFIGS, name))
        assert config.optimizer.flow_lr_multiplier == 0.01, name


# === TensorBoard, read back through a real server ===


def _get(url: str, body: bytes | None = None):
    request = urllib.request.Request(url, data=body)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        content = response.read()
    return (
        content if response.headers.get_content_type().startswith("image") else json.loads(content)
    )


def test_the_flow_image_clip_is_read_only_when_flow_images_are_logged(data_root, monkeypatch):
    """Every run read one validation clip for the flow images (a pipeline start, ~1 s), even
    with them off: the reproduction turns them off and starts 22 runs."""
    config = load_config(DEMO, tiny_overrides(data_root))
    splits = training.prepare_data(config)
    clip = training._flow_image_clip(config, splits)
    assert clip.shape == (4, 32, 32, 3)  # one clip: T x crop x crop x RGB
    monkeypatch.setattr(training, "clip_dataset", lambda *args, **kwargs: pytest.fail("read"))
    for off in [
        ["trainer.flow_images_every_epochs=0"],
        ['model.inputs="optical_flow"', 'model.flow_position="none"'],
    ]:
        config = load_config(DEMO, tiny_overrides(data_root, *off))
        assert training._flow_image_clip(config, splits) is None, off


@pytest.mark.slow
def test_tensorboard_serves_scalars_flow_images_and_hparams(trained_workdir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executable = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen(
        [
            executable,
            "--logdir",
            os.path.join(trained_workdir, "logs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline, tags = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                tags = _get(f"{base}/scalars/tags")
            except (OSError, ValueError):
                tags = {}
            if "epoch_loss" in tags.get("validation", {}) and "batch_loss" in tags.get("train", {}):
                break
            time.sleep(1)
        train_tags = set(tags["train"])
        assert {"epoch_loss", "epoch_accuracy", "learning_rate/default", "learning_rate/flow"} <= (
            train_tags
        )
        assert {"epoch_loss", "epoch_accuracy"} <= set(tags["validation"])
        hyper = sorted(tag for tag in train_tags if tag.startswith("flow/"))
        assert hyper == [
            f"flow/flow_stack/flow_block_1/representation_flow/{name}"
            for name in ("lambda", "tau", "theta")
        ]

        def scalars(run, tag):
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            return {step: value for _, step, value in _get(f"{base}/scalars/scalars?{query}")}

        assert sorted(scalars("validation", "epoch_accuracy")) == [0, 1]
        default, flow = (
            scalars("train", "learning_rate/default"),
            scalars("train", "learning_rate/flow"),
        )
        assert default == pytest.approx({0: 0.005, 1: 0.005})  # 0.05, x0.1 from epoch 1 (step 4)
        assert flow == pytest.approx({step: 0.01 * value for step, value in default.items()})
        assert 0 < scalars("train", hyper[2])[1] < 10  # θ

        image_tags = _get(f"{base}/images/tags")["validation"]
        assert list(image_tags) == ["flow_images/first_flow_layer"]
        assert image_tags["flow_images/first_flow_layer"]["samples"] == 1  # one panel
        query = urllib.parse.urlencode({"run": "validation", "tag": "flow_images/first_flow_layer"})
        entries = _get(f"{base}/images/images?{query}&sample=0")
        assert [entry["step"] for entry in entries] == [0, 1]
        png = _get(f"{base}/images/individualImage?{entries[-1]['query']}")
        image = tf.io.decode_png(png).numpy()
        # 32 x 32 frames shown at 64 x 64: the frame row over 4 flow channel rows; 3 flow
        # steps side by side, then the colour wheel.
        assert image.shape == (5 * 64, 4 * 64, 3) and image[64:, : 3 * 64].max() > 0

        histograms = _get(f"{base}/histograms/tags")["train"]
        assert any("representation_flow/log_theta" in tag for tag in histograms)

        experiment = _get(f"{base}/hparams/experiment", json.dumps({"experimentName": ""}).encode())
        names = {info["name"] for info in experiment["hparamInfos"]}
        assert {"model.flow_position", "optimizer.learning_rate", "data.batch_size"} <= names
        metrics = {(m["name"]["group"], m["name"]["tag"]) for m in experiment["metricInfos"]}
        assert ("validation", "epoch_accuracy") in metrics
    finally:
        server.kill()
        server.wait(timeout=10)
