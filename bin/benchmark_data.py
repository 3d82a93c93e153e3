"""Clips per second of the training input pipeline, against what a training step consumes.

    python bin/benchmark_data.py                          # synthetic 128x128 videos, 16x112x112
    python bin/benchmark_data.py --data=data/hmdb51_1/train --steps_per_second=3.5

Without --data it benchmarks a synthetic dataset (generated once into --cache_dir). The model
side: the train step of the model in --model_config (default: the demo's) is timed on one
pipeline batch of the same shape; --steps_per_second=S uses a measured rate instead, and
--model_config="" skips the model.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from repflow_tf.data import DataError, make_synthetic_dataset, video_dataset  # noqa: E402
from repflow_tf.data.benchmark import measure_pipeline, measure_step  # noqa: E402
from repflow_tf.data.cli import fail, parse_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data", None, "Converted split directory or shard pattern (default: synthetic)."
)
flags.DEFINE_string(
    "cache_dir", "/tmp/repflow_benchmark_data", "Where the synthetic dataset is generated."
)
flags.DEFINE_integer("batch_size", 8, "Clips per batch.", lower_bound=1)
flags.DEFINE_integer("num_frames", 16, "Frames per clip.", lower_bound=1)
flags.DEFINE_integer("stride", 1, "Temporal stride.", lower_bound=1)
flags.DEFINE_integer("crop_size", 112, "Clip height and width.", lower_bound=1)
flags.DEFINE_integer("num_batches", 40, "Batches timed.", lower_bound=1)
flags.DEFINE_integer("warmup_batches", 5, "Batches read before timing.", lower_bound=0)
flags.DEFINE_float(
    "steps_per_second", 0, "Training steps per second of the model at --batch_size (0: time it)."
)
flags.DEFINE_string("model_config", "configs/demo.toml", "Experiment whose model step is timed.")
flags.DEFINE_integer("model_steps", 5, "Train steps timed.", lower_bound=1)


def model_clips_per_second(batch) -> float | None:
    """Clips per second the training step of --model_config's model consumes on `batch`."""
    if FLAGS.steps_per_second > 0:
        return FLAGS.steps_per_second * FLAGS.batch_size
    if not FLAGS.model_config:
        return None
    import keras

    from repflow_tf import models
    from repflow_tf.config import ConfigError, load_config

    try:
        config = load_config(FLAGS.model_config)
    except ConfigError as error:
        fail(str(error))
    model = models.build(config.model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    frames, labels = batch
    labels = labels % config.model.num_classes
    result = measure_step(
        lambda _: model.train_on_batch(frames, labels),
        batch,
        num_steps=FLAGS.model_steps,
        warmup_steps=1,
    )
    print(f"model: {model.name} from {FLAGS.model_config}", file=sys.stderr)
    return result.clips_per_second


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    source = FLAGS.data
    if source is None:
        source = make_synthetic_dataset(
            FLAGS.cache_dir, num_train=96, num_val=0, num_frames=48, size=128, num_workers=1
        )["train"]
    try:
        dataset = video_dataset(
            source,
            training=True,
            num_frames=FLAGS.num_frames,
            stride=FLAGS.stride,
            crop_size=FLAGS.crop_size,
            batch_size=FLAGS.batch_size,
        ).repeat()
    except (DataError, ValueError) as error:
        fail(str(error))
    print(f"benchmarking {source} on {os.cpu_count()} CPU cores ...", file=sys.stderr)
    result = measure_pipeline(
        dataset, num_batches=FLAGS.num_batches, warmup_batches=FLAGS.warmup_batches
    )
    shape = f"{FLAGS.num_frames}x{FLAGS.crop_size}x{FLAGS.crop_size}"
    print(
        f"input pipeline: {result.clips_per_second:.1f} clips/s ({shape}, "
        f"batch {FLAGS.batch_size}, {result.batches_per_second:.2f} batches/s "
        f"over {result.seconds:.1f} s)"
    )
    needed = model_clips_per_second(next(iter(dataset)))
    if needed is None:
        print("model step: not measured (--model_config is empty)")
    else:
        verdict = "the model" if result.clips_per_second >= needed else "the INPUT PIPELINE"
        print(
            f"model step: {needed:.1f} clips/s -> input/model = "
            f"{result.clips_per_second / needed:.2f}, the bottleneck is {verdict}"
        )


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
