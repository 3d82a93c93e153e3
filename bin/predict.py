"""Classifies videos with an exported model (repflow-export): top-5 classes per video.

    repflow-predict --model=runs/demo/export video.mp4 other.mp4
    repflow-predict --model=runs/demo/export --json video.mp4

Each video is decoded with PyAV, sampled as the export's evenly spaced clips, and the clips'
probabilities are averaged. A video that cannot be read is reported (one line on stderr, exit
status 2) after the others are predicted; a bad --model also exits with status 2.
"""

import json
import sys

from absl import app, flags

from repflow_tf.cli import fail, parse_flags, start_tensorflow

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Export folder written by repflow-export.")
flags.DEFINE_integer("num_clips", 0, "Clips per video (0: the export's data.eval_clips).")
flags.DEFINE_integer("top_k", 5, "Classes to list per video.")
flags.DEFINE_bool("json", False, "Print one JSON list (one object per video) instead of text.")
flags.mark_flag_as_required("model")


def _run(argv: list[str]) -> None:
    videos = argv[1:]
    if not videos:
        fail("give at least one video file after the flags")
    if FLAGS.top_k < 1 or FLAGS.num_clips < 0:
        fail("--top_k must be >= 1 and --num_clips >= 0")
    start_tensorflow()
    from tqdm import tqdm

    from repflow_tf.data import DataError
    from repflow_tf.export import ExportError, format_prediction, load_exported, predict_video

    try:
        exported = load_exported(FLAGS.model)
    except ExportError as error:
        fail(str(error))
    results, errors = [], []
    # A bar on a terminal only (stderr); the predictions go to stdout.
    for video in tqdm(videos, "predict", unit="video", disable=None if len(videos) > 1 else True):
        try:
            prediction = predict_video(
                exported, video, num_clips=FLAGS.num_clips or None, top_k=FLAGS.top_k
            )
        except DataError as error:  # VideoDecodeError names the file and the reason
            errors.append(str(error))
            results.append({"video": video, "error": str(error)})
            continue
        results.append(prediction.to_json())
        if not FLAGS.json:
            tqdm.write(format_prediction(prediction), file=sys.stdout)
    if FLAGS.json:
        print(json.dumps(results, indent=1))
    if errors:
        fail(f"{len(errors)} of {len(videos)} videos failed: " + "; ".join(errors))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
