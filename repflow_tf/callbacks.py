"""Training callbacks: step/epoch checkpoints, progress lines, TensorBoard (scalars, learned
θ, λ, τ, histograms, colour-coded flow images, hparams).

They serve both `model.fit` and the multi-worker custom loop, which drives them through a
`keras.callbacks.CallbackList` with the same `logs` keys (`loss`, `accuracy`, `val_loss`,
`val_accuracy`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from repflow_tf.fileio import atomic_output
from repflow_tf.layers import RepresentationFlow
from repflow_tf.visualize import aligned_frame_indices, flow_panel

# The training metrics both loops log; the whole-epoch values are kept across a resume.
EPOCH_METRICS = ("loss", "accuracy")


@dataclasses.dataclass
class TrainingState:
    """Where training is: completed epochs and batches done in the current epoch.

    Both counters are variables, saved in every checkpoint, so a resumed run knows to skip the
    batches it already trained on.

    >>> state = TrainingState(steps_per_epoch=10, epochs=3)
    >>> state.batch.assign(4)  # doctest: +ELLIPSIS
    <...>
    >>> state.global_step
    4
    """

    steps_per_epoch: int
    epochs: int
    epoch: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    )
    batch: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(0, dtype=tf.int64, trainable=False, name="batch")
    )
    # Sums over the current epoch's batches of the batch means of `EPOCH_METRICS`, so that a
    # resumed epoch still reports the metrics of the whole epoch.
    metric_sums: tf.Variable = dataclasses.field(
        default_factory=lambda: tf.Variable(
            tf.zeros([len(EPOCH_METRICS)], tf.float64), trainable=False, name="metric_sums"
        )
    )

    @property
    def global_step(self) -> int:
        """Training steps done so far (over all epochs)."""
        return int(self.epoch) * self.steps_per_epoch + int(self.batch)


def flow_layers(model: keras.Model) -> list[RepresentationFlow]:
    """Every `RepresentationFlow` layer of `model` (at any nesting depth), sorted by path.

    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf import models
    >>> model = models.build(ModelConfig(depth=18, base_width=4, flow_position="block1",
    ...                                  flow_stack="fof", flow_iterations=2, flow_channels=4))
    >>> [layer.path for layer in flow_layers(model)]
    ['flow_stack/flow_block_1/representation_flow', 'flow_stack/flow_block_2/representation_flow']
    """
    # Keras has no public recursive layer walk; _flatten_layers is what Keras itself uses.
    layers = model._flatten_layers(include_self=False, recursive=True)
    return sorted((lr for lr in layers if isinstance(lr, RepresentationFlow)), key=lambda x: x.path)


def flow_outputs(model: keras.Model, frames: tf.Tensor) -> dict[str, tf.Tensor]:
    """The output `(batch, time', H, W, 2C)` of every flow layer of `model` on `frames`
    (inference mode), by layer path, in the order the model applies them.

    The flow layer can sit inside a subclassed block (`FlowBlock`), where no functional sub-model
    reaches it, so the outputs are captured during one ordinary forward pass.

    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf import models
    >>> model = models.build(ModelConfig(depth=18, base_width=4, flow_position="input",
    ...                                  flow_stack="fof", flow_iterations=2))
    >>> {path: tuple(flow.shape) for path, flow in flow_outputs(
    ...     model, tf.zeros((1, 4, 32, 32, 3))).items()}
    {'representation_flow': (1, 3, 32, 32, 6), 'representation_flow_2': (1, 2, 32, 32, 12)}
    """
    outputs: dict[str, tf.Tensor] = {}

    def capturing(layer, call):
        def call_and_keep(*args, **kwargs):
            result = call(*args, **kwargs)
            outputs.setdefault(layer.path, result)
            return result

        return call_and_keep

    layers = flow_layers(model)
    for layer in layers:
        layer.call = capturing(layer, layer.call)  # instance attribute shadows the method
    try:
        model(frames, training=False)
    finally:
        for layer in layers:
            del layer.call
    return outputs


def first_flow_output(model: keras.Model, frames: tf.Tensor) -> tf.Tensor | None:
    """The output `(batch, time - 1, H, W, 2C)` of the first flow layer that `model` applies to
    `frames` (inference mode, `flow_outputs`), or None when the model has no flow layer.

    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf import models
    >>> model = models.build(ModelConfig(depth=18, base_width=4, flow_position="input",
    ...                                  flow_iterations=2))
    >>> first_flow_output(model, tf.zeros((1, 4, 32, 32, 3))).shape
    TensorShape([1, 3, 32, 32, 6])
    """
    return next(iter(flow_outputs(model, frames).values()), None)


class WholeEpochMetrics(keras.callbacks.Callback):
    """Makes the training metrics in `logs` those of the whole epoch, across a resume.

    Keras (and the custom loop) average over the batches of the current run only; after a
    resume mid-epoch that would leave out the batches before the kill. This callback keeps the
    epoch's sums in `state.metric_sums` (saved with every checkpoint) and rewrites `logs` in
    place, so it must come first: the callbacks after it (checkpoint, progress, TensorBoard,
    `History`) share the same `logs` dict. `epoch_logs` holds the last finished epoch's logs.
    Every batch of an epoch has the same size, so the mean of the batch means is the mean.
    """

    def __init__(self, state: TrainingState):
        super().__init__()
        self.state = state
        self.epoch_logs: dict[str, float] = {}
        self._base = [0.0] * len(EPOCH_METRICS)
        self._batches_this_run = 0

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if int(self.state.batch) == 0:
            self.state.metric_sums.assign(tf.zeros_like(self.state.metric_sums))
        self._base = [float(value) for value in self.state.metric_sums.numpy()]
        self._batches_this_run = 0

    def _rewrite(self, logs: dict[str, Any] | None, batches: int) -> None:
        for index, key in enumerate(EPOCH_METRICS):
            if logs is not None and key in logs:
                logs[key] = float(self.state.metric_sums[index]) / max(batches, 1)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches_this_run += 1
        means = [float((logs or {}).get(key, 0.0)) for key in EPOCH_METRICS]
        sums = [
            base + mean * self._batches_this_run
            for base, mean in zip(self._base, means, strict=True)
        ]
        self.state.metric_sums.assign(sums)
        # CheckpointCallback (next) counts this batch into `state.batch`.
        self._rewrite(logs, int(self.state.batch) + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._rewrite(logs, int(self.state.batch))
        self.epoch_logs = dict(logs or {})


class CheckpointCallback(keras.callbacks.Callback):
    """Advances `state` after every batch and epoch and saves a checkpoint every
    `every_steps` steps (0: never) and at the end of every epoch, plus the model as `.keras`
    (atomically, `repflow_tf.fileio`) at the end of every epoch when `model_path` is set.

    `manager` is a `tf.train.CheckpointManager` whose checkpoint holds `state.epoch` and
    `state.batch`. It must be the first callback, so that the others see the advanced state.
    """

    def __init__(
        self,
        state: TrainingState,
        manager: tf.train.CheckpointManager,
        every_steps: int = 0,
        model_path: str | None = None,
    ):
        super().__init__()
        self.state = state
        self.manager = manager
        self.every_steps = every_steps
        self.model_path = model_path

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.state.batch.assign_add(1)
        # The last batch of an epoch is saved by on_epoch_end, after validation.
        due = self.every_steps and self.state.global_step % self.every_steps == 0
        if due and int(self.state.batch) < self.state.steps_per_epoch:
            self.manager.save(checkpoint_number=self.state.global_step)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.state.epoch.assign_add(1)
        self.state.batch.assign(0)
        self.manager.save(checkpoint_number=self.state.global_step)
        if self.model_path:
            save_model_atomic(self.model, self.model_path)


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Saves `model` to `path` (`.keras`) atomically (`repflow_tf.fileio`), without its
    optimizer and compile settings (so loading it needs only `repflow_tf.models`).

    >>> import tempfile
    >>> inputs = keras.Input((2,))
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> save_model_atomic(model, path)
    >>> keras.models.load_model(path).output_shape
    (None, 1)
    """
    # A functional model over the same graph shares the layers and weights but is not compiled.
    uncompiled = keras.Model(model.input, model.output, name=model.name)
    with atomic_output(path) as temporary:
        uncompiled.save(temporary)


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def format_metrics(logs: Mapping[str, Any]) -> str:
    """`loss 0.1234 acc 0.567 val_loss ...` from Keras-style logs.

    >>> format_metrics({"loss": 0.5, "accuracy": 0.75, "val_loss": 0.25, "val_accuracy": 1.0})
    'loss 0.5000 acc 0.750 val_loss 0.2500 val_acc 1.000'
    """
    parts = []
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            name = key.replace("accuracy", "acc")
            parts.append(f"{name} {float(logs[key]):.{4 if 'loss' in key else 3}f}")
    return " ".join(parts)


class ProgressLogger(keras.callbacks.Callback):
    """Prints a line every `every_steps` steps (epoch, step/total, running loss and accuracy,
    steps/s, ETA of the whole run) and one per epoch with the validation metrics.

    Rate and ETA are steady-state: measured from the first printed step of this run on (the
    steps before it include tracing and compiling), without validation time, which the ETA adds
    back per remaining epoch once one validation was timed. Until then the ETA is "--".
    """

    def __init__(
        self,
        state: TrainingState,
        every_steps: int = 10,
        log: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.state = state
        self.every_steps = every_steps
        self.log = log
        self.clock = clock
        self._start = clock()
        self._steady: tuple[float, int, float] | None = None  # (time, global step, validation s)
        self._validation_s = 0.0
        self._validation_runs: list[float] = []
        self._test_start = 0.0

    def _print(self, line: str) -> None:
        print(line, file=self.log, flush=True)

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._test_start = self.clock()

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        seconds = self.clock() - self._test_start
        self._validation_s += seconds
        self._validation_runs.append(seconds)

    def _rate_and_eta(self) -> tuple[str, str]:
        now, step = self.clock(), self.state.global_step
        if self._steady is None:
            self._steady = (now, step, self._validation_s)
            return "", "ETA --"
        since, first_step, validation_before = self._steady
        training_s = now - since - (self._validation_s - validation_before)
        rate = (step - first_step) / max(training_s, 1e-9)
        total = self.state.steps_per_epoch
        remaining = self.state.epochs * total - step
        eta = remaining / max(rate, 1e-9)
        if self._validation_runs:
            validations_left = self.state.epochs - int(self.state.epoch)
            eta += validations_left * statistics.median(self._validation_runs)
        return f"{rate:.2f} steps/s ", f"ETA {_format_duration(eta)}"

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        step, total = int(self.state.batch), self.state.steps_per_epoch
        if step % self.every_steps and step != total:
            return
        rate, eta = self._rate_and_eta()
        self._print(
            f"epoch {int(self.state.epoch) + 1}/{self.state.epochs} step {step}/{total} "
            f"{format_metrics(logs or {})} {rate}{eta}"
        )

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._print(
            f"epoch {epoch + 1}/{self.state.epochs} done: {format_metrics(logs or {})} "
            f"({_format_duration(self.clock() - self._start)} elapsed)"
        )


def flat_hparams(config: Any) -> dict[str, bool | int | float | str]:
    """A dataclass config as `{"section.key": value}` with values the hparams plugin accepts.

    >>> from repflow_tf.config import ExperimentConfig
    >>> flat_hparams(ExperimentConfig())["model.flow_learn"]
    'divergence,hyper'
    """
    flat = {}
    for section, values in dataclasses.asdict(config).items():
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(str(item) for item in value)
            if value is not None:
                flat[f"{section}.{key}"] = value
    return flat


class TensorBoardLogger(keras.callbacks.Callback):
    """TensorBoard summaries under `log_dir`, in the runs `train/` and `validation/`.

    Every epoch: `epoch_loss` and `epoch_accuracy` (both runs; step = epoch index, as
    `keras.callbacks.TensorBoard`), `learning_rate/<name>` for each of `optimizers` and
    `flow/<layer path>/theta|lambda|tau` for each representation flow layer (train run).
    Every `histograms_every` epochs: a histogram of every trainable weight (train run). Every
    `images_every` epochs: `flow_images/first_flow_layer`, one image of the first flow layer's
    output on `flow_clip` (validation run, `visualize.flow_panel`): the clip's frames in the top
    row, below them one row per flow channel (up to 4) aligned in time, each row's brightness
    scaled to its 99th percentile of magnitude, and the colour wheel (hue = direction) beside
    the frames. Every `batch_every` steps: `batch_loss` (train run, step = global step).
    With `hparams`, the run's hyper-parameters and the metrics above are declared for the HParams
    dashboard (in `log_dir` itself).
    """

    def __init__(
        self,
        log_dir: str,
        state: TrainingState,
        optimizers: Mapping[str, keras.optimizers.Optimizer],
        *,
        flow_clip: tf.Tensor | None = None,
        images_every: int = 1,
        histograms_every: int = 1,
        batch_every: int = 10,
        hparams: Mapping[str, bool | int | float | str] | None = None,
        trial_id: str | None = None,
    ):
        super().__init__()
        self.state = state
        self.optimizers = dict(optimizers)
        self.flow_clip = flow_clip
        self.images_every = images_every
        self.histograms_every = histograms_every
        self.batch_every = batch_every
        # A run killed after its last checkpoint logged steps the resumed run trains again.
        self._last_batch_step = last_logged_step(os.path.join(log_dir, "train"), "batch_loss")
        self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.val_writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
        if hparams:
            metrics = [
                hparams_api.Metric("epoch_accuracy", group=group, display_name=f"{group} accuracy")
                for group in ("validation", "train")
            ] + [
                hparams_api.Metric("epoch_loss", group=group, display_name=f"{group} loss")
                for group in ("validation", "train")
            ]
            with tf.summary.create_file_writer(log_dir).as_default():
                hparams_api.hparams_config(
                    hparams=[hparams_api.HParam(name) for name in hparams], metrics=metrics
                )
                hparams_api.hparams(dict(hparams), trial_id=trial_id)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        step = self.state.global_step
        if (
            logs
            and "loss" in logs
            and step % self.batch_every == 0
            and step > self._last_batch_step
        ):
            with self.train_writer.as_default(step=step):
                tf.summary.scalar("batch_loss", float(logs["loss"]))
            self.train_writer.flush()  # on disk now: a live TensorBoard, and a resume, see it

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = logs or {}
        with self.train_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if key in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[key]))
            for name, optimizer in self.optimizers.items():
                tf.summary.scalar(f"learning_rate/{name}", float(optimizer.learning_rate))
            for layer in flow_layers(self.model):
                for name, value in layer.hyperparameters().items():
                    tf.summary.scalar(f"flow/{layer.path}/{name}", value)
            if _due(epoch, self.histograms_every):
                for variable in self.model.trainable_variables:
                    tf.summary.histogram(variable.path, variable)
        with self.val_writer.as_default(step=epoch):
            for key in ("loss", "accuracy"):
                if f"val_{key}" in logs:
                    tf.summary.scalar(f"epoch_{key}", float(logs[f"val_{key}"]))
            if self.flow_clip is not None and _due(epoch, self.images_every):
                for tag, images in self.flow_images():
                    tf.summary.image(
                        tag,
                        images,
                        max_outputs=int(images.shape[0]),
                        description="Top row: the clip's frames; below: the first flow "
                        "layer's output, one row per channel (up to 4), aligned in time; hue: "
                        "direction (colour wheel, +x right, +y down), brightness: magnitude "
                        "(each row scaled to its 99th percentile).",
                    )
        self.train_writer.flush()
        self.val_writer.flush()

    def flow_images(self) -> Iterator[tuple[str, tf.Tensor]]:
        """`(tag, uint8 images (1, H, W, 3))`: the fixed clip's frames over the first flow
        layer's output (`visualize.flow_panel`)."""
        clip = tf.convert_to_tensor(self.flow_clip)
        flow = first_flow_output(self.model, clip[None])
        if flow is not None:
            flow = flow[0].numpy()
            frames = clip.numpy()[aligned_frame_indices(len(clip), len(flow))]
            yield "flow_images/first_flow_layer", flow_panel(frames, flow)[None]

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self.train_writer.flush()
        self.val_writer.flush()


def last_logged_step(run_dir: str, tag: str) -> int:
    """The largest step of scalar `tag` in the event files of `run_dir` (-1: none).

    A file cut short by a kill is read up to its last complete record.
    """
    last = -1
    for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if any(value.tag == tag for value in event.summary.value):
                    last = max(last, event.step)
        except tf.errors.DataLossError:
            continue
    return last


def _due(epoch: int, every: int) -> bool:
    return every > 0 and (epoch + 1) % every == 0
