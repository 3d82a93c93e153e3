"""Prints parameter counts of the paper's models: RGB, + flow after block 3, + FcF, two-stream.

See `repflow_tf.benchmarks.parameters`. Example:

    python bin/model_summary.py --kinds=2d --depths=34 --num_classes=400
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from repflow_tf.benchmarks import parameters  # noqa: E402
from repflow_tf.cli import fail, parse_flags  # noqa: E402
from repflow_tf.config import DEPTHS, KINDS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", list(KINDS), f"Backbone kinds, from {KINDS}.")
flags.DEFINE_list("depths", [str(d) for d in DEPTHS], f"ResNet depths, from {DEPTHS}.")
flags.DEFINE_integer("num_classes", 400, "Classes (Kinetics-400; HMDB-51: 51).", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "Input height and width.", lower_bound=16)
flags.DEFINE_string("flow_position", "block3", "Where the flow layer goes (paper: block3).")


def _run(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
    unknown = [kind for kind in FLAGS.kinds if kind not in KINDS]
    bad_depths = [depth for depth in FLAGS.depths if depth not in [str(d) for d in DEPTHS]]
    if unknown or bad_depths:
        fail(
            f"--kinds must be from {KINDS} and --depths from {DEPTHS}; got {FLAGS.kinds}, "
            f"{FLAGS.depths}"
        )
    try:
        print(
            parameters.table(
                FLAGS.kinds,
                [int(depth) for depth in FLAGS.depths],
                num_classes=FLAGS.num_classes,
                image_size=FLAGS.image_size,
                flow_position=FLAGS.flow_position,
            )
        )
    except ValueError as error:
        fail(str(error))


def main() -> None:
    app.run(_run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
