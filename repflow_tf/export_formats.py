"""TFLite and ONNX exports of the serving signature, each checked against Keras when written.

Both are converted from the SavedModel `export.export_model` writes (its `serving_default`
function: uint8 `frames` and/or float32 `optical_flow` -> `logits`, `probabilities`), traced with
every flow layer on its plain-graph path (`jit_compile=False` inside `ops.portable_graph`: the
XLA functions and the fused CPU kernels are not convertible). An export is a folder:

    <output>/model.tflite  (or model.onnx)   inputs and outputs named as in the SavedModel
    <output>/class_names.txt                 one name per line, in output order
    <output>/preprocessing.json              `export.Preprocessing`

- TFLite: `tf.lite.TFLiteConverter`, TFLite builtin ops only (no SELECT_TF_OPS / Flex: the
  flow's iterations run in a builtin WHILE op); run it with LiteRT:
  `Interpreter(model_path=...).get_signature_runner("serving_default")(frames=clips)`.
- ONNX: `tf2onnx` (opset `ONNX_OPSET`; the iterations run in a `Loop` node); run it with
  `onnxruntime.InferenceSession(path).run(["logits"], {"frames": clips})`.

Both keep the SavedModel's dynamic batch and time axes (for models built without a fixed
`num_frames`, the default), but not its check that a clip has at least `min_frames` frames
(converters drop assertions; the runtimes then fail with a reshape error): a client sends
`preprocessing.json`'s `min_frames` or more. `export.load_exported` loads these folders too and
checks that itself, so `repflow-predict --model <folder>` runs them.

After conversion the written model is run on a probe clip and its logits compared with the Keras
model's: a difference above `TOLERANCE` fails the export (`ExportError`), as does a converter
error (one line naming the format).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import data
from repflow_tf.export import (
    CLASS_NAMES_ASSET,
    FLOW_INPUT_NAME,
    INPUT_NAME,
    SIGNATURE,
    ExportedModel,
    ExportError,
    Preprocessing,
    _check_output,
    _input_specs,
    _serving_function,
    read_assets,
    write_archive,
    write_assets,
)
from repflow_tf.fileio import atomic_directory, write_atomic
from repflow_tf.layers import RepresentationFlow
from repflow_tf.options import EXPORT_FORMATS
from repflow_tf.startup import is_verbose, native_stderr_silenced
from repflow_tf.workdir import one_line

FORMATS = EXPORT_FORMATS
MODEL_FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
ONNX_OPSET = 17
TOLERANCE = 1e-3  # max |logit difference| to Keras on the probe clip
_EXTRA = "pip install 'repflow_tf[export]'"


@contextlib.contextmanager
def plain_graph_flow(model: keras.Model) -> Iterator[None]:
    """Within: every RepresentationFlow layer of `model` runs without XLA (`jit_compile=False`),
    so that what is traced holds no must-compile function: its fused CPU kernels where it uses
    them by default, plain graph functions inside `ops.portable_graph()` (as exports trace)."""
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, RepresentationFlow)]
    saved = [layer.jit_compile for layer in layers]
    for layer in layers:
        layer.jit_compile = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.jit_compile = value


def export_converted(
    model: keras.Model,
    output_dir: str,
    class_names: Sequence[str],
    preprocessing: Preprocessing,
    *,
    format: str,
    overwrite: bool = False,
) -> str:
    """Writes `model` as `<output_dir>/model.tflite` or `model.onnx` (`format`) with
    `class_names.txt` and `preprocessing.json` next to it, all renamed into place at once.

    Refuses what `export.export_model` refuses, and fails (`ExportError`, one line naming the
    format) when the converter fails or the converted model's logits differ from Keras by more
    than `TOLERANCE` on a probe clip; nothing is written then. Returns `output_dir`.
    """
    if format not in MODEL_FILES:
        raise ExportError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    _check_output(output_dir, overwrite)
    specs = _input_specs(model, class_names, preprocessing)
    output_dir = os.path.normpath(output_dir)
    with atomic_directory(output_dir) as temporary:
        os.makedirs(temporary)
        saved_model = os.path.join(temporary, "saved_model")
        with plain_graph_flow(model):
            write_archive(model, class_names, preprocessing, specs, saved_model)
        model_path = os.path.join(temporary, MODEL_FILES[format])
        write_atomic(model_path, _convert(format, saved_model))
        shutil.rmtree(saved_model)
        _check_converted(format, model_path, model, preprocessing, specs)
        write_assets(temporary, class_names, preprocessing)
        _check_output(output_dir, overwrite)  # again: it may have appeared meanwhile
    return output_dir


class _Errors(logging.Handler):
    """Collects the first line of each ERROR record (tf2onnx logs unconvertible ops and goes
    on)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.getMessage().strip().splitlines() or [""])[0][:200])


@contextlib.contextmanager
def _quiet_converters() -> Iterator[_Errors]:
    """Within: the converters' Python logs (TF1 deprecations, tf2onnx progress and errors) are
    not printed; tf2onnx's errors are collected in the handler yielded."""
    errors = _Errors()
    loggers = {name: logging.getLogger(name) for name in ("tensorflow", "tf2onnx")}
    saved = {name: (logger.level, logger.propagate) for name, logger in loggers.items()}
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
        logger.propagate = False
    loggers["tf2onnx"].addHandler(errors)
    try:
        yield errors
    finally:
        loggers["tf2onnx"].removeHandler(errors)
        for name, (level, propagate) in saved.items():
            loggers[name].setLevel(level)
            loggers[name].propagate = propagate


def _convert(format: str, saved_model: str) -> bytes:
    """The serialised model; `ExportError` naming the format for a converter failure (an
    exception, or an error the converter logged)."""
    try:
        with _quiet_converters() as errors:
            converted = _to_tflite(saved_model) if format == "tflite" else _to_onnx(saved_model)
    except ImportError as error:
        raise ExportError(
            f"--format={format} needs the `export` extra ({_EXTRA}): {error}"
        ) from None
    except Exception as error:  # converters raise many types (ConverterError, ValueError, ...)
        raise ExportError(f"{format} conversion failed: {one_line(error)}") from None
    if errors.messages:  # e.g. tf2onnx: "Unsupported ops: Counter({'PartitionedCall': 1})"
        raise ExportError(f"{format} conversion failed: {errors.messages[-1]}")
    return converted


def _to_tflite(saved_model: str) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _to_onnx(saved_model: str) -> bytes:
    import tf2onnx
    from tf2onnx import tf_loader

    # As `python -m tf2onnx.convert --saved-model` does: the frozen signature, its captured
    # constants not taken for inputs, the inputs and outputs renamed to the signature's names.
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        saved_model,
        None,
        None,
        tag=["serve"],
        signatures=[SIGNATURE],
        return_tensors_to_rename=True,
    )
    proto, _ = tf2onnx.convert.from_graph_def(
        graph_def,
        name="repflow",
        input_names=inputs,
        output_names=outputs,
        opset=ONNX_OPSET,
        tensors_to_rename=renames,
    )
    return proto.SerializeToString()


# === Running and checking a converted model ===


class TFLiteRunner:
    """A `model.tflite` export run by LiteRT: `runner({"frames": clips})` -> NumPy outputs.

    Attributes: `input_names`, `input_shapes` (-1 for a dynamic axis), `num_classes`.
    """

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self._runner = Interpreter(model_path=path).get_signature_runner(SIGNATURE)
        self.input_names = tuple(sorted(self._runner.get_input_details()))
        self.input_shapes = {
            name: tuple(int(n) for n in details["shape_signature"])  # -1: any size
            for name, details in self._runner.get_input_details().items()
        }
        self.num_classes = int(self._runner.get_output_details()["logits"]["shape"][-1])

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # LiteRT announces its XNNPACK delegate on stderr at the first call ("INFO: Created
        # TensorFlow Lite XNNPACK delegate for CPU.").
        with native_stderr_silenced(not is_verbose()):
            outputs = self._runner(**inputs)
        return {name: np.asarray(value) for name, value in outputs.items()}


class ONNXRunner:
    """A `model.onnx` export run by onnxruntime: `runner({"frames": clips})` -> NumPy outputs.

    Attributes: `input_names`, `input_shapes` (-1 for a dynamic axis), `num_classes`.
    """

    def __init__(self, path: str):
        import onnxruntime

        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_names = tuple(sorted(item.name for item in self._session.get_inputs()))
        self.input_shapes = {  # -1: any size (a symbolic dimension)
            item.name: tuple(n if isinstance(n, int) else -1 for n in item.shape)
            for item in self._session.get_inputs()
        }
        self._outputs = [item.name for item in self._session.get_outputs()]
        self.num_classes = self._session.get_outputs()[self._outputs.index("logits")].shape[-1]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, inputs), strict=True))


RUNNERS = {"tflite": TFLiteRunner, "onnx": ONNXRunner}


def probe_inputs(preprocessing: Preprocessing, names: Sequence[str], batch: int = 2) -> dict:
    """A deterministic probe batch: synthetic moving-object clips (uint8 `frames`) and/or
    smooth-ish random `optical_flow` within the training bound."""
    rng = np.random.default_rng(0)
    size, num_frames = preprocessing.crop_size, preprocessing.num_frames
    inputs = {}
    if INPUT_NAME in names:
        directions = ("right", "up", "left", "down")
        clips = [
            data.render_clip(rng, directions[i % 4], num_frames=num_frames, size=size)
            for i in range(batch)
        ]
        inputs[INPUT_NAME] = np.stack(clips)
    if FLOW_INPUT_NAME in names:
        bound = preprocessing.flow_bound or 1.0
        shape = (batch, num_frames - 1, size, size, 2)
        inputs[FLOW_INPUT_NAME] = (rng.uniform(-0.6, 0.6, shape) * bound).astype(np.float32)
    return inputs


def keras_outputs(model, preprocessing: Preprocessing, inputs: dict) -> dict[str, np.ndarray]:
    """The serving function's outputs computed by the Keras model itself (eagerly)."""
    serve = _serving_function(
        model, preprocessing, [n for n in (INPUT_NAME, FLOW_INPUT_NAME) if n in inputs]
    )
    return {name: value.numpy() for name, value in serve(**inputs).items()}


def _check_converted(format, path, model, preprocessing, specs) -> float:
    """Runs the converted model on the probe; `ExportError` if its logits are off."""
    inputs = probe_inputs(preprocessing, [spec.name for spec in specs])
    try:
        converted = RUNNERS[format](path)(inputs)["logits"]
    except ImportError as error:
        raise ExportError(
            f"checking the {format} export needs the `export` extra ({_EXTRA}): {error}"
        ) from None
    except Exception as error:  # runtimes raise their own types
        raise ExportError(
            f"{format}: the converted model does not run ({one_line(error)})"
        ) from None
    expected = keras_outputs(model, preprocessing, inputs)["logits"]
    difference = float(np.max(np.abs(converted - expected)))
    if not difference <= TOLERANCE:  # also catches NaN
        raise ExportError(
            f"{format}: the converted model's logits differ from Keras by {difference:.3g} "
            f"(more than {TOLERANCE:g}) on a probe clip"
        )
    return difference


# === Loading an export back ===


def converted_format(path: str) -> str | None:
    """ "tflite" or "onnx" when the folder `path` holds that model file, else None."""
    return next((f for f, name in MODEL_FILES.items() if os.path.isfile(f"{path}/{name}")), None)


def load_converted(path: str) -> ExportedModel:
    """The TFLite / ONNX export folder `path` as an `ExportedModel` (called like a loaded
    SavedModel); `ExportError` naming `path` if it cannot be run."""
    format = converted_format(path)
    class_names, preprocessing = read_assets(path, f"{path}: not a repflow-export {format} export")
    try:
        runner = RUNNERS[format](os.path.join(path, MODEL_FILES[format]))
    except ImportError as error:
        raise ExportError(f"{path}: running a {format} export needs {_EXTRA} ({error})") from None
    except Exception as error:  # runtimes raise their own types for a broken file
        raise ExportError(
            f"{path}: cannot load {MODEL_FILES[format]} ({one_line(error)})"
        ) from None
    expected = {FLOW_INPUT_NAME} if preprocessing.optical_flow else {INPUT_NAME}
    if not expected <= set(runner.input_names) <= {INPUT_NAME, FLOW_INPUT_NAME}:
        raise ExportError(f"{path}: {MODEL_FILES[format]} takes {list(runner.input_names)}")
    if runner.num_classes != len(class_names):
        raise ExportError(
            f"{path}/{CLASS_NAMES_ASSET} lists {len(class_names)} classes but the model "
            f"predicts {runner.num_classes}"
        )
    return ExportedModel(path, class_names, preprocessing, runner, format)
