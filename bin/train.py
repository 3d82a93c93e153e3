"""Trains a model from an experiment config into a workdir (resuming from its checkpoints).

    repflow-train --config=configs/demo.toml --workdir=runs/demo
    repflow-train --config=configs/demo.toml --workdir=runs/demo2 --set trainer.epochs=2
    repflow-train --config=configs/hmdb51_resnet50_2d_fcf.toml --workdir=runs/hmdb \\
        --strategy=mirrored --precision=mixed_float16 --jit_compile
    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}' \\
        repflow-train --config=... --workdir=/shared/runs/x --strategy=multi_worker

Writes <workdir>/config.toml, class_names.json, checkpoints/, model.keras, logs/ (TensorBoard)
and summary.json. Exit status 2, with one line on stderr, when the config, the data and the
workdir disagree (nothing is written then). --verbose shows TensorFlow's own logs.
"""

from absl import app, flags

from repflow_tf.cli import fail, parse_flags, start_tensorflow
from repflow_tf.config import PRECISIONS, STRATEGIES, ConfigError, load_config

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
    start_tensorflow()  # after the flags and the config were checked
    from repflow_tf import training

    try:
        training.train(config, FLAGS.workdir)
    except training.TrainingError as error:
        fail(str(error))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
