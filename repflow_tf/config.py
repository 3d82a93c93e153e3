"""Frozen dataclass configs; every field is validated on construction.

>>> config = model_config_from_dict({"depth": 18, "flow_position": "block1"})
>>> config.depth, config.flow_position, config.flow_learn
(18, 'block1', ('divergence', 'hyper'))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from repflow_tf import options
from repflow_tf.fileio import write_atomic

INPUTS = options.INPUTS
KINDS = ("2d", "2plus1d", "3d")
DEPTHS = (18, 34, 50)
FLOW_POSITIONS = ("none", "input", "stem", "block1", "block2", "block3", "block4")
# The flow layers' own options are defined once, in options.
FLOW_STACKS = options.FLOW_STACKS
FLOW_LEARN_GROUPS = options.LEARNABLE_GROUPS
FLOW_GRADIENTS = options.GRADIENTS
FUSIONS = ("none", "late", "add", "multiply", "layer_multiply", "concat")
INPUT_NORMALIZATIONS = ("imagenet", "symmetric", "caffe")
RESNET_VARIANTS = ("v1.5", "v1")
INFLATIONS = ("mean", "center")

_Config = TypeVar("_Config")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer >= {minimum}{' or None' if allow_none else ''}. "
            f"Received: {name}={value!r}"
        )


def _check_float(
    name: str, value: Any, minimum: float, maximum: float | None = None, strict: bool = False
) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value > minimum if strict else value >= minimum)
        or (maximum is not None and value > maximum)
    ):
        bound = f"{'>' if strict else '>='} {minimum}" + (
            f" and <= {maximum}" if maximum is not None else ""
        )
        raise ValueError(f"`{name}` must be a number {bound}. Received: {name}={value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false. Received: {name}={value!r}")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"`{name}` must be a non-empty string. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which video model to build (`repflow_tf.models.build`); the defaults are the paper's.

    Attributes:
        kind: backbone kind, `"2d"` (per-frame ResNet), `"2plus1d"` (Tran et al. 2018) or `"3d"`
            (inflated, I3D style).
        depth: ResNet depth, 18, 34 or 50.
        num_classes: number of classes of the classifier.
        base_width: channels of the stem and the first residual group (64 in the paper; small
            values make cheap test models).
        flow_position: where the representation flow goes (Table 1): `"none"`, `"input"` (on the
            raw RGB frames), `"stem"` (after conv1 + max pool), `"block1"` ... `"block4"` (after
            residual group k; `"block3"` is the paper's default).
        flow_stack: `"single"`, flow-of-flow `"fof"` or flow-conv-flow `"fcf"` (Table 5).
        flow_iterations: TV-L1 iterations (Table 3).
        flow_learn: learnable groups, a subset of `("sobel", "divergence", "hyper")` (Table 2).
        flow_channels: channels the flow is computed on inside the network (C' = 32).
        flow_gradient: image gradient kernel, `"sobel"` or `"central"`.
        fusion: fusion of RGB and flow features (Table 4, Fig. 2): `"none"`, `"late"` (a second,
            flow-free RGB stream; predictions averaged), `"add"`, `"multiply"`,
            `"layer_multiply"` (1x1 conv on the RGB features, then multiply) or `"concat"`.
        inputs: `"rgb"`; the baselines `"optical_flow"` (a CNN on precomputed optical flow) and
            `"rgb+optical_flow"` (two-stream: RGB and optical flow CNNs, predictions averaged).
        dropout: dropout rate before the classifier (0.5 for Kinetics, 0.8 for HMDB).
        synchronized_bn: `BatchNormalization(synchronized=True)` everywhere (distributed training).
        input_normalization: how the model maps raw [0, 255] frames: `"imagenet"` (mean/std),
            `"symmetric"` ([-1, 1]) or `"caffe"` (minus the ImageNet mean, unscaled: the inputs
            of `keras.applications.ResNet50`, whose BGR order `pretrained` absorbs into conv1).
        resnet_variant: `"v1.5"` (the stride of a bottleneck in its 3x3 conv, as torchvision;
            "same" padding everywhere) or `"v1"` (the stride in the bottleneck's first 1x1 conv,
            the stem conv and max pool zero-padded by 3 and 1 pixels then unpadded: exactly
            `keras.applications.ResNet50`). The basic blocks of depths 18 and 34 have no 1x1
            conv: there only the stem differs.
        pretrained: start the RGB backbone(s) of a fresh training run from
            `keras.applications.ResNet50` weights: `""` (none), `"imagenet"` (Keras downloads
            them) or the path of a weights file (`.weights.h5` or `.h5`, with or without the
            top). Needs depth 50, base width 64, `resnet_variant="v1"` and
            `input_normalization="caffe"` (the layout and inputs the weights were trained with);
            the flow layers, the classifier and optical flow backbones keep their initialisation.
            A resumed run restores its checkpoint instead; building a model never loads them.
        pretrained_inflation: how `pretrained` fills the 3D and (2+1)D kernels from the 2D ones:
            `"mean"` (I3D: repeated over time and divided by the temporal size, so a clip of one
            repeated frame gives the 2D features away from the clip ends) or `"center"` (the 2D
            kernel on the middle time step, zeros elsewhere: every frame gives its 2D features).
        num_frames: static number of input frames, or None (any); the optical flow input then
            has `num_frames - 1` fields.
        image_size: static input height = width, or None (any).
        name: model name; derived from the options when None.
    """

    kind: str = "2d"
    depth: int = 34
    num_classes: int = 400
    base_width: int = 64
    flow_position: str = "block3"
    flow_stack: str = "single"
    flow_iterations: int = 20
    flow_learn: tuple[str, ...] = ("divergence", "hyper")
    flow_channels: int = 32
    flow_gradient: str = "sobel"
    fusion: str = "none"
    inputs: str = "rgb"
    dropout: float = 0.5
    synchronized_bn: bool = False
    input_normalization: str = "imagenet"
    resnet_variant: str = "v1.5"
    pretrained: str = ""
    pretrained_inflation: str = "mean"
    num_frames: int | None = None
    image_size: int | None = None
    name: str | None = None

    def __post_init__(self):
        _check_choice("kind", self.kind, KINDS)
        _check_choice("depth", self.depth, DEPTHS)
        _check_int("num_classes", self.num_classes, 1)
        _check_int("base_width", self.base_width, 1)
        _check_choice("flow_position", self.flow_position, FLOW_POSITIONS)
        _check_choice("flow_stack", self.flow_stack, FLOW_STACKS)
        _check_int("flow_iterations", self.flow_iterations, 1)
        learn = (self.flow_learn,) if isinstance(self.flow_learn, str) else self.flow_learn
        if not isinstance(learn, (list, tuple)) or any(g not in FLOW_LEARN_GROUPS for g in learn):
            raise ValueError(
                f"`flow_learn` must be a subset of {FLOW_LEARN_GROUPS}. "
                f"Received: flow_learn={self.flow_learn!r}"
            )
        # Canonical order, so equal configs compare equal (TOML gives lists).
        object.__setattr__(self, "flow_learn", tuple(g for g in FLOW_LEARN_GROUPS if g in learn))
        _check_int("flow_channels", self.flow_channels, 1)
        options.validate_gradient(self.flow_gradient, "flow_gradient")
        _check_choice("fusion", self.fusion, FUSIONS)
        _check_choice("inputs", self.inputs, INPUTS)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0 <= self.dropout < 1
        ):
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={self.dropout!r}")
        if not isinstance(self.synchronized_bn, bool):
            raise ValueError(
                "`synchronized_bn` must be a bool. "
                f"Received: synchronized_bn={self.synchronized_bn!r}"
            )
        _check_choice("input_normalization", self.input_normalization, INPUT_NORMALIZATIONS)
        _check_choice("resnet_variant", self.resnet_variant, RESNET_VARIANTS)
        if not isinstance(self.pretrained, str):
            raise ValueError(
                "`pretrained` must be a string: '' (none), 'imagenet' or a weights file path. "
                f"Received: pretrained={self.pretrained!r}"
            )
        _check_choice("pretrained_inflation", self.pretrained_inflation, INFLATIONS)
        # Each flow layer drops a frame; precomputed optical flow has num_frames - 1 fields.
        min_frames = 2 if self.inputs != "rgb" else 1 + self.flow_layers
        _check_int("num_frames", self.num_frames, min_frames, allow_none=True)
        _check_int("image_size", self.image_size, 32, allow_none=True)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"`name` must be a non-empty string. Received: name={self.name!r}")
        # Cross-field rules.
        if self.fusion != "none" and self.flow_position == "none":
            raise ValueError(
                "`fusion` needs a flow layer; set `flow_position`. "
                f"Received: fusion={self.fusion!r} with flow_position='none'"
            )
        if self.inputs != "rgb" and self.flow_position != "none":
            raise ValueError(
                "The optical flow baselines have no representation flow layer. Received: "
                f"inputs={self.inputs!r} with flow_position={self.flow_position!r}"
            )

        if self.pretrained:
            self._check_pretrained()

    def _check_pretrained(self) -> None:
        needed = {
            "depth": 50,
            "base_width": 64,
            "resnet_variant": "v1",
            "input_normalization": "caffe",
        }
        wrong = [
            f"{key}={getattr(self, key)!r}"
            for key, value in needed.items()
            if getattr(self, key) != value
        ]
        if wrong:
            raise ValueError(
                "`pretrained` loads keras.applications.ResNet50 weights: it needs depth=50, "
                "base_width=64, resnet_variant='v1' and input_normalization='caffe' (the layout "
                f"and inputs they were trained with). Received: pretrained={self.pretrained!r} "
                f"with {', '.join(wrong)}"
            )
        if self.inputs == "optical_flow":
            raise ValueError(
                "`pretrained` initialises RGB backbones; the optical flow baseline has none. "
                f"Received: pretrained={self.pretrained!r} with inputs='optical_flow'"
            )

    @property
    def flow_layers(self) -> int:
        """Number of stacked flow layers (0, 1 or 2); each shortens time by one frame."""
        if self.flow_position == "none":
            return 0
        return 1 if self.flow_stack == "single" else 2


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are sampled (`repflow_tf.data.video_dataset`).

    Attributes:
        root: directory holding one converted split directory per split (`<root>/<split>/`
            with shards and `manifest.json`), as written by `repflow-convert`.
        synthetic: generate the embedded synthetic motion dataset into `root` when it is missing.
        synthetic_train, synthetic_val: videos per split of the synthetic dataset.
        synthetic_size: frame size of the synthetic videos.
        synthetic_variant: `"easy"` (8 directions at 2-3 px per frame) or `"hard"` (faster
            motion, flicker and noise: see `repflow_tf.data.synthetic`).
        train_split, val_split: split names under `root`.
        num_frames, stride: frames per clip and the temporal stride between them.
        crop_size: clip height and width.
        batch_size: global batch size (split over the replicas of a strategy).
        eval_clips: evenly spaced clips per video at evaluation (video-level accuracy).
        shuffle_buffer: clips in the training shuffle buffer.
        flip: random horizontal flips in training (turn off where left and right are the
            classes, as in the synthetic motion dataset).
        crop_area: training crops cover a random fraction in [low, high] of the short side's
            square ([1.0, 1.0] with crop_aspect_ratio [1.0, 1.0]: the centre square, no jitter).
        crop_aspect_ratio: the [low, high] range of the training crops' width / height.
    """

    root: str = "data/synthetic"
    synthetic: bool = False
    synthetic_train: int = 512
    synthetic_val: int = 128
    synthetic_size: int = 64
    synthetic_variant: str = "easy"
    train_split: str = "train"
    val_split: str = "val"
    num_frames: int = 16
    stride: int = 1
    crop_size: int = 112
    batch_size: int = 8
    eval_clips: int = 1
    shuffle_buffer: int = 256
    flip: bool = True
    crop_area: tuple[float, float] = (0.4, 1.0)
    crop_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self):
        for name in ("synthetic_train", "synthetic_val", "stride", "batch_size", "eval_clips"):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_frames", self.num_frames, 2)
        _check_int("crop_size", self.crop_size, 16)
        _check_int("synthetic_size", self.synthetic_size, 16)
        _check_int("shuffle_buffer", self.shuffle_buffer, 0)
        for name in ("root", "train_split", "val_split"):
            _check_str(name, getattr(self, name))
        _check_bool("synthetic", self.synthetic)
        _check_choice("synthetic_variant", self.synthetic_variant, options.SYNTHETIC_VARIANTS)
        _check_bool("flip", self.flip)
        _set_range(self, "crop_area", upper=1.0)
        _set_range(self, "crop_aspect_ratio")

    def split_dir(self, split: str) -> str:
        """The converted split directory: `<root>/<split>`, or for the synthetic dataset
        (`make_synthetic_dataset(root)`) `<root>/tfrecords/<split>`.

        >>> DataConfig(root="data/motion", synthetic=True).split_dir("val")
        'data/motion/tfrecords/val'
        """
        if self.synthetic:
            return os.path.join(self.root, "tfrecords", split)
        return os.path.join(self.root, split)


def _set_range(config: Any, name: str, upper: float = math.inf) -> None:
    """Checks that `config.<name>` is `[low, high]`, 0 < low <= high <= upper; stores a tuple."""
    value = getattr(config, name)
    numbers = isinstance(value, list | tuple) and len(value) == 2
    numbers = numbers and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not numbers or not 0 < value[0] <= value[1] <= upper:
        bound = "" if upper == math.inf else f" <= {upper:g}"
        raise ValueError(
            f"`{name}` must be [low, high] with 0 < low <= high{bound}. Received: {name}={value!r}"
        )
    object.__setattr__(config, name, (float(value[0]), float(value[1])))


OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer (paper, Appendix A: SGD with momentum 0.9).

    Attributes:
        name: `"sgd"`, `"adam"` or `"adamw"`.
        learning_rate: base learning rate (the schedule scales it).
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: decoupled weight decay of the non-flow parameters (0: none).
        flow_lr_multiplier: learning-rate factor of the representation flow parameters
            (θ, λ, τ, divergence and gradient kernels); the paper uses 0.01.
        label_smoothing: label smoothing of the cross-entropy.
        clipnorm: clip each gradient to this norm (0: no clipping).
    """

    name: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    flow_lr_multiplier: float = 0.01
    label_smoothing: float = 0.0
    clipnorm: float = 0.0

    def __post_init__(self):
        _check_choice("name", self.name, OPTIMIZERS)
        _check_float("learning_rate", self.learning_rate, 0.0, strict=True)
        _check_float("momentum", self.momentum, 0.0, maximum=1.0)
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_float("flow_lr_multiplier", self.flow_lr_multiplier, 0.0)
        _check_float("label_smoothing", self.label_smoothing, 0.0, maximum=1.0)
        _check_float("clipnorm", self.clipnorm, 0.0)


SCHEDULES = ("step", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule, in epochs (paper: step decay by 10x).

    Attributes:
        kind: `"step"` (multiply by `decay_factor` at each of `decay_epochs`), `"cosine"`
            (to 0 at the last epoch) or `"constant"`.
        decay_epochs: epochs at which the step schedule decays.
        decay_factor: the step schedule's factor.
        warmup_epochs: linear warm-up from 0 over this many epochs (may be fractional).
    """

    kind: str = "step"
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    warmup_epochs: float = 0.0

    def __post_init__(self):
        _check_choice("kind", self.kind, SCHEDULES)
        epochs = self.decay_epochs
        if not isinstance(epochs, (list, tuple)) or any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs
        ):
            raise ValueError(
                "`decay_epochs` must be a list of positive integers. "
                f"Received: decay_epochs={epochs!r}"
            )
        object.__setattr__(self, "decay_epochs", tuple(sorted(epochs)))
        _check_float("decay_factor", self.decay_factor, 0.0, strict=True)
        _check_float("warmup_epochs", self.warmup_epochs, 0.0)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """The training loop.

    Attributes:
        epochs: number of epochs.
        steps_per_epoch: training steps per epoch (0: one pass over the training split).
        validation_steps: validation batches per epoch (0: the whole validation split).
        checkpoint_every_steps: also checkpoint every this many steps (0: only every epoch).
        flow_images_every_epochs: write colour-coded learned flow images every this many
            epochs (0: never).
        histograms_every_epochs: write weight histograms every this many epochs (0: never).
        log_every_steps: print a progress line every this many steps.
        init_from: a training workdir whose model (its `model.keras`, the latest completed
            epoch) starts a fresh run: every layer whose name and weight shapes match is loaded,
            the others (the classifier when the class count differs) keep their initialisation;
            `""`: none. Its `model.resnet_variant` and `model.input_normalization` must be this
            config's. A resumed run restores its own checkpoint and ignores this.
    """

    epochs: int = 10
    steps_per_epoch: int = 0
    validation_steps: int = 0
    checkpoint_every_steps: int = 0
    flow_images_every_epochs: int = 1
    histograms_every_epochs: int = 1
    log_every_steps: int = 10
    init_from: str = ""

    def __post_init__(self):
        _check_int("epochs", self.epochs, 1)
        for name in (
            "steps_per_epoch",
            "validation_steps",
            "checkpoint_every_steps",
            "flow_images_every_epochs",
            "histograms_every_epochs",
        ):
            _check_int(name, getattr(self, name), 0)
        _check_int("log_every_steps", self.log_every_steps, 1)
        if not isinstance(self.init_from, str):
            raise ValueError(
                "`init_from` must be a string: a workdir path, or '' (none). "
                f"Received: init_from={self.init_from!r}"
            )


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How training runs.

    Attributes:
        strategy: `"auto"` (mirrored over all GPUs when there are several, else one device),
            `"one_device"`, `"mirrored"` or `"multi_worker"` (a custom loop on
            MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG).
        precision: `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.
        jit_compile: compile the train step with XLA.
        seed: seed of the weights and of the input pipeline.
    """

    strategy: str = "auto"
    precision: str = "float32"
    jit_compile: bool = False
    seed: int = 0

    def __post_init__(self):
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_bool("jit_compile", self.jit_compile)
        _check_int("seed", self.seed, 0)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: one TOML file with a table per section.

    >>> config = ExperimentConfig()
    >>> config.model.flow_position, config.optimizer.flow_lr_multiplier
    ('block3', 0.01)
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    trainer: TrainerConfig = TrainerConfig()
    runtime: RuntimeConfig = RuntimeConfig()


def from_dict(cls: type[_Config], values: Mapping[str, Any]) -> _Config:
    """Builds the dataclass `cls` from `values`, rejecting keys that are not fields of `cls`.

    >>> from_dict(ModelConfig, {"dept": 18})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Unknown key 'dept' for ModelConfig. Valid keys: kind, depth, ...
    """
    fields = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in fields:
            raise ValueError(
                f"Unknown key {key!r} for {cls.__name__}. Valid keys: {', '.join(fields)}"
            )
    return cls(**values)


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """`ModelConfig` from a dict (e.g. a TOML table); unknown keys raise a ValueError."""
    return from_dict(ModelConfig, values)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names file and key."""


_SECTIONS = {field.name: type(field.default) for field in dataclasses.fields(ExperimentConfig)}


def _section_class(name: str) -> type:
    return _SECTIONS[name]


def _parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ConfigError(
            f"--set expects key.path=value (e.g. optimizer.learning_rate=0.01). "
            f"Received: {override!r}"
        )
    key, raw = override.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"--set key must be section.key (e.g. trainer.epochs). Received: {key!r}")
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string without quotes
    return path, value


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Reads an experiment TOML file (None: all defaults) and applies `section.key=value` overrides.

    Unknown sections or keys and values of the wrong type raise `ConfigError` naming the file
    and the key.

    >>> load_config(None, ["trainer.epochs=3", "model.depth=18"]).trainer.epochs
    3
    """
    tables: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                tables = tomllib.load(file)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    file_sections = _build_sections(tables, path or "<defaults>")
    if not overrides:
        return ExperimentConfig(**file_sections)
    for override in overrides:
        (section, key), value = _parse_override(override)
        tables.setdefault(section, {})[key] = value
    # Validated twice so that an error names its origin: the file, or the --set overrides.
    sections = _build_sections(tables, "--set " + " ".join(overrides))
    return ExperimentConfig(**sections)


def _build_sections(tables: dict[str, Any], origin: str) -> dict[str, Any]:
    sections = {}
    for section, values in tables.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section [{section}]. Valid sections: {', '.join(_SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: `{section}` must be a table [{section}]")
        try:
            sections[section] = from_dict(_section_class(section), values)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{origin}: [{section}] {error}") from None
    return sections


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def config_to_toml(config: ExperimentConfig) -> str:
    """The config as TOML text that `load_config` reads back to an equal config (None omitted)."""
    lines = []
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def save_config(config: ExperimentConfig, path: str) -> None:
    """Writes the resolved config atomically and durably (`repflow_tf.fileio`)."""
    write_atomic(path, config_to_toml(config))
