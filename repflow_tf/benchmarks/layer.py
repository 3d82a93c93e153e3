"""The flow layer's speed and memory: ours against autodiff of the plain loop, in one run.

Cells (each timed forward and forward + backward, gradients w.r.t. the input and every
trainable variable; median of `repeats` timed calls after one warm-up call):

* ``flow_block``: `FlowBlock(channels_reduced=32)` on the paper's (2, 16, 28, 28, 32) feature
  map, 20 iterations, learn=("divergence", "hyper");
* ``rgb224``: `RepresentationFlow` on a (1, 8, 224, 224, 3) RGB clip, same settings;
* ``resnet18``: one `train_on_batch` of a 2D ResNet-18 (base width 32) on 4 clips x 8 frames x
  112 x 112, SGD: RGB only, and with a learned flow block after block 1 (28 x 28) on the
  default path (the fused CPU kernels here) and on the XLA path in chunks;
* ``memory50``: peak memory of the flow block at 50 iterations, forward and forward + backward,
  each in a fresh process;
* ``onednn``: the ``resnet18`` train steps (RGB only, learned flow after block 1 in chunks) with
  TensorFlow's Eigen CPU kernels (``TF_ENABLE_ONEDNN_OPTS=0``, TensorFlow's own default on a CPU
  without AVX-512 VNNI / AMX) and with oneDNN's (``=1``), each in a fresh process (TensorFlow
  reads the variable at import); and, with each, the float32 filter gradient of a ResNet
  shortcut's 1x1 stride-2 convolution on 4 channels against float64 (`conv_gradient_error`):
  on TF 2.21's oneDNN on an AVX2 CPU it is 30-90% wrong and can corrupt the heap, which is why
  repflow_tf leaves TensorFlow's choice of kernels alone.

Implementations: ``ours`` (the layer's default where it runs: on a machine without a GPU the
fused CPU kernels of `repflow_tf.native`, forward and hand-written gradient), ``ours_xla`` (the
TensorFlow ops with their hand-written gradient, XLA-compiled, over chunks of frame pairs sized
for the CPU's cache: `ops.CHUNK_BYTES`; the default before the fused kernels), ``ours_whole``
(the same on the whole batch at once: what a GPU runs), ``ours_graph`` (the TensorFlow ops
with ``jit_compile=False``), ``autodiff_graph``
(TensorFlow's autodiff through the plain while loop, `references.autodiff_iterate`, in
`tf.function` without XLA; grappler's memory optimizer is off for it, since with it on the fit
crashes, see DESIGN.md) and ``autodiff_xla`` (the same loop, autodiff inside one XLA function).

Peak memory: with a GPU, TensorFlow's allocator peak; on a CPU, the process's resident-set
high-water mark during the timed calls (reset through /proc/self/clear_refs after the warm-up)
minus the resident set before the cell built its model and input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from repflow_tf import native, ops
from repflow_tf.benchmarks import references
from repflow_tf.config import ModelConfig
from repflow_tf.layers import FlowBlock, RepresentationFlow
from repflow_tf.startup import ONEDNN_VARIABLE, onednn_enabled

IMPLS = ("ours", "ours_xla", "ours_whole", "ours_graph", "autodiff_graph", "autodiff_xla")
CASES = ("flow_block", "rgb224", "resnet18", "memory50", "onednn")
KERNELS = ("eigen", "onednn")
CONV_GRADIENT = "conv_gradient"  # the onednn case's accuracy cells: f"{CONV_GRADIENT}_{kernels}"
_LEARN = ("divergence", "hyper")
_RESULT_PREFIX = "BENCHMARK_CELL_RESULT "


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one benchmark run measures (the defaults are the issue's shapes)."""

    cases: tuple[str, ...] = CASES
    impls: tuple[str, ...] = IMPLS
    repeats: int = 5
    cell_seconds: float = 60.0
    num_iter: int = 20
    memory_iterations: int = 50
    seed: int = 0


# === Cells ===


def _moving_features(shape, seed):
    """Smooth random content moving one pixel right per frame, scaled like features."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 1.0, (shape[0], *shape[2:])).astype("float32")
    return tf.constant(np.stack([np.roll(base, t, axis=2) for t in range(shape[1])], axis=1))


def _flow_layer(case: str, impl: str, num_iter: int) -> keras.Layer:
    # "auto" (the default) runs what `_implementation` chose; the plain graph turns XLA off.
    jit_compile = False if impl == "ours_graph" else "auto"
    if case == "rgb224":
        return RepresentationFlow(num_iter=num_iter, learn=_LEARN, jit_compile=jit_compile)
    return FlowBlock(channels_reduced=32, num_iter=num_iter, learn=_LEARN, jit_compile=jit_compile)


def _layer_steps(case, impl, num_iter, seed):
    """(forward, forward + backward) callables on the case's input."""
    shape = (1, 8, 224, 224, 3) if case == "rgb224" else (2, 16, 28, 28, 32)
    x = _moving_features(shape, seed) * (255.0 if case == "rgb224" else 1.0)
    layer = _flow_layer(case, impl, num_iter)
    layer(x)

    def forward():
        return layer(x, training=True) if isinstance(layer, FlowBlock) else layer(x)

    def backward():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(tf.square(forward()))
        return tape.gradient(loss, [x, *layer.trainable_variables])

    jit = impl == "autodiff_xla"
    return tf.function(forward, jit_compile=jit), tf.function(backward, jit_compile=jit)


def _resnet_step(flow: bool, seed: int):
    config = ModelConfig(
        kind="2d",
        depth=18,
        num_classes=8,
        base_width=32,
        flow_position="block1" if flow else "none",
        flow_iterations=20,
        flow_learn=_LEARN,
        num_frames=8,
        image_size=112,
    )
    from repflow_tf import models  # models import data pipelines: only when this cell runs

    model = models.build(config)
    model.compile(
        keras.optimizers.SGD(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    rng = np.random.default_rng(seed)
    clips = rng.uniform(0.0, 255.0, (4, 8, 112, 112, 3)).astype("float32")
    labels = rng.integers(0, 8, 4)
    return lambda: model.train_on_batch(clips, labels)


def _block(result):
    for tensor in tf.nest.flatten(result):
        if hasattr(tensor, "numpy"):
            tensor.numpy()


class MemoryMeter:
    """Peak memory of the timed calls of one cell (see the module docstring)."""

    def __init__(self):
        self.gpu = bool(tf.config.list_logical_devices("GPU"))
        self.rss_before = _status_kb("VmRSS")

    def reset(self):
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # VmHWM := the current RSS
        except OSError:
            pass

    def peak_mb(self) -> float:
        if self.gpu:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        hwm = _status_kb("VmHWM")
        if hwm is None or self.rss_before is None:
            return float("nan")
        return max(hwm - self.rss_before, 0) / 1024


def _status_kb(key):
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def time_calls(fn: Callable[[], object], repeats: int, cell_seconds: float, meter=None) -> dict:
    """One warm-up call, then up to `repeats` timed calls (fewer once `cell_seconds` passed)."""
    start = time.perf_counter()
    _block(fn())
    first_s = time.perf_counter() - start
    if meter is not None:
        meter.reset()
    times = []
    while len(times) < repeats and sum(times) < cell_seconds * 1e3:
        start = time.perf_counter()
        _block(fn())
        times.append((time.perf_counter() - start) * 1e3)
    result = {"ms": statistics.median(times), "ms_all": times, "first_call_s": first_s}
    if meter is not None:
        result["peak_mb"] = meter.peak_mb()
    return result


def run_cell(case: str, impl: str, direction: str, settings: Settings) -> dict:
    """Measures one (case, impl, direction) in this process; returns its result record."""
    record = {"case": case, "impl": impl, "direction": direction}
    try:
        if impl.startswith(CONV_GRADIENT):
            record["rel_error"] = conv_gradient_error()
        else:
            record.update(_timed_cell(case, impl, direction, settings))
        record["onednn"] = onednn_enabled()
    except Exception as error:  # noqa: BLE001 - a failing cell is a result, not a crash
        record["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return record


def _timed_cell(case: str, impl: str, direction: str, settings: Settings) -> dict:
    """`time_calls`'s record of one timed cell."""
    keras.utils.set_random_seed(settings.seed)
    meter = MemoryMeter()
    with _implementation(impl):  # in force while the functions trace
        if case in ("resnet18", "onednn"):
            fn = _resnet_step(flow=not impl.startswith("rgb_only"), seed=settings.seed)
        else:
            num_iter = settings.memory_iterations if case == "memory50" else settings.num_iter
            layer_case = "flow_block" if case == "memory50" else case
            steps = _layer_steps(layer_case, impl, num_iter, settings.seed)
            fn = steps[0] if direction == "fwd" else steps[1]
        if impl == "autodiff_graph":
            fn = _without_memory_optimizer(fn)
        return time_calls(fn, settings.repeats, settings.cell_seconds, meter)


@contextlib.contextmanager
def _implementation(impl: str):
    """Within, flow layers traced anew run `impl` (a timed cell's impl or ResNet model)."""
    if impl.startswith("autodiff"):
        with references.autodiff_layers():
            yield
    elif impl.endswith(("_xla", "_whole", "_graph")):  # the TensorFlow ops
        chunk_bytes = 0 if impl.endswith("_whole") else ops.CHUNK_BYTES
        with ops.default_native(False), ops.default_chunk_bytes(chunk_bytes):
            yield
    else:  # the defaults: the fused CPU kernels where no GPU is visible
        with ops.default_native(None), ops.default_chunk_bytes(None):
            yield


def conv_gradient_error() -> float:
    """|float32 - float64| / |float64| of `Conv2DBackpropFilter` for a 1x1 stride-2 "same"
    convolution of (8, 28, 28, 4) to 8 channels (a narrow ResNet's shortcut); float64 runs
    TensorFlow's Eigen kernel whatever the CPU kernels are.

    >>> conv_gradient_error() < 1e-5  # with TensorFlow's default kernels on this CPU
    True
    """
    rng = np.random.default_rng(0)
    images, upstream = rng.normal(size=(8, 28, 28, 4)), rng.normal(size=(8, 14, 14, 8))
    grads = [
        tf.compat.v1.nn.conv2d_backprop_filter(
            tf.constant(images, dtype),
            [1, 1, 4, 8],
            tf.constant(upstream, dtype),
            [1, 2, 2, 1],
            "SAME",
        )
        .numpy()
        .astype(np.float64)
        for dtype in (tf.float32, tf.float64)
    ]
    return float(np.linalg.norm(grads[0] - grads[1]) / np.linalg.norm(grads[1]))


def _without_memory_optimizer(fn):
    """Autodiff through the loop breaks under grappler's memory optimizer (DESIGN.md): the
    baseline runs with that one optimizer off, everything else of grappler on."""

    def call():
        with ops.without_grappler_memory_optimizer():
            return fn()

    return call


def run_isolated(case: str, impl: str, direction: str, settings: Settings) -> dict:
    """`run_cell` in a fresh interpreter (honest peak memory: nothing lent by earlier cells;
    the ``onednn`` case's kernels, chosen by the impl's suffix, set before TensorFlow starts)."""
    payload = json.dumps(
        {"cell": [case, impl, direction], "settings": dataclasses.asdict(settings)}
    )
    command = [sys.executable, "-m", "repflow_tf.benchmarks.layer", payload]
    env = dict(os.environ)
    if case == "onednn":
        env[ONEDNN_VARIABLE] = "1" if impl.endswith("_onednn") else "0"
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    tail = " ".join(done.stderr.split())[-300:]
    return {"case": case, "impl": impl, "direction": direction, "error": tail}


# === The run ===


def _cells(settings: Settings) -> Iterable[tuple[str, str, str, bool]]:
    """(case, impl, direction, isolated) of every cell of the run."""
    for case in settings.cases:
        if case == "resnet18":
            for impl in ("rgb_only", "flow_block1", "flow_block1_xla"):
                yield case, impl, "train_step", False
            continue
        if case == "onednn":
            for kernels in KERNELS:
                yield case, f"{CONV_GRADIENT}_{kernels}", "accuracy", True
            for model in ("rgb_only", "flow_block1"):
                for kernels in KERNELS:
                    yield case, f"{model}_{kernels}", "train_step", True
            continue
        impls = [i for i in settings.impls if case != "memory50" or i.startswith("ours")]
        if case == "memory50" and "autodiff_graph" in settings.impls:
            impls.append("autodiff_graph")
        for impl in impls:
            for direction in ("fwd", "fwd+bwd"):
                yield case, impl, direction, case == "memory50"


def run(settings: Settings, progress: Callable[[str], None] = print) -> list[dict]:
    """Runs every cell (memory cells in fresh processes) and returns their records."""
    results = []
    start = time.perf_counter()
    for case, impl, direction, isolated in _cells(settings):
        cell = (run_isolated if isolated else run_cell)(case, impl, direction, settings)
        results.append(cell)
        measured = (
            f"relative error {cell['rel_error']:.1e}"
            if "rel_error" in cell
            else f"{cell.get('ms', float('nan')):.1f} ms"
        )
        shown = cell.get("error", measured)
        progress(f"  [{time.perf_counter() - start:6.1f} s] {case} {impl} {direction}: {shown}")
    return results


def report(results: list[dict], settings: Settings) -> str:
    """The tables of a run, as Markdown."""
    index = {(r["case"], r["impl"], r["direction"]): r for r in results}

    def ms(case, impl, direction):
        r = index.get((case, impl, direction))
        return None if r is None or "error" in r else r["ms"]

    lines = [
        f"TF {tf.__version__}, Keras {keras.__version__}, Python {platform.python_version()}, "
        f"{'GPU' if tf.config.list_logical_devices('GPU') else 'CPU'} "
        f"({os.cpu_count()} logical CPUs), oneDNN CPU kernels "
        f"{'on' if onednn_enabled() else 'off'}; median of up to {settings.repeats} timed calls; "
        f"`ours` runs {_default_path()}.",
        "",
    ]
    for case, title in (
        ("flow_block", f"FlowBlock, (2, 16, 28, 28, 32) -> 32 channels, {settings.num_iter} it."),
        ("rgb224", f"RepresentationFlow, (1, 8, 224, 224, 3), {settings.num_iter} iterations"),
    ):
        if case not in settings.cases:
            continue
        base = ms(case, "autodiff_graph", "fwd+bwd")
        lines += [
            f"**{title}** (learn = divergence + hyper)",
            "",
            "| implementation | fwd ms | fwd+bwd ms | fwd+bwd speed-up vs autodiff (graph) |",
            "| --- | --- | --- | --- |",
        ]
        for impl in settings.impls:
            fwd, both = ms(case, impl, "fwd"), ms(case, impl, "fwd+bwd")
            ratio = f"{base / both:.2f}x" if base and both else "-"
            lines.append(f"| {impl} | {_fmt(fwd)} | {_fmt(both)} | {ratio} |")
        lines.append("")
    if "resnet18" in settings.cases:
        rgb = ms("resnet18", "rgb_only", "train_step")
        lines += [
            "**2D ResNet-18 train step** (base width 32, 4 x 8 x 112 x 112, SGD, train_on_batch)",
            "",
            "| model | ms per step | / RGB only |",
            "| --- | --- | --- |",
            f"| RGB only | {_fmt(rgb)} | 1.00x |",
        ]
        for impl, label in (("flow_block1", "ours"), ("flow_block1_xla", "ours_xla")):
            flow = ms("resnet18", impl, "train_step")
            ratio = f"{flow / rgb:.2f}x" if rgb and flow else "-"
            lines.append(
                f"| learned flow after block 1 (28 x 28), {label} | {_fmt(flow)} | {ratio} |"
            )
        lines.append("")
    if "memory50" in settings.cases:
        lines += [
            f"**Peak memory, FlowBlock at the paper shape, {settings.memory_iterations} "
            "iterations** (fresh process per cell)",
            "",
            "| implementation | fwd MB | fwd+bwd MB | fwd+bwd / fwd |",
            "| --- | --- | --- | --- |",
        ]
        for impl in ("ours", "ours_xla", "ours_whole", "ours_graph", "autodiff_graph"):
            fwd = index.get(("memory50", impl, "fwd"), {}).get("peak_mb")
            both = index.get(("memory50", impl, "fwd+bwd"), {}).get("peak_mb")
            if fwd is None and both is None:
                continue
            ratio = f"{both / fwd:.2f}x" if fwd and both else "-"
            lines.append(f"| {impl} | {_fmt(fwd, '.0f')} | {_fmt(both, '.0f')} | {ratio} |")
        lines.append("")
    if "onednn" in settings.cases:
        lines += _kernels_table(ms, index)
    errors = [r for r in results if "error" in r]
    for r in errors:
        lines.append(f"failed: {r['case']} {r['impl']} {r['direction']}: {r['error']}")
    return "\n".join(lines)


def _kernels_table(ms, index) -> list[str]:
    errors = []
    for kernels in KERNELS:
        cell = index.get(("onednn", f"{CONV_GRADIENT}_{kernels}", "accuracy"), {})
        errors.append(f"{cell['rel_error']:.1e}" if "rel_error" in cell else "failed (below)")
    lines = [
        "**TensorFlow's CPU kernels: Eigen vs oneDNN** (fresh process each)",
        "",
        "| float32 filter gradient of a 1x1 stride-2 conv, 4 -> 8 channels, vs float64 | Eigen "
        "| oneDNN |",
        "| --- | --- | --- |",
        f"| relative error | {errors[0]} | {errors[1]} |",
        "",
        "| ResNet-18 train step above | Eigen ms | oneDNN ms | Eigen / oneDNN |",
        "| --- | --- | --- | --- |",
    ]
    for model, label in (("rgb_only", "RGB only"), ("flow_block1", "learned flow after block 1")):
        eigen, onednn = (ms("onednn", f"{model}_{k}", "train_step") for k in KERNELS)
        ratio = f"{eigen / onednn:.2f}x" if eigen and onednn else "-"
        lines.append(f"| {label} | {_fmt(eigen)} | {_fmt(onednn)} | {ratio} |")
    return [*lines, ""]


def _default_path() -> str:
    if ops.resolved_native():
        return "the fused CPU kernels (repflow_tf.native)"
    reason = native.unavailable_reason()
    unavailable = f": the fused kernels are unavailable, {reason}" if reason else ""
    return f"the TensorFlow ops (XLA){unavailable}"


def _fmt(value, spec=".1f"):
    return "-" if value is None or value != value else format(value, spec)


def _main_cell(payload: str) -> None:
    request = json.loads(payload)
    settings = Settings(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in request["settings"].items()}
    )
    print(_RESULT_PREFIX + json.dumps(run_cell(*request["cell"], settings)), flush=True)


if __name__ == "__main__":
    _main_cell(sys.argv[1])
