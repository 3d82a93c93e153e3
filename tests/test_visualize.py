"""The pictures: the confusion figure, the TensorBoard flow panel, the colour wheel, and
repflow-visualize (MP4 and PNG strip of a video with its learned flow)."""

from __future__ import annotations

import colorsys
import dataclasses
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import trained_workdir

from repflow_tf import data, models
from repflow_tf.callbacks import TensorBoardLogger, TrainingState, first_flow_output
from repflow_tf.evaluation import compute_metrics, write_report
from repflow_tf.export import preprocessing_for, sample_clips
from repflow_tf.visualize import (
    aligned_frame_indices,
    color_wheel,
    confusion_figure,
    figure_to_array,
    flow_panel,
    flow_to_rgb,
    render_confusion,
    robust_magnitude,
)
from repflow_tf.workdir import read_workdir

HMDB51 = (
    "brush_hair cartwheel catch chew clap climb climb_stairs dive draw_sword dribble drink eat "
    "fall_floor fencing flic_flac golf handstand hit hug jump kick kick_ball kiss laugh pick "
    "pour pullup punch push pushup ride_bike ride_horse run shake_hands shoot_ball shoot_bow "
    "shoot_gun sit situp smile smoke somersault stand swing_baseball sword sword_exercise talk "
    "throw turn walk wave"
).split()
LAYER = (
    "flow_backbone/flow_stack/flow_block_1/representation_flow"  # the one of trained_workdir.MODEL
)


def _cells(figure) -> dict[tuple[int, int], str]:
    """{(row, column): text} of the confusion figure's cells."""
    return {
        (round(text.get_position()[1]), round(text.get_position()[0])): text.get_text()
        for text in figure.axes[0].texts
    }


def _confusion(num_classes: int, seed: int = 0) -> np.ndarray:
    """A plausible confusion: 10 videos per class, mostly right, a few empty cells."""
    rng = np.random.default_rng(seed)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for row in range(num_classes):
        chances = np.full(num_classes, 0.3 / (num_classes - 1))
        chances[row] = 0.7
        np.add.at(confusion[row], rng.choice(num_classes, 10, p=chances), 1)
    return confusion


# === Confusion figure ===


def test_confusion_figure_names_counts_and_percentages():
    names = ["walk", "run", "jump"]
    figure = confusion_figure(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]), names)
    axes, colorbar = figure.axes
    assert [label.get_text() for label in axes.get_xticklabels()] == names
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
    assert colorbar.get_ylabel() == "fraction of the true class"
    cells = _cells(figure)
    # Count over the row-normalised percentage; empty cells say 0 (a row without videos too).
    assert cells[0, 0] == "3\n75%" and cells[0, 1] == "1\n25%" and cells[1, 1] == "2\n100%"
    assert cells[0, 2] == cells[1, 0] == cells[2, 2] == "0" and len(cells) == 9
    # Row-normalised colours: row 1's single cell is the darkest, the empty row is white.
    rates = axes.images[0].get_array()
    assert rates[1, 1] == 1.0 and rates[0, 0] == 0.75 and not rates[2].any()


@pytest.mark.parametrize("num_classes", [8, 51])
def test_confusion_image_is_legible_at_8_and_51_classes(num_classes):
    names = HMDB51[:num_classes]
    confusion = _confusion(num_classes)
    figure = confusion_figure(confusion, names)
    image = figure_to_array(figure)  # draws the figure, so the text extents below are final
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # About 60 px per cell at a few classes, 30 at 51, plus the names and the colour bar.
    assert min(image.shape[:2]) > num_classes * (60 if num_classes <= 10 else 30)
    np.testing.assert_array_equal(render_confusion(confusion, names), image)
    axes = figure.axes[0]
    assert [label.get_text() for label in axes.get_yticklabels()] == names
    assert [label.get_text() for label in axes.get_xticklabels()] == names
    renderer = figure.canvas.get_renderer()
    for labels in (axes.get_xticklabels(), axes.get_yticklabels()):
        boxes = [label.get_window_extent(renderer) for label in labels]
        assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))
    cell_width = axes.get_window_extent(renderer).width / num_classes
    for text in axes.texts:
        box = text.get_window_extent(renderer)
        assert box.width < cell_width and box.height < cell_width, text.get_text()
    cells = _cells(figure)
    if num_classes > 20:  # only the non-empty cells are labelled, in smaller type
        assert len(cells) == np.count_nonzero(confusion)
        assert max(text.get_fontsize() for text in axes.texts) < 6
    else:
        assert len(cells) == num_classes**2
    row, col = np.argwhere(confusion)[0]
    rate = confusion[row, col] / confusion[row].sum()
    assert cells[row, col] == f"{confusion[row, col]}\n{100 * rate:.0f}%"


def test_report_writes_the_figure_to_png_and_tensorboard(tmp_path):
    names = HMDB51[:8]
    logits = np.eye(8)[[0, 1, 2, 3, 4, 5, 6, 7, 0, 0]][:, None] * 5.0
    result = compute_metrics(logits, [0, 1, 2, 3, 4, 5, 6, 7, 0, 1], names)
    paths = write_report(result, str(tmp_path / "report"), log_dir=str(tmp_path / "logs"))
    expected = render_confusion(result.confusion, names)
    png = tf.io.decode_png(tf.io.read_file(paths["confusion.png"])).numpy()
    np.testing.assert_array_equal(png, expected)
    (events,) = glob.glob(str(tmp_path / "logs" / "events.*"))
    images = [
        value.tensor.string_val
        for event in tf.compat.v1.train.summary_iterator(events)
        for value in event.summary.value
        if value.tag == "confusion_matrix"
    ]
    assert len(images) == 1
    np.testing.assert_array_equal(tf.io.decode_png(images[0][2]).numpy(), expected)


# === Flow colours ===


def test_robust_scale_makes_a_small_motion_bright_despite_an_outlier():
    flow_x, flow_y = np.zeros((32, 32)), np.zeros((32, 32))
    flow_x[8:24, 8:24] = 0.5  # a square moving by half a pixel
    flow_x[0, 0] = 50.0  # one outlier, which used to set the scale
    scale = robust_magnitude(flow_x, flow_y)
    assert scale == 0.5
    old = flow_to_rgb(flow_x, flow_y).numpy()  # max-normalised: the square is 1/100 bright
    new = flow_to_rgb(flow_x, flow_y, max_magnitude=scale).numpy()
    assert old[8:24, 8:24].max(axis=-1).mean() < 5
    assert new[8:24, 8:24].max(axis=-1).mean() == 255
    assert new[4, 4].max() == 0  # still still
    # The panel (TensorBoard, the strip) scales each row so.
    flow = np.stack([flow_x, flow_y], axis=-1)[None].astype(np.float32)
    panel = flow_panel(np.zeros((1, 64, 64, 3)), flow, legend=False)
    assert panel.shape == (128, 64, 3)
    assert panel[64 + 16 : 64 + 48, 16:48].max(axis=-1).mean() == 255


def test_color_wheel_hue_is_the_direction_in_image_coordinates():
    wheel = color_wheel(65)
    centre, rim = 32, 64

    def hue(pixel):
        return 360.0 * colorsys.rgb_to_hsv(*(np.asarray(pixel) / 255.0))[0]

    # +x (right) red, +y (down, image rows) 90°, -x cyan, -y (up) 270°.
    for (row, col), expected in {
        (centre, rim): 0.0,
        (rim, centre): 90.0,
        (centre, 0): 180.0,
        (0, centre): 270.0,
    }.items():
        assert hue(wheel[row, col]) == pytest.approx(expected, abs=2), (row, col)
        assert wheel[row, col].max() == 255  # full magnitude at the rim
    assert wheel[centre, centre].max() == 0 and wheel[0, 0].max() == 0  # centre, outside
    # The wheel is flow_to_rgb's legend: a flow of (0, 1) has the colour below the centre.
    down = flow_to_rgb(np.zeros((1,)), np.ones((1,))).numpy()[0]
    np.testing.assert_array_equal(down, wheel[rim, centre])


def test_flow_panel_puts_the_frames_over_the_flow_in_time():
    assert aligned_frame_indices(4, 3).tolist() == [1, 2, 3]  # flow t: frame t -> t + 1
    assert aligned_frame_indices(4, 2).tolist() == [2, 3]  # flow of flow
    assert aligned_frame_indices(16, 7).tolist() == [3, 5, 7, 9, 11, 13, 15]  # time pooled
    frames = np.stack([np.full((64, 64, 3), 60 * i, np.uint8) for i in range(3)])
    flow = np.zeros((3, 16, 16, 6), np.float32)
    flow[1, ..., 0] = 1.0  # channel 0 moves right at step 1
    panel = flow_panel(frames, flow)
    assert panel.shape == (4 * 64, 4 * 64, 3)  # frames + 3 channel rows; 3 steps + legend

    def cell(row, col):
        return panel[64 * row : 64 * (row + 1), 64 * col : 64 * (col + 1)]

    for step in range(3):
        np.testing.assert_array_equal(cell(0, step), frames[step])
    assert (cell(1, 1) == [255, 0, 0]).all() and cell(1, 0).max() == cell(1, 2).max() == 0
    assert cell(2, 1).max() == 0  # a channel without motion stays black, not noise
    np.testing.assert_array_equal(cell(0, 3), color_wheel(64))
    assert cell(1, 3).max() == 0


def test_tensorboard_flow_image_shows_frames_flow_and_legend(tmp_path):
    model = models.build(trained_workdir.MODEL)
    trained_workdir.open_flow_blocks(model)
    clip = data.render_clip(np.random.default_rng(0), "right", num_frames=4, size=32)
    logger = TensorBoardLogger(
        str(tmp_path), TrainingState(1, 1), {}, flow_clip=tf.constant(clip, tf.float32)
    )
    logger.set_model(model)
    logger.on_epoch_end(0, {})
    (events,) = glob.glob(str(tmp_path / "validation" / "events.*"))
    images = {
        value.tag: value.tensor.string_val
        for event in tf.compat.v1.train.summary_iterator(events)
        for value in event.summary.value
    }
    assert list(images) == ["flow_images/first_flow_layer"]
    pngs = images["flow_images/first_flow_layer"][2:]
    assert len(pngs) == 1  # one panel
    panel = tf.io.decode_png(pngs[0]).numpy()
    # 32 px frames shown at 64 px: the frame row and 4 channel rows; 3 flow steps + the wheel.
    assert panel.shape == (5 * 64, 4 * 64, 3)
    for step, frame in enumerate(clip[1:]):
        np.testing.assert_array_equal(
            panel[:64, 64 * step : 64 * (step + 1)], frame.repeat(2, 0).repeat(2, 1)
        )
    np.testing.assert_array_equal(panel[:64, 192:], color_wheel(64))
    # Motion is visible: each channel row has its own scale (its 99th percentile), so it is at
    # least as bright as the old image (one maximum over all channels) and 1% of its flow
    # pixels (8 x 8 panel pixels each) are at full brightness, not just the largest one.
    flow = first_flow_output(model, tf.constant(clip, tf.float32)[None])[0].numpy()
    channels = flow.shape[-1] // 2
    largest = np.hypot(flow[..., :channels], flow[..., channels:]).max()
    for c in range(channels):
        old = flow_to_rgb(flow[..., c], flow[..., channels + c], largest).numpy()
        row = panel[64 * (c + 1) : 64 * (c + 2), :192].max(axis=-1)
        assert row.mean() >= old.max(axis=-1).mean() and row.mean() > 20, c
        assert (row == 255).sum() >= 2 * 64, c


# === repflow-visualize ===


@pytest.fixture(scope="module")
def visualize_cli(tmp_path_factory):
    """repflow-visualize's main() on one good and several bad requests (one process)."""
    workdirs = trained_workdir.get(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("visualize")
    video = str(tmp / "video.mp4")
    data.write_video(video, data.render_clip(np.random.default_rng(1), "left", num_frames=12))
    config = read_workdir(workdirs.trained).config
    no_flow = dataclasses.replace(
        config, model=dataclasses.replace(config.model, flow_position="none")
    )
    trained_workdir.write_workdir(str(tmp / "no_flow"), no_flow, workdirs.class_names)
    good = [f"--workdir={workdirs.trained}", f"--video={video}"]
    cases = {
        "ok": [*good, f"--output={tmp / 'flow.mp4'}", f"--strip={tmp / 'flow.png'}"],
        "one_clip": [
            *good,
            f"--output={tmp / 'one.mp4'}",
            f"--layer={LAYER}",
            "--num_clips=1",
            "--channels=2",
        ],
        "bad_layer": [*good, f"--output={tmp / 'x.mp4'}", "--layer=flow_stack/nope"],
        "no_flow": [
            f"--workdir={tmp / 'no_flow'}",
            f"--video={video}",
            f"--output={tmp / 'x.mp4'}",
        ],
        "missing_workdir": [
            f"--workdir={tmp / 'nope'}",
            f"--video={video}",
            f"--output={tmp / 'x.mp4'}",
        ],
        "missing_video": [
            f"--workdir={workdirs.trained}",
            f"--video={tmp / 'nope.mp4'}",
            f"--output={tmp / 'x.mp4'}",
        ],
        "not_mp4": [*good, f"--output={tmp / 'x.avi'}"],
        "no_output": good,
    }
    output = str(tmp / "results.json")
    driver = trained_workdir.start_cli("visualize", list(cases.values()), output)
    results = dict(zip(cases, trained_workdir.finish_cli(driver, output), strict=True))
    return {"results": results, "tmp": tmp, "video": video, "workdirs": workdirs}


def test_visualize_writes_video_and_strip(visualize_cli):
    results, tmp = visualize_cli["results"], visualize_cli["tmp"]
    ok = results["ok"]
    assert ok["code"] == 0, ok["stderr"]
    assert f"flow layer {LAYER}, 2 clips x 3 flow steps, 4 channels" in ok["stdout"]
    # data.eval_clips=2 clips of 4 frames -> 3 flow steps each; 32 px frame | 4 flows | wheel.
    frames = data.read_video(str(tmp / "flow.mp4"))
    assert frames.shape == (2 * 3, 32, 6 * 32, 3)
    trained = read_workdir(visualize_cli["workdirs"].trained)
    preprocessing = preprocessing_for(trained)
    video = data.read_video(
        visualize_cli["video"], short_side=preprocessing.short_side, fps=preprocessing.fps
    )
    candidates = sample_clips(video, preprocessing).reshape(2 * 4, 32, 32, 3).astype(float)
    # Each left tile is the sampled evaluation frame the flow step ends at (clip frames 1..3),
    # up to the H.264 error: of all the clips' frames, it is the nearest.
    errors = ((frames[:, None, :, :32].astype(float) - candidates[None]) ** 2).mean((2, 3, 4))
    assert errors.argmin(axis=1).tolist() == [1, 2, 3, 5, 6, 7]
    assert errors.min(axis=1).max() < 40
    assert frames[..., 32:160, :].max(axis=-1).mean() > 40  # the flow is visible
    wheel = color_wheel(32).astype(float)
    assert np.abs(frames[0, :, 160:].astype(float) - wheel).mean() < 8
    strip = tf.io.decode_png(tf.io.read_file(str(tmp / "flow.png"))).numpy()
    assert strip.shape == (5 * 64, 7 * 64, 3)  # frames + 4 channels; 6 steps + the wheel

    one = results["one_clip"]
    assert one["code"] == 0, one["stderr"]
    assert data.read_video(str(tmp / "one.mp4")).shape == (3, 32, 4 * 32, 3)
    assert not os.path.exists(tmp / "x.mp4")


def test_visualize_errors_are_one_line(visualize_cli):
    results = visualize_cli["results"]
    expected = {
        "bad_layer": f"--layer=flow_stack/nope: no such flow layer; the model has {LAYER}",
        "no_flow": "has no RepresentationFlow layer (model.flow_position='none'",
        "missing_workdir": "nope: no such directory (--workdir)",
        "missing_video": "nope.mp4: no such file",
        "not_mp4": "x.avi: must end with .mp4",
        "no_output": "--output",
    }
    trained_workdir.check_error_lines(results, expected, "repflow-visualize")
