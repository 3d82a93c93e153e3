"""SavedModel export with a uint8 `frames` signature, and prediction from an exported model.

The export is a plain SavedModel (`keras.export.ExportArchive`), usable without repflow_tf:

- signature `serving_default`: `frames` uint8 `(batch, time, crop_size, crop_size, 3)` (any batch,
  time >= `min_frames`) -> `logits` and `probabilities` float32 `(batch, classes)`;
- signature `metadata`: no input -> `class_names` (string vector) and `preprocessing` (JSON);
- `assets/class_names.txt` (one name per line, in output order) and `assets/preprocessing.json`
  (how to turn a video into clips: `num_frames`, `stride`, `crop_size`, `num_clips`,
  `short_side`, `fps`, `min_frames`).

Use from any TensorFlow program:

    loaded = tf.saved_model.load("runs/demo/export")
    outputs = loaded.signatures["serving_default"](frames=clips)  # uint8 clips
    outputs["probabilities"]

or, with repflow_tf, `load_exported(path)` and `predict_video(exported, "video.mp4")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import data
from repflow_tf.evaluation import TOP_K
from repflow_tf.fileio import atomic_directory, write_atomic, write_json_atomic
from repflow_tf.workdir import TrainedModel, Workdir, one_line

SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
ASSETS_DIR = "assets"
CLASS_NAMES_ASSET = "class_names.txt"
PREPROCESSING_ASSET = "preprocessing.json"
INPUT_NAME = "frames"


class ExportError(ValueError):
    """An export that cannot be written or read; the one-line message names the path."""


# === Preprocessing facts ===


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a video becomes the model's clips (stored as `assets/preprocessing.json`).

    Attributes:
        num_frames: frames per clip.
        stride: temporal stride between clip frames.
        crop_size: clip height and width (the centre crop).
        num_clips: evenly spaced clips per video whose predictions are averaged.
        short_side: resize videos so the shorter side has this size before cropping (the
            conversion's size, so that objects have the scale seen in training); None: keep.
        fps: resample videos to this frame rate (None: keep every frame).
        jpeg_quality: the JPEG quality the training data was stored at; prediction encodes and
            decodes the sampled frames at it, so that served pixels are training pixels (None:
            no round trip, e.g. for exports written before it was recorded).
        min_frames: the fewest frames the signature accepts per clip (each flow layer uses
            two frames to make one).

    >>> Preprocessing(num_frames=16, crop_size=112).to_json()["short_side"]
    128
    """

    num_frames: int = 16
    stride: int = 1
    crop_size: int = 112
    num_clips: int = 1
    short_side: int | None = 128
    fps: float | None = None
    jpeg_quality: int | None = None
    min_frames: int = 2

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any], source: str = PREPROCESSING_ASSET) -> Preprocessing:
        """Reads `to_json()` output back; `ExportError` naming `source` when it does not fit."""
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(values, dict) or not fields.issuperset(values):
            raise ExportError(f"{source}: expected an object with keys {sorted(fields)}")
        try:
            result = cls(**values)
        except TypeError as error:
            raise ExportError(f"{source}: {error}") from None
        for name in ("num_frames", "stride", "crop_size", "num_clips", "min_frames"):
            value = getattr(result, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExportError(f"{source}: `{name}` must be a positive integer, got {value!r}")
        return result


def preprocessing_for(trained: Workdir) -> Preprocessing:
    """The preprocessing facts of a trained model: sampling from its config, the frame size and
    rate from the manifest of its validation split when that is readable (else: short side =
    crop size, all frames)."""
    config = trained.config.data
    short_side: int | None = config.crop_size
    fps = jpeg_quality = None
    try:
        manifest = data.load_manifest(config.split_dir(config.val_split))
    except data.DataError:
        pass
    else:
        short_side = manifest.options.get("short_side", short_side)
        fps = manifest.options.get("fps")
        jpeg_quality = manifest.options.get("jpeg_quality")
    return Preprocessing(
        num_frames=config.num_frames,
        stride=config.stride,
        crop_size=config.crop_size,
        num_clips=config.eval_clips,
        short_side=short_side,
        fps=fps,
        jpeg_quality=jpeg_quality,
        min_frames=1 + trained.config.model.flow_layers,
    )


# === Export ===


def _check_output(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"{output_dir}: exists and is not a directory (--output)")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ExportError(
            f"{output_dir}: exists and is not empty; pass --overwrite to replace it (--output)"
        )


def _serving_function(model: keras.Model, min_frames: int) -> Callable[[tf.Tensor], dict]:
    def serve(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        enough = tf.debugging.assert_greater_equal(
            tf.shape(frames)[1],
            min_frames,
            message=f"`frames` needs at least {min_frames} frames along the time axis (axis 1)",
        )
        with tf.control_dependencies([enough]):
            clips = tf.cast(frames, tf.float32)
        logits = tf.cast(model(clips, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    return serve


def export_model(
    model: keras.Model,
    output_dir: str,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    *,
    overwrite: bool = False,
) -> str:
    """Writes `model` as a SavedModel with the uint8 `frames` signature and the assets.

    The export is written next to `output_dir` and renamed into place, so a failed export leaves
    nothing behind and an existing export is only replaced (with `overwrite`) once the new one
    is complete. Refuses (`ExportError`) an existing non-empty `output_dir` without `overwrite`,
    a model whose input is not RGB `frames`, or a class list that does not fit the model.
    Returns `output_dir`.

    >>> import tempfile
    >>> from repflow_tf import models
    >>> from repflow_tf.config import ModelConfig
    >>> model = models.build(ModelConfig(depth=18, base_width=4, num_classes=2,
    ...                                  flow_position="none"))
    >>> path = export_model(model, os.path.join(tempfile.mkdtemp(), "export"), ["a", "b"],
    ...                     Preprocessing(num_frames=4, crop_size=32))
    >>> load_exported(path).class_names
    ('a', 'b')
    """
    _check_output(output_dir, overwrite)
    time_steps = _check_exportable(model, class_names, preprocessing.crop_size)
    archive = _archive(model, class_names, preprocessing, time_steps)
    output_dir = os.path.normpath(output_dir)
    with atomic_directory(output_dir) as temporary:
        archive.write_out(temporary, verbose=False)
        assets = os.path.join(temporary, ASSETS_DIR)
        os.makedirs(assets, exist_ok=True)
        write_atomic(
            os.path.join(assets, CLASS_NAMES_ASSET), "".join(f"{name}\n" for name in class_names)
        )
        write_json_atomic(os.path.join(assets, PREPROCESSING_ASSET), preprocessing.to_json())
        _check_output(output_dir, overwrite)  # again: it may have appeared meanwhile
    return output_dir


def _check_exportable(model: keras.Model, class_names: Sequence[str], size: int) -> int | None:
    """Refuses models that are not RGB `frames` -> logits of `class_names` at `size`; returns
    the model's number of frames (None: any)."""
    inputs = model.inputs
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 5:
        names = [tensor.name for tensor in inputs]
        raise ExportError(
            f"only RGB models with one input '{INPUT_NAME}' (batch, time, H, W, 3) can be "
            f"exported; this model takes {names}"
        )
    _, time_steps, height, width, _ = inputs[0].shape
    if (height, width) not in ((None, None), (size, size)):
        raise ExportError(f"the model takes {height}x{width} frames but data.crop_size is {size}")
    num_outputs = model.outputs[0].shape[-1]
    if len(class_names) != num_outputs or any("\n" in n or not n for n in class_names):
        raise ExportError(
            f"need {num_outputs} non-empty one-line class names, got {len(class_names)}"
        )
    return time_steps


def _archive(model, class_names, preprocessing: Preprocessing, time_steps: int | None):
    """The `ExportArchive`: the uint8 serving signature and the metadata signature."""
    size = preprocessing.crop_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE,
        _serving_function(model, preprocessing.min_frames),
        input_signature=[
            tf.TensorSpec([None, time_steps, size, size, 3], tf.uint8, name=INPUT_NAME)
        ],
    )
    archive.add_endpoint(
        METADATA_SIGNATURE,
        lambda: {
            "class_names": tf.constant(list(class_names)),
            "preprocessing": tf.constant(json.dumps(preprocessing.to_json())),
        },
        input_signature=[],
    )
    return archive


def export_trained(workdir: Workdir, output_dir: str, *, overwrite: bool = False) -> str:
    """Exports a trained model with its class names and preprocessing facts
    (`preprocessing_for`); returns `output_dir`.

    `workdir` comes from `repflow_tf.workdir.read_workdir` (the model is loaded and checked
    after the output folder passed its checks) or `load_trained`.

    Example (a workdir written by training):

        export_trained(read_workdir("runs/demo"), "runs/demo/export")
    """
    _check_output(output_dir, overwrite)  # before the slow part
    trained = workdir if isinstance(workdir, TrainedModel) else workdir.load()
    return export_model(
        trained.model,
        output_dir,
        trained.class_names,
        preprocessing_for(trained),
        overwrite=overwrite,
    )


# === Prediction ===


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An export loaded back: call it with uint8 clips `(batch, time, H, W, 3)`.

    Attributes:
        path: the export directory.
        class_names: one per output.
        preprocessing: how to make clips from a video.
        loaded: the object `tf.saved_model.load` returned (it owns the variables).
    """

    path: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    loaded: Any

    @property
    def signature(self) -> Any:
        """The `serving_default` concrete function."""
        return self.loaded.signatures[SIGNATURE]

    def __call__(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """{"logits", "probabilities"} as NumPy arrays (batch, classes)."""
        outputs = self.signature(**{INPUT_NAME: tf.constant(frames, tf.uint8)})
        return {name: value.numpy() for name, value in outputs.items()}


def load_exported(path: str) -> ExportedModel:
    """Loads an export written by `export_model`; `ExportError` naming `path` if it is none.

    >>> try:
    ...     load_exported("/no/such/export")
    ... except ExportError as error:
    ...     print(error)
    /no/such/export: no such directory (--model)
    """
    if not os.path.isdir(path):
        raise ExportError(f"{path}: no such directory (--model)")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ExportError(f"{path}: not a SavedModel (no saved_model.pb); see repflow-export")
    assets = os.path.join(path, ASSETS_DIR)
    try:
        with open(os.path.join(assets, CLASS_NAMES_ASSET), encoding="utf-8") as file:
            class_names = tuple(line.rstrip("\n") for line in file if line.strip())
        with open(os.path.join(assets, PREPROCESSING_ASSET), encoding="utf-8") as file:
            preprocessing = Preprocessing.from_json(
                json.load(file), f"{assets}/{PREPROCESSING_ASSET}"
            )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(
            f"{path}: not a repflow-export SavedModel (cannot read {ASSETS_DIR}/"
            f"{CLASS_NAMES_ASSET} and {PREPROCESSING_ASSET}: {error})"
        ) from None
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # TensorFlow raises many types for a broken SavedModel.
        raise ExportError(f"{path}: cannot load the SavedModel ({one_line(error)})") from None
    signature = loaded.signatures.get(SIGNATURE)
    spec = signature.structured_input_signature[1] if signature is not None else {}
    if set(spec) != {INPUT_NAME} or spec[INPUT_NAME].dtype != tf.uint8:
        raise ExportError(f"{path}: no '{SIGNATURE}' signature taking uint8 '{INPUT_NAME}'")
    num_outputs = signature.structured_outputs["logits"].shape[-1]
    if num_outputs != len(class_names):
        raise ExportError(
            f"{assets}/{CLASS_NAMES_ASSET} lists {len(class_names)} classes but the model "
            f"predicts {num_outputs}"
        )
    return ExportedModel(path, class_names, preprocessing, loaded)


def sample_clips(
    video: np.ndarray, preprocessing: Preprocessing, num_clips: int | None = None
) -> np.ndarray:
    """Clips `(num_clips, num_frames, crop, crop, 3)` uint8 from a video `(T, H, W, 3)`, sampled
    as the evaluation pipeline samples converted videos, with the same functions: starts from
    `data.evaluation_starts`, frames `stride` apart looping short videos (`data.clip_indices`),
    the JPEG round trip of the conversion (`preprocessing.jpeg_quality`), the centre crop
    (`data.centre_window`) resized to `crop_size`. Resizing to `short_side` happens while
    decoding (`read_video`).

    >>> video = np.zeros((5, 40, 60, 3), np.uint8)
    >>> sample_clips(video, Preprocessing(num_frames=8, crop_size=32), num_clips=2).shape
    (2, 8, 32, 32, 3)
    """
    num_clips = num_clips or preprocessing.num_clips
    num_frames, stride, size = (
        preprocessing.num_frames,
        preprocessing.stride,
        preprocessing.crop_size,
    )
    starts = data.evaluation_starts(len(video), num_frames, stride, num_clips)
    frames = video[data.clip_indices(len(video), starts, num_frames, stride).numpy()]
    if preprocessing.jpeg_quality is not None:
        frames = data.jpeg_round_trip(frames, preprocessing.jpeg_quality)
    top, left, side, _ = data.centre_window(*video.shape[1:3], size).numpy().tolist()
    frames = frames[:, top : top + side, left : left + side]
    if side != size:
        resized = tf.image.resize(frames, [size, size]).numpy()
        frames = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return frames.reshape(num_clips, num_frames, size, size, 3)


@dataclasses.dataclass(frozen=True)
class VideoPrediction:
    """The clip-averaged class probabilities of one video.

    Attributes:
        video: the video file.
        probabilities: (classes,) mean of the clips' softmax outputs.
        top: the `top_k` most probable `(class name, probability)`, most probable first.
    """

    video: str
    probabilities: np.ndarray
    top: tuple[tuple[str, float], ...]

    def to_json(self) -> dict[str, Any]:
        """{"video": ..., "top": [{"class": ..., "probability": ...}, ...]}."""
        return {
            "video": self.video,
            "top": [{"class": name, "probability": p} for name, p in self.top],
        }


def predict_video(
    exported: ExportedModel, path: str, *, num_clips: int | None = None, top_k: int = TOP_K
) -> VideoPrediction:
    """Decodes a video (PyAV), samples its clips, runs the export and averages probabilities.

    Raises `repflow_tf.data.VideoDecodeError` (a `DataError` naming the file) for a missing or
    unreadable video.

    Example (an export written by repflow-export):

        prediction = predict_video(load_exported("runs/demo/export"), "video.mp4")
        print(prediction.top[0])
    """
    pre = exported.preprocessing
    video = data.read_video(path, short_side=pre.short_side, fps=pre.fps)
    clips = sample_clips(video, pre, num_clips)
    probabilities = exported(clips)["probabilities"].mean(axis=0)
    order = np.argsort(-probabilities, kind="stable")[: max(1, top_k)]
    top = tuple((exported.class_names[i], float(probabilities[i])) for i in order)
    return VideoPrediction(path, probabilities, top)


def format_prediction(prediction: VideoPrediction) -> str:
    """The prediction as text: the video, then one `rank. class  probability` line per class.

    >>> top = (("up", 0.9), ("down", 0.1))
    >>> print(format_prediction(VideoPrediction("a.mp4", np.array([0.1, 0.9]), top)))
    a.mp4
      1. up    0.9000
      2. down  0.1000
    """
    width = max(len(name) for name, _ in prediction.top)
    lines = [prediction.video]
    for rank, (name, probability) in enumerate(prediction.top, start=1):
        lines.append(f"  {rank}. {name:<{width}}  {probability:.4f}")
    return "\n".join(lines)
