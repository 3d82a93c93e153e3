"""Classic TV-L1 optical flow for the two-stream baselines, and its 8-bit storage.

The two-stream models of the paper's Tables 1 and 9 take optical flow precomputed with TV-L1
(Zach et al. 2007), the way two-stream papers computed it: OpenCV's multi-scale, warped Dual
TV-L1 with its default parameters, one field per pair of consecutive frames, on the grey
frames at the stored resolution. Like those pipelines, x and y are clipped to +-`bound` pixels
and quantised to 8 bits (`quantize_flow`); the converter stores each as a one-channel PNG
(lossless, so the reader sees exactly the quantised field).

OpenCV comes from the optional extra `pip install -e ".[optical_flow]"`
(opencv-contrib-python-headless: DualTVL1 lives in its contrib module `optflow`).

>>> q = quantize_flow(np.array([0.0, 1.0, -25.0]), bound=20.0)
>>> q.tolist(), [round(float(f), 3) for f in dequantize_flow(q, bound=20.0)]
([128, 134, 1], [0.0, 0.945, -20.0])
"""

from __future__ import annotations

import numpy as np

from repflow_tf.data.schema import DataError

METHODS = ("tvl1",)
DEFAULT_BOUND = 20.0
# Zero flow is exactly 128; +-bound map to 255 and 1 (0 is unused), one step = bound / 127 px.
ZERO_LEVEL = 128
LEVELS = 127

_INSTALL_HINT = (
    "optical flow needs OpenCV's contrib module: pip install -e '.[optical_flow]' "
    "(opencv-contrib-python-headless)"
)


def require_opencv():
    """The `cv2` module with `cv2.optflow`; `DataError` with the install command otherwise."""
    try:
        import cv2
    except ImportError:
        raise DataError(_INSTALL_HINT) from None
    if not hasattr(cv2, "optflow"):
        raise DataError(f"{_INSTALL_HINT}; the installed OpenCV has no contrib modules")
    return cv2


def quantize_flow(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels -> uint8 levels: clipped to +-`bound`, `ZERO_LEVEL` for 0, step
    `bound / LEVELS` pixels (rounding error at most half a step)."""
    levels = np.round(np.clip(flow, -bound, bound) * (LEVELS / bound)) + ZERO_LEVEL
    return levels.astype(np.uint8)


def dequantize_flow(levels: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 levels (`quantize_flow`) -> float32 flow in pixels."""
    return ((levels.astype(np.float32) - ZERO_LEVEL) * (bound / LEVELS)).astype(np.float32)


class TVL1:
    """OpenCV's Dual TV-L1 (default parameters: 5 scales, 5 warps) on consecutive RGB frames.

    Single-threaded: the converter runs one per worker process, which scales better than
    OpenCV's own threads on small frames.

    >>> frames = np.zeros((3, 32, 32, 3), np.uint8)
    >>> TVL1()(frames).shape
    (2, 32, 32, 2)
    """

    def __init__(self):
        self._cv2 = require_opencv()
        self._cv2.setNumThreads(1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T - 1, H, W, 2) float32 flow (x, y) in pixels, from
        each frame to the next (content moving right gives x > 0)."""
        grey = [self._cv2.cvtColor(frame, self._cv2.COLOR_RGB2GRAY) for frame in frames]
        # A new solver per video: OpenCV's keeps buffers from its previous call, and after a
        # call on frames of another size its results are wrong (by up to 10 px, tested).
        tvl1 = self._cv2.optflow.DualTVL1OpticalFlow_create()
        fields = [tvl1.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:], strict=True)]
        if not fields:
            return np.zeros((0, *frames.shape[1:3], 2), np.float32)
        return np.stack(fields).astype(np.float32)
