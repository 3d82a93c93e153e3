"""Benchmarks the flow layer: ours against autodiff of the plain loop, speed and memory.

See `repflow_tf.benchmarks.layer` for what each cell measures.

    python bin/benchmark_layer.py                 # everything (about 10 minutes on 2 CPU cores)
    python bin/benchmark_layer.py --quick         # a smoke run in about a minute
    python bin/benchmark_layer.py --cases=flow_block,resnet18 --json_out=/tmp/layer.json
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from repflow_tf.startup import import_tensorflow

import_tensorflow()  # quietly, before the benchmark module imports it: the first line is ours

from repflow_tf.benchmarks import layer  # noqa: E402
from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.fileio import write_json_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", list(layer.CASES), f"Cases, a subset of {layer.CASES}.")
flags.DEFINE_list("impls", list(layer.IMPLS), f"Implementations, a subset of {layer.IMPLS}.")
flags.DEFINE_integer("repeats", 5, "Timed calls per cell (median reported).", lower_bound=1)
flags.DEFINE_float("cell_seconds", 60.0, "Stop repeating a cell once its timed calls took this.")
flags.DEFINE_integer("num_iter", 20, "TV-L1 iterations of the timed cells.", lower_bound=1)
flags.DEFINE_integer("memory_iterations", 50, "Iterations of the memory cells.", lower_bound=1)
flags.DEFINE_bool("quick", False, "Smoke run: flow_block only, ours vs autodiff_graph, 1 call.")
flags.DEFINE_string("json_out", None, "Also write every cell's record to this JSON file.")


def _run(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    for name, allowed in (("cases", layer.CASES), ("impls", layer.IMPLS)):
        unknown = sorted(set(FLAGS[name].value) - set(allowed))
        if unknown:
            fail(f"--{name} must be a subset of {allowed}. Received: {unknown}")
    settings = layer.Settings(
        cases=tuple(FLAGS.cases),
        impls=tuple(FLAGS.impls),
        repeats=FLAGS.repeats,
        cell_seconds=FLAGS.cell_seconds,
        num_iter=FLAGS.num_iter,
        memory_iterations=FLAGS.memory_iterations,
    )
    if FLAGS.quick:
        settings = dataclasses.replace(
            settings, cases=("flow_block",), impls=("ours", "autodiff_graph"), repeats=1
        )
    print(f"repflow_tf layer benchmark: {settings}", flush=True)
    results = layer.run(settings)
    print()
    print(layer.report(results, settings))
    if FLAGS.json_out:
        record = {"settings": dataclasses.asdict(settings), "results": results}
        write_json_atomic(FLAGS.json_out, record, indent=2)
        print(f"Wrote {FLAGS.json_out}")


def main():
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
