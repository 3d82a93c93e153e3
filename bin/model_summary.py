"""Prints parameter counts of the paper's models: RGB, + flow after block 3, + FcF, two-stream.

Example:

    python bin/model_summary.py --kinds=2d --depths=34 --num_classes=400
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

from repflow_tf.config import DEPTHS, KINDS, ModelConfig  # noqa: E402
from repflow_tf.models import build  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", list(KINDS), f"Backbone kinds, from {KINDS}.")
flags.DEFINE_list("depths", [str(d) for d in DEPTHS], f"ResNet depths, from {DEPTHS}.")
flags.DEFINE_integer("num_classes", 400, "Classes (Kinetics-400; HMDB-51: 51).")
flags.DEFINE_integer("image_size", 224, "Input height and width.")
flags.DEFINE_string("flow_position", "block3", "Where the flow layer goes (paper: block3).")

# The paper's Sec. 4 "Computation time": ResNet-34 2D, representation flow vs two-stream.
PAPER = {("2d", 34, "rgb + flow"): "21M", ("2d", 34, "two-stream (RGB + optical flow)"): "42M"}

VARIANTS = {
    "rgb": {"flow_position": "none"},
    "rgb + flow": {},
    "rgb + flow (FcF)": {"flow_stack": "fcf"},
    "two-stream (RGB + optical flow)": {"flow_position": "none", "inputs": "rgb+optical_flow"},
}


def _millions(count: int) -> str:
    return f"{count / 1e6:8.3f}M"


def main(argv):
    del argv
    print(
        f"Trainable parameters, {FLAGS.image_size}x{FLAGS.image_size} input, "
        f"{FLAGS.num_classes} classes, flow at {FLAGS.flow_position} (C'=32, 20 iterations)"
    )
    print(f"{'model':<50} {'trainable':>10} {'total':>10} {'vs rgb':>9}  paper")
    for kind in FLAGS.kinds:
        for depth in (int(d) for d in FLAGS.depths):
            rgb_count = None
            for variant, options in VARIANTS.items():
                config = ModelConfig(
                    **{
                        "kind": kind,
                        "depth": depth,
                        "num_classes": FLAGS.num_classes,
                        "image_size": FLAGS.image_size,
                        "flow_position": FLAGS.flow_position,
                        **options,
                    }
                )
                model = build(config)
                trainable = sum(math.prod(v.shape) for v in model.trainable_variables)
                rgb_count = rgb_count or trainable
                ratio = trainable / rgb_count
                relative = f"{ratio:8.2f}x" if ratio > 1.5 else f"{100 * (ratio - 1):+8.2f}%"
                paper = PAPER.get((kind, depth, variant), "")
                print(
                    f"{f'ResNet-{depth} {kind} {variant}':<50} {_millions(trainable)} "
                    f"{_millions(model.count_params())} {relative:>9}  {paper}"
                )
        print()


if __name__ == "__main__":
    app.run(main)
