"""SavedModel export with a uint8 `frames` signature, and prediction from an exported model.

The export is a plain SavedModel (`keras.export.ExportArchive`), usable without repflow_tf:

- signature `serving_default`: `frames` uint8 `(batch, time, crop_size, crop_size, 3)` (any batch,
  time >= `min_frames`) -> `logits` and `probabilities` float32 `(batch, classes)`. The optical
  flow baselines take `optical_flow` float32 `(batch, time - 1, crop_size, crop_size, 2)` instead
  (the flow CNN) or as well (two-stream): TV-L1 flow in pixels of the crop, from each clip frame
  to the next video frame, which the client computes (`repflow_tf.data.TVL1`; a SavedModel cannot
  run OpenCV); the signature clips and quantises it to the training data's 8 bits itself;
- signature `metadata`: no input -> `class_names` (string vector) and `preprocessing` (JSON);
- `assets/class_names.txt` (one name per line, in output order) and `assets/preprocessing.json`
  (how to turn a video into clips: `num_frames`, `stride`, `crop_size`, `num_clips`,
  `short_side`, `fps`, `min_frames`).

Use from any TensorFlow program:

    loaded = tf.saved_model.load("runs/demo/export")
    outputs = loaded.signatures["serving_default"](frames=clips)  # uint8 clips
    outputs["probabilities"]

or, with repflow_tf, `load_exported(path)` and `predict_video(exported, "video.mp4")`.

TFLite and ONNX exports of the same signature, checked against Keras when written, are
`repflow_tf.export_formats` (`export_trained(..., format="tflite")`); `load_exported` loads
them too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import data, ops
from repflow_tf.data.optical_flow import LEVELS as FLOW_LEVELS
from repflow_tf.evaluation import TOP_K
from repflow_tf.fileio import atomic_directory, write_atomic, write_json_atomic
from repflow_tf.workdir import TrainedModel, Workdir, one_line

SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
ASSETS_DIR = "assets"
CLASS_NAMES_ASSET = "class_names.txt"
PREPROCESSING_ASSET = "preprocessing.json"
INPUT_NAME = "frames"
FLOW_INPUT_NAME = "optical_flow"


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
        optical_flow: None for RGB models; "tvl1" for models reading precomputed optical flow.
        flow_bound: the training flow's clipping bound in pixels (with `optical_flow`).

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
    optical_flow: str | None = None
    flow_bound: float | None = None

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
    optical_flow = None if trained.config.model.inputs == "rgb" else "tvl1"
    flow_bound = None if optical_flow is None else data.DEFAULT_FLOW_BOUND
    try:
        manifest = data.load_manifest(config.split_dir(config.val_split))
    except data.DataError:
        pass
    else:
        short_side = manifest.options.get("short_side", short_side)
        fps = manifest.options.get("fps")
        jpeg_quality = manifest.options.get("jpeg_quality")
        if optical_flow is not None:
            flow_bound = manifest.options.get("flow_bound", flow_bound)
    return Preprocessing(
        num_frames=config.num_frames,
        stride=config.stride,
        crop_size=config.crop_size,
        num_clips=config.eval_clips,
        short_side=short_side,
        fps=fps,
        jpeg_quality=jpeg_quality,
        min_frames=1 + trained.config.model.flow_layers,
        optical_flow=optical_flow,
        flow_bound=flow_bound,
    )


# === Export ===


def _check_output(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"{output_dir}: exists and is not a directory (--output)")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ExportError(
            f"{output_dir}: exists and is not empty; pass --overwrite to replace it (--output)"
        )


def _quantised(flow: tf.Tensor, bound: float) -> tf.Tensor:
    """`flow` as the training data stores it: clipped to +-bound, on the 8-bit grid."""
    step = bound / FLOW_LEVELS
    return tf.round(tf.clip_by_value(flow, -bound, bound) / step) * step


def _serving_function(model: keras.Model, preprocessing: Preprocessing, names: Sequence[str]):
    def serve(**inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        first = inputs[names[0]]
        time_steps = tf.shape(first)[1] + (1 if names[0] == FLOW_INPUT_NAME else 0)
        checks = [
            tf.debugging.assert_greater_equal(
                time_steps,
                preprocessing.min_frames,
                message=f"`{INPUT_NAME}` needs at least {preprocessing.min_frames} frames along "
                "the time axis (axis 1; `optical_flow` one less)",
            )
        ]
        if len(names) == 2:
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(inputs[FLOW_INPUT_NAME])[1] + 1,
                    tf.shape(inputs[INPUT_NAME])[1],
                    message="`optical_flow` needs one field per pair of consecutive `frames`",
                )
            )
        with tf.control_dependencies(checks):
            clips = {name: tf.cast(inputs[name], tf.float32) for name in names}
        if FLOW_INPUT_NAME in clips:
            clips[FLOW_INPUT_NAME] = _quantised(clips[FLOW_INPUT_NAME], preprocessing.flow_bound)
        logits = model(clips[INPUT_NAME] if names == [INPUT_NAME] else clips, training=False)
        logits = tf.cast(logits, tf.float32)
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
    a model whose inputs are not RGB `frames` and/or `optical_flow`, or a class list that does
    not fit the model.
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
    specs = _input_specs(model, class_names, preprocessing)
    output_dir = os.path.normpath(output_dir)
    with atomic_directory(output_dir) as temporary:
        write_archive(model, class_names, preprocessing, specs, temporary)
        write_assets(os.path.join(temporary, ASSETS_DIR), class_names, preprocessing)
        _check_output(output_dir, overwrite)  # again: it may have appeared meanwhile
    return output_dir


def write_assets(folder: str, class_names: Sequence[str], preprocessing: Preprocessing) -> None:
    """Writes `class_names.txt` (one per line, in output order) and `preprocessing.json`."""
    os.makedirs(folder, exist_ok=True)
    write_atomic(
        os.path.join(folder, CLASS_NAMES_ASSET), "".join(f"{name}\n" for name in class_names)
    )
    write_json_atomic(os.path.join(folder, PREPROCESSING_ASSET), preprocessing.to_json())


def _input_specs(model: keras.Model, class_names: Sequence[str], pre: Preprocessing) -> list:
    """The signature's inputs: uint8 `frames` and/or float32 `optical_flow`; refuses models that
    take anything else, or not at `pre.crop_size`, or not `class_names`' logits."""
    names = [tensor.name for tensor in model.inputs]
    allowed = ({INPUT_NAME}, {FLOW_INPUT_NAME}, {INPUT_NAME, FLOW_INPUT_NAME})
    if set(names) not in allowed or len(set(names)) != len(names):
        raise ExportError(
            f"only models taking '{INPUT_NAME}' and/or '{FLOW_INPUT_NAME}' (batch, time, H, W, C) "
            f"can be exported; this model takes {names}"
        )
    if FLOW_INPUT_NAME in names and pre.flow_bound is None:
        raise ExportError("a model reading optical flow needs the flow's bound (flow_bound)")
    size = pre.crop_size
    specs = []
    for name in (INPUT_NAME, FLOW_INPUT_NAME):
        tensor = next((t for t in model.inputs if t.name == name), None)
        if tensor is None:
            continue
        _, time_steps, height, width, channels = tensor.shape
        if (height, width) not in ((None, None), (size, size)):
            raise ExportError(
                f"the model takes {height}x{width} frames but data.crop_size is {size}"
            )
        dtype = tf.uint8 if name == INPUT_NAME else tf.float32
        specs.append(tf.TensorSpec([None, time_steps, size, size, channels], dtype, name=name))
    num_outputs = model.outputs[0].shape[-1]
    if len(class_names) != num_outputs or any("\n" in n or not n for n in class_names):
        raise ExportError(
            f"need {num_outputs} non-empty one-line class names, got {len(class_names)}"
        )
    return specs


def write_archive(model, class_names, preprocessing: Preprocessing, specs: list, path: str):
    """Writes the SavedModel of `_archive` to `path`. Its flow layers run TensorFlow ops on the
    whole batch at once (`ops.portable_graph`): an export may run anywhere, and neither the fused
    CPU kernels (custom ops, loadable only where they are built) nor the chunked graph (which
    the TFLite and ONNX converters do not take) go into it."""
    with ops.portable_graph():
        _archive(model, class_names, preprocessing, specs).write_out(path, verbose=False)


def _archive(model, class_names, preprocessing: Preprocessing, specs: list):
    """The `ExportArchive`: the serving signature and the metadata signature."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    names = [spec.name for spec in specs]
    serve = _serving_function(model, preprocessing, names)
    archive.add_endpoint(
        SIGNATURE,
        lambda *inputs: serve(**dict(zip(names, inputs, strict=True))),
        input_signature=specs,
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


def export_trained(
    workdir: Workdir, output_dir: str, *, overwrite: bool = False, format: str = "saved_model"
) -> str:
    """Exports a trained model with its class names and preprocessing facts
    (`preprocessing_for`) as a SavedModel (`export_model`) or, with `format="tflite"` or
    `"onnx"`, as `repflow_tf.export_formats.export_converted` writes it; returns `output_dir`.

    `workdir` comes from `repflow_tf.workdir.read_workdir` (the model is loaded and checked
    after the output folder passed its checks) or `load_trained`.

    Example (a workdir written by training):

        export_trained(read_workdir("runs/demo"), "runs/demo/export")
    """
    from repflow_tf import export_formats  # it builds on this module

    if format not in export_formats.FORMATS:
        raise ExportError(f"unknown export format {format!r}; one of {export_formats.FORMATS}")
    _check_output(output_dir, overwrite)  # before the slow part
    trained = workdir if isinstance(workdir, TrainedModel) else workdir.load()
    if format == "saved_model":
        write = export_model
    else:
        write = functools.partial(export_formats.export_converted, format=format)
    return write(
        trained.model,
        output_dir,
        trained.class_names,
        preprocessing_for(trained),
        overwrite=overwrite,
    )


# === Prediction ===


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """An export loaded back: call it with uint8 clips `(batch, time, H, W, 3)` (and, for the
    optical flow baselines, float32 `optical_flow` `(batch, time - 1, H, W, 2)`).

    Attributes:
        path: the export directory.
        class_names: one per output.
        preprocessing: how to make clips from a video.
        loaded: the object `tf.saved_model.load` returned (it owns the variables), or for
            `format` "tflite" / "onnx" the `repflow_tf.export_formats` runner.
        format: "saved_model", "tflite" or "onnx".
    """

    path: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    loaded: Any
    format: str = "saved_model"

    @property
    def signature(self) -> Any:
        """The `serving_default` concrete function (of a SavedModel)."""
        return self.loaded.signatures[SIGNATURE]

    @property
    def input_names(self) -> tuple[str, ...]:
        """The signature's inputs: `frames` and/or `optical_flow`."""
        if self.format != "saved_model":
            return self.loaded.input_names
        return tuple(sorted(self.signature.structured_input_signature[1]))

    def __call__(
        self, frames: np.ndarray | None, optical_flow: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """{"logits", "probabilities"} as NumPy arrays (batch, classes)."""
        given = {INPUT_NAME: (frames, tf.uint8), FLOW_INPUT_NAME: (optical_flow, tf.float32)}
        inputs = {name: tf.constant(given[name][0], given[name][1]) for name in self.input_names}
        if self.format != "saved_model":  # `loaded` is an `export_formats` runner
            arrays = {name: value.numpy() for name, value in inputs.items()}
            self._check_time_steps(arrays)
            return self.loaded(arrays)
        outputs = self.signature(**inputs)
        return {name: value.numpy() for name, value in outputs.items()}

    def _check_time_steps(self, inputs: dict[str, np.ndarray]) -> None:
        """The SavedModel signature's `min_frames` check, which TFLite / ONNX models lack."""
        name = INPUT_NAME if INPUT_NAME in inputs else FLOW_INPUT_NAME
        extra = 1 if name == FLOW_INPUT_NAME else 0  # the flow has one field fewer than frames
        array = inputs[name]
        if array.ndim != 5 or array.shape[1] + extra < self.preprocessing.min_frames:
            raise ValueError(
                f"`{INPUT_NAME}` needs shape (batch, time, H, W, 3) with at least "
                f"{self.preprocessing.min_frames} frames along the time axis (axis 1; "
                f"`{FLOW_INPUT_NAME}` one less); got `{name}` {inputs[name].shape}"
            )


def read_assets(folder: str, what: str) -> tuple[tuple[str, ...], Preprocessing]:
    """The class names and preprocessing facts stored in `folder`; `ExportError` starting with
    `what` when they cannot be read."""
    try:
        with open(os.path.join(folder, CLASS_NAMES_ASSET), encoding="utf-8") as file:
            class_names = tuple(line.rstrip("\n") for line in file if line.strip())
        with open(os.path.join(folder, PREPROCESSING_ASSET), encoding="utf-8") as file:
            preprocessing = Preprocessing.from_json(
                json.load(file), f"{folder}/{PREPROCESSING_ASSET}"
            )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExportError(
            f"{what} (cannot read {folder}/{CLASS_NAMES_ASSET} and {PREPROCESSING_ASSET}: {error})"
        ) from None
    return class_names, preprocessing


def load_exported(path: str) -> ExportedModel:
    """Loads an export written by `export_model` (or a TFLite / ONNX export folder written by
    `export_formats.export_converted`); `ExportError` naming `path` if it is none.

    >>> try:
    ...     load_exported("/no/such/export")
    ... except ExportError as error:
    ...     print(error)
    /no/such/export: no such directory (--model)
    """
    if not os.path.isdir(path):
        raise ExportError(f"{path}: no such directory (--model)")
    from repflow_tf import export_formats  # it builds on this module

    if export_formats.converted_format(path):
        return export_formats.load_converted(path)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ExportError(
            f"{path}: not a SavedModel (no saved_model.pb), nor a model.tflite / model.onnx "
            "export; see repflow-export"
        )
    assets = os.path.join(path, ASSETS_DIR)
    class_names, preprocessing = read_assets(assets, f"{path}: not a repflow-export SavedModel")
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # TensorFlow raises many types for a broken SavedModel.
        raise ExportError(f"{path}: cannot load the SavedModel ({one_line(error)})") from None
    signature = loaded.signatures.get(SIGNATURE)
    spec = signature.structured_input_signature[1] if signature is not None else {}
    expected = {INPUT_NAME: tf.uint8} if preprocessing.optical_flow is None else {}
    if preprocessing.optical_flow is not None:
        expected = {
            FLOW_INPUT_NAME: tf.float32,
            **({INPUT_NAME: tf.uint8} if INPUT_NAME in spec else {}),
        }
    if {name: value.dtype for name, value in spec.items()} != expected:
        wanted = " and ".join(f"{dtype.name} '{name}'" for name, dtype in expected.items())
        raise ExportError(f"{path}: no '{SIGNATURE}' signature taking {wanted}")
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


def sample_flow_clips(
    video: np.ndarray, preprocessing: Preprocessing, num_clips: int | None = None
) -> np.ndarray:
    """The optical flow of `sample_clips`' clips, `(num_clips, num_frames - 1, crop, crop, 2)`
    float32 pixels, computed as the converter computes it (`data.TVL1` on the full frames, from
    each clip frame to the next video frame, `data.flow_indices`) and cropped as the reader
    crops it (`data.crop_flow` of the centre window). Needs OpenCV (the `optical_flow` extra).

    >>> video = np.zeros((5, 40, 60, 3), np.uint8)
    >>> sample_flow_clips(video, Preprocessing(num_frames=4, crop_size=32), num_clips=2).shape
    (2, 3, 32, 32, 2)
    """
    num_clips = num_clips or preprocessing.num_clips
    num_frames, size = preprocessing.num_frames, preprocessing.crop_size
    if len(video) < 2:
        raise data.DataError(f"optical flow needs at least 2 frames, the video has {len(video)}")
    starts = data.evaluation_starts(len(video), num_frames, preprocessing.stride, num_clips)
    indices = data.clip_indices(len(video), starts, num_frames, preprocessing.stride)
    pairs = data.flow_indices(indices, num_frames, len(video)).numpy().tolist()
    tvl1 = data.TVL1()
    fields = {index: tvl1(video[index : index + 2])[0] for index in sorted(set(pairs))}
    window = data.centre_window(*video.shape[1:3], size)
    flow = data.crop_flow(np.stack([fields[index] for index in pairs]), window, size).numpy()
    return flow.reshape(num_clips, num_frames - 1, size, size, 2)


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
    """Decodes a video (PyAV), samples its clips (and their TV-L1 optical flow, for the flow
    baselines), runs the export and averages probabilities.

    Raises `repflow_tf.data.VideoDecodeError` (a `DataError` naming the file) for a missing or
    unreadable video.

    Example (an export written by repflow-export):

        prediction = predict_video(load_exported("runs/demo/export"), "video.mp4")
        print(prediction.top[0])
    """
    pre = exported.preprocessing
    video = data.read_video(path, short_side=pre.short_side, fps=pre.fps)
    names = exported.input_names
    clips = sample_clips(video, pre, num_clips) if INPUT_NAME in names else None
    flow = sample_flow_clips(video, pre, num_clips) if FLOW_INPUT_NAME in names else None
    probabilities = exported(clips, flow)["probabilities"].mean(axis=0)
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
