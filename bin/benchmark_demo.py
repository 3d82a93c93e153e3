"""The paper's central claim at small scale: flow vs RGB-only on the synthetic motion dataset.

Trains every config in --configs (default: the flow demo and its RGB-only baseline, the same
2D ResNet-18 and budget) into <workdir_root>/<config name>, then prints one table row per model:
validation accuracy, epochs, wall time, parameters. Runs already finished are reused (training
resumes), so the script can be re-run after a kill.

    python bin/benchmark_demo.py --workdir_root=runs/benchmark_demo
    python bin/benchmark_demo.py --set trainer.epochs=4 --workdir_root=runs/quick_demo
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from repflow_tf.config import ConfigError, load_config  # noqa: E402
from repflow_tf.data.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["configs/demo.toml", "configs/demo_rgb.toml"], "Configs to compare.")
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
    from repflow_tf import training  # TensorFlow starts here, after the flags are checked.

    rows = []
    for path, config in configs.items():
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            result = training.train(config, os.path.join(FLAGS.workdir_root, name))
        except training.TrainingError as error:
            fail(str(error))
        summary = result.summary
        rows.append(
            {
                "config": path,
                "flow_position": config.model.flow_position,
                "val_accuracy": summary["val_accuracy"],
                "epochs": summary["epochs"],
                "wall_seconds": summary["wall_time_s"],
                "parameters": result.model.count_params(),
            }
        )
    print(f"\n{'config':<28} {'flow':>8} {'val acc':>8} {'epochs':>6} {'wall':>8} {'params':>9}")
    for row in rows:
        print(
            f"{row['config']:<28} {row['flow_position']:>8} {row['val_accuracy']:>8.3f} "
            f"{row['epochs']:>6} {row['wall_seconds'] / 60:>6.1f} m {row['parameters']:>9,}"
        )
    chance = 1 / configs[FLAGS.configs[0]].model.num_classes
    print(f"chance: {chance:.3f}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w", encoding="utf-8") as file:
            json.dump(rows, file, indent=2)


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
