"""The paper's speed claim (Table 9) at small scale: two-stream with TV-L1 vs representation flow.

Per clip, on this machine, measured side by side in one run: (a) the TV-L1 optical flow of the
clip's frame pairs (OpenCV's Dual TV-L1 as the converter runs it: one thread, default
parameters, on the stored frames) plus the flow CNN / two-stream model; (b) the representation
flow models, with the same backbone and clip size. The CNN times are one compiled inference call
on one clip. The accuracy
column reads the demo runs' evaluation reports (`repflow-evaluate`) where they exist.

Cost model: TV-L1 costs `(num_frames - 1) x` one pair (5 scales x 5 warps x up to 30 inner
iterations of a few stencils per pixel, growing with the frame area); the CNNs cost their
convolutions, and representation flow adds `iterations x` a few depthwise stencils on the
flow block's (smaller) feature maps. The CNNs are timed round-robin (median of `repeats` rounds
after a warm-up round), so a load change hits all of them alike; TV-L1 is timed after them
(median of `repeats` calls): interleaved, it left the next cell with cold caches, which made the
RGB CNN look slower than the two-stream model that contains it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from repflow_tf import data, models
from repflow_tf.config import ModelConfig

# name: (model options, demo workdir with its evaluation, paper's 2D CNN run-time in ms/video)
ROWS: dict[str, tuple[dict[str, Any], str | None, int | None]] = {
    "RGB CNN": ({"flow_position": "none"}, "demo_rgb", 225),
    "Flow CNN (TV-L1)": (
        {"flow_position": "none", "inputs": "optical_flow"},
        "demo_flow_cnn",
        8039,
    ),
    "Two-stream (TV-L1)": (
        {"flow_position": "none", "inputs": "rgb+optical_flow"},
        "demo_two_stream",
        8546,
    ),
    "Rep. flow on the input, 10 it., fixed": (
        {"flow_position": "input", "flow_iterations": 10, "flow_learn": ()},
        "demo_input_flow",
        None,
    ),
    "Rep. flow after block 1, 10 it., learned (demo)": (
        {"flow_position": "block1", "flow_iterations": 10},
        "demo",
        None,
    ),
    "Rep. flow after block 3, 20 it., learned": ({"flow_position": "block3"}, None, 524),
    "Rep. flow FcF after block 3, 20 it., learned": (
        {"flow_position": "block3", "flow_stack": "fcf"},
        None,
        576,
    ),
}
PAPER_SETTING = "32 x 224 x 224 per video, one Titan X GPU, TV-L1 on the GPU (OpenCV)"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One clip size: `num_frames` frames of `frame_size`^2 (TV-L1 runs there), cropped to
    `crop_size`^2 for a 2D ResNet-`depth` of width `base_width`."""

    name: str
    num_frames: int
    frame_size: int
    crop_size: int
    base_width: int
    depth: int = 18


DEMO = Setting("demo clips (configs/demo*.toml)", 8, 64, 56, 16)
LARGER = Setting("16 x 112 x 112 clips from 128 px frames, width-64 ResNet-18", 16, 128, 112, 64)


def _clip(setting: Setting, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A demo-like video (uint8 frames) and its centre crop as float32 model input."""
    rng = np.random.default_rng(seed)
    video = data.render_clip(rng, "right", num_frames=setting.num_frames, size=setting.frame_size)
    window = data.centre_window(setting.frame_size, setting.frame_size, setting.crop_size)
    top, left, side, _ = window.numpy().tolist()
    frames = tf.image.resize(
        video[:, top : top + side, left : left + side], [setting.crop_size] * 2
    )
    return video, frames.numpy()[None]


def _model_call(options: dict[str, Any], setting: Setting) -> Callable[[dict], Any]:
    config = ModelConfig(
        depth=setting.depth,
        base_width=setting.base_width,
        num_classes=8,
        num_frames=setting.num_frames,
        image_size=setting.crop_size,
        flow_channels=setting.base_width,
        **options,
    )
    model = models.build(config)
    return tf.function(lambda inputs: model(inputs, training=False)), config.inputs


def _timed_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for tensor in tf.nest.flatten(fn()):
        if hasattr(tensor, "numpy"):
            tensor.numpy()
    return (time.perf_counter() - start) * 1e3


def measure(setting: Setting, repeats: int, log: Callable[[str], None] = print) -> list[dict]:
    """Times every row of `ROWS` at `setting` (see the module docstring); one dict per row."""
    video, frames = _clip(setting, seed=0)
    tvl1 = data.TVL1()
    window = data.centre_window(setting.frame_size, setting.frame_size, setting.crop_size)
    flow = data.crop_flow(tvl1(video), window, setting.crop_size).numpy()[None]
    given = {"frames": frames, "optical_flow": flow}
    cells: dict[str, Callable[[], Any]] = {}
    uses_flow = {}
    for name, (options, _, _) in ROWS.items():
        call, inputs = _model_call(options, setting)
        wanted = {"rgb": ["frames"], "optical_flow": ["optical_flow"]}.get(
            inputs, ["frames", "optical_flow"]
        )
        argument = {key: tf.constant(given[key]) for key in wanted}
        if inputs == "rgb":
            argument = argument["frames"]
        cells[name] = lambda call=call, argument=argument: call(argument)
        uses_flow[name] = inputs != "rgb"
    times: dict[str, list[float]] = {name: [] for name in cells}
    for fn in cells.values():
        _timed_ms(fn)  # warm-up: tracing
    for _ in range(repeats):
        for name, fn in cells.items():
            times[name].append(_timed_ms(fn))
    # TV-L1 apart: after OpenCV's long run the next cell would start with cold caches.
    times["TV-L1"] = [_timed_ms(lambda: tvl1(video)) for _ in range(repeats)]
    median = {name: statistics.median(values) for name, values in times.items()}
    rows = []
    for name, (_, _, paper_ms) in ROWS.items():
        tvl1_ms = median["TV-L1"] if uses_flow[name] else 0.0
        rows.append(
            {"model": name, "tvl1_ms": tvl1_ms, "cnn_ms": median[name], "paper_ms": paper_ms}
        )
        log(f"  {name}: TV-L1 {tvl1_ms:.0f} ms + CNN {median[name]:.1f} ms per clip")
    return rows


def demo_accuracy(runs_dir: str, workdir: str | None) -> float | None:
    """Video top-1 of `<runs_dir>/<workdir>/eval_val/metrics.json` (None: not evaluated)."""
    if workdir is None:
        return None
    path = os.path.join(runs_dir, workdir, "eval_val", "metrics.json")
    try:
        with open(path, encoding="utf-8") as file:
            return float(json.load(file)["video_top1"])
    except (OSError, KeyError, ValueError):
        return None


def report(results: dict[str, list[dict]], runs_dir: str) -> str:
    """Markdown: one table per setting, the paper's run-times and the demo accuracies beside."""
    lines = []
    for setting_name, rows in results.items():
        rgb = next(row for row in rows if row["model"] == "RGB CNN")
        lines += [
            f"**{setting_name}** (ms per clip, this CPU; paper: ms per video, {PAPER_SETTING})",
            "",
            "| model | TV-L1 | CNN | total | x RGB CNN | paper | paper x RGB | demo val acc |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in rows:
            total = row["tvl1_ms"] + row["cnn_ms"]
            paper = row["paper_ms"]
            accuracy = demo_accuracy(runs_dir, ROWS[row["model"]][1])
            lines.append(
                f"| {row['model']} | {row['tvl1_ms']:.0f} | {row['cnn_ms']:.1f} | {total:.0f} | "
                f"{total / rgb['cnn_ms']:.1f} | {paper or '—'} | "
                f"{f'{paper / 225:.1f}' if paper else '—'} | "
                f"{f'{accuracy:.3f}' if accuracy is not None else '—'} |"
            )
        lines.append("")
    return "\n".join(lines)


def run(settings: Sequence[Setting], repeats: int, runs_dir: str, log=print) -> str:
    """Measures every setting and returns the report."""
    started = time.monotonic()
    results = {}
    for setting in settings:
        log(f"{setting.name}:")
        results[setting.name] = measure(setting, repeats, log)
    header = (
        f"TF {tf.__version__}, {os.cpu_count()} logical CPUs, median of {repeats} calls per "
        f"cell, {time.monotonic() - started:.0f} s.\n\n"
    )
    return header + report(results, runs_dir)
