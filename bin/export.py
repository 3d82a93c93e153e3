"""Exports a trained model as a SavedModel with a uint8 `frames` signature (see repflow_tf.export),
or as TFLite / ONNX (see repflow_tf.export_formats), checked against Keras after conversion.

    repflow-export --workdir=runs/demo --output=runs/demo/export
    repflow-export --workdir=runs/demo --format=tflite   # runs/demo/export_tflite/model.tflite
    repflow-export --workdir=runs/demo --format=onnx     # runs/demo/export_onnx/model.onnx
    repflow-export --model=best.keras --config=config.toml --class_names=classes.json \\
        --output=export

Exit status 2 (one-line message) for bad flags, a model that does not match its config or class
list, an output folder that exists and is not empty (without --overwrite), a converter that fails
or a converted model whose logits differ from Keras by more than 1e-3 on a probe clip.
"""

import os

from absl import app, flags

from repflow_tf.cli import fail, parse_flags, start_tensorflow
from repflow_tf.config import ConfigError
from repflow_tf.options import EXPORT_FORMATS
from repflow_tf.workdir import WorkdirError, read_workdir

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training workdir (config.toml, class_names.json, model.keras)."
)
flags.DEFINE_string("model", None, "A .keras model (instead of <workdir>/model.keras).")
flags.DEFINE_string("config", None, "Its config TOML (instead of <workdir>/config.toml).")
flags.DEFINE_string(
    "class_names",
    None,
    "Class names, a JSON list or one per line (default: class_names.json of the workdir, "
    "else next to --model).",
)
flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
flags.DEFINE_enum(
    "format",
    "saved_model",
    EXPORT_FORMATS,
    "saved_model (a SavedModel folder), tflite (<output>/model.tflite) or onnx "
    "(<output>/model.onnx), each with its class names and preprocessing facts.",
)
flags.DEFINE_string(
    "output",
    None,
    "Export folder (default: <workdir>/export for a SavedModel, <workdir>/export_<format> else).",
)
flags.DEFINE_bool("overwrite", False, "Replace an existing export at --output.")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    if FLAGS.workdir is None and (FLAGS.model is None or FLAGS.config is None):
        fail("give --workdir, or both --model and --config")
    folder = "export" if FLAGS.format == "saved_model" else f"export_{FLAGS.format}"
    output = FLAGS.output or (FLAGS.workdir and os.path.join(FLAGS.workdir, folder))
    if not output:
        fail("--output is required with --model/--config")
    try:  # the config and class names, before TensorFlow starts
        workdir = read_workdir(
            FLAGS.workdir,
            model_path=FLAGS.model,
            config_path=FLAGS.config,
            class_names_path=FLAGS.class_names,
            overrides=FLAGS.set,
        )
    except (WorkdirError, ConfigError) as error:
        fail(str(error))
    start_tensorflow()
    from repflow_tf.export import ExportError, export_trained

    try:
        path = export_trained(workdir, output, overwrite=FLAGS.overwrite, format=FLAGS.format)
    except (WorkdirError, ConfigError, ExportError, ValueError, OSError) as error:
        fail(str(error))
    print(
        f"exported {workdir.model_path} ({len(workdir.class_names)} classes) to {path} "
        f"({FLAGS.format})"
    )


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
