"""Independent float64 NumPy reference of Algorithm 1 (single-scale, warp-free TV-L1 flow).

Written from DESIGN.md ("The flow math (Algorithm 1)") and the paper only, deliberately without
looking at ``repflow_tf/ops.py``: it is a second, plainly written implementation that the tests
compare the TensorFlow one against.  Everything is explicit index arithmetic on (N, H, W, C)
float64 arrays; every channel is independent (depthwise), as DESIGN.md requires.

Conventions (DESIGN.md):

* image gradient of F2: correlation with Sobel/8 (x kernel [[-1,0,1],[-2,0,2],[-1,0,1]]/8, y its
  transpose) or central differences [-0.5, 0, 0.5], with edge-replicate padding;
* c = F2 - F1, u = 0, p = 0; with g = |grad F2|^2 + 1e-12 and lt = lambda * theta, each iteration

      rho = c + Ix u_x + Iy u_y
      v   = u + lt grad F2      where rho < -lt g
            u - lt grad F2      where rho >  lt g
            u - rho grad F2 / g otherwise
      u   = v + theta div(p)
      p   = (p + (tau/theta) grad u) / (1 + (tau/theta) |grad u|),  |grad u| = sqrt(. + 1e-12)

  with one dual pair (p_x, p_y) per flow component;
* grad u: forward differences, last column / row 0;
* div(p): p zero-padded in front, correlated with w_x = [-1, 1] / w_y = [-1, 1]^T, i.e.
  div(p)[j] = p_x[j] - p_x[j-1] (+ the same along y) with p[-1] = 0.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12

# Axes of an (N, H, W, C) array.
_Y = 1
_X = 2


def _take(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def image_gradients(image: np.ndarray, gradient: str = "sobel") -> tuple[np.ndarray, np.ndarray]:
    """(dI/dx, dI/dy) of an (N, H, W, C) image with edge-replicate padding (positive derivative)."""
    image = np.asarray(image, dtype=np.float64)
    _, h, w, _ = image.shape
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    if gradient == "sobel":
        kx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        ky = kx.T
        ix = np.zeros_like(image)
        iy = np.zeros_like(image)
        # Correlation: out[i, j] = sum_{a, b} k[a, b] * padded[i + a, j + b].
        for a in range(3):
            for b in range(3):
                window = padded[:, a : a + h, b : b + w, :]
                ix += kx[a, b] * window
                iy += ky[a, b] * window
        return ix, iy
    if gradient == "central":
        # out[j] = -0.5 * padded[j] + 0.5 * padded[j + 2]  (padded[j + 1] is the pixel itself).
        ix = -0.5 * padded[:, 1 : h + 1, 0:w, :] + 0.5 * padded[:, 1 : h + 1, 2 : w + 2, :]
        iy = -0.5 * padded[:, 0:h, 1 : w + 1, :] + 0.5 * padded[:, 2 : h + 2, 1 : w + 1, :]
        return ix, iy
    raise ValueError(f"unknown gradient {gradient!r}")


def forward_difference(field: np.ndarray, axis: int) -> np.ndarray:
    """field[j + 1] - field[j] along `axis`; the last entry along `axis` is 0."""
    out = np.zeros_like(field)
    n = field.shape[axis]
    index = [slice(None)] * field.ndim
    index[axis] = slice(0, n - 1)
    out[tuple(index)] = _take(field, axis, 1, n) - _take(field, axis, 0, n - 1)
    return out


def backward_divergence_1d(p: np.ndarray, axis: int, kernel=(-1.0, 1.0)) -> np.ndarray:
    """Correlate p, zero-padded by one entry in front along `axis`, with the 2-tap `kernel`.

    out[j] = kernel[0] * p[j - 1] + kernel[1] * p[j], with p[-1] = 0; the default kernel gives
    p[j] - p[j - 1].
    """
    n = p.shape[axis]
    pad = [(0, 0)] * p.ndim
    pad[axis] = (1, 0)
    padded = np.pad(p, pad, mode="constant", constant_values=0.0)
    return kernel[0] * _take(padded, axis, 0, n) + kernel[1] * _take(padded, axis, 1, n + 1)


def divergence(p_x, p_y, kernel_x=(-1.0, 1.0), kernel_y=(-1.0, 1.0)) -> np.ndarray:
    return backward_divergence_1d(p_x, _X, kernel_x) + backward_divergence_1d(p_y, _Y, kernel_y)


def tvl1_flow(
    frame1,
    frame2,
    *,
    num_iter: int = 20,
    theta: float = 0.3,
    lambda_: float = 0.15,
    tau: float = 0.25,
    gradient: str = "sobel",
    divergence_x=(-1.0, 1.0),
    divergence_y=(-1.0, 1.0),
    return_branches: bool = False,
):
    """Reference Algorithm 1 in float64: returns (u_x, u_y), each shaped like the frames.

    `divergence_x` / `divergence_y` are the 2-tap divergence kernels (w_x, w_y); the forward
    difference of u always uses [-1, 1].  With `return_branches=True` also returns an int8 array
    (num_iter, N, H, W, C) with the thresholding case taken at each iteration (-1: rho < -lt g,
    +1: rho > lt g, 0: otherwise) -- used by the gradient test to check that a finite-difference
    step stays on one smooth piece of the (piecewise smooth) map.
    """
    f1 = np.asarray(frame1, dtype=np.float64)
    f2 = np.asarray(frame2, dtype=np.float64)
    if f1.ndim != 4 or f1.shape != f2.shape:
        raise ValueError(f"frames must both be (N, H, W, C); got {f1.shape} and {f2.shape}")

    ix, iy = image_gradients(f2, gradient)
    g = ix * ix + iy * iy + EPSILON
    c = f2 - f1
    lt = lambda_ * theta
    step = tau / theta

    u_x = np.zeros_like(f1)
    u_y = np.zeros_like(f1)
    p_xx = np.zeros_like(f1)  # dual of u_x, x part
    p_xy = np.zeros_like(f1)  # dual of u_x, y part
    p_yx = np.zeros_like(f1)  # dual of u_y, x part
    p_yy = np.zeros_like(f1)  # dual of u_y, y part
    branches = []

    for _ in range(num_iter):
        rho = c + ix * u_x + iy * u_y
        low = rho < -lt * g
        high = rho > lt * g
        # The three cases of the thresholding step, written out (not as a clip).
        v_x = np.where(low, u_x + lt * ix, np.where(high, u_x - lt * ix, u_x - rho * ix / g))
        v_y = np.where(low, u_y + lt * iy, np.where(high, u_y - lt * iy, u_y - rho * iy / g))
        if return_branches:
            branches.append(low.astype(np.int8) * -1 + high.astype(np.int8))

        u_x = v_x + theta * divergence(p_xx, p_xy, divergence_x, divergence_y)
        u_y = v_y + theta * divergence(p_yx, p_yy, divergence_x, divergence_y)

        ux_x = forward_difference(u_x, _X)
        ux_y = forward_difference(u_x, _Y)
        uy_x = forward_difference(u_y, _X)
        uy_y = forward_difference(u_y, _Y)
        norm_ux = np.sqrt(ux_x * ux_x + ux_y * ux_y + EPSILON)
        norm_uy = np.sqrt(uy_x * uy_x + uy_y * uy_y + EPSILON)
        p_xx = (p_xx + step * ux_x) / (1.0 + step * norm_ux)
        p_xy = (p_xy + step * ux_y) / (1.0 + step * norm_ux)
        p_yx = (p_yx + step * uy_x) / (1.0 + step * norm_uy)
        p_yy = (p_yy + step * uy_y) / (1.0 + step * norm_uy)

    if return_branches:
        return u_x, u_y, np.stack(branches) if branches else np.zeros((0, *f1.shape), np.int8)
    return u_x, u_y
