"""The training workdir: file names, and loading the trained model with its config and classes.

This module owns every name in a workdir. Training writes `config.toml` (the resolved
`ExperimentConfig`), `class_names.json` (a JSON list), `model.keras` (the trained Keras model),
`checkpoints/` (resumable state), `summary.json` (final metrics) and `logs/` (TensorBoard);
evaluation writes `eval_<split>/` (reports) and `logs/eval_<split>/`.
Evaluation and export read it with `read_workdir` (config and class names, checked against each
other without loading the model, which is slow) and `Workdir.load` (the model, checked against the
config), or both at once with `load_trained`. A checkpoint of another architecture than the config
describes, or a class list of another length, is refused with a `WorkdirError` whose one-line
message names the files.

>>> import tempfile
>>> try:
...     load_trained(os.path.join(tempfile.mkdtemp(), "missing"))
... except WorkdirError as error:
...     print(str(error).endswith("no such directory (--workdir)"))
True
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from repflow_tf.config import ExperimentConfig, ModelConfig, load_config
from repflow_tf.fileio import write_json_atomic

# Keras and the models load on first use: a command reads and checks a workdir's config and class
# names (`read_workdir`) before TensorFlow starts.
if TYPE_CHECKING:
    import keras

    from repflow_tf.data import Manifest

CONFIG_FILE = "config.toml"
CLASS_NAMES_FILE = "class_names.json"
MODEL_FILE = "model.keras"
LOGS_DIR = "logs"
CHECKPOINT_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"


def eval_dir_name(split: str) -> str:
    """The workdir's folder (and TensorBoard run under `logs/`) of an evaluation of `split`.

    >>> eval_dir_name("val")
    'eval_val'
    """
    return f"eval_{split}"


class WorkdirError(ValueError):
    """A workdir, model, config or class list that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Workdir:
    """A trained model's config, class names and file paths (the model itself not loaded yet).

    Attributes:
        config: the experiment config (with any overrides applied).
        class_names: one name per model output, in output order.
        model_path, config_path, class_names_path: where they are (for loading and messages).
    """

    config: ExperimentConfig
    class_names: tuple[str, ...]
    model_path: str = MODEL_FILE
    config_path: str = CONFIG_FILE
    class_names_path: str = CLASS_NAMES_FILE

    def load(self) -> TrainedModel:
        """Loads the model and checks it against the config and class names (`check_model`)."""
        model = load_keras_model(self.model_path)
        check_model(
            model,
            self.config.model,
            self.class_names,
            model_path=self.model_path,
            config_path=self.config_path,
            class_names_path=self.class_names_path,
        )
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(Workdir)}
        return TrainedModel(**values, model=model)


@dataclasses.dataclass(frozen=True)
class TrainedModel(Workdir):
    """A `Workdir` with its Keras model loaded and checked.

    Attributes:
        model: the Keras model, raw frames `(batch, time, H, W, 3)` in [0, 255] -> logits.
    """

    model: keras.Model = dataclasses.field(kw_only=True)


def read_class_names(path: str) -> tuple[str, ...]:
    """Class names from a JSON list (`.json`) or a text file with one name per line.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "classes.json")
    >>> write_class_names(path, ["left", "right"])
    >>> read_class_names(path)
    ('left', 'right')
    """
    if not os.path.isfile(path):
        raise WorkdirError(f"{path}: class list not found")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise WorkdirError(f"{path}: cannot read the class list ({error})") from None
    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as error:
            raise WorkdirError(f"{path}: not valid JSON ({error})") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(name, str) and name for name in names)
    ):
        raise WorkdirError(f"{path}: expected a non-empty list of class names")
    return tuple(names)


def write_class_names(path: str, class_names: Sequence[str]) -> None:
    """Writes the class names as a JSON list, atomically and durably (`repflow_tf.fileio`)."""
    write_json_atomic(path, list(class_names))


def one_line(error: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, cut to `limit` characters, for one-line CLI errors.

    >>> one_line(ValueError("bad shape" + chr(10) + "long details"))
    'ValueError: bad shape'
    """
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:limit]


def load_keras_model(path: str) -> keras.Model:
    """Loads a `.keras` model with the repflow_tf layers registered; `WorkdirError` if it fails."""
    if not os.path.isfile(path):
        raise WorkdirError(f"{path}: model file not found")
    import keras

    from repflow_tf import models  # noqa: F401  (registers our layers for deserialisation)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for unreadable or foreign files.
        raise WorkdirError(f"{path}: cannot load the Keras model ({one_line(error)})") from None


def _describe(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def check_model(
    model: keras.Model,
    config: ModelConfig,
    class_names: Sequence[str],
    *,
    model_path: str = MODEL_FILE,
    config_path: str = CONFIG_FILE,
    class_names_path: str = CLASS_NAMES_FILE,
) -> None:
    """Raises `WorkdirError` unless `model` is the architecture `config` describes.

    Compares the number of classes (model output, `config.num_classes`, `class_names`), the
    input names and shapes, the model name and the shapes of all weights with a model freshly
    built from `config` (so another depth, width or flow placement is caught even when the
    class count agrees).

    >>> from repflow_tf import models
    >>> config = ModelConfig(depth=18, base_width=4, num_classes=3, flow_position="none")
    >>> check_model(models.build(config), config, ["a", "b", "c"])
    >>> try:
    ...     check_model(models.build(config), config, ["a", "b"])
    ... except WorkdirError as error:
    ...     print(error)
    model.keras predicts 3 classes but class_names.json lists 2
    """
    outputs = model.outputs
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = ", ".join(_describe(output.shape) for output in outputs)
        raise WorkdirError(
            f"{model_path}: expected one logits output (batch, classes), the model has {shapes}"
        )
    num_outputs = outputs[0].shape[-1]
    if num_outputs != len(class_names):
        raise WorkdirError(
            f"{model_path} predicts {num_outputs} classes but {class_names_path} lists "
            f"{len(class_names)}"
        )
    if num_outputs != config.num_classes:
        raise WorkdirError(
            f"{model_path} predicts {num_outputs} classes but {config_path} says "
            f"model.num_classes={config.num_classes}; was it trained with another config?"
        )
    from repflow_tf import models

    reference = models.build(config)
    mismatch = _first_difference(model, reference)
    if mismatch:
        raise WorkdirError(
            f"{model_path} is not the architecture [model] in {config_path} describes "
            f"({mismatch}); was it trained with another config?"
        )


def _first_difference(model: keras.Model, reference: keras.Model) -> str | None:
    inputs = [(t.name, _describe(t.shape[1:])) for t in model.inputs]
    expected = [(t.name, _describe(t.shape[1:])) for t in reference.inputs]
    if inputs != expected:
        return f"inputs {inputs}, config gives {expected}"
    if model.name != reference.name:
        return f"model name {model.name!r}, config gives {reference.name!r}"
    weights, expected_weights = model.weights, reference.weights
    for weight, other in zip(weights, expected_weights, strict=False):
        if tuple(weight.shape) != tuple(other.shape):
            return (
                f"weight {weight.path} has shape {tuple(weight.shape)}, config gives "
                f"{tuple(other.shape)}"
            )
    if len(weights) != len(expected_weights):
        return f"{len(weights)} weights, config gives {len(expected_weights)}"
    return None


def read_workdir(
    workdir: str | None = None,
    *,
    model_path: str | None = None,
    config_path: str | None = None,
    class_names_path: str | None = None,
    overrides: Sequence[str] = (),
) -> Workdir:
    """Reads a trained model's config and class names and checks them against each other.

    Files come from `workdir` (`model.keras`, `config.toml`, `class_names.json`) unless given
    explicitly; without a workdir, `model_path` and `config_path` are required and the class
    names default to `class_names.json` next to the model. `overrides` are `section.key=value`
    strings applied to the config (`--set`). The model is not loaded (see `Workdir.load`).

    Raises `WorkdirError` (missing or unreadable file, config and classes disagree) or
    `ConfigError` (bad config file or override), each with a one-line message naming the file.
    """
    if workdir is not None:
        if not os.path.isdir(workdir):
            raise WorkdirError(f"{workdir}: no such directory (--workdir)")
        model_path = model_path or os.path.join(workdir, MODEL_FILE)
        config_path = config_path or os.path.join(workdir, CONFIG_FILE)
    if model_path is None or config_path is None:
        raise WorkdirError("give a workdir (--workdir), or both a model (--model) and --config")
    if class_names_path is None:
        class_names_path = os.path.join(
            workdir if workdir is not None else os.path.dirname(os.path.abspath(model_path)),
            CLASS_NAMES_FILE,
        )
    for path, what in ((model_path, "model"), (config_path, "config")):
        if not os.path.isfile(path):
            raise WorkdirError(f"{path}: {what} file not found")
    config = load_config(config_path, overrides)
    class_names = read_class_names(class_names_path)
    if len(class_names) != config.model.num_classes:
        raise WorkdirError(
            f"{class_names_path} lists {len(class_names)} classes but {config_path} says "
            f"model.num_classes={config.model.num_classes}"
        )
    return Workdir(config, class_names, model_path, config_path, class_names_path)


def load_trained(
    workdir: str | None = None,
    *,
    model_path: str | None = None,
    config_path: str | None = None,
    class_names_path: str | None = None,
    overrides: Sequence[str] = (),
) -> TrainedModel:
    """`read_workdir(...).load()`: the model, its config and class names, checked to agree.

    Example (a workdir written by training):

        trained = load_trained("runs/demo")
        trained.model, trained.class_names, trained.config.data.crop_size
    """
    return read_workdir(
        workdir,
        model_path=model_path,
        config_path=config_path,
        class_names_path=class_names_path,
        overrides=overrides,
    ).load()


def check_data_classes(manifest: Manifest, split_dir: str, trained: Workdir) -> None:
    """Raises `WorkdirError` unless the split's classes are the model's, in the same order.

    >>> from repflow_tf.data import Manifest
    >>> manifest = Manifest("val", ("a", "b", "c"), (), {}, (), 0)
    >>> trained = Workdir(ExperimentConfig(), ("a", "b"), "m.keras", "c.toml")
    >>> try:
    ...     check_data_classes(manifest, "data/val", trained)
    ... except WorkdirError as error:
    ...     print(error)
    data/val has 3 classes (its manifest.json) but m.keras predicts 2 (model.num_classes in c.toml)
    """
    if manifest.num_classes != len(trained.class_names):
        raise WorkdirError(
            f"{split_dir} has {manifest.num_classes} classes (its manifest.json) but "
            f"{trained.model_path} predicts {len(trained.class_names)} (model.num_classes in "
            f"{trained.config_path})"
        )
    for index, (name, expected) in enumerate(
        zip(manifest.class_names, trained.class_names, strict=True)
    ):
        if name != expected:
            raise WorkdirError(
                f"{split_dir}: class {index} is {name!r} in its manifest.json but {expected!r} "
                f"in {trained.class_names_path}; the labels would be misread"
            )
