"""Evaluates a training workdir: clip/video top-1 and top-5, per-class accuracy, confusion matrix.

    repflow-evaluate --workdir=runs/demo --split=val --num_clips=3

Writes <workdir>/eval_<split>/{metrics.json, confusion.json, confusion.png} and TensorBoard
summaries under <workdir>/logs/eval_<split>/, prints progress and a summary table.
Exit status 2 (one-line message) for bad flags, a workdir whose model, config, class list or
data disagree, or a broken split.
"""

import sys

from absl import app, flags

from repflow_tf.cli import fail, parse_flags, start_tensorflow
from repflow_tf.config import ConfigError
from repflow_tf.data import DataError
from repflow_tf.workdir import WorkdirError, one_line, read_workdir

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training workdir (config.toml, class_names.json, model.keras)."
)
flags.DEFINE_string("split", None, "Split under data.root to evaluate (default: data.val_split).")
flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
flags.DEFINE_integer(
    "num_clips", 0, "Clips per video averaged for video accuracy (0: data.eval_clips)."
)
flags.DEFINE_integer("batch_size", 0, "Videos per batch (0: data.batch_size).")
flags.DEFINE_string("output_dir", None, "Report folder (default: <workdir>/eval_<split>).")
flags.DEFINE_integer("log_every", 10, "Print a progress line every this many batches.")
flags.mark_flag_as_required("workdir")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    try:
        read_workdir(FLAGS.workdir, overrides=FLAGS.set)  # its config, before TensorFlow starts
    except (WorkdirError, ConfigError) as error:
        fail(str(error))
    tf = start_tensorflow()
    from repflow_tf.evaluation import evaluate_workdir

    try:
        evaluate_workdir(
            FLAGS.workdir,
            split=FLAGS.split,
            overrides=FLAGS.set,
            num_clips=FLAGS.num_clips or None,
            batch_size=FLAGS.batch_size or None,
            output_dir=FLAGS.output_dir,
            log_every=FLAGS.log_every,
            log=sys.stdout,
        )
    except (WorkdirError, ConfigError, DataError, ValueError, OSError) as error:
        fail(str(error))
    except tf.errors.OpError as error:  # e.g. a malformed record found while reading
        fail(one_line(error))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
