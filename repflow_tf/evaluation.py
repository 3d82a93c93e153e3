"""Evaluation of a trained model: clip and video accuracy, per-class accuracy, confusion matrix.

Each video of the split is sampled as K evenly spaced clips (`data.eval_clips`); clip accuracy
scores every clip on its own, video accuracy scores the average of the K clips' logits. Per-class
accuracy and the confusion matrix (rows: true class, columns: predicted class) are video-level.
Top-5 means top-min(5, classes).

>>> import numpy as np
>>> logits = np.array([[[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]],   # video 0 (label 0), two clips
...                    [[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]])  # video 1 (label 2)
>>> result = compute_metrics(logits, [0, 2], ["a", "b", "c"])
>>> result.clip_top1, result.video_top1
(0.75, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import tensorflow as tf
import tqdm

from repflow_tf import data
from repflow_tf.fileio import write_atomic, write_json_atomic
from repflow_tf.visualize import render_confusion
from repflow_tf.workdir import (
    LOGS_DIR,
    TrainedModel,
    check_data_classes,
    eval_dir_name,
    read_workdir,
)

# Top-k accuracy (evaluation) and the classes `repflow-predict` lists (export): k = 5, as in
# the paper and Kinetics; fewer classes make it top-all.
TOP_K = 5


# === Metrics ===


def correct_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the `k` highest scores: (N, C) scores, (N,) labels -> (N,) bool.

    Ties are broken towards the lower class index, as `argmax` does, so `k=1` agrees with the
    argmax prediction used by the confusion matrix.

    >>> correct_at_k(np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]]), np.array([1, 1]), 1)
    array([ True, False])
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    label_scores = scores[rows, labels][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < labels[:, None]
    ahead = (scores > label_scores) | ((scores == label_scores) & lower_index)
    return ahead.sum(axis=1) < k


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Accuracies of one evaluation; `to_json()` gives the `metrics.json` content.

    Attributes:
        class_names: class names, in label order.
        num_videos: videos evaluated.
        clips_per_video: clips per video (K).
        clip_top1, clip_top5: accuracy of single clips.
        clip_loss: mean cross-entropy of single clips (the training loss, without smoothing).
        video_top1, video_top5: accuracy of the clip-averaged logits.
        per_class_accuracy: video top-1 accuracy of each class (NaN: no video of that class).
        mean_class_accuracy: the mean of `per_class_accuracy` over classes with videos.
        confusion: (C, C) int64 video counts, rows true class, columns predicted class.
    """

    class_names: tuple[str, ...]
    num_videos: int
    clips_per_video: int
    clip_top1: float
    clip_top5: float
    clip_loss: float
    video_top1: float
    video_top5: float
    per_class_accuracy: tuple[float, ...]
    mean_class_accuracy: float
    confusion: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes null)."""

        def number(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "num_videos": self.num_videos,
            "clips_per_video": self.clips_per_video,
            "top_k": min(TOP_K, len(self.class_names)),
            "clip_top1": number(self.clip_top1),
            "clip_top5": number(self.clip_top5),
            "clip_loss": number(self.clip_loss),
            "video_top1": number(self.video_top1),
            "video_top5": number(self.video_top5),
            "mean_class_accuracy": number(self.mean_class_accuracy),
            "per_class": {
                name: {"accuracy": number(accuracy), "videos": int(count)}
                for name, accuracy, count in zip(
                    self.class_names,
                    self.per_class_accuracy,
                    self.confusion.sum(axis=1),
                    strict=True,
                )
            },
        }


class ClassificationMetrics:
    """Streaming clip- and video-level metrics; feed it batches, read `result()` at the end.

    >>> metrics = ClassificationMetrics(num_classes=2)
    >>> metrics.update(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), np.array([0, 0]))
    >>> metrics.result(["a", "b"]).confusion.tolist()
    [[1, 1], [0, 0]]
    """

    def __init__(self, num_classes: int, top_k: int = TOP_K):
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1. Received: num_classes={num_classes}")
        self.num_classes = num_classes
        self.top_k = min(top_k, num_classes)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.clips_per_video: int | None = None
        self.num_videos = 0
        self._clip_correct = np.zeros(2, np.int64)  # top-1, top-k
        self._video_correct = np.zeros(2, np.int64)
        self._clip_loss_sum = 0.0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Adds videos: logits (videos, clips, C) or (videos, C) for one clip; labels (videos,)."""
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels, np.int64).reshape(-1)
        if logits.ndim == 2:
            logits = logits[:, None, :]
        if logits.ndim != 3 or logits.shape[2] != self.num_classes:
            raise ValueError(
                f"Expected logits (videos, clips, {self.num_classes}). Received: {logits.shape}"
            )
        if len(labels) != len(logits) or labels.min(initial=0) < 0:
            raise ValueError(f"Expected {len(logits)} labels >= 0. Received: {labels.tolist()}")
        if labels.max(initial=0) >= self.num_classes:
            raise ValueError(f"Labels must be < {self.num_classes}. Received: {labels.tolist()}")
        if self.clips_per_video is None:
            self.clips_per_video = logits.shape[1]
        elif logits.shape[1] != self.clips_per_video:
            raise ValueError(
                f"Expected {self.clips_per_video} clips per video. Received: {logits.shape[1]}"
            )
        clips = logits.reshape(-1, self.num_classes)
        clip_labels = np.repeat(labels, logits.shape[1])
        videos = logits.mean(axis=1)
        for counts, scores, truth in (
            (self._clip_correct, clips, clip_labels),
            (self._video_correct, videos, labels),
        ):
            counts[0] += correct_at_k(scores, truth, 1).sum()
            counts[1] += correct_at_k(scores, truth, self.top_k).sum()
        np.add.at(self.confusion, (labels, videos.argmax(axis=1)), 1)
        self._clip_loss_sum += float(_cross_entropy(clips, clip_labels).sum())
        self.num_videos += len(labels)

    def result(self, class_names: Sequence[str]) -> EvaluationResult:
        """The metrics so far (NaN accuracies when no video was added)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"Expected {self.num_classes} class names. Received: {class_names}")
        videos = self.num_videos
        clips = videos * (self.clips_per_video or 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            clip = self._clip_correct / clips if clips else np.full(2, np.nan)
            video = self._video_correct / videos if videos else np.full(2, np.nan)
            per_class = np.diag(self.confusion) / self.confusion.sum(axis=1)
        present = per_class[~np.isnan(per_class)]
        return EvaluationResult(
            class_names=tuple(class_names),
            num_videos=videos,
            clips_per_video=self.clips_per_video or 0,
            clip_top1=float(clip[0]),
            clip_top5=float(clip[1]),
            clip_loss=self._clip_loss_sum / clips if clips else math.nan,
            video_top1=float(video[0]),
            video_top5=float(video[1]),
            per_class_accuracy=tuple(float(a) for a in per_class),
            mean_class_accuracy=float(present.mean()) if present.size else math.nan,
            confusion=self.confusion.copy(),
        )


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[label] per row, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(len(labels)), labels]


def compute_metrics(
    logits: np.ndarray, labels: Sequence[int] | np.ndarray, class_names: Sequence[str]
) -> EvaluationResult:
    """All metrics of `logits` (videos, clips, C) (or (videos, C)) against integer `labels`.

    >>> result = compute_metrics(np.eye(3)[[0, 1, 1]], [0, 1, 2], ["a", "b", "c"])
    >>> result.video_top1, result.per_class_accuracy
    (0.6666666666666666, (1.0, 1.0, 0.0))
    """
    metrics = ClassificationMetrics(len(class_names))
    metrics.update(np.asarray(logits), np.asarray(labels))
    return metrics.result(class_names)


# === Report ===


def format_summary(result: EvaluationResult, split: str = "") -> str:
    """A plain-text table of the metrics (what `repflow-evaluate` prints at the end).

    >>> print(format_summary(compute_metrics(np.eye(2), [0, 1], ["left", "right"]), "val"))
    val: 2 videos x 1 clips, 2 classes
                       top-1   top-2
    clip              1.0000  1.0000
    video             1.0000  1.0000
    mean class        1.0000
    clip loss         0.3133
    per class          top-1  videos
      left            1.0000       1
      right           1.0000       1
    """
    k = min(TOP_K, len(result.class_names))
    width = max(14, *(len(name) for name in result.class_names)) + 2
    lines = [
        f"{split + ': ' if split else ''}{result.num_videos} videos x "
        f"{result.clips_per_video} clips, {len(result.class_names)} classes",
        f"{'':<{width}}{'top-1':>8}{f'top-{k}':>8}",
        f"{'clip':<{width}}{result.clip_top1:>8.4f}{result.clip_top5:>8.4f}",
        f"{'video':<{width}}{result.video_top1:>8.4f}{result.video_top5:>8.4f}",
        f"{'mean class':<{width}}{result.mean_class_accuracy:>8.4f}",
        f"{'clip loss':<{width}}{result.clip_loss:>8.4f}",
        f"{'per class':<{width}}{'top-1':>8}{'videos':>8}",
    ]
    for name, accuracy, count in zip(
        result.class_names, result.per_class_accuracy, result.confusion.sum(axis=1), strict=True
    ):
        lines.append(f"  {name:<{width - 2}}{accuracy:>8.4f}{count:>8d}")
    return "\n".join(lines)


def write_report(
    result: EvaluationResult,
    output_dir: str,
    log_dir: str | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Writes `metrics.json`, `confusion.json` and `confusion.png` to `output_dir` and, with
    `log_dir`, TensorBoard scalars and the confusion image; returns {name: path}.

    >>> import tempfile
    >>> paths = write_report(compute_metrics(np.eye(2), [0, 1], ["a", "b"]), tempfile.mkdtemp())
    >>> sorted(paths)
    ['confusion.json', 'confusion.png', 'metrics.json']
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        name: os.path.join(output_dir, name)
        for name in ("metrics.json", "confusion.json", "confusion.png")
    }
    write_json_atomic(paths["metrics.json"], {**(extra or {}), **result.to_json()})
    write_json_atomic(
        paths["confusion.json"],
        {
            "rows": "true class",
            "columns": "predicted class",
            "class_names": list(result.class_names),
            "matrix": result.confusion.tolist(),
        },
    )
    image = render_confusion(result.confusion, result.class_names)
    write_atomic(paths["confusion.png"], tf.io.encode_png(image).numpy())
    if log_dir is not None:
        writer = tf.summary.create_file_writer(log_dir)
        with writer.as_default():
            for name in ("clip_top1", "clip_top5", "video_top1", "video_top5"):
                value = getattr(result, name)
                if not math.isnan(value):
                    tf.summary.scalar(f"accuracy/{name}", value, step=step)
            tf.summary.image(
                "confusion_matrix",
                image[None],
                step=step,
                description="Video-level confusion: counts and row-normalised percentages; "
                "rows: true class, columns: predicted class.",
            )
            tf.summary.text("summary", f"```\n{format_summary(result)}\n```", step=step)
        writer.close()
        paths["tensorboard"] = log_dir
    return paths


# === Evaluation loop ===


def _predict_step(model: Any, element_spec: Any) -> Any:
    """tf.function: clips `(videos, clips, T, H, W, C)` -> logits `(videos, clips, classes)`,
    traced once. The inputs are a tensor or a dict of them, as the evaluation dataset's
    `element_spec` says (its last four axes; with or without its clip axis)."""
    signature = tf.nest.map_structure(
        lambda spec: tf.TensorSpec([None, None, *spec.shape[-4:]], spec.dtype), element_spec
    )

    @tf.function(input_signature=[signature])
    def step(inputs: Any) -> tf.Tensor:
        first = tf.shape(tf.nest.flatten(inputs)[0])
        clips = tf.nest.map_structure(lambda x: tf.reshape(x, [-1, *x.shape[2:]]), inputs)
        logits = model(clips, training=False)
        return tf.reshape(logits, [first[0], first[1], -1])

    return step


def evaluate_model(
    trained: TrainedModel,
    split_dir: str,
    *,
    num_clips: int,
    batch_size: int,
    log_every: int = 10,
    log: TextIO | None = sys.stdout,
    label: str = "",
) -> EvaluationResult:
    """Runs `trained.model` over every video of a converted split and returns the metrics.

    Videos are sampled as `num_clips` evenly spaced clips (one centre clip when 1) with the
    config's `num_frames`, `stride` and `crop_size`; `batch_size` counts videos, so the model
    sees `batch_size * num_clips` clips per call. A progress line goes to `log` every
    `log_every` batches and after the last.

    Raises `WorkdirError` when the split's classes are not the model's, `DataError` for a
    missing or broken split; a record that turns out malformed while reading raises
    `tf.errors.InvalidArgumentError` naming the shard.
    """
    if log_every < 1:
        raise ValueError(f"`log_every` must be >= 1. Received: log_every={log_every}")
    manifest = data.load_manifest(split_dir)
    check_data_classes(manifest, split_dir, trained)
    sampling = trained.config.data
    dataset = data.video_dataset(
        split_dir,
        training=False,
        num_frames=sampling.num_frames,
        stride=sampling.stride,
        crop_size=sampling.crop_size,
        num_clips=None if num_clips == 1 else num_clips,
        batch_size=batch_size,
        inputs=trained.config.model.inputs,
    )
    step = _predict_step(trained.model, dataset.element_spec[0])
    metrics = ClassificationMetrics(len(trained.class_names))
    num_batches = max(1, math.ceil(manifest.num_accepted / batch_size))
    start = time.perf_counter()
    label = label or os.path.basename(os.path.normpath(split_dir))
    # On a terminal a progress bar; in a log file a line every `log_every` batches.
    bar = tqdm.tqdm(
        total=num_batches,
        desc=f"eval {label}",
        unit="batch",
        file=log,
        disable=log is None or not log.isatty(),
        dynamic_ncols=True,
    )
    for index, (frames, labels) in enumerate(dataset, start=1):
        if num_clips == 1:
            frames = tf.nest.map_structure(lambda x: x[:, None], frames)
        metrics.update(step(frames).numpy(), labels.numpy())
        running = metrics.result(trained.class_names).video_top1
        bar.set_postfix(videos=metrics.num_videos, top1=f"{running:.4f}", refresh=False)
        bar.update()
        if bar.disable and log is not None and (index % log_every == 0 or index == num_batches):
            elapsed = time.perf_counter() - start
            print(
                f"eval {label}: batch {index}/{num_batches}, {metrics.num_videos} videos, "
                f"{metrics.num_videos * num_clips / elapsed:.1f} clips/s, "
                f"video top-1 so far {running:.4f}",
                file=log,
                flush=True,
            )
    bar.close()
    return metrics.result(trained.class_names)


def _checked_split_dir(files, split: str) -> str:
    """The split's directory, checked against the workdir's classes before the (slow) model
    load; `DataError` naming the directory, the config and the flag otherwise."""
    config = files.config.data
    split_dir = config.split_dir(split)
    if not os.path.isdir(split_dir):
        raise data.DataError(
            f"{split_dir}: no such split directory (data.root={config.root!r} in "
            f"{files.config_path}, --split={split})"
        )
    check_data_classes(data.load_manifest(split_dir), split_dir, files)
    return split_dir


def evaluate_workdir(
    workdir: str,
    *,
    split: str | None = None,
    overrides: Sequence[str] = (),
    num_clips: int | None = None,
    batch_size: int | None = None,
    output_dir: str | None = None,
    log_every: int = 10,
    log: TextIO | None = sys.stdout,
) -> tuple[EvaluationResult, dict[str, str]]:
    """Evaluates a training workdir on `<data.root>/<split>` and writes the report.

    `split` defaults to `data.val_split`, `num_clips` to `data.eval_clips`, `batch_size` to
    `data.batch_size`, `output_dir` to `<workdir>/eval_<split>`; TensorBoard summaries go to
    `<workdir>/logs/eval_<split>`. Prints progress and, at the end, the summary table to `log`.
    Returns the metrics and {file: path} of the report.

    Raises `WorkdirError`, `ConfigError` or `DataError` with a one-line message naming the file,
    flag or key at fault (see `repflow_tf.workdir.load_trained` and `evaluate_model`).

    Example (a workdir written by training):

        result, paths = evaluate_workdir("runs/demo", split="val", num_clips=3)
        print(result.video_top1, paths["metrics.json"])
    """
    files = read_workdir(workdir, overrides=overrides)
    config = files.config.data
    split = split or config.val_split
    num_clips = num_clips or config.eval_clips
    batch_size = batch_size or config.batch_size
    for name, value in (("num_clips", num_clips), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1. Received: {value}")
    split_dir = _checked_split_dir(files, split)
    trained = files.load()
    result = evaluate_model(
        trained,
        split_dir,
        num_clips=num_clips,
        batch_size=batch_size,
        log_every=log_every,
        log=log,
        label=split,
    )
    paths = write_report(
        result,
        output_dir or os.path.join(workdir, eval_dir_name(split)),
        log_dir=os.path.join(workdir, LOGS_DIR, eval_dir_name(split)),
        extra={
            "split": split,
            "split_dir": split_dir,
            "model": trained.model_path,
            "overrides": list(overrides),
            "num_frames": config.num_frames,
            "stride": config.stride,
            "crop_size": config.crop_size,
        },
    )
    if log is not None:
        print(format_summary(result, split), file=log)
        print(f"wrote {', '.join(paths.values())}", file=log, flush=True)
    return result, paths


__all__ = [
    "ClassificationMetrics",
    "EvaluationResult",
    "compute_metrics",
    "correct_at_k",
    "evaluate_model",
    "evaluate_workdir",
    "format_summary",
    "write_report",
]
