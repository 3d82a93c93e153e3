"""Training: strategy, optimizer (flow parameters at 0.01 x lr), fit / multi-worker loop, resume.

`train(config, workdir)` writes into `workdir`:

- `config.toml`: the resolved config of the first run; a resumed run must have the same
  `[model]`, `[optimizer]` and `[schedule]` and the same data and trainer values that count
  steps (`_STEP_COUNTING_DATA`, `_STEP_COUNTING_TRAINER`), and keeps this file;
- `class_names.json`: the training split's class names;
- `checkpoints/`: model, optimizer (all sub-optimizers), epoch and batch counters and the
  current epoch's metric sums (a resumed epoch reports the whole epoch), saved every
  epoch and every `trainer.checkpoint_every_steps` steps; a new run in the same workdir resumes
  from the latest one, skipping the batches already trained on in the current epoch (the
  training data of epoch e is a fixed, seeded sequence, so the resumed run sees what an
  uninterrupted run would have);
- `model.keras`: the model after the latest completed epoch (uncompiled);
- `logs/`: TensorBoard (see `repflow_tf.callbacks.TensorBoardLogger`);
- `summary.json`: final metrics, epochs, steps and wall time.

Strategies: `one_device` and `mirrored` train with `model.fit`; `multi_worker` uses a custom loop
on `MultiWorkerMirroredStrategy` (Keras 3 `fit` does not support it), where only the chief writes
logs, `model.keras` and the checkpoints that count (other workers checkpoint to a temporary
directory, as the collective save requires).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, TextIO

import keras
import tensorflow as tf

from repflow_tf import data, models
from repflow_tf.callbacks import (
    CheckpointCallback,
    ProgressLogger,
    TensorBoardLogger,
    TrainingState,
    WholeEpochMetrics,
    flat_hparams,
    format_metrics,
)
from repflow_tf.config import (
    ExperimentConfig,
    OptimizerConfig,
    load_config,
    save_config,
)
from repflow_tf.fileio import write_json_atomic
from repflow_tf.workdir import (
    CHECKPOINT_DIR,
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    LOGS_DIR,
    MODEL_FILE,
    SUMMARY_FILE,
    WorkdirError,
    read_workdir,
    write_class_names,
)

# Variables trained at `optimizer.flow_lr_multiplier` x the learning rate (paper, Appendix A).
FLOW_VARIABLES = ".*representation_flow.*"


class TrainingError(ValueError):
    """A run that cannot start: data, config and workdir disagree. The message is one line."""


# === Learning rate and optimizer ===


@keras.saving.register_keras_serializable(package="repflow_tf")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate by step from a schedule in epochs: step decay (x `decay_factor` at each of
    `decay_epochs`), cosine (to 0 at `epochs`) or constant, after a linear warm-up of
    `warmup_epochs`.

    >>> schedule = EpochSchedule(0.1, steps_per_epoch=10, epochs=6, decay_epochs=(2, 4))
    >>> [round(float(schedule(step)), 6) for step in (0, 19, 20, 40)]
    [0.1, 0.1, 0.01, 0.001]
    """

    def __init__(
        self,
        learning_rate: float,
        steps_per_epoch: int,
        epochs: int,
        kind: str = "step",
        decay_epochs: Sequence[int] = (),
        decay_factor: float = 0.1,
        warmup_epochs: float = 0.0,
    ):
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.kind = kind
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.warmup_epochs = float(warmup_epochs)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        factor = tf.constant(1.0)
        if self.kind == "step" and self.decay_epochs:
            boundaries = tf.constant(
                [e * self.steps_per_epoch for e in self.decay_epochs], "float32"
            )
            decays = tf.reduce_sum(tf.cast(step >= boundaries, tf.float32))
            factor = tf.pow(self.decay_factor, decays)
        elif self.kind == "cosine":
            start = self.warmup_epochs * self.steps_per_epoch
            length = max(self.epochs * self.steps_per_epoch - start, 1.0)
            progress = tf.clip_by_value((step - start) / length, 0.0, 1.0)
            factor = 0.5 * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_epochs > 0:
            warmup_steps = self.warmup_epochs * self.steps_per_epoch
            factor *= tf.minimum(1.0, (step + 1.0) / warmup_steps)
        return self.learning_rate * factor

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "kind": self.kind,
            "decay_epochs": list(self.decay_epochs),
            "decay_factor": self.decay_factor,
            "warmup_epochs": self.warmup_epochs,
        }


def _optimizer(config: OptimizerConfig, schedule: EpochSchedule, weight_decay: float):
    common = {"learning_rate": schedule, "clipnorm": config.clipnorm or None}
    if config.name == "sgd":
        return keras.optimizers.SGD(
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=weight_decay or None,
            **common,
        )
    if config.name == "adam":
        return keras.optimizers.Adam(weight_decay=weight_decay or None, **common)
    return keras.optimizers.AdamW(weight_decay=weight_decay, **common)


def build_optimizer(
    config: ExperimentConfig, steps_per_epoch: int
) -> tuple[keras.optimizers.MultiOptimizer, dict[str, keras.optimizers.Optimizer]]:
    """The paper's optimizer: every variable whose path matches `FLOW_VARIABLES` (θ, λ, τ, the
    divergence and gradient kernels) gets `flow_lr_multiplier` x the learning rate and no weight
    decay; each of the two sub-optimizers has its own `EpochSchedule`.

    Returns the `MultiOptimizer` and its sub-optimizers by name (`"default"`, `"flow"`).

    >>> config = load_config(None, ["optimizer.learning_rate=0.1", "trainer.epochs=2"])
    >>> optimizer, parts = build_optimizer(config, steps_per_epoch=5)
    >>> [round(float(parts[name].learning_rate), 6) for name in ("default", "flow")]
    [0.1, 0.001]
    """
    optimizer_config, schedule = config.optimizer, config.schedule

    def epoch_schedule(learning_rate: float) -> EpochSchedule:
        return EpochSchedule(
            learning_rate,
            steps_per_epoch,
            config.trainer.epochs,
            kind=schedule.kind,
            decay_epochs=schedule.decay_epochs,
            decay_factor=schedule.decay_factor,
            warmup_epochs=schedule.warmup_epochs,
        )

    base = optimizer_config.learning_rate
    default = _optimizer(optimizer_config, epoch_schedule(base), optimizer_config.weight_decay)
    flow = _optimizer(
        optimizer_config, epoch_schedule(base * optimizer_config.flow_lr_multiplier), 0.0
    )
    mapping = keras.optimizers.OptimizerMap(
        default_optimizer=default, optimizer_map={FLOW_VARIABLES: flow}
    )
    return keras.optimizers.MultiOptimizer(mapping), {"default": default, "flow": flow}


def stepping_optimizers(
    model: keras.Model, parts: dict[str, keras.optimizers.Optimizer]
) -> dict[str, keras.optimizers.Optimizer]:
    """The sub-optimizers of `build_optimizer` that update some variable of `model`.

    The flow optimizer has nothing to update when every flow parameter is frozen; its learning
    rate would be logged as a flat line (its schedule never steps), so it is left out.
    """
    flow = any(re.fullmatch(FLOW_VARIABLES, v.path) for v in model.trainable_variables)
    return {name: part for name, part in parts.items() if name != "flow" or flow}


# === Strategy ===


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The distribution strategy for `runtime.strategy`.

    `auto`: mirrored over all GPUs when there are several, else one device. `one_device`: the
    default strategy (the first GPU if any). `mirrored`: all local GPUs; on a machine without
    GPUs, the logical CPU devices (the CPU is split into two when TensorFlow has not started
    yet). `multi_worker`: `MultiWorkerMirroredStrategy`, cluster from `TF_CONFIG`; create it
    before anything else runs TensorFlow ops.

    >>> make_strategy("one_device").num_replicas_in_sync
    1
    """
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    has_gpus = bool(tf.config.list_physical_devices("GPU"))
    if name == "auto":
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.get_strategy()
    if name != "mirrored":
        raise ValueError(f"Unknown strategy {name!r}")
    if has_gpus:
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # TensorFlow already started: use the logical devices it has.
        pass
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless `strategy` is multi-worker and this process is not its chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# === Data ===


def prepare_data(config: ExperimentConfig, chief: bool = True, timeout: float = 600.0) -> dict:
    """Checks the training and validation splits against the model (generating the synthetic
    dataset first if it is configured and missing) and returns
    `{"train": dir, "val": dir, "class_names": (...), "num_train": n, "num_val": n}`.

    Raises `TrainingError` (one line, naming the manifest) when a split is missing, the two
    splits' classes differ, or `model.num_classes` is not the number of classes in the data.
    """
    dirs = {
        split: config.data.split_dir(name)
        for split, name in (("train", config.data.train_split), ("val", config.data.val_split))
    }
    manifests = [os.path.join(path, "manifest.json") for path in dirs.values()]
    if config.data.synthetic and all(os.path.exists(path) for path in manifests):
        try:
            data.check_synthetic_variant(config.data.root, config.data.synthetic_variant)
        except ValueError as error:
            raise TrainingError(f"synthetic data in {config.data.root}: {error}") from None
    elif config.data.synthetic:
        if chief:
            try:
                data.make_synthetic_dataset(
                    config.data.root,
                    num_train=config.data.synthetic_train,
                    num_val=config.data.synthetic_val,
                    num_classes=config.model.num_classes,
                    num_frames=max(24, config.data.num_frames * config.data.stride),
                    size=config.data.synthetic_size,
                    variant=config.data.synthetic_variant,
                    seed=config.runtime.seed,
                    # TV-L1 is the slow part: one worker process per core.
                    num_workers=None if config.model.inputs != "rgb" else 1,
                    optical_flow=None if config.model.inputs == "rgb" else "tvl1",
                )
            except ValueError as error:
                raise TrainingError(f"synthetic data in {config.data.root}: {error}") from None
        else:  # the chief generates it
            deadline = time.monotonic() + timeout
            while not all(os.path.exists(path) for path in manifests):
                if time.monotonic() > deadline:
                    raise TrainingError(f"timed out waiting for the chief to write {manifests}")
                time.sleep(1)
    try:
        train, val = (data.load_manifest(path) for path in dirs.values())
    except data.DataError as error:
        raise TrainingError(str(error)) from None
    if train.class_names != val.class_names:
        raise TrainingError(
            f"{manifests[0]} and {manifests[1]} list different classes "
            f"({train.num_classes} and {val.num_classes})"
        )
    if train.num_classes != config.model.num_classes:
        raise TrainingError(
            f"model.num_classes={config.model.num_classes} but the data has "
            f"{train.num_classes} classes ({manifests[0]})"
        )
    return {
        **dirs,
        "class_names": train.class_names,
        "num_train": train.num_accepted,
        "num_val": val.num_accepted,
    }


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes of `strategy` (1 unless multi-worker): its input pipelines."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)


def check_worker_shards(splits: dict, workers: int, stream: TextIO | None = sys.stderr) -> None:
    """Multi-worker input: every worker reads its own shards of each split (per-worker
    `InputContext` sharding), never all of them.

    Raises `TrainingError` (one line naming the split directory, its shard count, the worker
    count and what to do) for a split with fewer shards than workers; with fewer than 2
    training shards per worker, writes one warning line to `stream` (None: silent): the
    workers' shares of the data then differ by up to a whole shard, and each shuffles fewer
    files.
    """
    if workers <= 1:
        return
    for split, kind in (("train", "training"), ("val", "validation")):
        shards = len(data.list_shards(splits[split]))
        suggestion = max(1, splits[f"num_{split}"] // (2 * workers))
        advice = f"reconvert it with --videos_per_shard={suggestion} or less"
        counted = f"{shards} {kind} shard{'' if shards == 1 else 's'}"
        if shards < workers:
            raise TrainingError(
                f"{splits[split]}: {counted} for {workers} workers, each of which "
                f"must read its own shards; {advice} (>= {2 * workers} shards)"
            )
        if split == "train" and shards < 2 * workers and stream is not None:
            print(
                f"warning: {splits[split]}: {counted} for {workers} workers, "
                f"fewer than the 2 per worker recommended; {advice}",
                file=stream,
                flush=True,
            )


def clip_dataset(
    source: str,
    config: ExperimentConfig,
    *,
    training: bool,
    seed: int | None,
    batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batches of `(frames, one-hot labels)` from a split, with `config.data`'s sampling.

    With an `input_context` of several pipelines, each reads its own share of the shards (see
    `check_worker_shards`: never every shard with a share of the clips).
    """
    options = config.data
    kwargs = dict(
        training=training,
        num_frames=options.num_frames,
        stride=options.stride,
        crop_size=options.crop_size,
        shuffle_buffer=options.shuffle_buffer,
        flip=options.flip,
        area_range=options.crop_area,
        aspect_ratio_range=options.crop_aspect_ratio,
        seed=seed,
        inputs=config.model.inputs,
    )
    clips = data.video_dataset(source, batch_size=batch_size, input_context=input_context, **kwargs)
    classes = config.model.num_classes
    return clips.map(lambda inputs, label: (inputs, tf.one_hot(label, classes)))


# === Workdir ===


def _check_workdir(config: ExperimentConfig, workdir: str) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
            raise TrainingError(
                f"{workdir}/{CHECKPOINT_DIR} exists without {CONFIG_FILE}; "
                "cannot tell which model it holds (use a new --workdir)"
            )
        return
    try:
        previous = load_config(path)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if previous.model != config.model:
        raise TrainingError(
            f"{path} was trained with another [model] "
            f"({', '.join(_changes(previous.model, config.model))}); "
            "use a new --workdir or the same model config"
        )
    changed = _changes(_step_counting(previous), _step_counting(config))
    if changed:
        raise TrainingError(
            f"{path}: resuming with changed step counting or schedule ({', '.join(changed)}) "
            "would reinterpret the saved step; use a new --workdir or the same values"
        )


# What the saved step counter and the learning-rate schedule mean depends on these.
_STEP_COUNTING_DATA = ("root", "synthetic", "synthetic_train", "train_split", "batch_size")
_STEP_COUNTING_TRAINER = ("epochs", "steps_per_epoch")


def _step_counting(config: ExperimentConfig) -> dict[str, Any]:
    values = {f"data.{name}": getattr(config.data, name) for name in _STEP_COUNTING_DATA}
    values.update(
        {f"trainer.{name}": getattr(config.trainer, name) for name in _STEP_COUNTING_TRAINER}
    )
    for section in ("schedule", "optimizer"):
        part = getattr(config, section)
        values.update(
            {f"{section}.{f.name}": getattr(part, f.name) for f in dataclasses.fields(part)}
        )
    return values


def _changes(before, after) -> list[str]:
    """ "name=old->new" for every field that differs (dataclasses or dicts)."""
    if dataclasses.is_dataclass(before):
        before = {f.name: getattr(before, f.name) for f in dataclasses.fields(before)}
        after = {f.name: getattr(after, f.name) for f in dataclasses.fields(after)}
    return [f"{key}={before[key]!r}->{after[key]!r}" for key in before if before[key] != after[key]]


def _metric_sums(state: TrainingState, latest: str | None) -> dict[str, tf.Variable]:
    """The checkpoint entry of the epoch's metric sums; none when resuming a checkpoint written
    before it existed (that epoch's metrics then cover only the batches after the resume)."""
    if latest and not any(
        name.startswith("metric_sums/") for name, _ in tf.train.list_variables(latest)
    ):
        return {}
    return {"metric_sums": state.metric_sums}


def _restore(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> str | None:
    path = manager.latest_checkpoint
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrainingError(
            f"{path}: checkpoint does not fit the configured model ({reason:.200})"
        ) from None
    return path


@dataclasses.dataclass
class TrainingResult:
    """What `train` returns: the trained model and the summary written to summary.json."""

    model: keras.Model
    summary: dict[str, Any]


def train(
    config: ExperimentConfig,
    workdir: str,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log: TextIO = sys.stdout,
) -> TrainingResult:
    """Trains `config` in `workdir` (resuming from its latest checkpoint), see the module doc.

    `callbacks` run after the built-in ones (checkpoint, progress, TensorBoard) in both the fit
    and the multi-worker loop. Raises `TrainingError` (one-line message) before writing anything
    when the data, the config and the workdir disagree.

    Example:

        config = load_config("configs/demo.toml", ["trainer.epochs=2"])
        result = train(config, "runs/demo")
        print(result.summary["val_accuracy"])
    """
    strategy = make_strategy(config.runtime.strategy)  # first: multi-worker precedes other TF ops
    chief = is_chief(strategy)
    _check_setup(config, strategy.num_replicas_in_sync)
    _check_workdir(config, workdir)
    splits = prepare_data(config, chief=chief)
    check_worker_shards(splits, num_workers(strategy), sys.stderr if chief else None)
    steps_per_epoch = _steps_per_epoch(config, splits)

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.runtime.precision)
    keras.utils.set_random_seed(config.runtime.seed)
    checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    own_dir = checkpoint_dir if chief else tempfile.mkdtemp(prefix="repflow_worker_")
    try:
        with strategy.scope():
            model, optimizer, parts = _build_model_and_optimizer(config, strategy, steps_per_epoch)
        state = TrainingState(steps_per_epoch, config.trainer.epochs)
        checkpoint = _checkpoint(model, optimizer, parts, state, checkpoint_dir)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
        restored = _restore(checkpoint, manager)
        if not restored:  # a fresh run; a resume keeps what its checkpoint holds
            _initialise(config, model, log if chief else None)
        if chief:  # only now: nothing is written before every check has passed
            _write_run_files(config, workdir, splits["class_names"])
            if restored:
                print(
                    f"resumed from {restored}: epoch {int(state.epoch) + 1}, "
                    f"{int(state.batch)} of {steps_per_epoch} batches done",
                    file=log,
                    flush=True,
                )
        else:
            manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=3)
        epoch_metrics = WholeEpochMetrics(state)
        built_in = [
            epoch_metrics,
            CheckpointCallback(
                state,
                manager,
                config.trainer.checkpoint_every_steps,
                os.path.join(workdir, MODEL_FILE) if chief else None,
            ),
        ]
        if chief:
            built_in += _chief_callbacks(config, workdir, state, model, parts, splits, log)

        start, start_step = time.monotonic(), state.global_step
        run = _custom_loop if config.runtime.strategy == "multi_worker" else _fit
        run(model, optimizer, strategy, config, splits, state, [*built_in, *callbacks])
        summary = {
            **{key: float(value) for key, value in epoch_metrics.epoch_logs.items()},
            "epochs": int(state.epoch),
            "steps": state.global_step,
            "steps_this_run": state.global_step - start_step,
            "wall_time_s": round(time.monotonic() - start, 1),
            "strategy": config.runtime.strategy,
            "replicas": strategy.num_replicas_in_sync,
            "precision": config.runtime.precision,
            "workdir": workdir,
        }
        if chief:
            _write_summary(workdir, summary, epoch_metrics.epoch_logs, log)
        return TrainingResult(model, summary)
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not chief:
            shutil.rmtree(own_dir, ignore_errors=True)


def _check_setup(config: ExperimentConfig, replicas: int) -> None:
    """Refuses what training cannot do with this config, before anything is built."""
    if config.data.batch_size % replicas:
        raise TrainingError(
            f"data.batch_size={config.data.batch_size} is not divisible by the "
            f"{replicas} replicas of --strategy={config.runtime.strategy}"
        )


def _steps_per_epoch(config: ExperimentConfig, splits: dict) -> int:
    steps = config.trainer.steps_per_epoch or splits["num_train"] // config.data.batch_size
    if steps < 1:
        raise TrainingError(
            f"{splits['train']}: {splits['num_train']} training videos, fewer than "
            f"data.batch_size={config.data.batch_size}"
        )
    return steps


def _build_model_and_optimizer(config: ExperimentConfig, strategy, steps_per_epoch: int):
    """The model (synchronized batch norm over several replicas) and its built optimizer,
    compiled for `model.fit` unless multi-worker; call inside `strategy.scope()`.

    Returns (model, optimizer, sub-optimizers by name)."""
    runtime = config.runtime
    multi_worker = runtime.strategy == "multi_worker"
    model_config = config.model
    if strategy.num_replicas_in_sync > 1 or multi_worker:
        model_config = dataclasses.replace(model_config, synchronized_bn=True)
    model = models.build(model_config)
    optimizer, parts = build_optimizer(config, steps_per_epoch)
    if multi_worker:
        if runtime.precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    else:
        # Under mixed_float16, compile wraps the optimizer in a LossScaleOptimizer.
        model.compile(
            optimizer,
            keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.optimizer.label_smoothing
            ),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=runtime.jit_compile,
        )
        optimizer = model.optimizer
    # Built now, so that a restore finds every slot variable.
    optimizer.build(model.trainable_variables)
    return model, optimizer, parts


def _initialise(config: ExperimentConfig, model: keras.Model, log: TextIO | None) -> None:
    """The start of a fresh run: `model.pretrained` weights, or `trainer.init_from`'s model
    (every layer of the same name and shapes); prints one line saying what was loaded."""
    pretrained, init_from = config.model.pretrained, config.trainer.init_from
    if pretrained and init_from:
        raise TrainingError(
            f"model.pretrained={pretrained!r} and trainer.init_from={init_from!r} both start "
            "the weights; set one (a run started from init_from gets its pretrained weights)"
        )
    if pretrained:
        try:
            report = models.load_pretrained(model, config.model)
        except models.PretrainedError as error:
            raise TrainingError(str(error)) from None
    elif init_from:
        report = _init_from(config, model, init_from)
    else:
        return
    if log is not None:
        print(report, file=log, flush=True)


def _init_from(config: ExperimentConfig, model: keras.Model, init_from: str) -> str:
    try:
        source = read_workdir(init_from).load()
    except (WorkdirError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TrainingError(f"trainer.init_from={init_from!r}: {message:.300}") from None
    for key in ("resnet_variant", "input_normalization"):
        theirs, ours = getattr(source.config.model, key), getattr(config.model, key)
        if theirs != ours:
            raise TrainingError(
                f"trainer.init_from={init_from!r} was trained with model.{key}={theirs!r}, "
                f"this config has {ours!r}: its weights expect another "
                f"{'layout' if key == 'resnet_variant' else 'input'}"
            )
    copied, kept = models.copy_matching_weights(source.model, model)
    if not any("backbone/" in name for name in copied):
        raise TrainingError(
            f"trainer.init_from={init_from!r}: no backbone layer of {source.model_path} has the "
            f"name and shapes of this model's (its [model]: kind={source.config.model.kind!r}, "
            f"depth={source.config.model.depth})"
        )
    shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
    return (
        f"trainer.init_from={init_from!r}: {len(copied)} of {len(copied) + len(kept)} layers "
        f"with weights loaded from {source.model_path}; re-initialised (no layer of that name "
        f"and shape there): {shown or 'none'}"
    )


def _checkpoint(model, optimizer, parts, state: TrainingState, directory: str):
    """Everything a resume needs: weights, optimizers, random states, counters, metric sums."""
    # tf.train.Checkpoint misses the sub-optimizers of a MultiOptimizer and the states of the
    # Keras seed generators (dropout): they are added explicitly.
    seed_states = [v.value for v in model.non_trainable_variables if "seed_generator" in v.path]
    return tf.train.Checkpoint(
        model=model,
        optimizer=optimizer,
        **{f"{name}_optimizer": part for name, part in parts.items()},
        random=tf.train.Checkpoint(**{f"seed_{i}": v for i, v in enumerate(seed_states)}),
        epoch=state.epoch,
        batch=state.batch,
        **_metric_sums(state, tf.train.latest_checkpoint(directory)),
    )


def _write_run_files(config: ExperimentConfig, workdir: str, class_names) -> None:
    os.makedirs(workdir, exist_ok=True)
    if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):  # a resume keeps its own
        save_config(config, os.path.join(workdir, CONFIG_FILE))
    write_class_names(os.path.join(workdir, CLASS_NAMES_FILE), class_names)


def _chief_callbacks(config, workdir, state, model, parts, splits, log) -> list:
    """Progress lines and TensorBoard (with the flow images of one fixed validation clip)."""
    trainer = config.trainer
    return [
        ProgressLogger(state, trainer.log_every_steps, log),
        TensorBoardLogger(
            os.path.join(workdir, LOGS_DIR),
            state,
            stepping_optimizers(model, parts),
            flow_clip=_flow_image_clip(config, splits),
            images_every=trainer.flow_images_every_epochs,
            histograms_every=trainer.histograms_every_epochs,
            batch_every=trainer.log_every_steps,
            hparams=flat_hparams(config),
            trial_id=os.path.basename(os.path.normpath(workdir)),
        ),
    ]


def _flow_image_clip(config: ExperimentConfig, splits: dict) -> tf.Tensor | None:
    """The fixed validation clip of the flow images; None (nothing read) when there are none."""
    # A model reading optical flow takes a dict, and its RGB stream has no flow layer.
    if config.model.inputs != "rgb" or config.trainer.flow_images_every_epochs < 1:
        return None
    val_clip, _ = next(
        iter(clip_dataset(splits["val"], config, training=False, seed=None, batch_size=1))
    )
    return val_clip[0]


def _write_summary(workdir: str, summary: dict, logs: dict, log: TextIO) -> None:
    """summary.json (kept when this run trained nothing) and the final line."""
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    if logs or not os.path.exists(summary_path):
        write_json_atomic(summary_path, summary)
    print(
        f"done: {summary['epochs']} epochs, {summary['steps']} steps "
        f"({summary['steps_this_run']} in this run, {summary['wall_time_s']} s); "
        f"{format_metrics(logs) or 'nothing left to train'}; {workdir}",
        file=log,
        flush=True,
    )


# === Loops ===


def _epoch_dataset(
    config, splits, epoch: int, skip: int, steps: int, batch_size: int, input_context=None
) -> tf.data.Dataset:
    """The training batches of `epoch`: a fixed sequence (seeded by seed + epoch), from `skip`."""
    clips = clip_dataset(
        splits["train"],
        config,
        training=True,
        seed=config.runtime.seed + epoch,
        batch_size=batch_size,
        input_context=input_context,
    )
    return clips.repeat().take(steps).skip(skip)


def _validation_steps(config: ExperimentConfig, splits: dict) -> int:
    one_pass = math.ceil(splits["num_val"] / config.data.batch_size)
    return config.trainer.validation_steps or one_pass


def _fit(model, optimizer, strategy, config, splits, state, callbacks) -> None:
    """`model.fit`, one call per epoch so that a resumed epoch starts at its saved batch."""
    validation = clip_dataset(
        splits["val"], config, training=False, seed=None, batch_size=config.data.batch_size
    )
    # Known steps: Keras warns about unknown-length validation data running out.
    validation_steps = _validation_steps(config, splits)
    validation = validation.repeat().take(validation_steps)
    for epoch in range(int(state.epoch), state.epochs):
        skip = int(state.batch)
        batches = _epoch_dataset(
            config, splits, epoch, skip, state.steps_per_epoch, config.data.batch_size
        )
        model.fit(
            batches,
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=state.steps_per_epoch - skip,
            validation_data=validation,
            validation_steps=validation_steps,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled (and seeded) itself
            verbose=0,
        )


def _custom_loop(model, optimizer, strategy, config, splits, state, callbacks) -> None:
    """Custom training loop for `MultiWorkerMirroredStrategy`, driving the same callbacks."""
    global_batch = config.data.batch_size
    validation_steps = config.trainer.validation_steps or _validation_steps_per_worker(
        splits["val"], global_batch, strategy
    )
    train_step, val_step = _distributed_steps(model, optimizer, strategy, config)
    validation = strategy.distribute_datasets_from_function(
        lambda context: _worker_validation(splits["val"], config, context, validation_steps)
    )
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(int(state.epoch), state.epochs):
        skip = int(state.batch)

        def train_function(context, epoch=epoch, skip=skip):
            batch = context.get_per_replica_batch_size(global_batch)
            return _epoch_dataset(
                config, splits, epoch, skip, state.steps_per_epoch, batch, input_context=context
            )

        callback_list.on_epoch_begin(epoch)
        iterator = iter(strategy.distribute_datasets_from_function(train_function))
        total_loss = total_correct = 0.0
        for step in range(state.steps_per_epoch - skip):
            loss, correct = train_step(iterator)
            total_loss += float(loss)
            total_correct += float(correct)
            done = step + 1
            logs = {"loss": total_loss / done, "accuracy": total_correct / (done * global_batch)}
            callback_list.on_train_batch_end(step, logs)
        callback_list.on_test_begin()  # so that the progress ETA times validation apart
        logs.update(_validate(val_step, iter(validation), validation_steps))
        callback_list.on_test_end()
        callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end(logs)


def _distributed_steps(model, optimizer, strategy, config):
    """`train_step(iterator) -> (loss, correct)` and `val_step(iterator) -> [loss sum, correct,
    clips]`, each summed over the replicas; the loss is averaged over the global batch."""
    global_batch = config.data.batch_size
    label_smoothing = config.optimizer.label_smoothing

    def loss_and_hits(frames, labels, training: bool):
        logits = model(frames, training=training)
        per_example = keras.losses.categorical_crossentropy(
            labels, logits, from_logits=True, label_smoothing=label_smoothing
        )
        hits = tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1))
        return per_example, tf.cast(hits, tf.float32)

    def gradients(frames, labels):
        with tf.GradientTape() as tape:
            per_example, hits = loss_and_hits(frames, labels, training=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        return tape.gradient(scaled, model.trainable_variables), loss, tf.reduce_sum(hits)

    if config.runtime.jit_compile:
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(frames, labels):
        grads, loss, correct = gradients(frames, labels)
        optimizer.apply(grads, model.trainable_variables)
        return loss, correct

    @tf.function  # needed: an eager tape under a mixed policy gives None gradients
    def train_step(iterator):
        loss, correct = strategy.run(replica_step, args=next(iterator))
        reduce = strategy.reduce
        return reduce("SUM", loss, axis=None), reduce("SUM", correct, axis=None)

    @tf.function
    def val_step(iterator):
        def replica(frames, labels, weights):  # weight 0: padding, see _worker_validation
            per_example, hits = loss_and_hits(frames, labels, training=False)
            sums = (per_example * weights, hits * weights, weights)
            return [tf.reduce_sum(value) for value in sums]

        results = strategy.run(replica, args=next(iterator))
        return [strategy.reduce("SUM", value, axis=None) for value in results]

    return train_step, val_step


def _validate(val_step, iterator, steps: int) -> dict[str, float]:
    """`val_loss` and `val_accuracy` over `steps` steps of `val_step`, per clip."""
    sums = [0.0, 0.0, 0.0]
    for _ in range(steps):
        sums = [total + float(value) for total, value in zip(sums, val_step(iterator), strict=True)]
    clips = max(sums[2], 1.0)
    return {"val_loss": sums[0] / clips, "val_accuracy": sums[1] / clips}


def _clips_per_pipeline(source: str, pipelines: int) -> list[int]:
    """How many clips each of `pipelines` input pipelines reads from `source`: whole shards
    round robin (`check_worker_shards` has refused fewer shards than pipelines)."""
    shards = data.list_shards(source)
    if any(count < 0 for _, count in shards):
        raise TrainingError(f"{source}: multi-worker validation needs the split's manifest")
    return [sum(count for _, count in shards[index::pipelines]) for index in range(pipelines)]


def _validation_steps_per_worker(
    source: str, global_batch: int, strategy: tf.distribute.Strategy
) -> int:
    """Steps that let the worker with the most validation clips see all of them."""
    workers = num_workers(strategy)
    most = max(_clips_per_pipeline(source, workers))
    return max(1, math.ceil(most / (global_batch // workers)))


def _worker_validation(source, config, context, steps: int) -> tf.data.Dataset:
    """This worker's validation clips, each once, as `(frames, labels, weights)` batches, padded
    with weight-0 clips to `steps` steps: every worker runs the same steps (collectives must
    match) and each clip is counted exactly once, however unevenly the shards split."""
    batch = context.get_per_replica_batch_size(config.data.batch_size)
    per_worker = config.data.batch_size // context.num_input_pipelines
    clips = clip_dataset(
        source, config, training=False, seed=None, batch_size=batch, input_context=context
    ).unbatch()
    frames_spec, labels_spec = clips.element_spec
    padding = tf.data.Dataset.from_tensors(
        (tf.zeros(frames_spec.shape), tf.zeros(labels_spec.shape), tf.constant(0.0))
    ).repeat()
    weighted = clips.map(lambda frames, labels: (frames, labels, tf.constant(1.0)))
    return (
        weighted.concatenate(padding)
        .batch(batch, drop_remainder=True)
        .take(steps * (per_worker // batch))
    )
