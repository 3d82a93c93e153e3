"""Benchmarks the representation flow layer against a Model-Garden-style port of the same algorithm.

Times forward and forward+backward (gradients w.r.t. the input and every trainable variable) in
three execution modes (eager, tf.function, tf.function(jit_compile=True)) for

* ``paper_reduce``: the paper's typical in-network shape, a (batch 2, 16 frames, 28x28, 128
  channels) feature map, 1x1x1 Conv3D 128 -> 32, then the flow layer (20 iterations);
* ``paper_flow``: the flow layer alone on the reduced (2, 16, 28, 28, 32) tensor;
* ``rgb224``: the flow layer alone on a 224x224 RGB clip, default (1, 8, 224, 224, 3) to keep a
  2-core CPU run finite (the paper's 16 frames: ``--rgb_frames=16``; ``--rgb_batch=2``).

Each cell is timed for ``repflow_tf.layers.RepresentationFlow`` ("ours": depthwise kernels, one
``tf.while_loop`` in XLA-compiled forward / backward functions) and for ``ModelGardenStyleFlow``
below: the same math written the way the widely
copied TensorFlow port (TF Model Garden, ``assemblenet/modeling/rep_flow_2d_layer.py``) writes it:
a Python ``for`` loop that unrolls the iterations into the graph, image gradients / divergence /
forward differences as dense ``tf.nn.conv2d`` with C x C kernels that are zero off the diagonal
(``taps[:, :, None, None] * eye(C)``), and the thresholding step as three masked ``tf.where``s.
Its boundary handling, normalisation and θ, λ, τ parametrisation follow ours, so the outputs agree
(checked at start-up); only the way the computation is expressed differs. The ratio printed is
baseline ms / ours ms (> 1: ours is faster).

Peak memory: with a GPU, ``tf.config.experimental.get_memory_info`` peak bytes during the timed
calls (stats reset before each cell). On CPU, TensorFlow keeps no allocator statistics, so the
number is the process's resident set: the high-water mark (VmHWM, reset through
/proc/self/clear_refs after the warm-up calls) during the timed calls, minus the resident set just
before the cell builds its model and input (fwd+bwd is measured after fwd in the same process).
It therefore counts the input, the weights, tensors, graph / executable memory and whatever
the allocator keeps cached, not the compiler's transient memory during tracing. With
``--isolate`` (the default of a full run) every (case, implementation, mode) runs in a fresh
subprocess so earlier cells cannot lend it memory; without it (``--quick``) cells share one process,
and a cell can reuse memory an earlier cell freed, so the numbers are lower bounds.

``--quick`` is a smoke demo that finishes in well under a minute: only ``paper_flow`` at
(1, 4, 28, 28, 32), 5 iterations, one timed call per cell, all in one process (explicitly given
flags override these). Every cell stops repeating once its timed calls took ``--cell_seconds``.

Usage (from the repository root, package installed with ``pip install -e .``):

    python bin/benchmark_layer.py --quick          # smoke demo
    python bin/benchmark_layer.py                  # full run (all cases, modes, directions)
    python bin/benchmark_layer.py --json_out=/tmp/bench.json --rgb_frames=16 --repeats=10
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from repflow_tf import layers as rf_layers  # noqa: E402
from repflow_tf import ops  # noqa: E402
from repflow_tf.layers import RepresentationFlow, normalize_per_channel  # noqa: E402


def _source_fingerprint():
    """Short hash of the ops.py + layers.py this process imported (they may change under a run)."""
    digest = hashlib.sha256()
    for module in (ops, rf_layers):
        with open(module.__file__, "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:12]


SOURCE_FINGERPRINT = _source_fingerprint()

CASES = ("paper_reduce", "paper_flow", "rgb224")
MODES = ("eager", "function", "xla")
DIRECTIONS = ("forward", "backward")
IMPLS = ("ours", "baseline")
_DIRECTION_LABEL = {"forward": "fwd", "backward": "fwd+bwd"}
_RESULT_PREFIX = "BENCHMARK_CELL_RESULT "

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", list(CASES), f"Cases to run, a subset of {CASES}.")
flags.DEFINE_list("modes", list(MODES), f"Execution modes, a subset of {MODES}.")
flags.DEFINE_integer("batch", 2, "Batch size of the paper_* cases.")
flags.DEFINE_integer("frames", 16, "Frames of the paper_* cases.")
flags.DEFINE_integer("size", 28, "Height and width of the paper_* cases.")
flags.DEFINE_integer("channels", 128, "Input channels of paper_reduce (reduced by a 1x1 conv).")
flags.DEFINE_integer("reduced", 32, "Channels the flow is computed on in the paper_* cases.")
flags.DEFINE_integer("rgb_batch", 1, "Batch size of the rgb224 case.")
flags.DEFINE_integer("rgb_frames", 8, "Frames of the rgb224 case.")
flags.DEFINE_integer("rgb_size", 224, "Height and width of the rgb224 case.")
flags.DEFINE_integer("num_iter", 20, "TV-L1 iterations.")
flags.DEFINE_integer("repeats", 3, "Timed calls per cell and direction (median reported).")
flags.DEFINE_float(
    "cell_seconds",
    15.0,
    "Stop repeating a cell's timed calls once they took this long in all "
    "(at least one timed call is always made; the table's n says how many were).",
)
flags.DEFINE_integer("warmup", 1, "Untimed calls per cell before timing (tracing / compiling).")
flags.DEFINE_boolean(
    "quick",
    False,
    "Smoke demo (well under a minute): overrides the defaults of "
    "--cases/--batch/--frames/--num_iter/--repeats (explicit flags still win).",
)
flags.DEFINE_boolean(
    "isolate",
    None,
    "Run each (case, implementation, mode) in its own subprocess for honest peak "
    "memory on CPU. Default: on for a full run, off with --quick.",
)
flags.DEFINE_boolean("baseline", True, "Also time the Model-Garden-style baseline.")
flags.DEFINE_float("check_tolerance", 1e-3, "Max |ours - baseline| allowed by the start-up check.")
flags.DEFINE_string("json_out", None, "Write all results (and the settings) to this JSON file.")
flags.DEFINE_integer("seed", 0, "Seed of the random inputs and the 1x1 reduce conv.")
QUICK_DEFAULTS = {
    "cases": ["paper_flow"],
    "batch": 1,
    "frames": 4,
    "num_iter": 5,
    "repeats": 1,
}
flags.DEFINE_string("cell", None, "Internal: run one 'case/impl/mode' cell and print its result.")


# ================================ Baseline ================================


class ModelGardenStyleFlow(keras.layers.Layer):
    """Algorithm 1 written the way the widely copied TensorFlow port writes it (benchmark only).

    Same inputs, outputs, learnable groups and math as `RepresentationFlow`; different expression:
    the iterations are a Python loop (so the graph holds `num_iter` copies of the body), every
    kernel is a dense (kh, kw, C, C) `tf.nn.conv2d` filter with only the diagonal non-zero, the
    thresholding is three masked `tf.where`s, and each dual update recomputes |∇u|.
    """

    def __init__(self, num_iter=20, gradient="sobel", learn=("divergence", "hyper"), **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.num_iter = num_iter
        self.gradient = gradient
        self.learn = tuple(learn)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        eye = np.eye(channels, dtype="float32")

        def dense_weight(name, depthwise, group):
            # (kh, kw, C, 1) depthwise taps -> (kh, kw, C, C) kernel with an identity mask.
            value = depthwise[:, :, :1, 0][:, :, :, None] * eye[None, None]
            return self.add_weight(
                name=name,
                shape=value.shape,
                initializer=lambda shape, dtype=None: tf.constant(value, dtype=dtype),
                trainable=group in self.learn,
                autocast=False,
            )

        image_x, image_y = ops.image_gradient_kernels(self.gradient, channels)
        diff_x, diff_y = ops.difference_kernels(channels)
        self.img_grad_x = dense_weight("img_grad_x", image_x, "sobel")
        self.img_grad_y = dense_weight("img_grad_y", image_y, "sobel")
        self.f_grad_x = dense_weight("f_grad_x", diff_x, "divergence")
        self.f_grad_y = dense_weight("f_grad_y", diff_y, "divergence")
        self.f_grad_x2 = dense_weight("f_grad_x2", diff_x, "divergence")
        self.f_grad_y2 = dense_weight("f_grad_y2", diff_y, "divergence")
        self.log_hyper = {}
        for name, value in (("theta", 0.3), ("lambda", 0.15), ("tau", 0.25)):
            self.log_hyper[name] = self.add_weight(
                name=f"log_{name}",
                shape=(),
                initializer=keras.initializers.Constant(math.log(value)),
                trainable="hyper" in self.learn,
                autocast=False,
            )

    def call(self, inputs):
        clips = normalize_per_channel(tf.cast(inputs, tf.float32))
        shape = tf.shape(clips)
        frame_shape = tf.stack([shape[0] * (shape[1] - 1), shape[2], shape[3], shape[4]])
        img1 = tf.reshape(clips[:, :-1], frame_shape)
        img2 = tf.reshape(clips[:, 1:], frame_shape)
        theta = tf.exp(self.log_hyper["theta"].value)
        l_t = tf.exp(self.log_hyper["lambda"].value) * theta
        taut = tf.exp(self.log_hyper["tau"].value) / theta

        def conv(x, kernel):
            return tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "VALID")

        def edge_pad(x, kernel):
            kh, kw = kernel.shape[0], kernel.shape[1]
            paddings = [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]]
            return tf.pad(x, paddings, mode="SYMMETRIC")

        def divergence(p1, p2):
            grad_x = conv(tf.pad(p1, [[0, 0], [0, 0], [1, 0], [0, 0]]), self.f_grad_x)
            grad_y = conv(tf.pad(p2, [[0, 0], [1, 0], [0, 0], [0, 0]]), self.f_grad_y)
            return grad_x + grad_y

        def forward_grad(x):
            grad_x = tf.pad(conv(x, self.f_grad_x2), [[0, 0], [0, 0], [0, 1], [0, 0]])
            grad_y = tf.pad(conv(x, self.f_grad_y2), [[0, 0], [0, 1], [0, 0], [0, 0]])
            return grad_x, grad_y

        grad2_x = conv(edge_pad(img2, self.img_grad_x), self.img_grad_x)
        grad2_y = conv(edge_pad(img2, self.img_grad_y), self.img_grad_y)
        grad = grad2_x**2 + grad2_y**2 + 1e-12
        rho_c = img2 - img1
        u1 = tf.zeros_like(img1)
        u2 = tf.zeros_like(img1)
        p11 = tf.zeros_like(img1)
        p12 = tf.zeros_like(img1)
        p21 = tf.zeros_like(img1)
        p22 = tf.zeros_like(img1)
        zeros = tf.zeros_like(img1)
        for _ in range(self.num_iter):
            rho = rho_c + grad2_x * u1 + grad2_y * u2
            mask1 = rho < -l_t * grad
            tmp11 = tf.where(mask1, l_t * grad2_x, zeros)
            tmp12 = tf.where(mask1, l_t * grad2_y, zeros)
            mask2 = rho > l_t * grad
            tmp21 = tf.where(mask2, -l_t * grad2_x, zeros)
            tmp22 = tf.where(mask2, -l_t * grad2_y, zeros)
            mask3 = (~mask1) & (~mask2) & (grad > 1e-12)
            tmp31 = tf.where(mask3, (-rho / grad) * grad2_x, zeros)
            tmp32 = tf.where(mask3, (-rho / grad) * grad2_y, zeros)
            v1 = tmp11 + tmp21 + tmp31 + u1
            v2 = tmp12 + tmp22 + tmp32 + u2
            u1 = v1 + theta * divergence(p11, p12)
            u2 = v2 + theta * divergence(p21, p22)
            u1x, u1y = forward_grad(u1)
            u2x, u2y = forward_grad(u2)
            p11 = (p11 + taut * u1x) / (1.0 + taut * tf.sqrt(u1x**2 + u1y**2 + 1e-12))
            p12 = (p12 + taut * u1y) / (1.0 + taut * tf.sqrt(u1x**2 + u1y**2 + 1e-12))
            p21 = (p21 + taut * u2x) / (1.0 + taut * tf.sqrt(u2x**2 + u2y**2 + 1e-12))
            p22 = (p22 + taut * u2y) / (1.0 + taut * tf.sqrt(u2x**2 + u2y**2 + 1e-12))
        out_shape = tf.concat([shape[:1], shape[1:2] - 1, shape[2:]], axis=0)
        return tf.concat([tf.reshape(u1, out_shape), tf.reshape(u2, out_shape)], axis=-1)


# ================================ Cells ================================


def _apply_quick_defaults():
    """--quick replaces the defaults of the flags in QUICK_DEFAULTS that were not given."""
    for name, value in QUICK_DEFAULTS.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def case_spec(case):
    """(input shape, reduce-to channels or None) of a case."""
    if case == "paper_reduce":
        return (FLAGS.batch, FLAGS.frames, FLAGS.size, FLAGS.size, FLAGS.channels), FLAGS.reduced
    if case == "paper_flow":
        return (FLAGS.batch, FLAGS.frames, FLAGS.size, FLAGS.size, FLAGS.reduced), None
    if case == "rgb224":
        size = FLAGS.rgb_size
        return (FLAGS.rgb_batch, FLAGS.rgb_frames, size, size, 3), None
    raise ValueError(f"Unknown case {case!r}; expected one of {CASES}.")


def build_model(case, impl):
    shape, reduce_to = case_spec(case)
    flow_cls = RepresentationFlow if impl == "ours" else ModelGardenStyleFlow
    layers = [flow_cls(num_iter=FLAGS.num_iter, name="flow")]
    if reduce_to is not None:
        init = keras.initializers.HeNormal(seed=FLAGS.seed)
        layers.insert(0, keras.layers.Conv3D(reduce_to, 1, use_bias=False, kernel_initializer=init))
    model = keras.Sequential(layers, name=f"{case}_{impl}")
    model.build(shape)
    return model


def make_input(shape, seed):
    # Smooth-ish random content that moves one pixel right per frame, scaled like features.
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 1.0, shape[:1] + shape[2:]).astype("float32")
    frames = [np.roll(base, t, axis=2) for t in range(shape[1])]
    return tf.constant(np.stack(frames, axis=1))


def make_step(model, direction, mode):
    variables = model.trainable_variables

    def forward(x):
        return model(x)

    def backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_mean(tf.square(y))
        return loss, tape.gradient(loss, [x] + list(variables))

    fn = forward if direction == "forward" else backward
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"), reduce_retracing=True)


def _block(result):
    for tensor in tf.nest.flatten(result):
        tensor.numpy()


def graph_size(step, x):
    """(top-level ops, ops including every nested function such as the while-loop body)."""
    graph = step.get_concrete_function(x).graph
    graph_def = graph.as_graph_def()
    nested = sum(len(function.node_def) for function in graph_def.library.function)
    return len(graph_def.node), len(graph_def.node) + nested


def _proc_status_kb(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


class MemoryMeter:
    """Peak memory of the timed calls of one cell (see the module docstring for the meaning)."""

    def __init__(self):
        self.gpu = bool(tf.config.list_logical_devices("GPU"))
        self.can_reset = os.path.exists("/proc/self/clear_refs")
        self.kind = "gpu_peak" if self.gpu else "rss_hwm_delta"

    def start_cell(self):
        self.rss_before = _proc_status_kb("VmRSS")

    def before_timed(self):
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return
        if self.can_reset:
            try:
                with open("/proc/self/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")  # Reset VmHWM to the current RSS.
            except OSError:
                self.can_reset = False

    def peak_mb(self):
        if self.gpu:
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        hwm = _proc_status_kb("VmHWM")
        if hwm is None or self.rss_before is None:
            return float("nan")
        return max(hwm - self.rss_before, 0) / 1024


def run_cell(case, impl, mode, meter):
    """Times one (case, impl, mode) for both directions; returns a list of result dicts."""
    shape, _ = case_spec(case)
    keras.utils.set_random_seed(FLAGS.seed)
    meter.start_cell()
    model = build_model(case, impl)
    x = make_input(shape, FLAGS.seed)
    results = []
    for direction in DIRECTIONS:
        record = {
            "case": case,
            "impl": impl,
            "mode": mode,
            "direction": direction,
            "shape": list(shape),
            "source": SOURCE_FINGERPRINT,
        }
        step = make_step(model, direction, mode)
        start = time.perf_counter()
        try:
            _block(step(x))
        except Exception as error:  # noqa: BLE001 - a failing cell is a result, not a crash.
            message = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
            record["error"] = f"{type(error).__name__}: {message}"[:400]
            results.append(record)
            continue
        first_s = time.perf_counter() - start
        for _ in range(FLAGS.warmup - 1):
            _block(step(x))
        meter.before_timed()
        times = []
        while len(times) < FLAGS.repeats and (not times or sum(times) < FLAGS.cell_seconds * 1e3):
            start = time.perf_counter()
            _block(step(x))
            times.append((time.perf_counter() - start) * 1e3)
        record.update(
            ms=statistics.median(times),
            ms_all=times,
            first_call_s=first_s,
            peak_mb=meter.peak_mb(),
        )
        if mode == "function":
            record["graph_ops"], record["graph_ops_nested"] = graph_size(step, x)
        results.append(record)
    return results


def run_isolated(case, impl, mode):
    """Runs one cell in a fresh interpreter; returns its result dicts."""
    names = [
        "batch",
        "frames",
        "size",
        "channels",
        "reduced",
        "rgb_batch",
        "rgb_size",
        "num_iter",
        "rgb_frames",
        "repeats",
        "cell_seconds",
        "warmup",
        "seed",
    ]
    args = [f"--{name}={getattr(FLAGS, name)}" for name in names]
    command = [sys.executable, os.path.abspath(__file__), f"--cell={case}/{impl}/{mode}", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX) :])
    raise RuntimeError(
        f"Cell {case}/{impl}/{mode} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    )


# ================================ Report ================================


def sanity_check():
    """Ours and the baseline on a small input: same outputs, same number of trainable weights."""
    shape = (2, 4, 12, 12, 5)
    x = make_input(shape, seed=1) * 3.0
    outputs = []
    for cls in (RepresentationFlow, ModelGardenStyleFlow):
        layer = cls(num_iter=FLAGS.num_iter)
        outputs.append(layer(x))
    diff = float(tf.reduce_max(tf.abs(outputs[0] - outputs[1])))
    scale = float(tf.reduce_max(tf.abs(outputs[0])))
    ok = diff <= FLAGS.check_tolerance
    print(
        f"Sanity check, input {shape}, {FLAGS.num_iter} iterations: max |ours - baseline| = "
        f"{diff:.2e} (max |flow| = {scale:.3f}, tolerance {FLAGS.check_tolerance:g}) -> "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise SystemExit("The baseline does not compute the same flow as RepresentationFlow.")
    return diff


def _fmt(value, spec):
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def print_report(results, meter_kind, isolated):
    index = {(r["case"], r["impl"], r["mode"], r["direction"]): r for r in results}
    cases = list(dict.fromkeys(r["case"] for r in results))
    modes = list(dict.fromkeys(r["mode"] for r in results))
    print()
    print("Shapes (batch, frames, height, width, channels):")
    for case in cases:
        shape, reduce_to = case_spec(case)
        what = f"1x1x1 Conv3D {shape[-1]}->{reduce_to}, then flow" if reduce_to else "flow only"
        print(f"  {case:<13} {str(tuple(shape)):<24} {what}, {FLAGS.num_iter} iterations")
    if meter_kind == "gpu_peak":
        memory = "peak MB = TF GPU allocator peak during the timed calls"
    else:
        memory = (
            "peak MB = process RSS high-water mark during the timed calls minus RSS before the "
            "cell built its model and input"
            + (
                " (each case/impl/mode in a fresh subprocess)"
                if isolated
                else " (shared process: lower bound)"
            )
        )
    print(
        f"ms = median of n timed calls (up to {FLAGS.repeats}, fewer once a cell's timed calls "
        f"pass {FLAGS.cell_seconds:g} s) after {FLAGS.warmup} warm-up call(s); 1st s = first "
        "call incl. tracing/compilation;"
    )
    print(f"{memory};")
    print("ratio = baseline ms / ours ms (> 1: ours faster).  baseline = Model-Garden-style port.")
    header = (
        f"{'case':<13} {'mode':<9} {'direction':<9} | {'ours ms':>9} {'n':>2} {'MB':>6} "
        f"{'1st s':>6} | {'base ms':>9} {'n':>2} {'MB':>6} {'1st s':>6} | {'ratio':>7}"
    )
    print()
    print(header)
    print("-" * len(header))

    def columns(r):
        if r is None:
            return f"{'-':>9} {'-':>2} {'-':>6} {'-':>6}"
        if "error" in r:
            return f"{'ERROR':>9} {'-':>2} {'-':>6} {'-':>6}"
        return (
            f"{r['ms']:>9.1f} {len(r['ms_all']):>2} {_fmt(r['peak_mb'], '6.0f'):>6} "
            f"{r['first_call_s']:>6.1f}"
        )

    ratios = []
    for case in cases:
        for mode in modes:
            for direction in DIRECTIONS:
                ours = index.get((case, "ours", mode, direction))
                base = index.get((case, "baseline", mode, direction))
                if ours is None:
                    continue
                ok = base and "error" not in base and "error" not in ours
                ratio = base["ms"] / ours["ms"] if ok else None
                if ratio is not None:
                    ratios.append((ratio, case, mode, direction))
                    ours["ratio"] = base["ratio"] = ratio
                ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
                print(
                    f"{case:<13} {mode:<9} {_DIRECTION_LABEL[direction]:<9} | {columns(ours)} | "
                    f"{columns(base)} | {ratio_text:>7}"
                )
    errors = [r for r in results if "error" in r]
    if errors:
        print()
        print("Failed cells:")
        for r in errors:
            print(
                f"  {r['case']} {r['impl']} {r['mode']} {_DIRECTION_LABEL[r['direction']]}: "
                f"{r['error']}"
            )
    sized = [r for r in results if "graph_ops" in r]
    if sized:
        print()
        print(
            f"tf.function graph size, ops (top level / including nested functions such as the "
            f"while-loop body), {FLAGS.num_iter} iterations:"
        )
        header = f"{'case':<13} {'impl':<9} {'fwd':>14} {'fwd+bwd':>16}"
        print(header)
        print("-" * len(header))
        for case in cases:
            for impl in IMPLS:
                cells = [index.get((case, impl, "function", d)) for d in DIRECTIONS]
                if None in cells:
                    continue
                fwd, bwd = (f"{c['graph_ops']} / {c['graph_ops_nested']}" for c in cells)
                print(f"{case:<13} {impl:<9} {fwd:>14} {bwd:>16}")
    print()
    if ratios:
        geomean = math.exp(sum(math.log(r[0]) for r in ratios) / len(ratios))
        low, high = min(ratios), max(ratios)
        faster = sum(r[0] > 1 for r in ratios)

        def where(r):
            return f"{r[1]} {r[2]} {_DIRECTION_LABEL[r[3]]}"

        print(
            f"Summary: ours faster in {faster}/{len(ratios)} cells; baseline/ours geometric mean "
            f"{geomean:.2f}x (min {low[0]:.2f}x {where(low)}, max {high[0]:.2f}x {where(high)})."
        )
    best = {}
    for r in results:
        if r["impl"] == "ours" and "error" not in r:
            key = (r["case"], r["direction"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    fastest = (
        f"{case} {_DIRECTION_LABEL[d]}: {r['mode']} {r['ms']:.1f} ms"
        for (case, d), r in best.items()
    )
    print("Fastest mode for ours: " + "; ".join(fastest))


def _validate_flags():
    for name, allowed in (("cases", CASES), ("modes", MODES)):
        unknown = [v for v in getattr(FLAGS, name) if v not in allowed]
        if unknown:
            raise app.UsageError(f"--{name} must be a subset of {allowed}. Received: {unknown}")
    for name in (
        "batch",
        "frames",
        "size",
        "channels",
        "reduced",
        "rgb_batch",
        "rgb_frames",
        "rgb_size",
        "num_iter",
        "repeats",
        "warmup",
    ):
        minimum = 2 if name in ("frames", "rgb_frames") else 1
        if getattr(FLAGS, name) < minimum:
            raise app.UsageError(f"--{name} must be >= {minimum}. Received: {getattr(FLAGS, name)}")


def _run(argv):
    del argv
    if FLAGS.quick:
        _apply_quick_defaults()
    _validate_flags()
    if FLAGS.cell:
        case, impl, mode = FLAGS.cell.split("/")
        results = run_cell(case, impl, mode, MemoryMeter())
        print(_RESULT_PREFIX + json.dumps(results), flush=True)
        return
    isolate = FLAGS.isolate if FLAGS.isolate is not None else not FLAGS.quick
    meter = MemoryMeter()
    impls = IMPLS if FLAGS.baseline else IMPLS[:1]
    print(
        f"repflow_tf layer benchmark: TF {tf.__version__}, Keras {keras.__version__}, "
        f"Python {platform.python_version()}, device "
        f"{'GPU' if meter.gpu else 'CPU'} ({os.cpu_count()} logical CPUs), "
        f"{'quick' if FLAGS.quick else 'full'} run, "
        f"{'isolated subprocesses' if isolate else 'one process'}, "
        f"ops.py+layers.py sha256 {SOURCE_FINGERPRINT}"
    )
    check = sanity_check() if FLAGS.baseline else None
    results = []
    start = time.perf_counter()
    for case in FLAGS.cases:
        for mode in FLAGS.modes:
            for impl in impls:
                cell_start = time.perf_counter()
                if isolate:
                    cell = run_isolated(case, impl, mode)
                else:
                    cell = run_cell(case, impl, mode, meter)
                results.extend(cell)
                print(
                    f"  [{time.perf_counter() - start:6.1f} s] {case}/{impl}/{mode}: "
                    + ", ".join(
                        f"{_DIRECTION_LABEL[r['direction']]} "
                        + ("ERROR" if "error" in r else f"{r['ms']:.1f} ms")
                        for r in cell
                    )
                    + f" ({time.perf_counter() - cell_start:.1f} s)",
                    flush=True,
                )
    print_report(results, meter.kind, isolate)
    sources = sorted({r["source"] for r in results} | {SOURCE_FINGERPRINT})
    if len(sources) > 1:
        print(
            f"WARNING: repflow_tf/ops.py or layers.py changed during the run (source hashes "
            f"{', '.join(sources)}); cells are not comparable."
        )
    print(f"Total wall time {time.perf_counter() - start:.1f} s.")
    if FLAGS.json_out:
        payload = {
            "settings": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "device": "GPU" if meter.gpu else "CPU",
                "cpus": os.cpu_count(),
                "quick": FLAGS.quick,
                "isolated": isolate,
                "num_iter": FLAGS.num_iter,
                "repeats": FLAGS.repeats,
                "warmup": FLAGS.warmup,
                "memory_metric": meter.kind,
                "source_fingerprint": SOURCE_FINGERPRINT,
                "sanity_max_abs_diff": check,
                "shapes": {case: list(case_spec(case)[0]) for case in FLAGS.cases},
            },
            "results": results,
        }
        with open(FLAGS.json_out, "w") as out:
            json.dump(payload, out, indent=2)
        print(f"Wrote {FLAGS.json_out}")


def main():
    app.run(_run)


if __name__ == "__main__":
    main()
