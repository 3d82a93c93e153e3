// The representation flow iteration (Algorithm 1) and its hand-written reverse-mode gradient
// as two fused TensorFlow CPU kernels. repflow_tf/native/__init__.py compiles this file for the
// machine it runs on; repflow_tf/ops.py holds the same math in TensorFlow ops (its docstrings
// and DESIGN.md give the conventions) and is what these kernels are tested against.
//
// Why a kernel of our own: on a CPU the iteration is bound by memory traffic. XLA runs each
// iteration as dozens of fused loops over whole frame-batch tensors; here one work unit, one
// frame pair and a block of its channels, runs every iteration (and, in the gradient, every
// reverse iteration) on arrays small enough to stay in the core's L2 cache, and the
// per-channel sums of the kernels' and theta, lambda, tau's gradients are accumulated in a few
// registers' worth of rows instead of frame-batch tensors.
//
// Layout of a unit: planar arrays of shape (H + 2, W + 2, B) with a border of one pixel that
// holds zeros (for frame 2: its replicated edge). Zero borders give the zero padding of
// div(p) and of the stencils' adjoints for free; the forward differences' last column and row,
// which must be 0, are masked. Inner loops run over the W * B contiguous values of one row, so
// they vectorise whatever the channel count.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace repflow {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

constexpr double kEpsilon = 1e-12;
// A unit's arrays are at most this large (one channel at least): about 30 of them are live in
// a reverse iteration, which then fits a 512 KB L2 cache.
constexpr int64_t kUnitArrayBytes = 16 * 1024;
// A unit's gradient stores every iteration's state when they fit in this many bytes; beyond,
// it stores every k-th (k = ceil(sqrt(num_iter))) and recomputes the others segment by segment.
constexpr int64_t kStoredStateBytes = 8 * 1024 * 1024;
constexpr int kStateArrays = 6;  // u_x, u_y, p_xx, p_xy, p_yx, p_yy
// The scratch of the units running at once stays within this (fewer threads for huge frames).
constexpr int64_t kScratchBudgetBytes = int64_t(2) << 30;

// The sums over pixels a unit's gradient accumulates, per channel.
enum Sum {
  kDiffX0, kDiffX1, kDiffY0, kDiffY1,  // taps of the forward differences of u
  kDivX0, kDivX1, kDivY0, kDivY1,      // taps of the divergence of p
  kThetaDiv, kClipped, kRatio,         // d/dtheta through div, d/d(lambda theta), d/d(tau/theta)
  kNumSums
};

// Where the values of one unit live inside its padded planar arrays.
struct Geometry {
  int64_t height, width, block;
  int64_t row() const { return (width + 2) * block; }
  int64_t size() const { return (height + 2) * row(); }
  int64_t span() const { return width * block; }                        // one row's interior
  int64_t start(int64_t y) const { return (y + 1) * row() + block; }      // first interior value
};

// Choices shared by every unit of one call.
template <typename T>
struct Problem {
  int64_t pairs, height, width, channels, block;
  int num_iter;
  // Image-gradient kernels (kh, kw, C, 1) and their sizes.
  const T* image_x;
  const T* image_y;
  int image_x_h, image_x_w, image_y_h, image_y_w;
  // The two taps of the four difference kernels, each (2, C): tap t of channel c at [t * C + c].
  const T* diff_x;
  const T* diff_y;
  const T* div_x;
  const T* div_y;
  T theta, step, ratio;  // theta, lambda * theta, tau / theta
  int64_t units() const { return pairs * blocks(); }
  int64_t blocks() const { return (channels + block - 1) / block; }
};

// A per-channel parameter (C values) along a row of the unit whose channels start at c0, so
// that inner loops index it like the data (value k of a row is channel c0 + k % B); 0 for the
// padding channels of a last, partial block.
template <typename T>
std::vector<T> AlongRow(const T* values, const Problem<T>& p, const Geometry& g, int64_t c0) {
  std::vector<T> row(g.span());
  for (int64_t k = 0; k < g.span(); ++k) {
    const int64_t c = c0 + k % g.block;
    row[k] = c < p.channels ? values[c] : T(0);
  }
  return row;
}

// A unit's taps of the difference and divergence kernels (tap t of a kernel at [t * C + c]).
template <typename T>
struct Taps {
  std::vector<T> diff_x0, diff_x1, diff_y0, diff_y1, div_x0, div_x1, div_y0, div_y1;
  std::vector<T> not_last_column;  // 1 where x < W - 1: the forward difference along x is 0 at W - 1

  Taps(const Problem<T>& p, const Geometry& g, int64_t c0)
      : diff_x0(AlongRow(p.diff_x, p, g, c0)),
        diff_x1(AlongRow(p.diff_x + p.channels, p, g, c0)),
        diff_y0(AlongRow(p.diff_y, p, g, c0)),
        diff_y1(AlongRow(p.diff_y + p.channels, p, g, c0)),
        div_x0(AlongRow(p.div_x, p, g, c0)),
        div_x1(AlongRow(p.div_x + p.channels, p, g, c0)),
        div_y0(AlongRow(p.div_y, p, g, c0)),
        div_y1(AlongRow(p.div_y + p.channels, p, g, c0)),
        not_last_column(g.span(), T(1)) {
    for (int64_t k = (g.width - 1) * g.block; k < g.span(); ++k) not_last_column[k] = T(0);
  }
};

// One unit's state (u, p), in six padded planar arrays.
template <typename T>
struct State {
  T* ux; T* uy; T* pxx; T* pxy; T* pyx; T* pyy;  // p_ab: dual of d(u_b)/da
  State(T* base, int64_t size)
      : ux(base), uy(base + size), pxx(base + 2 * size), pxy(base + 3 * size),
        pyx(base + 4 * size), pyy(base + 5 * size) {}
};

// What stays fixed over the iterations: the image gradient of frame 2, 1 / |grad|^2, F2 - F1.
template <typename T>
struct Fields {
  T* gx; T* gy; T* inv; T* diff;
};

// value limited to [-bound, bound]; by value and without std::min / std::max's references,
// which keep loops from vectorising.
template <typename T>
inline T Clamp(T value, T bound) {
  const T upper = value < bound ? value : bound;
  return upper > -bound ? upper : -bound;
}

// === Loading and storing a unit ===

// Copies channels [c0, c0 + B) of one (H, W, C) frame into a padded planar array; with
// `replicate_edges` the border repeats the nearest edge value (edge-replicate padding).
template <typename T>
void Load(const T* frame, const Problem<T>& p, const Geometry& g, int64_t c0, bool replicate_edges,
          T* out) {
  const int64_t b = g.block, count = std::min(b, p.channels - c0);
  for (int64_t y = -1; y <= g.height; ++y) {
    if (!replicate_edges && (y < 0 || y == g.height)) continue;
    const int64_t sy = std::min(std::max<int64_t>(y, 0), g.height - 1);
    for (int64_t x = -1; x <= g.width; ++x) {
      if (!replicate_edges && (x < 0 || x == g.width)) continue;
      const int64_t sx = std::min(std::max<int64_t>(x, 0), g.width - 1);
      const T* source = frame + (sy * g.width + sx) * p.channels + c0;
      T* target = out + (y + 1) * g.row() + (x + 1) * b;
      for (int64_t k = 0; k < count; ++k) target[k] = source[k];
      for (int64_t k = count; k < b; ++k) target[k] = T(0);
    }
  }
}

// Copies a padded planar array's interior, times `scale`, back to channels [c0, c0 + B) of an
// (H, W, C) frame.
template <typename T>
void Store(const T* in, const Problem<T>& p, const Geometry& g, int64_t c0, T* frame,
           T scale = T(1)) {
  const int64_t count = std::min(g.block, p.channels - c0);
  for (int64_t y = 0; y < g.height; ++y) {
    for (int64_t x = 0; x < g.width; ++x) {
      const T* source = in + g.start(y) + x * g.block;
      T* target = frame + (y * g.width + x) * p.channels + c0;
      for (int64_t k = 0; k < count; ++k) target[k] = scale * source[k];
    }
  }
}

// Offset of tap (i, j) of a (kh, kw) kernel in a padded planar array: edge-replicate padding
// puts (kh - 1) / 2 rows before and kh / 2 after, so tap i reads row y + i - (kh - 1) / 2.
inline int64_t TapOffset(const Geometry& g, int kh, int kw, int i, int j) {
  return (i - (kh - 1) / 2) * g.row() + (j - (kw - 1) / 2) * g.block;
}

// Correlation of the edge-padded `frame` with a (kh, kw, C, 1) kernel, into `out`'s interior.
template <typename T>
void Correlate(const T* frame, const T* kernel, int kh, int kw, const Problem<T>& p,
               const Geometry& g, int64_t c0, T* out) {
  const int64_t n = g.span();
  for (int64_t y = 0; y < g.height; ++y) std::fill_n(out + g.start(y), n, T(0));
  for (int i = 0; i < kh; ++i) {
    for (int j = 0; j < kw; ++j) {
      const std::vector<T> tap = AlongRow(kernel + (i * kw + j) * p.channels, p, g, c0);
      const int64_t offset = TapOffset(g, kh, kw, i, j);
      for (int64_t y = 0; y < g.height; ++y) {
        T* o = out + g.start(y);
        const T* f = frame + g.start(y) + offset;
        for (int64_t k = 0; k < n; ++k) o[k] += tap[k] * f[k];
      }
    }
  }
}

template <typename T>
void ComputeFields(const T* f1, const T* f2, const Problem<T>& p, const Geometry& g, int64_t c0,
                   const Fields<T>& fields) {
  Correlate(f2, p.image_x, p.image_x_h, p.image_x_w, p, g, c0, fields.gx);
  Correlate(f2, p.image_y, p.image_y_h, p.image_y_w, p, g, c0, fields.gy);
  const int64_t n = g.span();
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    for (int64_t k = s; k < s + n; ++k) {
      fields.inv[k] = T(1) / (fields.gx[k] * fields.gx[k] + fields.gy[k] * fields.gy[k] +
                              T(kEpsilon));
      fields.diff[k] = f2[k] - f1[k];
    }
  }
}

// === One iteration ===

// Each hot loop is one row of one pass, in a function of its own whose array parameters are
// restrict-qualified: the arrays never overlap, and GCC vectorises a loop touching this many
// arrays only with that promise (which it honours on parameters, not on local pointers).
#define RESTRICT __restrict__
// Kept out of line: inlined into a caller holding the arrays in structs, the promise is lost.
#define ROW_FUNCTION __attribute__((noinline))

// Per-channel taps along a row; `mask` is 1 where x < W - 1.
template <typename T>
struct RowTaps {
  const T* diff_x0; const T* diff_x1; const T* diff_y0; const T* diff_y1;
  const T* div_x0; const T* div_x1; const T* div_y0; const T* div_y1; const T* mask;
  explicit RowTaps(const Taps<T>& t)
      : diff_x0(t.diff_x0.data()), diff_x1(t.diff_x1.data()), diff_y0(t.diff_y0.data()),
        diff_y1(t.diff_y1.data()), div_x0(t.div_x0.data()), div_x1(t.div_x1.data()),
        div_y0(t.div_y0.data()), div_y1(t.div_y1.data()), mask(t.not_last_column.data()) {}
};

// div(p) of one component: a_x p_x[x - 1] + b_x p_x[x] + a_y p_y[y - 1] + b_y p_y[y].
template <typename T>
inline T Divergence(const T* RESTRICT ax0, const T* RESTRICT ax1, const T* RESTRICT ay0,
                    const T* RESTRICT ay1, const T* RESTRICT px, const T* RESTRICT py,
                    int64_t k, int64_t b, int64_t row) {
  return ax0[k] * px[k - b] + ax1[k] * px[k] + ay0[k] * py[k - row] + ay1[k] * py[k];
}

// u' = u + clip(-rho / |grad|^2, -lambda theta, lambda theta) grad + theta div(p) on one row.
template <typename T>
ROW_FUNCTION void PrimalRow(int64_t n, int64_t b, int64_t row, T theta, T step, const T* RESTRICT diff,
               const T* RESTRICT gx, const T* RESTRICT gy, const T* RESTRICT inv,
               const T* RESTRICT ux, const T* RESTRICT uy, const T* RESTRICT pxx,
               const T* RESTRICT pxy, const T* RESTRICT pyx, const T* RESTRICT pyy,
               const T* RESTRICT ax0, const T* RESTRICT ax1, const T* RESTRICT ay0,
               const T* RESTRICT ay1, T* RESTRICT out_ux, T* RESTRICT out_uy) {
  for (int64_t k = 0; k < n; ++k) {
    const T rho = diff[k] + gx[k] * ux[k] + gy[k] * uy[k];
    const T shift = Clamp(-rho * inv[k], step);
    out_ux[k] = ux[k] + shift * gx[k] +
                theta * Divergence(ax0, ax1, ay0, ay1, pxx, pyx, k, b, row);
    out_uy[k] = uy[k] + shift * gy[k] +
                theta * Divergence(ax0, ax1, ay0, ay1, pxy, pyy, k, b, row);
  }
}

// p' = (p + r grad u') / (1 + r |grad u'|) for both components on one row; `below` is 0 on the
// last row, where the difference along y is 0.
template <typename T>
ROW_FUNCTION void DualRow(int64_t n, int64_t b, int64_t row, T r, T below, const T* RESTRICT ux,
             const T* RESTRICT uy, const T* RESTRICT pxx, const T* RESTRICT pxy,
             const T* RESTRICT pyx, const T* RESTRICT pyy, const T* RESTRICT bx0,
             const T* RESTRICT bx1, const T* RESTRICT by0, const T* RESTRICT by1,
             const T* RESTRICT mask, T* RESTRICT out_pxx, T* RESTRICT out_pxy,
             T* RESTRICT out_pyx, T* RESTRICT out_pyy) {
  for (int64_t k = 0; k < n; ++k) {
    const T dxx = mask[k] * (bx0[k] * ux[k] + bx1[k] * ux[k + b]);
    const T dyx = below * (by0[k] * ux[k] + by1[k] * ux[k + row]);
    const T dxy = mask[k] * (bx0[k] * uy[k] + bx1[k] * uy[k + b]);
    const T dyy = below * (by0[k] * uy[k] + by1[k] * uy[k + row]);
    const T inv_x = T(1) / (T(1) + r * std::sqrt(dxx * dxx + dyx * dyx + T(kEpsilon)));
    const T inv_y = T(1) / (T(1) + r * std::sqrt(dxy * dxy + dyy * dyy + T(kEpsilon)));
    out_pxx[k] = (pxx[k] + r * dxx) * inv_x;
    out_pyx[k] = (pyx[k] + r * dyx) * inv_x;
    out_pxy[k] = (pxy[k] + r * dxy) * inv_y;
    out_pyy[k] = (pyy[k] + r * dyy) * inv_y;
  }
}

// One iteration from `in` to `out` (different arrays; `out`'s border stays 0):
//   v = u + clip(-rho / |grad|^2, -lambda theta, lambda theta) grad,  rho = F2 - F1 + grad . u
//   u' = v + theta div(p)
//   p' = (p + (tau / theta) grad u') / (1 + (tau / theta) |grad u'|), one |.| per component.
template <typename T>
void Step(const State<T>& in, const State<T>& out, const Fields<T>& f, const Taps<T>& taps,
          const Problem<T>& p, const Geometry& g) {
  const int64_t n = g.span(), b = g.block, row = g.row();
  const RowTaps<T> t(taps);
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    PrimalRow(n, b, row, p.theta, p.step, f.diff + s, f.gx + s, f.gy + s, f.inv + s, in.ux + s,
              in.uy + s, in.pxx + s, in.pxy + s, in.pyx + s, in.pyy + s, t.div_x0, t.div_x1,
              t.div_y0, t.div_y1, out.ux + s, out.uy + s);
  }
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    const T below = y + 1 < g.height ? T(1) : T(0);
    DualRow(n, b, row, p.ratio, below, out.ux + s, out.uy + s, in.pxx + s, in.pxy + s,
            in.pyx + s, in.pyy + s, t.diff_x0, t.diff_x1, t.diff_y0, t.diff_y1, t.mask,
            out.pxx + s, out.pxy + s, out.pyx + s, out.pyy + s);
  }
}

// === One iteration, reverse mode ===

// Scratch of a reverse iteration: the gradients w.r.t. the four forward differences of u' and
// the total adjoint of u' (from the next state and from p').
template <typename T>
struct VjpScratch {
  T* gdxx; T* gdyx; T* gdxy; T* gdyy; T* tux; T* tuy;
};

// What the reverse pass accumulates over the iterations: the gradients w.r.t. the fixed fields
// (image gradient, F2 - F1) and, per value of a row, the sums of enum Sum.
template <typename T>
struct Accumulators {
  T* ggx; T* ggy; T* gdiff;
  T* sums;  // kNumSums rows of W * B values
};

// Reverse of the dual update p' = (p + r d) / (1 + r |d|), d = grad u', for one component of
// one row: the gradients w.r.t. p (overwriting the adjoints of p'), d (into gdx, gdy), r and
// the forward differences' taps.
template <typename T, bool kLearnDivergence, bool kLearnHyper>
ROW_FUNCTION void DualVjpRow(int64_t n, int64_t b, int64_t row, T r, T below, const T* RESTRICT u,
                const T* RESTRICT px, const T* RESTRICT py, T* RESTRICT adj_px,
                T* RESTRICT adj_py, T* RESTRICT gdx, T* RESTRICT gdy, const T* RESTRICT bx0,
                const T* RESTRICT bx1, const T* RESTRICT by0, const T* RESTRICT by1,
                const T* RESTRICT mask, T* RESTRICT sum_x0, T* RESTRICT sum_x1,
                T* RESTRICT sum_y0, T* RESTRICT sum_y1, T* RESTRICT sum_ratio) {
  for (int64_t k = 0; k < n; ++k) {
    const T dx = mask[k] * (bx0[k] * u[k] + bx1[k] * u[k + b]);
    const T dy = below * (by0[k] * u[k] + by1[k] * u[k + row]);
    const T norm = std::sqrt(dx * dx + dy * dy + T(kEpsilon));
    const T inv = T(1) / (T(1) + r * norm);
    const T gpx = adj_px[k] * inv, gpy = adj_py[k] * inv;
    const T gden = -(gpx * (px[k] + r * dx) + gpy * (py[k] + r * dy)) * inv;
    const T along = r * gden / norm;
    const T gx = mask[k] * (r * gpx + along * dx), gy = below * (r * gpy + along * dy);
    adj_px[k] = gpx;
    adj_py[k] = gpy;
    gdx[k] = gx;
    gdy[k] = gy;
    if (kLearnHyper) sum_ratio[k] += gpx * dx + gpy * dy + gden * norm;
    if (kLearnDivergence) {
      sum_x0[k] += gx * u[k];
      sum_x1[k] += gx * u[k + b];
      sum_y0[k] += gy * u[k];
      sum_y1[k] += gy * u[k + row];
    }
  }
}

// Reverse of PrimalRow on one row: the total adjoint of u' (`adj_u` plus the forward
// differences' adjoints of gd), the thresholding's three cases, and the gradients w.r.t. u
// (overwriting `adj_u`), the fields, theta through div and lambda theta.
template <typename T, bool kLearnDivergence, bool kLearnHyper>
ROW_FUNCTION void PrimalVjpRow(int64_t n, int64_t b, int64_t row, T theta, T step, const T* RESTRICT diff,
                  const T* RESTRICT gx, const T* RESTRICT gy, const T* RESTRICT inv,
                  const T* RESTRICT ux, const T* RESTRICT uy, const T* RESTRICT pxx,
                  const T* RESTRICT pxy, const T* RESTRICT pyx, const T* RESTRICT pyy,
                  const T* RESTRICT gdxx, const T* RESTRICT gdyx, const T* RESTRICT gdxy,
                  const T* RESTRICT gdyy, const T* RESTRICT bx0, const T* RESTRICT bx1,
                  const T* RESTRICT by0, const T* RESTRICT by1, const T* RESTRICT ax0,
                  const T* RESTRICT ax1, const T* RESTRICT ay0, const T* RESTRICT ay1,
                  T* RESTRICT adj_ux, T* RESTRICT adj_uy, T* RESTRICT total_x,
                  T* RESTRICT total_y, T* RESTRICT ggx, T* RESTRICT ggy, T* RESTRICT gdiff,
                  T* RESTRICT sum_div, T* RESTRICT sum_clipped, T* RESTRICT sum_x0,
                  T* RESTRICT sum_x1, T* RESTRICT sum_y0, T* RESTRICT sum_y1) {
  for (int64_t k = 0; k < n; ++k) {
    // The forward differences' adjoints: d[x] = a u[x] + b u[x + 1] gives a g[x] + b g[x - 1].
    const T tux = adj_ux[k] + bx0[k] * gdxx[k] + bx1[k] * gdxx[k - b] + by0[k] * gdyx[k] +
                  by1[k] * gdyx[k - row];
    const T tuy = adj_uy[k] + bx0[k] * gdxy[k] + bx1[k] * gdxy[k - b] + by0[k] * gdyy[k] +
                  by1[k] * gdyy[k - row];
    total_x[k] = tux;
    total_y[k] = tuy;
    const T rho = diff[k] + gx[k] * ux[k] + gy[k] * uy[k];
    const T target = -rho * inv[k];
    const T shift = Clamp(target, step);
    const T grad_shift = tux * gx[k] + tuy * gy[k];
    // Ties go to the target, as in the gradients of tf.clip_by_value.
    const T grad_target = ((target >= -step) & (target <= step)) ? grad_shift : T(0);
    const T grad_rho = -grad_target * inv[k];
    // Through 1 / |grad|^2: d/d grad = -2 grad (d/d(1/g)) / g^2 with d/d(1/g) = t g d/dt.
    const T twice = T(-2) * grad_target * target * inv[k];
    ggx[k] += tux * shift + grad_rho * ux[k] + twice * gx[k];
    ggy[k] += tuy * shift + grad_rho * uy[k] + twice * gy[k];
    gdiff[k] += grad_rho;
    adj_ux[k] = tux + grad_rho * gx[k];
    adj_uy[k] = tuy + grad_rho * gy[k];
    if (kLearnHyper) {
      sum_div[k] += tux * Divergence(ax0, ax1, ay0, ay1, pxx, pyx, k, b, row) +
                    tuy * Divergence(ax0, ax1, ay0, ay1, pxy, pyy, k, b, row);
      const T above = target > step ? grad_shift : T(0);
      const T under = target < -step ? grad_shift : T(0);
      sum_clipped[k] += above - under;
    }
    if (kLearnDivergence) {
      const T ttx = theta * tux, tty = theta * tuy;
      sum_x0[k] += ttx * pxx[k - b] + tty * pxy[k - b];
      sum_x1[k] += ttx * pxx[k] + tty * pxy[k];
      sum_y0[k] += ttx * pyx[k - row] + tty * pyy[k - row];
      sum_y1[k] += ttx * pyx[k] + tty * pyy[k];
    }
  }
}

// div(p)[x] = a p[x - 1] + b p[x] gives p the adjoint a g[x + 1] + b g[x], g = theta * tu.
template <typename T>
ROW_FUNCTION void DivergenceVjpRow(int64_t n, int64_t b, int64_t row, T theta, const T* RESTRICT tux,
                      const T* RESTRICT tuy, const T* RESTRICT ax0, const T* RESTRICT ax1,
                      const T* RESTRICT ay0, const T* RESTRICT ay1, T* RESTRICT adj_pxx,
                      T* RESTRICT adj_pxy, T* RESTRICT adj_pyx, T* RESTRICT adj_pyy) {
  for (int64_t k = 0; k < n; ++k) {
    adj_pxx[k] += theta * (ax1[k] * tux[k] + ax0[k] * tux[k + b]);
    adj_pyx[k] += theta * (ay1[k] * tux[k] + ay0[k] * tux[k + row]);
    adj_pxy[k] += theta * (ax1[k] * tuy[k] + ax0[k] * tuy[k + b]);
    adj_pyy[k] += theta * (ay1[k] * tuy[k] + ay0[k] * tuy[k + row]);
  }
}

// Reverse of Step: given the state `in` entering the iteration, the u' it produced (`next`),
// and the adjoint of the iteration's output state in `adjoint`, overwrites `adjoint` with the
// adjoint of `in` and adds this iteration's terms to `acc`.
template <typename T, bool kLearnDivergence, bool kLearnHyper>
void StepVjp(const State<T>& in, const T* next_ux, const T* next_uy, const State<T>& adjoint,
             const Fields<T>& f, const Taps<T>& taps, const Problem<T>& p, const Geometry& g,
             const VjpScratch<T>& v, const Accumulators<T>& acc) {
  const int64_t n = g.span(), b = g.block, row = g.row();
  const RowTaps<T> t(taps);
  T* sum = acc.sums;
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    const T below = y + 1 < g.height ? T(1) : T(0);
    DualVjpRow<T, kLearnDivergence, kLearnHyper>(
        n, b, row, p.ratio, below, next_ux + s, in.pxx + s, in.pyx + s, adjoint.pxx + s,
        adjoint.pyx + s, v.gdxx + s, v.gdyx + s, t.diff_x0, t.diff_x1, t.diff_y0, t.diff_y1,
        t.mask, sum + kDiffX0 * n, sum + kDiffX1 * n, sum + kDiffY0 * n, sum + kDiffY1 * n,
        sum + kRatio * n);
    DualVjpRow<T, kLearnDivergence, kLearnHyper>(
        n, b, row, p.ratio, below, next_uy + s, in.pxy + s, in.pyy + s, adjoint.pxy + s,
        adjoint.pyy + s, v.gdxy + s, v.gdyy + s, t.diff_x0, t.diff_x1, t.diff_y0, t.diff_y1,
        t.mask, sum + kDiffX0 * n, sum + kDiffX1 * n, sum + kDiffY0 * n, sum + kDiffY1 * n,
        sum + kRatio * n);
  }
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    PrimalVjpRow<T, kLearnDivergence, kLearnHyper>(
        n, b, row, p.theta, p.step, f.diff + s, f.gx + s, f.gy + s, f.inv + s, in.ux + s,
        in.uy + s, in.pxx + s, in.pxy + s, in.pyx + s, in.pyy + s, v.gdxx + s, v.gdyx + s,
        v.gdxy + s, v.gdyy + s, t.diff_x0, t.diff_x1, t.diff_y0, t.diff_y1, t.div_x0, t.div_x1,
        t.div_y0, t.div_y1, adjoint.ux + s, adjoint.uy + s, v.tux + s, v.tuy + s, acc.ggx + s,
        acc.ggy + s, acc.gdiff + s, sum + kThetaDiv * n, sum + kClipped * n, sum + kDivX0 * n,
        sum + kDivX1 * n, sum + kDivY0 * n, sum + kDivY1 * n);
  }
  for (int64_t y = 0; y < g.height; ++y) {
    const int64_t s = g.start(y);
    DivergenceVjpRow(n, b, row, p.theta, v.tux + s, v.tuy + s, t.div_x0, t.div_x1, t.div_y0,
                     t.div_y1, adjoint.pxx + s, adjoint.pxy + s, adjoint.pyx + s,
                     adjoint.pyy + s);
  }
}

// Adjoint of the edge-padded correlation with a (kh, kw, C, 1) kernel: adds the frame's
// gradient to `frame_grad` (padded; the border is folded back onto the edges by the caller)
// and, with `kernel_sums`, each tap's sum of grad x window per value of a row.
template <typename T>
void CorrelateVjp(const T* grad, const T* frame, const T* kernel, int kh, int kw,
                  const Problem<T>& p, const Geometry& g, int64_t c0, T* frame_grad,
                  double* kernel_sums) {
  const int64_t n = g.span();
  for (int i = 0; i < kh; ++i) {
    for (int j = 0; j < kw; ++j) {
      const std::vector<T> tap = AlongRow(kernel + (i * kw + j) * p.channels, p, g, c0);
      const int64_t offset = TapOffset(g, kh, kw, i, j);
      for (int64_t y = 0; y < g.height; ++y) {
        const T* gr = grad + g.start(y);
        T* fg = frame_grad + g.start(y) + offset;
        const T* f = frame + g.start(y) + offset;
        for (int64_t k = 0; k < n; ++k) fg[k] += tap[k] * gr[k];
        if (kernel_sums != nullptr) {
          double* sums = kernel_sums + (i * kw + j) * g.block;
          for (int64_t k = 0; k < n; ++k) sums[k % g.block] += double(gr[k]) * double(f[k]);
        }
      }
    }
  }
}

// Adjoint of edge replication: each border value of a padded gradient goes to the edge value
// it copied (corners to corners).
template <typename T>
void FoldBorder(const Geometry& g, T* grad) {
  const int64_t b = g.block, row = g.row();
  for (int64_t y = 0; y < g.height + 2; ++y) {  // columns -1 and W onto 0 and W - 1
    T* line = grad + y * row;
    for (int64_t k = 0; k < b; ++k) {
      line[b + k] += line[k];
      line[g.width * b + k] += line[(g.width + 1) * b + k];
      line[k] = line[(g.width + 1) * b + k] = T(0);
    }
  }
  for (int64_t i = 0; i < row; ++i) {  // rows -1 and H onto 0 and H - 1
    grad[row + i] += grad[i];
    grad[g.height * row + i] += grad[(g.height + 1) * row + i];
    grad[i] = grad[(g.height + 1) * row + i] = T(0);
  }
}

// === Work units ===

// Reads a scalar input.
template <typename T>
T Scalar(const Tensor& tensor) {
  return tensor.scalar<T>()();
}

// The channels per unit: as many as keep one padded array within kUnitArrayBytes.
int64_t BlockChannels(int64_t height, int64_t width, int64_t channels, int64_t value_bytes) {
  const int64_t per_channel = (height + 2) * (width + 2) * value_bytes;
  return std::max<int64_t>(1, std::min<int64_t>(channels, kUnitArrayBytes / per_channel));
}

// Sets `error` on `context` unless `ok`.
bool Require(OpKernelContext* context, bool ok, const absl::Status& error) {
  if (!ok) context->CtxFailure(__FILE__, __LINE__, error);
  return ok;
}

// The shapes and scalars of one call, checked; sets an error on `context` if they are wrong.
template <typename T>
bool MakeProblem(OpKernelContext* context, int num_iter, Problem<T>* problem) {
  const Tensor& frame1 = context->input(0);
  const Tensor& frame2 = context->input(1);
  if (!Require(context, frame1.dims() == 4 && frame1.shape() == frame2.shape(),
              absl::InvalidArgumentError(
                  "frame1 and frame2 must be (N, H, W, C) tensors of the same shape")))
    return false;
  const int64_t channels = frame1.dim_size(3);
  for (int index = 2; index < 4; ++index) {
    const Tensor& kernel = context->input(index);
    if (!Require(context,
                kernel.dims() == 4 && kernel.dim_size(0) >= 1 && kernel.dim_size(0) <= 3 &&
                    kernel.dim_size(1) >= 1 && kernel.dim_size(1) <= 3 &&
                    kernel.dim_size(2) == channels && kernel.dim_size(3) == 1,
                absl::InvalidArgumentError(
                    "image-gradient kernels must be (kh, kw, C, 1) with kh, kw in 1..3")))
      return false;
  }
  for (int index = 4; index < 8; ++index) {
    const Tensor& kernel = context->input(index);
    const bool along_x = index % 2 == 0;
    if (!Require(context,
                kernel.dims() == 4 && kernel.dim_size(0) == (along_x ? 1 : 2) &&
                    kernel.dim_size(1) == (along_x ? 2 : 1) && kernel.dim_size(2) == channels &&
                    kernel.dim_size(3) == 1,
                absl::InvalidArgumentError(
                    "difference / divergence kernels must be (1, 2, C, 1) along x and "
                    "(2, 1, C, 1) along y")))
      return false;
  }
  for (int index = 8; index < 11; ++index) {
    if (!Require(context, context->input(index).dims() == 0,
                absl::InvalidArgumentError("theta, lambda and tau must be scalars"))) return false;
  }
  Problem<T>& p = *problem;
  p.pairs = frame1.dim_size(0);
  p.height = frame1.dim_size(1);
  p.width = frame1.dim_size(2);
  p.channels = channels;
  p.block = BlockChannels(p.height, p.width, channels, sizeof(T));
  p.num_iter = num_iter;
  p.image_x = context->input(2).flat<T>().data();
  p.image_y = context->input(3).flat<T>().data();
  p.image_x_h = context->input(2).dim_size(0);
  p.image_x_w = context->input(2).dim_size(1);
  p.image_y_h = context->input(3).dim_size(0);
  p.image_y_w = context->input(3).dim_size(1);
  p.diff_x = context->input(4).flat<T>().data();
  p.diff_y = context->input(5).flat<T>().data();
  p.div_x = context->input(6).flat<T>().data();
  p.div_y = context->input(7).flat<T>().data();
  const T theta = Scalar<T>(context->input(8));
  p.theta = theta;
  p.step = Scalar<T>(context->input(9)) * theta;
  p.ratio = Scalar<T>(context->input(10)) / theta;
  return true;
}

// Runs `work(unit, scratch)` for every unit on TensorFlow's CPU worker threads. The units are
// cut into as many shards as threads (fewer where their scratch would pass kScratchBudgetBytes
// together), each with its own scratch of `scratch_values` values, zeroed before its first unit
// (borders must start at 0), allocated by TensorFlow (an OOM is an error, not an abort).
template <typename T, typename Work>
absl::Status ForEachUnit(OpKernelContext* context, const Problem<T>& p, int64_t scratch_values,
                         Work work) {
  auto* workers = context->device()->tensorflow_cpu_worker_threads();
  const int64_t affordable =
      std::max<int64_t>(1, kScratchBudgetBytes / (scratch_values * int64_t(sizeof(T))));
  const int64_t shards = std::min<int64_t>({p.units(), workers->num_threads, affordable});
  const int64_t units_per_shard = (p.units() + shards - 1) / shards;
  Tensor scratch;
  TF_RETURN_IF_ERROR(context->allocate_temp(::tensorflow::DataTypeToEnum<T>::value,
                                            TensorShape({shards * scratch_values}), &scratch));
  T* base = scratch.flat<T>().data();
  // A cost this high makes Shard run every shard as a task of its own.
  ::tensorflow::Shard(shards, workers->workers, shards, int64_t(1) << 30,
                      [&](int64_t begin, int64_t end) {
                        for (int64_t shard = begin; shard < end; ++shard) {
                          T* own = base + shard * scratch_values;
                          std::fill_n(own, scratch_values, T(0));
                          const int64_t last =
                              std::min(p.units(), (shard + 1) * units_per_shard);
                          for (int64_t unit = shard * units_per_shard; unit < last; ++unit) {
                            work(unit, own);
                          }
                        }
                      });
  return absl::OkStatus();
}

template <typename T>
class Tvl1Op : public OpKernel {
 public:
  explicit Tvl1Op(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_iter", &num_iter_));
  }

  void Compute(OpKernelContext* context) override {
    Problem<T> p;
    if (!MakeProblem(context, num_iter_, &p)) return;
    const TensorShape& shape = context->input(0).shape();
    Tensor* flow_x = nullptr;
    Tensor* flow_y = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, shape, &flow_x));
    OP_REQUIRES_OK(context, context->allocate_output(1, shape, &flow_y));
    if (shape.num_elements() == 0) return;
    const Geometry g{p.height, p.width, p.block};
    const int64_t size = g.size();
    const int64_t frame_values = p.height * p.width * p.channels;
    const T* f1 = context->input(0).flat<T>().data();
    const T* f2 = context->input(1).flat<T>().data();
    T* out_x = flow_x->flat<T>().data();
    T* out_y = flow_y->flat<T>().data();
    // frames 2, fields 4, two states 12
    const int64_t arrays = 2 + 4 + 2 * kStateArrays;
    OP_REQUIRES_OK(context, ForEachUnit(context, p, arrays * size, [&](int64_t unit, T* scratch) {
      const int64_t pair = unit / p.blocks(), c0 = (unit % p.blocks()) * p.block;
      T* frame1 = scratch;
      T* frame2 = scratch + size;
      const Fields<T> fields{scratch + 2 * size, scratch + 3 * size, scratch + 4 * size,
                             scratch + 5 * size};
      State<T> states[2] = {State<T>(scratch + 6 * size, size),
                            State<T>(scratch + 12 * size, size)};
      std::fill_n(states[0].ux, kStateArrays * size, T(0));
      Load(f1 + pair * frame_values, p, g, c0, false, frame1);
      Load(f2 + pair * frame_values, p, g, c0, true, frame2);
      ComputeFields(frame1, frame2, p, g, c0, fields);
      const Taps<T> taps(p, g, c0);
      for (int it = 0; it < num_iter_; ++it) {
        Step(states[it % 2], states[(it + 1) % 2], fields, taps, p, g);
      }
      const State<T>& result = states[num_iter_ % 2];
      Store(result.ux, p, g, c0, out_x + pair * frame_values);
      Store(result.uy, p, g, c0, out_y + pair * frame_values);
    }));
  }

 private:
  int num_iter_;
};

template <typename T>
class Tvl1GradOp : public OpKernel {
 public:
  explicit Tvl1GradOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("num_iter", &num_iter_));
    OP_REQUIRES_OK(context, context->GetAttr("checkpoint_every", &checkpoint_every_));
    OP_REQUIRES_OK(context, context->GetAttr("learn_sobel", &learn_sobel_));
    OP_REQUIRES_OK(context, context->GetAttr("learn_divergence", &learn_divergence_));
    OP_REQUIRES_OK(context, context->GetAttr("learn_hyper", &learn_hyper_));
  }

  void Compute(OpKernelContext* context) override {
    Problem<T> p;
    if (!MakeProblem(context, num_iter_, &p)) return;
    const TensorShape& shape = context->input(0).shape();
    OP_REQUIRES(context,
                context->input(11).shape() == shape && context->input(12).shape() == shape,
                absl::InvalidArgumentError("the flow's gradients must be shaped like the frames"));
    Tensor* outputs[11];
    for (int index = 0; index < 11; ++index) {
      OP_REQUIRES_OK(context,
                     context->allocate_output(index, context->input(index).shape(),
                                              &outputs[index]));
      outputs[index]->flat<T>().setZero();
    }
    if (shape.num_elements() == 0) return;

    const Geometry g{p.height, p.width, p.block};
    const int64_t size = g.size(), n = g.span();
    const int interval = Interval(size);
    const int segments = (num_iter_ + interval - 1) / interval;
    // Zeroed per unit: adjoint 6, field gradients 3, frame gradient 1, sums, the first
    // checkpoint (of one per segment). Then the other checkpoints, frames 2, fields 4, reverse
    // scratch 6, the states of one segment (interval + 1).
    const int64_t zeroed_values = (kStateArrays + 4 + kStateArrays) * size + kNumSums * n;
    const int64_t stored = int64_t(segments - 1 + interval + 1) * kStateArrays;
    const int64_t scratch_values = zeroed_values + (2 + 4 + 6 + stored) * size;
    // Per unit: kNumSums per-channel sums, then the image kernels' taps.
    const int image_taps = p.image_x_h * p.image_x_w + p.image_y_h * p.image_y_w;
    const int64_t unit_sums = (kNumSums + image_taps) * p.block;
    std::vector<double> partial(p.units() * unit_sums, 0.0);

    const int64_t frame_values = p.height * p.width * p.channels;
    const T* f1 = context->input(0).flat<T>().data();
    const T* f2 = context->input(1).flat<T>().data();
    const T* grad_x = context->input(11).flat<T>().data();
    const T* grad_y = context->input(12).flat<T>().data();
    T* frame1_grad = outputs[0]->flat<T>().data();
    T* frame2_grad = outputs[1]->flat<T>().data();

    OP_REQUIRES_OK(context, ForEachUnit(context, p, scratch_values, [&](int64_t unit, T* s) {
      const int64_t pair = unit / p.blocks(), c0 = (unit % p.blocks()) * p.block;
      // What a unit accumulates into, or reads before writing, is zeroed for each unit: the
      // adjoint, the accumulators, the frame gradient, the zero state entering iteration 0.
      // Every other array's border stays 0 from the scratch's allocation (only interiors are
      // written), which is all that is read of them before they are written.
      std::fill_n(s, zeroed_values, T(0));
      T* next = s;
      auto take = [&](int64_t count) { T* at = next; next += count * size; return at; };
      const State<T> adjoint(take(kStateArrays), size);
      T* field_grad_x = take(1);
      T* field_grad_y = take(1);
      T* diff_grad = take(1);
      T* padded_grad = take(1);
      T* sum_rows = next;
      next += kNumSums * n;
      const Accumulators<T> acc{field_grad_x, field_grad_y, diff_grad, sum_rows};
      T* checkpoints = take(int64_t(segments) * kStateArrays);  // the first one zeroed
      T* frame1 = take(1);
      T* frame2 = take(1);
      const Fields<T> fields{take(1), take(1), take(1), take(1)};
      const VjpScratch<T> v{take(1), take(1), take(1), take(1), take(1), take(1)};
      T* states = take(int64_t(interval + 1) * kStateArrays);

      Load(f1 + pair * frame_values, p, g, c0, false, frame1);
      Load(f2 + pair * frame_values, p, g, c0, true, frame2);
      ComputeFields(frame1, frame2, p, g, c0, fields);
      const Taps<T> taps(p, g, c0);
      auto state = [&](T* base, int64_t index) {
        return State<T>(base + index * kStateArrays * size, size);
      };
      // The state entering each segment (segment 0 starts from zeros).
      for (int segment = 1; segment < segments; ++segment) {
        State<T> from = state(checkpoints, segment - 1);
        for (int it = 0; it < interval; ++it) {
          State<T> to = it + 1 == interval ? state(checkpoints, segment) : state(states, it % 2);
          Step(from, to, fields, taps, p, g);
          from = to;
        }
      }
      Load(grad_x + pair * frame_values, p, g, c0, false, adjoint.ux);
      Load(grad_y + pair * frame_values, p, g, c0, false, adjoint.uy);
      for (int segment = segments - 1; segment >= 0; --segment) {
        const int length = std::min(interval, num_iter_ - segment * interval);
        std::copy_n(state(checkpoints, segment).ux, kStateArrays * size, states);
        for (int it = 0; it < length; ++it) {
          Step(state(states, it), state(states, it + 1), fields, taps, p, g);
        }
        for (int it = length - 1; it >= 0; --it) {
          const State<T> after = state(states, it + 1);
          ReverseStep(state(states, it), after.ux, after.uy, adjoint, fields, taps, p, g, v, acc);
        }
      }

      // Frame 2 reaches the loss through F2 - F1 and through its image gradient.
      double* unit_partial = partial.data() + unit * unit_sums;
      double* image_sums = learn_sobel_ ? unit_partial + kNumSums * p.block : nullptr;
      CorrelateVjp(acc.ggx, frame2, p.image_x, p.image_x_h, p.image_x_w, p, g, c0, padded_grad,
                   image_sums);
      if (image_sums != nullptr) image_sums += p.image_x_h * p.image_x_w * p.block;
      CorrelateVjp(acc.ggy, frame2, p.image_y, p.image_y_h, p.image_y_w, p, g, c0, padded_grad,
                   image_sums);
      FoldBorder(g, padded_grad);
      for (int64_t y = 0; y < g.height; ++y) {
        for (int64_t k = g.start(y); k < g.start(y) + n; ++k) padded_grad[k] += acc.gdiff[k];
      }
      Store(padded_grad, p, g, c0, frame2_grad + pair * frame_values);
      Store(acc.gdiff, p, g, c0, frame1_grad + pair * frame_values, T(-1));
      for (int sum = 0; sum < kNumSums; ++sum) {
        for (int64_t k = 0; k < n; ++k) {
          unit_partial[sum * p.block + k % p.block] += acc.sums[sum * n + k];
        }
      }
    }));
    WriteParameterGradients(context, p, partial, unit_sums, outputs);
  }

 private:
  // Iterations between the states a unit's gradient stores.
  int Interval(int64_t size) const {
    if (checkpoint_every_ > 0) return std::min<int>(checkpoint_every_, num_iter_);
    const int64_t all = int64_t(num_iter_ + 1) * kStateArrays * size * int64_t(sizeof(T));
    if (all <= kStoredStateBytes) return num_iter_;
    return std::max(1, int(std::ceil(std::sqrt(double(num_iter_)))));
  }

  void ReverseStep(const State<T>& in, const T* next_ux, const T* next_uy,
                   const State<T>& adjoint, const Fields<T>& f, const Taps<T>& t,
                   const Problem<T>& p, const Geometry& g, const VjpScratch<T>& v,
                   const Accumulators<T>& acc) const {
    if (learn_divergence_ && learn_hyper_) {
      StepVjp<T, true, true>(in, next_ux, next_uy, adjoint, f, t, p, g, v, acc);
    } else if (learn_divergence_) {
      StepVjp<T, true, false>(in, next_ux, next_uy, adjoint, f, t, p, g, v, acc);
    } else if (learn_hyper_) {
      StepVjp<T, false, true>(in, next_ux, next_uy, adjoint, f, t, p, g, v, acc);
    } else {
      StepVjp<T, false, false>(in, next_ux, next_uy, adjoint, f, t, p, g, v, acc);
    }
  }

  // Sums the units' per-channel partial sums (in unit order: the result does not depend on the
  // threads) into the gradients of the kernels and of theta, lambda, tau.
  void WriteParameterGradients(OpKernelContext* context, const Problem<T>& p,
                               const std::vector<double>& partial, int64_t unit_sums,
                               Tensor** outputs) const {
    const int64_t c = p.channels;
    const int image_taps = p.image_x_h * p.image_x_w + p.image_y_h * p.image_y_w;
    std::vector<double> totals((kNumSums + image_taps) * c, 0.0);
    for (int64_t unit = 0; unit < p.units(); ++unit) {
      const int64_t c0 = (unit % p.blocks()) * p.block;
      const int64_t count = std::min(p.block, c - c0);
      const double* source = partial.data() + unit * unit_sums;
      for (int64_t row = 0; row < kNumSums + image_taps; ++row) {
        for (int64_t k = 0; k < count; ++k) totals[row * c + c0 + k] += source[row * p.block + k];
      }
    }
    auto channel_sum = [&](int row, int64_t channel) { return totals[row * c + channel]; };
    if (learn_sobel_) {
      T* kx = outputs[2]->flat<T>().data();
      T* ky = outputs[3]->flat<T>().data();
      const int x_taps = p.image_x_h * p.image_x_w;
      for (int tap = 0; tap < image_taps; ++tap) {
        for (int64_t channel = 0; channel < c; ++channel) {
          const T value = T(channel_sum(kNumSums + tap, channel));
          if (tap < x_taps) {
            kx[tap * c + channel] = value;
          } else {
            ky[(tap - x_taps) * c + channel] = value;
          }
        }
      }
    }
    if (learn_divergence_) {
      const int rows[4][2] = {{kDiffX0, kDiffX1}, {kDiffY0, kDiffY1}, {kDivX0, kDivX1},
                              {kDivY0, kDivY1}};
      for (int kernel = 0; kernel < 4; ++kernel) {
        T* out = outputs[4 + kernel]->flat<T>().data();
        for (int tap = 0; tap < 2; ++tap) {
          for (int64_t channel = 0; channel < c; ++channel) {
            out[tap * c + channel] = T(channel_sum(rows[kernel][tap], channel));
          }
        }
      }
    }
    if (learn_hyper_) {
      double theta_div = 0, clipped = 0, ratio = 0;
      for (int64_t channel = 0; channel < c; ++channel) {
        theta_div += channel_sum(kThetaDiv, channel);
        clipped += channel_sum(kClipped, channel);
        ratio += channel_sum(kRatio, channel);
      }
      const double theta = Scalar<T>(context->input(8));
      const double lambda = Scalar<T>(context->input(9));
      const double tau = Scalar<T>(context->input(10));
      // step = lambda theta and ratio = tau / theta: the chain rule onto theta, lambda, tau.
      outputs[8]->scalar<T>()() = T(theta_div + lambda * clipped - tau / (theta * theta) * ratio);
      outputs[9]->scalar<T>()() = T(theta * clipped);
      outputs[10]->scalar<T>()() = T(ratio / theta);
    }
  }

  int num_iter_;
  int checkpoint_every_;
  bool learn_sobel_, learn_divergence_, learn_hyper_;
};

}  // namespace

using ::tensorflow::shape_inference::InferenceContext;

// The inputs of the iteration, which both ops take first.
#define REPFLOW_ITERATION_INPUTS                                                   \
  Input("frame1: T")                                                               \
      .Input("frame2: T")                                                          \
      .Input("image_kernel_x: T")                                                  \
      .Input("image_kernel_y: T")                                                  \
      .Input("difference_kernel_x: T")                                             \
      .Input("difference_kernel_y: T")                                             \
      .Input("divergence_kernel_x: T")                                             \
      .Input("divergence_kernel_y: T")                                             \
      .Input("theta: T")                                                           \
      .Input("lambda: T")                                                          \
      .Input("tau: T")

REGISTER_OP("RepflowTvl1")
    .REPFLOW_ITERATION_INPUTS
    .Output("flow_x: T")
    .Output("flow_y: T")
    .Attr("T: {float, double}")
    .Attr("num_iter: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      ::tensorflow::shape_inference::ShapeHandle frames;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &frames));
      TF_RETURN_IF_ERROR(c->Merge(frames, c->input(1), &frames));
      c->set_output(0, frames);
      c->set_output(1, frames);
      return absl::OkStatus();
    })
    .Doc("Runs num_iter iterations of representation flow (TV-L1) from zero flow.");

REGISTER_OP("RepflowTvl1Grad")
    .REPFLOW_ITERATION_INPUTS
    .Input("grad_flow_x: T")
    .Input("grad_flow_y: T")
    .Output("grad_frame1: T")
    .Output("grad_frame2: T")
    .Output("grad_image_kernel_x: T")
    .Output("grad_image_kernel_y: T")
    .Output("grad_difference_kernel_x: T")
    .Output("grad_difference_kernel_y: T")
    .Output("grad_divergence_kernel_x: T")
    .Output("grad_divergence_kernel_y: T")
    .Output("grad_theta: T")
    .Output("grad_lambda: T")
    .Output("grad_tau: T")
    .Attr("T: {float, double}")
    .Attr("num_iter: int >= 1")
    .Attr("checkpoint_every: int >= 0 = 0")
    .Attr("learn_sobel: bool = true")
    .Attr("learn_divergence: bool = true")
    .Attr("learn_hyper: bool = true")
    .SetShapeFn([](InferenceContext* c) {
      for (int index = 0; index < 11; ++index) c->set_output(index, c->input(index));
      return absl::OkStatus();
    })
    .Doc("The gradient of RepflowTvl1 w.r.t. all its inputs (groups not learned get zeros).");

#define REPFLOW_REGISTER(T)                                                          \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("RepflowTvl1").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
      Tvl1Op<T>);                                                                    \
  REGISTER_KERNEL_BUILDER(                                                           \
      Name("RepflowTvl1Grad").Device(::tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), \
      Tvl1GradOp<T>);

REPFLOW_REGISTER(float)
REPFLOW_REGISTER(double)
#undef REPFLOW_REGISTER

}  // namespace repflow
