"""Throughput: how many clips per second an input pipeline (or a train step) delivers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

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
