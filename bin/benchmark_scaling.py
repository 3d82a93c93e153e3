"""Multi-worker scaling: 1, 2 and 4 local worker processes on loopback, and an 8-GPU projection.

    python bin/benchmark_scaling.py              # demo model, global batch 16, 1/2/4 workers
    python bin/benchmark_scaling.py --quick      # 1 and 2 workers, tiny: checks it runs
    python bin/benchmark_scaling.py --workers=1,2 --bandwidth_gb_s=150 --gpu_step_ms=120

Prints one line per configuration and writes <output_dir>/scaling.md and scaling.json: steps/s,
clips/s, and each step split into compute, all-reduce and input wait, then the bytes
all-reduced per step and what a ring all-reduce of them costs on --gpus GPUs at
--bandwidth_gb_s. See `repflow_tf.benchmarks.scaling`.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from repflow_tf.benchmarks import scaling  # noqa: E402
from repflow_tf.cli import fail, parse_flags, start_tensorflow  # noqa: E402
from repflow_tf.config import ConfigError  # noqa: E402
from repflow_tf.data import DataError  # noqa: E402

FLAGS = flags.FLAGS
DEFAULTS = scaling.ScalingSettings()
flags.DEFINE_bool("quick", False, "Tiny settings (1 and 2 workers, 2 steps): checks the run.")
flags.DEFINE_list("workers", [str(n) for n in DEFAULTS.workers], "Worker counts to measure.")
flags.DEFINE_string("config", DEFAULTS.config, "Experiment whose model is trained.")
flags.DEFINE_integer("global_batch", DEFAULTS.global_batch, "Clips per step, all workers.")
flags.DEFINE_integer("steps", DEFAULTS.steps, "Timed steps per measurement.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", DEFAULTS.warmup_steps, "Steps before timing.", lower_bound=1)
flags.DEFINE_integer("num_videos", DEFAULTS.num_videos, "Synthetic training videos.")
flags.DEFINE_integer(
    "shards_per_worker", DEFAULTS.shards_per_worker, "Shards per worker at the most workers."
)
flags.DEFINE_string("data_dir", DEFAULTS.data_dir, "Where the synthetic dataset is generated.")
flags.DEFINE_string("output_dir", DEFAULTS.output_dir, "Where scaling.md / scaling.json go.")
flags.DEFINE_string(
    "projection_config", DEFAULTS.projection_config, "Second model of the projection ('': none)."
)
flags.DEFINE_integer("gpus", DEFAULTS.gpus, "GPUs of the projection.", lower_bound=1)
flags.DEFINE_float("bandwidth_gb_s", DEFAULTS.bandwidth_gb_s, "Per-GPU all-reduce bandwidth, GB/s.")
flags.DEFINE_float("gpu_step_ms", DEFAULTS.gpu_step_ms, "Projected compute per step on a GPU.")
flags.DEFINE_float("timeout_s", DEFAULTS.timeout_s, "Limit per configuration, seconds.")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(DEFAULTS)}
    try:
        values["workers"] = tuple(int(n) for n in FLAGS.workers)
    except ValueError:
        fail(f"--workers expects worker counts like 1,2,4, got {','.join(FLAGS.workers)}")
    if FLAGS.quick:
        values.update(
            {name: value for name, value in scaling.QUICK.items() if not FLAGS[name].present}
        )
    try:
        settings = scaling.ScalingSettings(**values)
    except ValueError as error:
        fail(str(error))
    start_tensorflow()
    try:
        results = scaling.run(settings)
    except (DataError, ValueError, ConfigError, RuntimeError) as error:
        fail(str(error))
    print(scaling.format_markdown(results))
    print(f"written: {os.path.join(settings.output_dir, 'scaling.md')} and scaling.json")


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
