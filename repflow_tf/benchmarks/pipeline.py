"""Input pipeline vs train step: how many clips per second each delivers (bin/benchmark_data.py)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Clips and batches per second over `seconds` of measurement."""

    clips_per_second: float
    batches_per_second: float
    num_batches: int
    seconds: float


def _clips_in(batch: Any) -> int:
    frames = batch[0] if isinstance(batch, tuple | list) else batch
    return int(frames.shape[0])


def measure_pipeline(
    dataset: tf.data.Dataset, *, num_batches: int = 50, warmup_batches: int = 5
) -> Throughput:
    """Iterates `dataset` (batched; repeated if it may run out) and times `num_batches` batches
    after `warmup_batches` (which fill the prefetch buffers and autotune).

    >>> ds = tf.data.Dataset.from_tensors((tf.zeros([4, 2]), tf.zeros([4]))).repeat()
    >>> measure_pipeline(ds, num_batches=3, warmup_batches=1).num_batches
    3
    """
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    clips = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        clips += _clips_in(next(iterator))
    seconds = time.perf_counter() - start
    return Throughput(clips / seconds, num_batches / seconds, num_batches, seconds)


def measure_step(
    step: Callable[[Any], Any], batch: Any, *, num_steps: int = 20, warmup_steps: int = 3
) -> Throughput:
    """Times `step(batch)` (e.g. a compiled train step) on one fixed batch: the clips per second
    a model consumes, to compare with `measure_pipeline`.

    >>> step = tf.function(lambda batch: tf.reduce_sum(batch[0]))
    >>> measure_step(step, (tf.ones([8, 4]), tf.zeros([8])), num_steps=2).num_batches
    2
    """
    for _ in range(warmup_steps):
        _block(step(batch))
    start = time.perf_counter()
    for _ in range(num_steps):
        result = step(batch)
    _block(result)
    seconds = time.perf_counter() - start
    return Throughput(
        _clips_in(batch) * num_steps / seconds, num_steps / seconds, num_steps, seconds
    )


def _block(result: Any) -> None:
    """Waits for asynchronous (GPU) work by fetching the step's outputs."""
    for tensor in tf.nest.flatten(result):
        if isinstance(tensor, tf.Tensor):
            tensor.numpy()


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """What `run` measures; see bin/benchmark_data.py's flags."""

    data: str | None = None
    cache_dir: str = "/tmp/repflow_benchmark_data"
    batch_size: int = 8
    num_frames: int = 16
    stride: int = 1
    crop_size: int = 112
    num_batches: int = 40
    warmup_batches: int = 5
    steps_per_second: float = 0.0
    model_config: str = "configs/demo.toml"
    model_steps: int = 5


def model_clips_per_second(settings: PipelineSettings, batch: Any, log: TextIO) -> float | None:
    """Clips per second the train step of `settings.model_config`'s model consumes on `batch`
    (`steps_per_second` x batch size when given; None without a model config).

    Raises `repflow_tf.config.ConfigError` for a bad config.
    """
    if settings.steps_per_second > 0:
        return settings.steps_per_second * settings.batch_size
    if not settings.model_config:
        return None
    import keras

    from repflow_tf import models
    from repflow_tf.config import load_config

    config = load_config(settings.model_config)
    model = models.build(config.model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    frames, labels = batch
    labels = labels % config.model.num_classes
    result = measure_step(
        lambda _: model.train_on_batch(frames, labels),
        batch,
        num_steps=settings.model_steps,
        warmup_steps=1,
    )
    print(f"model: {model.name} from {settings.model_config}", file=log)
    return result.clips_per_second


def run(settings: PipelineSettings, out: TextIO = sys.stdout, log: TextIO = sys.stderr) -> None:
    """Times the training input pipeline on `settings.data` (default: a synthetic dataset made
    once in `cache_dir`) against the model's train step, and prints which is the bottleneck.

    Raises `DataError` / `ValueError` for bad data or settings, `ConfigError` for a bad config.
    """
    from repflow_tf.data import make_synthetic_dataset, video_dataset

    source = settings.data
    if source is None:
        source = make_synthetic_dataset(
            settings.cache_dir, num_train=96, num_val=0, num_frames=48, size=128, num_workers=1
        )["train"]
    dataset = video_dataset(
        source,
        training=True,
        num_frames=settings.num_frames,
        stride=settings.stride,
        crop_size=settings.crop_size,
        batch_size=settings.batch_size,
    ).repeat()
    print(f"benchmarking {source} on {os.cpu_count()} CPU cores ...", file=log)
    result = measure_pipeline(
        dataset, num_batches=settings.num_batches, warmup_batches=settings.warmup_batches
    )
    shape = f"{settings.num_frames}x{settings.crop_size}x{settings.crop_size}"
    print(
        f"input pipeline: {result.clips_per_second:.1f} clips/s ({shape}, "
        f"batch {settings.batch_size}, {result.batches_per_second:.2f} batches/s "
        f"over {result.seconds:.1f} s)",
        file=out,
    )
    needed = model_clips_per_second(settings, next(iter(dataset)), log)
    if needed is None:
        print("model step: not measured (--model_config is empty)", file=out)
        return
    verdict = "the model" if result.clips_per_second >= needed else "the INPUT PIPELINE"
    print(
        f"model step: {needed:.1f} clips/s -> input/model = "
        f"{result.clips_per_second / needed:.2f}, the bottleneck is {verdict}",
        file=out,
    )
