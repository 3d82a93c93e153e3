"""The paper's central claim at small scale: flow vs RGB-only on the synthetic motion dataset.

Trains every config in --configs (default: the demo's learned flow after block 1, flow on the
input frames and the RGB-only baseline: the same 2D ResNet-18 and budget) into
<workdir_root>/<config name>, then prints one table row per model: validation accuracy, epochs,
wall time, parameters. Runs already finished are reused (training resumes), so the script can
be re-run after a kill. See `repflow_tf.benchmarks.demo`.

    python bin/benchmark_demo.py --workdir_root=runs/benchmark_demo
    python bin/benchmark_demo.py --set trainer.epochs=4 --workdir_root=runs/quick_demo
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from repflow_tf.benchmarks import demo  # noqa: E402
from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.config import ConfigError, load_config  # noqa: E402
from repflow_tf.fileio import write_json_atomic  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "configs",
    ["configs/demo.toml", "configs/demo_input_flow.toml", "configs/demo_rgb.toml"],
    "Configs to compare.",
)
flags.DEFINE_string("workdir_root", "runs/benchmark_demo", "One workdir per config below this.")
flags.DEFINE_multi_string("set", [], "Override applied to every config (repeatable).")
flags.DEFINE_string("json_out", None, "Also write the table as JSON to this file.")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    logging.set_verbosity(logging.WARNING)
    try:
        configs = {path: load_config(path, FLAGS.set) for path in FLAGS.configs}
    except ConfigError as error:
        fail(str(error))
    from repflow_tf.training import TrainingError

    try:
        rows = demo.run(configs, FLAGS.workdir_root)
    except TrainingError as error:
        fail(str(error))
    print(demo.format_table(rows, configs[FLAGS.configs[0]].model.num_classes))
    if FLAGS.json_out:
        write_json_atomic(FLAGS.json_out, rows, indent=2)


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
