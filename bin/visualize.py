"""Writes a video with the learned flow of a trained model's flow layer beside it.

    repflow-visualize --workdir runs/demo --video video.mp4 --output flow.mp4 --strip flow.png
    repflow-visualize --workdir runs/demo --video video.mp4 --output flow.mp4 \
        --layer flow_backbone/flow_stack/flow_block_2/representation_flow

The video is sampled as evaluation samples it (the workdir's short side, crop, JPEG quality,
`data.eval_clips` clips). Each output frame shows the input frame, the colour-coded flow of the
first `--channels` channels (hue = direction, brightness = magnitude) and the colour wheel;
`--strip` also writes a PNG of frames over flow. A bad flag, workdir, video or layer gives one
line on stderr and exit status 2.
"""

from absl import app, flags

from repflow_tf.cli import fail, parse_flags, start_tensorflow

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir", None, "Training workdir (config.toml, class_names.json, model.keras)."
)
flags.DEFINE_string("video", None, "The video to show (any format PyAV reads).")
flags.DEFINE_string("output", None, "The MP4 to write: frames and flow side by side.")
flags.DEFINE_string(
    "layer",
    None,
    "Flow layer, by the names of the layers containing it, e.g. "
    "flow_backbone/flow_stack/flow_block_1/representation_flow (default: the first; a wrong "
    "one lists them).",
)
flags.DEFINE_string("strip", None, "Also write a PNG of frames (top row) over flow (rows).")
flags.DEFINE_integer("num_clips", 0, "Clips sampled from the video (0: the data.eval_clips).")
flags.DEFINE_integer("channels", 4, "Flow channels shown.")
flags.DEFINE_integer("fps", 8, "Frame rate of the output video.")
flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).")
for _name in ("workdir", "video", "output"):
    flags.mark_flag_as_required(_name)


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]} (all inputs are flags)")
    if FLAGS.num_clips < 0:
        fail("--num_clips must be >= 0")
    start_tensorflow()  # only once the flags are known to be good
    from repflow_tf.config import ConfigError
    from repflow_tf.data import DataError
    from repflow_tf.visualize_video import VisualizeError, visualize_flow
    from repflow_tf.workdir import WorkdirError, read_workdir

    try:
        result = visualize_flow(
            read_workdir(FLAGS.workdir, overrides=FLAGS.set),
            FLAGS.video,
            FLAGS.output,
            layer=FLAGS.layer,
            strip=FLAGS.strip,
            num_clips=FLAGS.num_clips or None,
            max_channels=FLAGS.channels,
            fps=FLAGS.fps,
        )
    except (ConfigError, DataError, VisualizeError, WorkdirError) as error:
        fail(str(error))
    print(f"wrote {result.describe()}")


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
