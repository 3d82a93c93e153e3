"""Converts a folder of videos and its split lists into TFRecord shards (see repflow_tf.data).

    repflow-convert --format=hmdb51 --video_dir=hmdb51/videos \\
        --split_dir=hmdb51/testTrainMulti_7030_splits --fold=1 --output_dir=data/hmdb51_1
    repflow-convert --format=synthetic --output_dir=data/motion
    repflow-convert --format=kinetics ... --runner=DataflowRunner --beam_option=project=P ...

With --runner the conversion runs as an Apache Beam pipeline (pip install -e ".[beam]") and
writes the same shards and manifests as the local worker processes (--num_workers is then
unused: the runner decides the parallelism; see repflow_tf.data.beam_convert).

Exit status: 0 when every listed video was converted (or --allow_rejects), 1 when some were
rejected (the manifests list them with the reason), 2 for bad flags or a malformed list file.
"""

import functools
import os
import sys

from absl import app, flags

from repflow_tf import data
from repflow_tf.cli import fail, parse_flags, start_tensorflow
from repflow_tf.data import beam_convert

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "format", None, [*data.FORMATS, "synthetic"], "List format, or 'synthetic' for the demo."
)
flags.DEFINE_string("output_dir", None, "Root folder; each split goes to <output_dir>/<split>/.")
flags.DEFINE_string(
    "video_dir",
    None,
    "Root folder of the videos (hmdb51, ucf101, kinetics; "
    "csv: relative paths are resolved against it, default: the CSV's folder).",
)
flags.DEFINE_string("split_dir", None, "hmdb51/ucf101: folder with the official split files.")
flags.DEFINE_integer("fold", 1, "hmdb51/ucf101: split number (1, 2 or 3).")
flags.DEFINE_list("splits", ["train", "test"], "hmdb51/ucf101: splits to convert.")
flags.DEFINE_list(
    "lists", None, "kinetics/csv: split=path pairs, e.g. train=train.csv,val=val.csv."
)
flags.DEFINE_string(
    "class_list",
    None,
    "Class names: a text file (one per line) or a converted "
    "split's manifest.json. Default: the format's own, or the sorted labels.",
)
flags.DEFINE_integer("short_side", 128, "Resize so the shorter side has this size (0: keep).")
flags.DEFINE_float("fps", 0, "Resample to this frame rate (0: keep every frame).")
flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the stored frames (1-100).")
flags.DEFINE_integer("min_frames", 16, "Reject videos with fewer frames (use the clip length).")
flags.DEFINE_integer("videos_per_shard", 100, "Target shard size, in videos.")
flags.DEFINE_enum(
    "optical_flow",
    "none",
    ["none", *data.OPTICAL_FLOW_METHODS],
    "Also store optical flow per frame pair, for the two-stream baselines (tvl1: OpenCV's Dual "
    "TV-L1; pip install -e '.[optical_flow]').",
)
flags.DEFINE_float("flow_bound", data.DEFAULT_FLOW_BOUND, "Stored flow is clipped to +-this (px).")
flags.DEFINE_integer(
    "num_workers", os.cpu_count() or 1, "Worker processes (1: in-process).", lower_bound=1
)
flags.DEFINE_enum(
    "runner",
    None,
    beam_convert.RUNNERS,
    "Run the conversion as an Apache Beam pipeline on this runner (default: local worker "
    'processes); pip install -e ".[beam]".',
)
flags.DEFINE_multi_string(
    "beam_option",
    [],
    "With --runner: a Beam pipeline option KEY=VALUE (repeatable), e.g. project=my-project, "
    "region=us-central1, temp_location=gs://b/tmp, flink_master=host:8081, direct_num_workers=4.",
)
flags.DEFINE_integer("seed", 0, "Seed of the shuffle that spreads videos over shards.")
flags.DEFINE_bool("allow_rejects", False, "Exit 0 even if some videos were rejected.")
flags.DEFINE_integer("num_train", 512, "synthetic: training videos.")
flags.DEFINE_integer("num_val", 128, "synthetic: validation videos.")
flags.DEFINE_integer("num_classes", 8, "synthetic: motion directions (2, 4 or 8).")
flags.mark_flags_as_required(["format", "output_dir"])


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    if FLAGS.runner is None and FLAGS.beam_option:
        fail("--beam_option is for a Beam pipeline: pass --runner too")
    if FLAGS.runner is not None:
        if FLAGS.format == "synthetic":
            fail("--runner converts listed videos; --format=synthetic is converted locally")
        try:
            beam_convert.parse_beam_options(FLAGS.beam_option)
            beam_convert.require_beam()
        except (ValueError, data.DataError) as error:
            fail(str(error))
    start_tensorflow()
    try:
        if FLAGS.format == "synthetic":
            dirs = data.make_synthetic_dataset(
                FLAGS.output_dir,
                num_train=FLAGS.num_train,
                num_val=FLAGS.num_val,
                num_classes=FLAGS.num_classes,
                seed=FLAGS.seed,
                num_workers=FLAGS.num_workers,
                optical_flow=None if FLAGS.optical_flow == "none" else FLAGS.optical_flow,
            )
            manifests = {split: data.load_manifest(path) for split, path in dirs.items()}
        else:
            lists = dict(item.split("=", 1) for item in FLAGS.lists or [] if "=" in item)
            if FLAGS.lists and len(lists) != len(FLAGS.lists):
                fail(f"--lists expects split=path pairs, got {FLAGS.lists}")
            split_lists = data.read_split_lists(
                FLAGS.format,
                video_dir=FLAGS.video_dir,
                split_dir=FLAGS.split_dir,
                fold=FLAGS.fold,
                splits=FLAGS.splits,
                lists=lists,
                class_list=FLAGS.class_list,
            )
            options = data.ConvertOptions(
                short_side=FLAGS.short_side or None,
                fps=FLAGS.fps or None,
                jpeg_quality=FLAGS.jpeg_quality,
                min_frames=FLAGS.min_frames,
                videos_per_shard=FLAGS.videos_per_shard,
                optical_flow=None if FLAGS.optical_flow == "none" else FLAGS.optical_flow,
                flow_bound=FLAGS.flow_bound,
            )
            if FLAGS.runner is None:
                convert = functools.partial(data.convert_dataset, num_workers=FLAGS.num_workers)
            else:
                convert = functools.partial(
                    beam_convert.convert_dataset_beam,
                    runner=FLAGS.runner,
                    beam_options=FLAGS.beam_option,
                )
            manifests = convert(split_lists, FLAGS.output_dir, options, seed=FLAGS.seed)
    except (data.DataError, ValueError, OSError) as error:
        fail(str(error))
    sys.exit(data.report_rejections(manifests, allow_rejects=FLAGS.allow_rejects))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
