"""Flow fields as colour images (hue is the direction, brightness the magnitude), flow panels
of a clip with its frames, and the confusion-matrix figure.

Flow is shown in image coordinates: +x is rightwards, +y downwards (the rows of the image), so
the colour wheel (`color_wheel`) reads like the picture: red moves right, yellow-green down,
cyan left, violet up. Brightness is the magnitude over a robust scale (`flow_scales`: a high
percentile, not the maximum, so one outlier does not leave the rest of the field dark).

Figures use matplotlib's `Figure` with the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# The percentile of a flow image's magnitudes that shows at full brightness.
FLOW_PERCENTILE = 99.0
# A flow panel's colour wheel is at least this many pixels wide.
MIN_LEGEND_SIZE = 64


# === Flow colours ===


def flow_to_rgb(flow_x, flow_y, max_magnitude: float | None = None) -> tf.Tensor:
    """Colour-codes a flow field as uint8 RGB (..., 3).

    Hue follows the direction (0° = +x, i.e. rightwards; 90° = +y, downwards), value is the
    magnitude divided by `max_magnitude` (default: the largest magnitude in the input) and
    clipped to 1, saturation is 1.

    >>> rgb = flow_to_rgb(tf.ones((4, 4)), tf.zeros((4, 4)))
    >>> rgb.dtype.name, rgb[0, 0].numpy().tolist()
    ('uint8', [255, 0, 0])
    """
    flow_x = tf.cast(flow_x, tf.float32)
    flow_y = tf.cast(flow_y, tf.float32)
    magnitude = tf.sqrt(flow_x * flow_x + flow_y * flow_y)
    if max_magnitude is None:
        max_magnitude = tf.reduce_max(magnitude)
    scale = tf.maximum(tf.cast(max_magnitude, tf.float32), 1e-12)
    hue = tf.math.floormod(tf.atan2(flow_y, flow_x) / (2.0 * math.pi), 1.0)
    value = tf.clip_by_value(magnitude / scale, 0.0, 1.0)
    hsv = tf.stack([hue, tf.ones_like(hue), value], axis=-1)
    return tf.cast(tf.round(tf.image.hsv_to_rgb(hsv) * 255.0), tf.uint8)


def robust_magnitude(flow_x, flow_y, percentile: float = FLOW_PERCENTILE) -> float:
    """The `percentile` of the flow's magnitudes, or their maximum where that percentile is 0
    (motion in under 1% of the pixels); 0 only for a zero field.

    >>> flow_x = np.ones((100, 100)); flow_x[0, 0] = 1000.0
    >>> robust_magnitude(flow_x, np.zeros((100, 100)))
    1.0
    """
    magnitude = np.hypot(np.asarray(flow_x, np.float64), np.asarray(flow_y, np.float64))
    scale = float(np.percentile(magnitude, percentile))
    return scale if scale > 1e-12 else float(magnitude.max())


def flow_scales(flow, max_channels: int = 4, percentile: float = FLOW_PERCENTILE) -> np.ndarray:
    """One brightness scale per shown channel of a flow layer's output `(..., 2C)` (x flows of
    all channels, then the y flows): `robust_magnitude` over everything but the channel axis.

    >>> flow = np.zeros((3, 8, 8, 4)); flow[..., 0] = 2.0; flow[..., 3] = 0.5
    >>> flow_scales(flow).tolist()
    [2.0, 0.5]
    """
    flow = np.asarray(flow)
    channels = flow.shape[-1] // 2
    return np.array(
        [
            robust_magnitude(flow[..., c], flow[..., channels + c], percentile)
            for c in range(min(channels, max_channels))
        ]
    )


def flow_tiles(flow, size: tuple[int, int], scales: Sequence[float]) -> np.ndarray:
    """Colour images `(len(scales), N, *size, 3)` uint8 of the first `len(scales)` channels of
    `flow` `(N, h, w, 2C)`, channel c at brightness scale `scales[c]`, resized to `size`
    (nearest neighbour, so each flow pixel stays a visible block)."""
    flow = tf.convert_to_tensor(flow, tf.float32)
    channels = flow.shape[-1] // 2
    tiles = []
    for c, scale in enumerate(scales):
        rgb = flow_to_rgb(flow[..., c], flow[..., channels + c], max_magnitude=float(scale))
        tiles.append(tf.image.resize(rgb, size, method="nearest").numpy().astype(np.uint8))
    return np.stack(tiles) if tiles else np.zeros((0, len(flow), *size, 3), np.uint8)


def color_wheel(size: int = MIN_LEGEND_SIZE) -> np.ndarray:
    """The legend of `flow_to_rgb`: uint8 `(size, size, 3)`, the colour of a flow pointing from
    the centre to each pixel, full brightness at the rim; black outside the disc.

    >>> wheel = color_wheel(33)
    >>> wheel[16, 32].tolist(), wheel[16, 16].tolist()  # +x at the right rim: red; centre: black
    ([255, 0, 0], [0, 0, 0])
    """
    centre = (size - 1) / 2.0
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    flow_x, flow_y = (cols - centre) / max(centre, 1.0), (rows - centre) / max(centre, 1.0)
    wheel = flow_to_rgb(flow_x, flow_y, max_magnitude=1.0).numpy()
    wheel[np.hypot(flow_x, flow_y) > 1.0 + 0.5 / max(centre, 1.0)] = 0
    return wheel


def aligned_frame_indices(num_frames: int, flow_steps: int) -> np.ndarray:
    """For each of a flow output's `flow_steps` time steps, the clip frame it ends at.

    A flow layer on the frames (or on features at the frames' rate) gives step t from frame t
    to t + 1, a flow-of-flow stack one step less; a backbone that pools time before the flow
    leaves steps `num_frames // (flow_steps + 1)` frames apart.

    >>> aligned_frame_indices(4, 3).tolist(), aligned_frame_indices(16, 7).tolist()[:3]
    ([1, 2, 3], [3, 5, 7])
    """
    step = max(1, num_frames // (flow_steps + 1))
    last = num_frames - 1
    return np.clip(last - step * np.arange(flow_steps - 1, -1, -1), 0, last)


def _grid(cells: np.ndarray) -> np.ndarray:
    """Cells `(rows, cols, H, W, 3)` as one image `(rows * H, cols * W, 3)`."""
    rows, cols, height, width, _ = cells.shape
    return cells.transpose(0, 2, 1, 3, 4).reshape(rows * height, cols * width, 3)


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=-3), factor, axis=-2) if factor > 1 else image


def flow_panel(
    frames,
    flow,
    *,
    scales: Sequence[float] | None = None,
    max_channels: int = 4,
    legend: bool = True,
) -> np.ndarray:
    """One image of a clip's frames over its colour-coded flow, aligned in time.

    `frames` `(N, H, W, 3)` (0..255) and `flow` `(N, h, w, 2C)` (a flow layer's output; frame i
    is the frame flow step i ends at, `aligned_frame_indices`). Row 0 shows the frames, row
    1 + c the flow of channel c (up to `max_channels`) resized to the frame size; column i is
    time step i. `scales` are the channels' brightness scales (default `flow_scales`: each row
    at its own 99th percentile of magnitude). With `legend`, a last column holds the colour
    wheel (in the frame row). Frames smaller than `MIN_LEGEND_SIZE` are upscaled (integer
    factor, nearest) so that the panel stays legible. Returns uint8 `(H' * (1 + channels),
    W' * (N + legend), 3)`.

    >>> flow_panel(np.zeros((3, 32, 32, 3)), np.ones((3, 8, 8, 4))).shape
    (192, 256, 3)
    """
    frames = np.clip(np.round(np.asarray(frames, np.float32)), 0, 255).astype(np.uint8)
    flow = np.asarray(flow, np.float32)
    if len(frames) != len(flow):
        raise ValueError(
            f"`frames` and `flow` must have one entry per time step. Received: "
            f"{len(frames)} frames and {len(flow)} flow steps"
        )
    if scales is None:
        scales = flow_scales(flow, max_channels)
    factor = max(1, math.ceil(MIN_LEGEND_SIZE / min(frames.shape[1:3])))
    frames = _upscale(frames, factor)
    size = frames.shape[1:3]
    rows = np.concatenate([frames[None], flow_tiles(flow, size, scales)])
    if legend:
        column = np.zeros((len(rows), 1, *size, 3), np.uint8)
        wheel = color_wheel(min(size))
        top, left = (size[0] - wheel.shape[0]) // 2, (size[1] - wheel.shape[1]) // 2
        column[0, 0, top : top + wheel.shape[0], left : left + wheel.shape[1]] = wheel
        rows = np.concatenate([rows, column], axis=1)
    return _grid(rows)


def side_by_side(frames, flow, scales: Sequence[float]) -> np.ndarray:
    """Video frames `(N, H, W * (1 + len(scales)), 3)` uint8: each frame `(N, H, W, 3)` with the
    colour-coded flow of the first `len(scales)` channels of `flow` `(N, h, w, 2C)` beside it,
    resized to the frame size (nearest)."""
    frames = np.clip(np.round(np.asarray(frames, np.float32)), 0, 255).astype(np.uint8)
    tiles = flow_tiles(flow, frames.shape[1:3], scales)
    return np.concatenate([frames, *tiles], axis=2)


# === Confusion figure ===


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The confusion matrix (rows: true class, columns: predicted class) as a matplotlib figure.

    Cells are coloured by the row-normalised rate (the fraction of the true class's videos;
    a colour bar gives the scale) and show the count over the rate in percent, e.g. `3` over
    `75%`. Up to 20 classes every cell is labelled (`0` for an empty one); beyond, only the
    non-empty cells are, in smaller type. The figure grows with the number of classes (about
    0.6 inch per cell at a few classes, 0.3 at 51), so names and numbers stay legible.

    >>> figure = confusion_figure(np.array([[3, 1], [0, 2]]), ["up", "down"])
    >>> [label.get_text() for label in figure.axes[0].get_yticklabels()]
    ['up', 'down']
    """
    confusion = np.asarray(confusion, np.int64)
    num_classes = len(class_names)
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(
            f"`confusion` must be ({num_classes}, {num_classes}) for {num_classes} class "
            f"names. Received: shape {confusion.shape}"
        )
    totals = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    many = num_classes > 20
    cell = float(np.clip(6.0 / max(num_classes, 1), 0.3, 0.6))  # inches
    label_size = 10.0 if num_classes <= 12 else 7.0
    text_size = 9.0 if num_classes <= 12 else 6.5 if not many else 5.5
    longest = max((len(str(name)) for name in class_names), default=1)
    labels = 0.6 * label_size / 72.0 * longest + 0.8  # inches for the names and axis titles
    figure = Figure(
        figsize=(num_classes * cell + labels + 1.4, num_classes * cell + labels + 0.6),
        dpi=100,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, [str(name) for name in class_names], fontsize=label_size)
    axes.set_yticks(ticks, [str(name) for name in class_names], fontsize=label_size)
    if num_classes > 6 or longest > 6:
        axes.tick_params(axis="x", labelrotation=90)
    axes.set_xlabel("predicted class", fontsize=label_size + 2)
    axes.set_ylabel("true class", fontsize=label_size + 2)
    axes.set_title(f"confusion: {int(confusion.sum())} videos", fontsize=label_size + 2)
    for row in range(num_classes):
        for col in range(num_classes):
            count = int(confusion[row, col])
            if count == 0:
                if not many:
                    axes.text(
                        col, row, "0", ha="center", va="center", fontsize=text_size, color="0.6"
                    )
                continue
            percent = 100.0 * rates[row, col]
            text = f"{count}\n{percent:.0f}%" if percent >= 0.5 else f"{count}\n<1%"
            axes.text(
                col,
                row,
                text,
                ha="center",
                va="center",
                fontsize=text_size,
                color="white" if rates[row, col] > 0.5 else "black",
                linespacing=1.0,
            )
    colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    colorbar.set_label("fraction of the true class", fontsize=label_size)
    colorbar.ax.tick_params(labelsize=label_size)
    return figure


def figure_to_array(figure: Figure) -> np.ndarray:
    """A matplotlib figure rendered (Agg) as uint8 RGB `(H, W, 3)`."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """`confusion_figure` as an RGB image, uint8 `(H, W, 3)` (confusion.png, TensorBoard).

    >>> render_confusion(np.array([[2, 0], [1, 1]]), ["a", "b"]).dtype.name
    'uint8'
    """
    return figure_to_array(confusion_figure(confusion, class_names))
