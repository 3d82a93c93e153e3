"""Clips per second of the training input pipeline, against what a training step consumes.

    python bin/benchmark_data.py                          # synthetic 128x128 videos, 16x112x112
    python bin/benchmark_data.py --data=data/hmdb51_1/train --steps_per_second=3.5

Without --data it benchmarks a synthetic dataset (generated once into --cache_dir). The model
side: the train step of the model in --model_config (default: the demo's) is timed on one
pipeline batch of the same shape; --steps_per_second=S uses a measured rate instead, and
--model_config="" skips the model. See `repflow_tf.benchmarks.pipeline`.
"""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from repflow_tf.benchmarks import pipeline  # noqa: E402
from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.config import ConfigError  # noqa: E402
from repflow_tf.data import DataError  # noqa: E402

FLAGS = flags.FLAGS
DEFAULTS = pipeline.PipelineSettings()
flags.DEFINE_string(
    "data", DEFAULTS.data, "Converted split directory or shard pattern (default: synthetic)."
)
flags.DEFINE_string("cache_dir", DEFAULTS.cache_dir, "Where the synthetic dataset is generated.")
flags.DEFINE_integer("batch_size", DEFAULTS.batch_size, "Clips per batch.", lower_bound=1)
flags.DEFINE_integer("num_frames", DEFAULTS.num_frames, "Frames per clip.", lower_bound=1)
flags.DEFINE_integer("stride", DEFAULTS.stride, "Temporal stride.", lower_bound=1)
flags.DEFINE_integer("crop_size", DEFAULTS.crop_size, "Clip height and width.", lower_bound=1)
flags.DEFINE_integer("num_batches", DEFAULTS.num_batches, "Batches timed.", lower_bound=1)
flags.DEFINE_integer(
    "warmup_batches", DEFAULTS.warmup_batches, "Batches read before timing.", lower_bound=0
)
flags.DEFINE_float(
    "steps_per_second",
    DEFAULTS.steps_per_second,
    "Training steps per second of the model at --batch_size (0: time it).",
)
flags.DEFINE_string("model_config", DEFAULTS.model_config, "Experiment whose model step is timed.")
flags.DEFINE_integer("model_steps", DEFAULTS.model_steps, "Train steps timed.", lower_bound=1)


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    names = [field.name for field in dataclasses.fields(pipeline.PipelineSettings)]
    settings = pipeline.PipelineSettings(**{name: FLAGS[name].value for name in names})
    try:
        pipeline.run(settings)
    except (DataError, ValueError, ConfigError) as error:
        fail(str(error))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
