"""The paper's Table 9 speed claim at small scale: TV-L1 + two-stream vs representation flow.

Times, per clip and side by side in one run, the TV-L1 optical flow extraction (OpenCV, as the
converter runs it) plus the flow CNN and two-stream models, against the representation flow
models with the same 2D ResNet-18 and clip size; prints a Markdown table with the paper's
run-times and the demo runs' validation accuracies (from runs/<name>/eval_val/metrics.json:
train and evaluate configs/demo*.toml first). See `repflow_tf.benchmarks.two_stream`.

    python bin/benchmark_two_stream.py               # demo clips and 16 x 112 x 112 clips
    python bin/benchmark_two_stream.py --quick       # demo clips only
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.fileio import write_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("quick", False, "Only the demo clip size.")
flags.DEFINE_integer("repeats", 5, "Timed calls per cell (median).", lower_bound=1)
flags.DEFINE_string("runs_dir", "runs", "Where the demo workdirs (demo, demo_two_stream, ...) are.")
flags.DEFINE_string("markdown_out", None, "Also write the report to this file.")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    logging.set_verbosity(logging.WARNING)
    from repflow_tf.benchmarks import two_stream
    from repflow_tf.data import DataError

    settings = [two_stream.DEMO] if FLAGS.quick else [two_stream.DEMO, two_stream.LARGER]
    try:
        text = two_stream.run(settings, FLAGS.repeats, FLAGS.runs_dir)
    except DataError as error:  # OpenCV missing
        fail(str(error))
    print(text)
    if FLAGS.markdown_out:
        write_atomic(FLAGS.markdown_out, text)


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
