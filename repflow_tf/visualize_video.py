"""A video and the learned flow of one flow layer of a trained model, side by side
(`repflow-visualize`).

The video is sampled as evaluation samples it (`export.sample_clips` with the workdir's
preprocessing: short side, frame rate, JPEG round trip, centre crop, evenly spaced clips); each
clip goes through the model and the chosen `RepresentationFlow` layer's output is kept
(`callbacks.flow_outputs`). The MP4 shows, per flow time step, the frame it ends at, the
colour-coded flow of the first channels resized to the frame size, and the colour wheel; every
channel keeps one brightness scale over the whole video (its 99th percentile of magnitude), so
brightness can be compared across time. The PNG strip is a `visualize.flow_panel`: frames
over flow rows, at most `STRIP_STEPS` evenly spaced time steps.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import data
from repflow_tf.callbacks import flow_layers, flow_outputs
from repflow_tf.export import preprocessing_for, sample_clips
from repflow_tf.fileio import atomic_output, write_atomic
from repflow_tf.layers import RepresentationFlow
from repflow_tf.visualize import (
    aligned_frame_indices,
    color_wheel,
    flow_panel,
    flow_scales,
    side_by_side,
)
from repflow_tf.workdir import TrainedModel, Workdir

# Time steps in the PNG strip (evenly spaced over the video's clips).
STRIP_STEPS = 16


class VisualizeError(ValueError):
    """A request that cannot be visualised; the one-line message names the flag or file."""


@dataclasses.dataclass(frozen=True)
class FlowVisualization:
    """What `visualize_flow` wrote.

    Attributes:
        layer: the flow layer's name (`flow_layer_names`).
        layers: every flow layer's name in the model.
        num_clips, flow_steps: clips sampled, flow time steps per clip (video frames =
            `num_clips * flow_steps`).
        channels: flow channels shown.
        output, strip: the files written (`strip` None when not asked for).
    """

    layer: str
    layers: tuple[str, ...]
    num_clips: int
    flow_steps: int
    channels: int
    output: str
    strip: str | None

    def describe(self) -> str:
        """One line for the command line."""
        strip = f" and {self.strip}" if self.strip else ""
        return (
            f"{self.output}{strip}: flow layer {self.layer}, {self.num_clips} clips x "
            f"{self.flow_steps} flow steps, {self.channels} channels"
        )


def _check_path(path: str, suffix: str, flag: str) -> None:
    if not path.lower().endswith(suffix):
        raise VisualizeError(f"{flag}={path}: must end with {suffix}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VisualizeError(f"{flag}={path}: no such directory {directory}")


def _check_request(
    video: str,
    output: str,
    *,
    strip: str | None = None,
    num_clips: int | None = None,
    max_channels: int = 4,
    fps: int = 8,
) -> None:
    """`VisualizeError` for a missing video, an output that is no .mp4 (or strip no .png) or
    lies in a missing directory, or a count below 1."""
    _check_path(output, ".mp4", "--output")
    if strip is not None:
        _check_path(strip, ".png", "--strip")
    if max_channels < 1 or fps < 1 or (num_clips is not None and num_clips < 1):
        raise VisualizeError("--channels, --fps and --num_clips must be >= 1")
    if not os.path.isfile(video):
        raise VisualizeError(f"--video={video}: no such file")


def flow_layer_names(model: keras.Model) -> dict[str, RepresentationFlow]:
    """Every `RepresentationFlow` layer of `model` by its name path, the names of the layers
    that contain it joined by "/" (e.g. `flow_backbone/flow_stack/flow_block_1/
    representation_flow`): unlike Keras's `layer.path` it is the same in a freshly built and in
    a loaded model.

    >>> from repflow_tf.config import ModelConfig
    >>> from repflow_tf import models
    >>> list(flow_layer_names(models.build(ModelConfig(depth=18, base_width=4,
    ...     flow_position="block1", flow_iterations=2, flow_channels=4))))
    ['flow_backbone/flow_stack/flow_block_1/representation_flow']
    """
    wanted = {id(layer) for layer in flow_layers(model)}
    names: dict[str, RepresentationFlow] = {}

    def walk(layer: keras.layers.Layer, prefix: str) -> None:
        # Keras has no public walk of direct sublayers; _flatten_layers is what Keras uses.
        for child in layer._flatten_layers(include_self=False, recursive=False):
            name = f"{prefix}{child.name}"
            if id(child) in wanted:
                names.setdefault(name, child)
            walk(child, name + "/")

    walk(model, "")
    return names


def choose_flow_layer(
    trained: TrainedModel, layer: str | None = None
) -> tuple[RepresentationFlow, str, tuple[str, ...]]:
    """The flow layer named `layer` (default: the first in layer order), its name and every
    flow layer's name; `VisualizeError` for a model without a flow layer or an unknown
    `layer`."""
    names = flow_layer_names(trained.model)
    if not names:
        raise VisualizeError(
            f"{trained.model_path} has no RepresentationFlow layer "
            f"(model.flow_position={trained.config.model.flow_position!r}, "
            f"model.inputs={trained.config.model.inputs!r}): no learned flow to show"
        )
    if layer is None:
        layer = next(iter(names))
    elif layer not in names:
        raise VisualizeError(
            f"--layer={layer}: no such flow layer; the model has {', '.join(names)}"
        )
    return names[layer], layer, tuple(names)


def visualize_flow(
    workdir: Workdir,
    video: str,
    output: str,
    *,
    layer: str | None = None,
    strip: str | None = None,
    num_clips: int | None = None,
    max_channels: int = 4,
    fps: int = 8,
) -> FlowVisualization:
    """Writes `output` (MP4) of `video` with the learned flow of `layer` (a name of
    `flow_layer_names`; default: the first) side by side, and with `strip` a PNG of frames
    over flow, for the model of `workdir` (`read_workdir`; loaded after the request is checked,
    unless it is a `TrainedModel` already).

    `num_clips` defaults to the evaluation's `data.eval_clips`; `max_channels` flow channels
    are shown; the video plays at `fps`. Raises `VisualizeError` for a bad request,
    `WorkdirError` for a model that does not load, `repflow_tf.data.DataError` (naming the
    file) for an unreadable video, each with a one-line message.
    """
    _check_request(
        video, output, strip=strip, num_clips=num_clips, max_channels=max_channels, fps=fps
    )
    trained = workdir if isinstance(workdir, TrainedModel) else workdir.load()
    flow_layer, name, names = choose_flow_layer(trained, layer)
    preprocessing = preprocessing_for(trained)
    frames = data.read_video(video, short_side=preprocessing.short_side, fps=preprocessing.fps)
    clips = sample_clips(frames, preprocessing, num_clips)
    shown_frames, flows = [], []
    for clip in clips:
        flow = flow_outputs(trained.model, tf.cast(clip[None], tf.float32))[flow_layer.path][0]
        flow = np.asarray(flow, np.float32)
        shown_frames.append(clip[aligned_frame_indices(len(clip), len(flow))])
        flows.append(flow)
    flow_steps = len(flows[0])
    shown_frames, flows = np.concatenate(shown_frames), np.concatenate(flows)
    scales = flow_scales(flows, max_channels)
    video_frames = side_by_side(shown_frames, flows, scales)
    height = video_frames.shape[1]
    legend = np.zeros((len(video_frames), height, height, 3), np.uint8)
    legend[:] = color_wheel(height)
    video_frames = np.concatenate([video_frames, legend], axis=2)
    with atomic_output(output) as temporary:
        # The container follows the file name; the temporary one lacks the .mp4 suffix.
        named = temporary + ".mp4"
        try:
            data.write_video(named, video_frames, fps=fps)
            os.replace(named, temporary)
        finally:
            if os.path.exists(named):
                os.remove(named)
    if strip is not None:
        steps = np.unique(np.round(np.linspace(0, len(flows) - 1, STRIP_STEPS)).astype(int))
        panel = flow_panel(shown_frames[steps], flows[steps], scales=scales)
        write_atomic(strip, tf.io.encode_png(panel).numpy())
    return FlowVisualization(
        layer=name,
        layers=names,
        num_clips=len(clips),
        flow_steps=flow_steps,
        channels=len(scales),
        output=output,
        strip=strip,
    )
