"""Trains a model from an experiment config into a workdir (resuming from its checkpoints).

    python bin/train.py --config=configs/demo.toml --workdir=runs/demo
    python bin/train.py --config=configs/demo.toml --workdir=runs/demo \
        --set trainer.epochs=2 --set optimizer.learning_rate=0.01
    python bin/train.py --config=configs/hmdb51_resnet34_flow.toml --workdir=runs/hmdb \
        --strategy=mirrored --precision=mixed_float16 --jit_compile
    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}' \
        python bin/train.py --config=... --workdir=/shared/runs/x --strategy=multi_worker

Writes <workdir>/config.toml, class_names.json, checkpoints/, model.keras, logs/ (TensorBoard)
and summary.json. Exit status 2, with one line on stderr, when the config, the data and the
workdir disagree (nothing is written then).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.config import PRECISIONS, STRATEGIES, ConfigError, load_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Experiment TOML file (see configs/).")
flags.DEFINE_string("workdir", None, "Output folder; an existing one is resumed.")
flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
flags.DEFINE_enum("strategy", None, STRATEGIES, "Overrides runtime.strategy.")
flags.DEFINE_enum("precision", None, PRECISIONS, "Overrides runtime.precision.")
flags.DEFINE_bool("jit_compile", None, "Overrides runtime.jit_compile (XLA).")
flags.mark_flags_as_required(["config", "workdir"])


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress
    overrides = list(FLAGS.set)
    for name in ("strategy", "precision", "jit_compile"):
        value = getattr(FLAGS, name)
        if value is not None:
            overrides.append(
                f"runtime.{name}={str(value).lower() if name == 'jit_compile' else value}"
            )
    try:
        config = load_config(FLAGS.config, overrides)
    except ConfigError as error:
        fail(str(error))
    from repflow_tf import training  # TensorFlow starts here, after the flags are checked.

    try:
        training.train(config, FLAGS.workdir)
    except training.TrainingError as error:
        fail(str(error))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
