// Fused evaluation of a monotone piecewise quadratic Bezier curve on CPU.
//
// For each element x the kernel selects the piece holding x (the last piece whose
// start is <= x), solves x(t) = x with the cancellation-free root
// t = 2d / (b + sqrt(b^2 + 4ad)), d = x - x0, and returns y(t) and, optionally,
// dy/dx = y'(t) / x'(t) with x'(t) = sqrt(b^2 + 4ad) clamped below by min_slope.
// Inputs >= 1 map to exactly 1 and inputs <= 0 to exactly 0 (truth table), also where
// coincident control points put a jump at 0 or 1.
//
// coef is a (K, 8) float64 table per piece: x0, b^2, 4a, b, y0, by, ay, 2ay.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <algorithm>
#include <limits>
#include <vector>

namespace {

template <typename scalar_t>
inline void curve_eval(const scalar_t* table, int64_t K, const scalar_t* x, scalar_t* y,
                       scalar_t* dydx, int64_t n, scalar_t ms) {
  // Branch-free per element (selects only), so that the compiler can vectorize it.
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t xi = x[i];
    const scalar_t* p = table;
    for (int64_t j = 1; j < K; ++j) p = xi >= table[j * 8] ? table + j * 8 : p;
    const scalar_t d = xi - p[0];
    scalar_t disc = p[1] + p[2] * d;
    disc = disc > scalar_t(0) ? disc : scalar_t(0);
    const scalar_t s = std::sqrt(disc);
    const scalar_t den = s + p[3];
    const scalar_t safe = den > scalar_t(0) ? den : scalar_t(1);
    scalar_t t = den > scalar_t(0) ? (d + d) / safe : scalar_t(0);
    t = t < scalar_t(0) ? scalar_t(0) : (t > scalar_t(1) ? scalar_t(1) : t);
    scalar_t yi = (p[6] * t + p[5]) * t + p[4];
    yi = yi > scalar_t(1) ? scalar_t(1) : (yi < scalar_t(0) ? scalar_t(0) : yi);  // rounding
    y[i] = xi >= scalar_t(1) ? scalar_t(1) : (xi <= scalar_t(0) ? scalar_t(0) : yi);
    if (dydx) {
      const scalar_t sl = s > ms ? s : ms;
      const scalar_t dy = p[7] * t + p[5];
      dydx[i] = dy > scalar_t(0) ? dy / sl : scalar_t(0);
    }
  }
}

template <typename scalar_t>
void bezier_kernel(const scalar_t* x, scalar_t* y, scalar_t* dydx, int64_t n,
                   const std::vector<double>& coef_d, int64_t K, double min_slope) {
  std::vector<scalar_t> coef(coef_d.begin(), coef_d.end());
  const scalar_t* c = coef.data();
  const scalar_t ms = static_cast<scalar_t>(min_slope);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    curve_eval<scalar_t>(c, K, x + begin, y + begin, dydx ? dydx + begin : nullptr,
                         end - begin, ms);
  });
}

std::vector<torch::Tensor> bezier_forward(torch::Tensor x, torch::Tensor coef, bool need_grad,
                                          double min_slope) {
  TORCH_CHECK(x.device().is_cpu(), "bezier_forward: x must be a CPU tensor");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == 8, "bezier_forward: coef must be (K, 8)");
  auto xc = x.contiguous();
  auto cd = coef.to(torch::kDouble).contiguous();
  std::vector<double> cv(cd.data_ptr<double>(), cd.data_ptr<double>() + cd.numel());
  auto y = torch::empty_like(xc);
  torch::Tensor g;
  if (need_grad) g = torch::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "bezier_forward", [&] {
    bezier_kernel<scalar_t>(xc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            need_grad ? g.data_ptr<scalar_t>() : nullptr, xc.numel(), cv,
                            coef.size(0), min_slope);
  });
  if (need_grad) return {y, g};
  return {y};
}

// A contiguous tensor viewed as (outer, L, inner) around dimension dim.
struct Lines {
  int64_t outer, L, inner;
};

inline Lines lines_of(const torch::Tensor& t, int64_t dim) {
  const int64_t L = t.size(dim);
  const int64_t inner = t.stride(dim);
  return {L == 0 ? 0 : t.numel() / (L * inner), L, inner};
}

// Max over the window [l - r, l + r] along one dimension (border ignored) of a
// contiguous tensor viewed as (outer, L, inner).
torch::Tensor window_max_forward(torch::Tensor x, int64_t dim, int64_t r) {
  TORCH_CHECK(x.device().is_cpu(), "window_max: x must be a CPU tensor");
  TORCH_CHECK(r >= 0, "window_max: radius must be >= 0");
  auto xc = x.contiguous();
  const Lines v = lines_of(xc, dim);  // plain names: lambdas capture them under C++17 too
  const int64_t outer = v.outer, L = v.L, inner = v.inner;
  auto y = torch::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "window_max_forward", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, outer, 1, [&](int64_t ob, int64_t oe) {
      for (int64_t o = ob; o < oe; ++o) {
        const scalar_t* xo = xp + o * L * inner;
        scalar_t* yo = yp + o * L * inner;
        if (inner == 1) {  // window along the contiguous axis: one scan per output
          for (int64_t l = 0; l < L; ++l) {
            const int64_t lo = l - r < 0 ? 0 : l - r;
            const int64_t hi = l + r >= L ? L - 1 : l + r;
            scalar_t best = xo[lo];
            for (int64_t j = lo + 1; j <= hi; ++j) best = xo[j] > best ? xo[j] : best;
            yo[l] = best;
          }
          continue;
        }
        for (int64_t l = 0; l < L; ++l) {  // window across rows: vectorized over inner
          const int64_t lo = l - r < 0 ? 0 : l - r;
          const int64_t hi = l + r >= L ? L - 1 : l + r;
          scalar_t* yl = yo + l * inner;
          std::copy(xo + lo * inner, xo + (lo + 1) * inner, yl);
          for (int64_t j = lo + 1; j <= hi; ++j) {
            const scalar_t* xj = xo + j * inner;
            for (int64_t i = 0; i < inner; ++i) yl[i] = xj[i] > yl[i] ? xj[i] : yl[i];
          }
        }
      }
    });
  });
  return y;
}

// Gradient of window_max_forward: each output's gradient goes to the first position of
// its window that holds the maximum (found again from x and y; no index tensor kept).
torch::Tensor window_max_backward(torch::Tensor grad_y, torch::Tensor x, torch::Tensor y,
                                  int64_t dim, int64_t r) {
  auto g = grad_y.contiguous();
  auto xc = x.contiguous();
  auto yc = y.contiguous();
  const Lines v = lines_of(g, dim);  // plain names: lambdas capture them under C++17 too
  const int64_t outer = v.outer, L = v.L, inner = v.inner;
  auto dx = torch::zeros_like(g);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "window_max_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    const scalar_t* yp = yc.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, outer, 1, [&](int64_t ob, int64_t oe) {
      std::vector<scalar_t> pending(inner);
      for (int64_t o = ob; o < oe; ++o) {
        const int64_t base = o * L * inner;
        if (inner == 1) {
          for (int64_t l = 0; l < L; ++l) {
            int64_t j = l - r < 0 ? 0 : l - r;
            const int64_t hi = l + r >= L ? L - 1 : l + r;
            while (j < hi && xp[base + j] != yp[base + l]) ++j;  // first maximum (NaN-safe)
            dp[base + j] += gp[base + l];
          }
          continue;
        }
        for (int64_t l = 0; l < L; ++l) {
          const int64_t lo = l - r < 0 ? 0 : l - r;
          const int64_t hi = l + r >= L ? L - 1 : l + r;
          const scalar_t* gl = gp + base + l * inner;
          const scalar_t* yl = yp + base + l * inner;
          std::copy(gl, gl + inner, pending.begin());  // gradient not yet routed
          scalar_t* pd = pending.data();
          for (int64_t j = lo; j <= hi; ++j) {
            const scalar_t* xj = xp + base + j * inner;
            scalar_t* dj = dp + base + j * inner;
            for (int64_t i = 0; i < inner; ++i) {
              const bool hit = xj[i] == yl[i];
              dj[i] += hit ? pd[i] : scalar_t(0);
              pd[i] = hit ? scalar_t(0) : pd[i];
            }
          }
        }
      }
    });
  });
  return dx;
}

// ---------------------------------------------------------------------------------
// Fused per-class statistics (asl/fused.py compiles the programs). One (image, class)
// plane at a time:
//   * stages: the input map of every pool is computed for the plane by a register
//     program (or is P itself), then pooled (square window, separable: rows, then
//     columns; border ignored);
//   * the final program (G = 0) runs on every pixel, the correction program
//     ((G = 1, M = 1) - (G = 0)) on the pixels labelled with the plane's class, and
//     their outputs are summed per plane;
//   * backward: the plane is recomputed, the programs are run in reverse mode seeded
//     with dL/dsum, and the adjoints of pooled maps go to the first maximum of each
//     window (along W, then H), like window_max_backward; dL/dP is written per plane.
// A register program is a list of rows (op, dst, a, b, active) with dst = row index;
// "active" rows depend on P. Leaves: P, G (label == class), M (valid mask), X (extra
// map a), CONST (consts[a]), POOL (pooled map of stage a), STAGEIN (input map of stage
// a). Operations: CURVE (curve b of register a), MUL, ADD, SUB, ONE_MINUS.
enum Op : int64_t {
  OP_P = 0, OP_G = 1, OP_M = 2, OP_X = 3, OP_CONST = 4, OP_CURVE = 5, OP_MUL = 6,
  OP_ADD = 7, OP_SUB = 8, OP_ONE_MINUS = 9, OP_POOL = 10, OP_STAGEIN = 11
};

constexpr int64_t kBlock = 256;

struct Program {
  std::vector<int64_t> code;  // rows of 5
  int64_t ni = 0;
  std::vector<int64_t> outs;  // register of each output, -1: constant out_const
  std::vector<double> out_const;
};

Program read_program(const torch::Tensor& code, const torch::Tensor& outs,
                     const torch::Tensor& oconst, int64_t n_consts, int64_t n_curves,
                     int64_t n_x, int64_t n_stages) {
  Program p;
  auto c = code.to(torch::kLong).contiguous();
  TORCH_CHECK(c.numel() == 0 || (c.dim() == 2 && c.size(1) == 5),
              "fused_engine: a program must be (I, 5)");
  p.ni = c.numel() / 5;
  p.code.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  auto o = outs.to(torch::kLong).contiguous();
  auto k = oconst.to(torch::kDouble).contiguous();
  TORCH_CHECK(o.numel() == k.numel(), "fused_engine: outs and out_consts differ in length");
  p.outs.assign(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel());
  p.out_const.assign(k.data_ptr<double>(), k.data_ptr<double>() + k.numel());
  for (int64_t i = 0; i < p.ni; ++i) {
    const int64_t* r = p.code.data() + i * 5;
    const int64_t op = r[0], a = r[2], b = r[3];
    bool ok = r[1] == i;
    switch (op) {
      case OP_P: case OP_G: case OP_M: break;
      case OP_X: ok = ok && a >= 0 && a < n_x; break;
      case OP_CONST: ok = ok && a >= 0 && a < n_consts; break;
      case OP_POOL: case OP_STAGEIN: ok = ok && a >= 0 && a < n_stages; break;
      case OP_CURVE: ok = ok && a >= 0 && a < i && b >= 0 && b < n_curves; break;
      case OP_ONE_MINUS: ok = ok && a >= 0 && a < i; break;
      case OP_MUL: case OP_ADD: case OP_SUB: ok = ok && a >= 0 && a < i && b >= 0 && b < i;
        break;
      default: ok = false;
    }
    TORCH_CHECK(ok, "fused_engine: malformed program row ", i);
  }
  for (int64_t r : p.outs) TORCH_CHECK(r >= -1 && r < p.ni, "fused_engine: bad output register");
  return p;
}

// Piece coefficients of every curve, column-major: cols[(curve * 8 + j) * kmax + piece].
template <typename scalar_t>
struct CurveSet {
  std::vector<scalar_t> cols;
  std::vector<int64_t> k;
  int64_t kmax = 1;
};

// The curve of curve_eval with the piece table transposed and the number of pieces a
// compile-time constant (K > 0): the coefficients sit in registers and the piece
// selection is a few selects, so that the loop vectorizes. K = 0: any number (kk).
template <typename scalar_t, int K, bool D>
void curve_cols(const scalar_t* cols, int64_t kmax, int64_t kk, const scalar_t* __restrict__ x,
                scalar_t* __restrict__ y, scalar_t* __restrict__ dydx, int64_t n,
                scalar_t ms) {
  constexpr int KA = K > 0 ? K : 1;
  scalar_t cf[8][KA];
  for (int j = 0; j < 8; ++j)
    for (int q = 0; q < KA; ++q) cf[j][q] = cols[j * kmax + q];
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t xi = x[i];
    scalar_t x0 = cf[0][0], bb = cf[1][0], a4 = cf[2][0], b = cf[3][0], y0 = cf[4][0],
             by = cf[5][0], ay = cf[6][0], ay2 = cf[7][0];
    if constexpr (K > 0) {
#pragma GCC unroll 16
      for (int q = 1; q < K; ++q) {
        const bool s = xi >= cf[0][q];
        x0 = s ? cf[0][q] : x0;
        bb = s ? cf[1][q] : bb;
        a4 = s ? cf[2][q] : a4;
        b = s ? cf[3][q] : b;
        y0 = s ? cf[4][q] : y0;
        by = s ? cf[5][q] : by;
        ay = s ? cf[6][q] : ay;
        ay2 = s ? cf[7][q] : ay2;
      }
    } else {
      for (int64_t q = 1; q < kk; ++q) {
        if (xi >= cols[q]) {
          x0 = cols[q], bb = cols[kmax + q], a4 = cols[2 * kmax + q], b = cols[3 * kmax + q];
          y0 = cols[4 * kmax + q], by = cols[5 * kmax + q], ay = cols[6 * kmax + q];
          ay2 = cols[7 * kmax + q];
        }
      }
    }
    const scalar_t d = xi - x0;
    scalar_t disc = bb + a4 * d;
    disc = disc > scalar_t(0) ? disc : scalar_t(0);
    const scalar_t sq = std::sqrt(disc);
    const scalar_t den = sq + b;
    const scalar_t safe = den > scalar_t(0) ? den : scalar_t(1);
    scalar_t t = den > scalar_t(0) ? (d + d) / safe : scalar_t(0);
    t = t < scalar_t(0) ? scalar_t(0) : (t > scalar_t(1) ? scalar_t(1) : t);
    scalar_t yi = (ay * t + by) * t + y0;
    yi = yi > scalar_t(1) ? scalar_t(1) : (yi < scalar_t(0) ? scalar_t(0) : yi);
    y[i] = xi >= scalar_t(1) ? scalar_t(1) : (xi <= scalar_t(0) ? scalar_t(0) : yi);
    if constexpr (D) {
      const scalar_t sl = sq > ms ? sq : ms;
      const scalar_t dy = ay2 * t + by;
      dydx[i] = dy > scalar_t(0) ? dy / sl : scalar_t(0);
    }
  }
}

template <typename scalar_t, bool D>
void curve_dispatch(const CurveSet<scalar_t>& cs, int64_t curve, const scalar_t* x,
                    scalar_t* y, scalar_t* dydx, int64_t n, scalar_t ms) {
  const scalar_t* cols = cs.cols.data() + curve * 8 * cs.kmax;
  const int64_t kk = cs.k[curve], km = cs.kmax;
  switch (kk) {
    case 1: curve_cols<scalar_t, 1, D>(cols, km, kk, x, y, dydx, n, ms); break;
    case 2: curve_cols<scalar_t, 2, D>(cols, km, kk, x, y, dydx, n, ms); break;
    case 3: curve_cols<scalar_t, 3, D>(cols, km, kk, x, y, dydx, n, ms); break;
    case 4: curve_cols<scalar_t, 4, D>(cols, km, kk, x, y, dydx, n, ms); break;
    case 5: curve_cols<scalar_t, 5, D>(cols, km, kk, x, y, dydx, n, ms); break;
    default: curve_cols<scalar_t, 0, D>(cols, km, kk, x, y, dydx, n, ms);
  }
}

// Small vector loops (separate functions so that restrict applies and they vectorize).
template <typename T>
void v_mul(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = a[i] * b[i];
}
template <typename T>
void v_add(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = a[i] + b[i];
}
template <typename T>
void v_sub(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = a[i] - b[i];
}
template <typename T>
void v_one_minus(const T* __restrict__ a, T* __restrict__ o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = T(1) - a[i];
}
template <typename T>
void v_acc(T* __restrict__ o, const T* __restrict__ a, int64_t n) {  // o += a
  for (int64_t i = 0; i < n; ++i) o[i] += a[i];
}
template <typename T>
void v_acc_neg(T* __restrict__ o, const T* __restrict__ a, int64_t n) {  // o -= a
  for (int64_t i = 0; i < n; ++i) o[i] -= a[i];
}
template <typename T>
void v_acc_mul(T* __restrict__ o, const T* __restrict__ a, const T* __restrict__ b,
               int64_t n) {  // o += a * b
  for (int64_t i = 0; i < n; ++i) o[i] += a[i] * b[i];
}
template <typename T>
double v_sum(const T* __restrict__ v, int64_t n) {  // n <= kBlock: a T accumulator is enough
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return static_cast<double>(s);
}
// Square pool of one plane: rm = window op along H, out = window op of rm along W (the
// border is ignored: windows are clipped to the image). Row by row, so that the row of
// rm is still in cache for the pass along W; both passes keep a chunk of outputs in
// registers while the window goes by (one store per output). pad: W + 2r scratch.
template <typename T, bool MAX>
inline T pick(T a, T b) {
  return MAX ? (b > a ? b : a) : (b < a ? b : a);
}

template <typename T, bool MAX>
void pool_forward(const T* in, T* rm, T* out, T* pad, int64_t H, int64_t W, int64_t r) {
  constexpr int64_t kChunk = 64;
  const T sentinel = MAX ? -std::numeric_limits<T>::infinity()
                         : std::numeric_limits<T>::infinity();
  std::fill(pad, pad + r, sentinel);
  std::fill(pad + r + W, pad + 2 * r + W, sentinel);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t lo = h - r < 0 ? 0 : h - r, hi = h + r >= H ? H - 1 : h + r;
    T* __restrict__ d = rm + h * W;
    int64_t w0 = 0;
    for (; w0 + kChunk <= W; w0 += kChunk) {
      T acc[kChunk];
      const T* __restrict__ s = in + lo * W + w0;
      for (int64_t q = 0; q < kChunk; ++q) acc[q] = s[q];
      for (int64_t j = lo + 1; j <= hi; ++j) {
        const T* __restrict__ t = in + j * W + w0;
        for (int64_t q = 0; q < kChunk; ++q) acc[q] = pick<T, MAX>(acc[q], t[q]);
      }
      for (int64_t q = 0; q < kChunk; ++q) d[w0 + q] = acc[q];
    }
    for (int64_t w = w0; w < W; ++w) {
      T a = in[lo * W + w];
      for (int64_t j = lo + 1; j <= hi; ++j) a = pick<T, MAX>(a, in[j * W + w]);
      d[w] = a;
    }
    std::copy(d, d + W, pad + r);
    T* __restrict__ o = out + h * W;
    w0 = 0;
    for (; w0 + kChunk <= W; w0 += kChunk) {
      T acc[kChunk];
      const T* __restrict__ s = pad + w0;  // pad[w0 + r + off] holds rm[w0 + off]
      for (int64_t q = 0; q < kChunk; ++q) acc[q] = s[q];
      for (int64_t k = 1; k <= 2 * r; ++k)
        for (int64_t q = 0; q < kChunk; ++q) acc[q] = pick<T, MAX>(acc[q], s[k + q]);
      for (int64_t q = 0; q < kChunk; ++q) o[w0 + q] = acc[q];
    }
    for (int64_t w = w0; w < W; ++w) {
      T a = pad[w];
      for (int64_t k = 1; k <= 2 * r; ++k) a = pick<T, MAX>(a, pad[w + k]);
      o[w] = a;
    }
  }
}

// Adds to ain the gradient of pool_forward: the adjoint of each output goes to the first
// position of its W window where rm equals the output, then to the first position of
// that column's H window where in equals rm (as two window_max_backward passes).
// Sparse adjoints (BF1's dilated boundary) are routed one by one.
template <typename T>
void pool_backward(const T* in, const T* rm, const T* out, const T* aout, T* ain, T* arm,
                   T* pend, int64_t H, int64_t W, int64_t r) {
  const int64_t HW = H * W;
  int64_t nnz = 0;
  for (int64_t i = 0; i < HW; ++i) nnz += aout[i] != T(0);
  if (nnz * 4 < HW) {
    for (int64_t i = 0; i < HW; ++i) {
      const T g = aout[i];
      if (g == T(0)) continue;
      const int64_t h = i / W, w = i % W;
      int64_t wp = w - r < 0 ? 0 : w - r;
      const int64_t whi = w + r >= W ? W - 1 : w + r;
      while (wp < whi && rm[h * W + wp] != out[i]) ++wp;
      const T m = rm[h * W + wp];
      int64_t hp = h - r < 0 ? 0 : h - r;
      const int64_t hhi = h + r >= H ? H - 1 : h + r;
      while (hp < hhi && in[hp * W + wp] != m) ++hp;
      ain[hp * W + wp] += g;
    }
    return;
  }
  std::fill(arm, arm + HW, T(0));
  for (int64_t h = 0; h < H; ++h) {  // along W: aout -> arm
    const T* __restrict__ s = rm + h * W;
    const T* __restrict__ y = out + h * W;
    T* __restrict__ d = arm + h * W;
    T* __restrict__ p = pend;
    std::copy(aout + h * W, aout + (h + 1) * W, p);
    for (int64_t o = -r; o <= r; ++o) {
      const int64_t lo = o < 0 ? -o : 0, hi = o > 0 ? W - o : W;
      for (int64_t w = lo; w < hi; ++w) {
        const bool hit = s[w + o] == y[w];
        d[w + o] += hit ? p[w] : T(0);
        p[w] = hit ? T(0) : p[w];
      }
    }
  }
  for (int64_t h = 0; h < H; ++h) {  // along H: arm -> ain
    const int64_t lo = h - r < 0 ? 0 : h - r, hi = h + r >= H ? H - 1 : h + r;
    const T* __restrict__ y = rm + h * W;
    T* __restrict__ p = pend;
    std::copy(arm + h * W, arm + (h + 1) * W, p);
    for (int64_t j = lo; j <= hi; ++j) {
      const T* __restrict__ s = in + j * W;
      T* __restrict__ d = ain + j * W;
      for (int64_t w = 0; w < W; ++w) {
        const bool hit = s[w] == y[w];
        d[w] += hit ? p[w] : T(0);
        p[w] = hit ? T(0) : p[w];
      }
    }
  }
}

// The maps one plane's programs read, and where their adjoints go.
template <typename T>
struct PlaneCtx {
  const T* p = nullptr;          // P of the plane (HW)
  const int32_t* lab = nullptr;  // labels of the image (HW)
  const T* mask = nullptr;       // valid mask of the image (HW)
  int32_t c = 0;                 // the plane's class
  std::vector<const T*> x;       // extra maps (this plane)
  std::vector<const T*> pool, sin;  // pooled map and input map of each stage
  T* dp = nullptr;                  // dL/dP of the plane
  std::vector<T*> apool, asin;      // adjoints of pool and sin (null: inactive)
};

template <typename T>
struct Machine {
  std::vector<T> val, der, adj;
  std::vector<const T*> vp;  // value of each register (a block, or straight into a map)
  explicit Machine(int64_t regs)
      : val(regs * kBlock), der(regs * kBlock), adj(regs * kBlock), vp(regs) {}
};

template <typename T>
struct Engine {
  std::vector<Program> progs;  // final, correction, stage programs
  std::vector<int64_t> stages;  // rows (how, r, direct_p, active)
  std::vector<double> absent;   // stage map where G = 0 everywhere, if constant (else NaN)
  std::vector<double> consts;
  CurveSet<T> curves;
  T ms;
  int64_t H = 0, W = 0;
  int64_t num_stages() const { return static_cast<int64_t>(stages.size() / 4); }
};

template <typename T>
inline const T* load(const T* src, int64_t start, int64_t n, const int32_t* idx, T* buf) {
  if (!idx) return src + start;
  for (int64_t i = 0; i < n; ++i) buf[i] = src[idx[i]];
  return buf;
}

template <typename T>
inline void store(T* dst, int64_t start, int64_t n, const int32_t* idx, const T* g,
                  bool assign) {
  if (!idx) {
    if (assign)
      std::copy(g, g + n, dst + start);
    else
      v_acc(dst + start, g, n);
    return;
  }
  if (assign)
    for (int64_t i = 0; i < n; ++i) dst[idx[i]] = g[i];
  else
    for (int64_t i = 0; i < n; ++i) dst[idx[i]] += g[i];
}

// Values of all registers on pixels [start, start + n) of the plane, or on the pixels
// idx[0..n) when idx is given; with need_der, curve rows that depend on P also keep dy/dx.
template <typename T>
void run_forward(const Engine<T>& en, const Program& pr, const PlaneCtx<T>& cx, Machine<T>& mc,
                 int64_t start, int64_t n, const int32_t* idx, bool need_der) {
  for (int64_t ii = 0; ii < pr.ni; ++ii) {
    const int64_t* in = pr.code.data() + ii * 5;
    const int64_t op = in[0], dst = in[1], a = in[2], b = in[3];
    T* v = mc.val.data() + dst * kBlock;
    const T** vp = mc.vp.data();
    switch (op) {
      case OP_P: vp[dst] = load(cx.p, start, n, idx, v); break;
      case OP_M: vp[dst] = load(cx.mask, start, n, idx, v); break;
      case OP_X: vp[dst] = load(cx.x[a], start, n, idx, v); break;
      case OP_POOL: vp[dst] = load(cx.pool[a], start, n, idx, v); break;
      case OP_STAGEIN: vp[dst] = load(cx.sin[a], start, n, idx, v); break;
      case OP_G: {
        const int32_t* L = cx.lab;
        const int32_t c = cx.c;
        if (idx) {
          for (int64_t i = 0; i < n; ++i) v[i] = L[idx[i]] == c ? T(1) : T(0);
        } else {
          for (int64_t i = 0; i < n; ++i) v[i] = L[start + i] == c ? T(1) : T(0);
        }
        vp[dst] = v;
        break;
      }
      case OP_CONST:
        std::fill(v, v + n, static_cast<T>(en.consts[a]));
        vp[dst] = v;
        break;
      case OP_CURVE:
        if (need_der && in[4])
          curve_dispatch<T, true>(en.curves, b, vp[a], v, mc.der.data() + dst * kBlock, n,
                                  en.ms);
        else
          curve_dispatch<T, false>(en.curves, b, vp[a], v, nullptr, n, en.ms);
        vp[dst] = v;
        break;
      case OP_MUL: v_mul(vp[a], vp[b], v, n); vp[dst] = v; break;
      case OP_ADD: v_add(vp[a], vp[b], v, n); vp[dst] = v; break;
      case OP_SUB: v_sub(vp[a], vp[b], v, n); vp[dst] = v; break;
      case OP_ONE_MINUS: v_one_minus(vp[a], v, n); vp[dst] = v; break;
      default: TORCH_CHECK(false, "fused_engine: unknown op ", op);
    }
  }
}

// Reverse mode after run_forward(need_der=true) on the same pixels: seeds the output
// adjoints with w[s] (seed == nullptr) or with seed[0..n) (single-output programs) and
// adds the adjoints of the leaves that depend on P to the plane's adjoint maps.
template <typename U>
struct Same {  // a non-deduced context (for nullptr arguments)
  using type = U;
};

template <typename T>
void run_reverse(const Engine<T>& en, const Program& pr, const PlaneCtx<T>& cx, Machine<T>& mc,
                 int64_t start, int64_t n, const int32_t* idx, const typename Same<T>::type* w,
                 const typename Same<T>::type* seed, bool assign = false) {
  const int64_t* code = pr.code.data();
  T* adj = mc.adj.data();
  for (int64_t ii = 0; ii < pr.ni; ++ii)
    if (code[ii * 5 + 4]) std::fill(adj + ii * kBlock, adj + ii * kBlock + n, T(0));
  bool any = false;
  for (size_t s = 0; s < pr.outs.size(); ++s) {
    const int64_t r = pr.outs[s];
    if (r < 0 || !code[r * 5 + 4]) continue;
    T* g = adj + r * kBlock;
    if (seed) {
      v_acc(g, seed, n);
    } else {
      const T ws = w[s];
      for (int64_t i = 0; i < n; ++i) g[i] += ws;
    }
    any = true;
  }
  if (!any) return;
  const T** vp = mc.vp.data();
  for (int64_t ii = pr.ni - 1; ii >= 0; --ii) {
    const int64_t* in = code + ii * 5;
    if (!in[4]) continue;
    const int64_t op = in[0], dst = in[1], a = in[2], b = in[3];
    const T* g = adj + dst * kBlock;
    switch (op) {
      case OP_P: store(cx.dp, start, n, idx, g, assign); break;
      case OP_POOL:
        if (cx.apool[a]) store(cx.apool[a], start, n, idx, g, assign);
        break;
      case OP_STAGEIN:
        if (cx.asin[a]) store(cx.asin[a], start, n, idx, g, assign);
        break;
      case OP_CURVE: v_acc_mul(adj + a * kBlock, g, mc.der.data() + dst * kBlock, n); break;
      case OP_MUL:
        if (code[a * 5 + 4]) v_acc_mul(adj + a * kBlock, g, vp[b], n);
        if (code[b * 5 + 4]) v_acc_mul(adj + b * kBlock, g, vp[a], n);
        break;
      case OP_ADD:
        if (code[a * 5 + 4]) v_acc(adj + a * kBlock, g, n);
        if (code[b * 5 + 4]) v_acc(adj + b * kBlock, g, n);
        break;
      case OP_SUB:
        if (code[a * 5 + 4]) v_acc(adj + a * kBlock, g, n);
        if (code[b * 5 + 4]) v_acc_neg(adj + b * kBlock, g, n);
        break;
      case OP_ONE_MINUS: v_acc_neg(adj + a * kBlock, g, n); break;
      default: break;  // G, M, X, CONST are never active
    }
  }
}

// Per-thread plane buffers of the stages.
// In the backward pass, an active stage program is run in reverse mode once, seeded with
// 1, while the stages are computed: its partial derivatives with respect to its active
// leaves (op, a) are kept as planes, and the stage's adjoint is later pushed through them.
template <typename T>
struct StageBufs {
  std::vector<std::vector<T>> in, rm, out, ain, aout;
  std::vector<T> arm, pend, pad;
  std::vector<std::vector<int64_t>> leaf_op, leaf_a;
  std::vector<std::vector<std::vector<T>>> part;
  std::vector<PlaneCtx<T>> pcx;  // leaf adjoints of stage j redirected to its partials
  std::vector<bool> has_part;
  StageBufs(const Engine<T>& en, bool backward) {
    const int64_t J = en.num_stages(), HW = en.H * en.W;
    in.resize(J), rm.resize(J), out.resize(J), ain.resize(J), aout.resize(J);
    leaf_op.resize(J), leaf_a.resize(J), part.resize(J), pcx.resize(J), has_part.assign(J, false);
    for (int64_t j = 0; j < J; ++j) {
      const int64_t* st = en.stages.data() + j * 4;
      if (!st[2]) in[j].resize(HW);
      rm[j].resize(HW);
      out[j].resize(HW);
      if (!backward || !st[3]) continue;
      aout[j].resize(HW);
      if (st[2]) continue;
      ain[j].resize(HW);
      const Program& pr = en.progs[2 + j];
      const int64_t r = pr.outs[0];
      if (r < 0 || !pr.code[r * 5 + 4]) continue;  // the map does not depend on P after all
      has_part[j] = true;
      PlaneCtx<T>& px = pcx[j];
      px.apool.assign(J, nullptr), px.asin.assign(J, nullptr);
      for (int64_t ii = 0; ii < pr.ni; ++ii) {
        const int64_t* row = pr.code.data() + ii * 5;
        const int64_t op = row[0], a = row[2];
        if (!row[4] || (op != OP_P && op != OP_POOL && op != OP_STAGEIN)) continue;
        leaf_op[j].push_back(op), leaf_a[j].push_back(a);
        part[j].emplace_back(HW);
        T* plane = part[j].back().data();
        if (op == OP_P) px.dp = plane;
        else if (op == OP_POOL) px.apool[a] = plane;
        else px.asin[a] = plane;
      }
    }
    if (backward) arm.resize(HW), pend.resize(en.W);
  }
};

// Runs a single-output program on the whole plane into dst.
template <typename T>
void program_to_plane(const Engine<T>& en, const Program& pr, const PlaneCtx<T>& cx,
                      Machine<T>& mc, T* dst) {
  const int64_t HW = en.H * en.W;
  const int64_t r = pr.outs[0];
  if (r < 0) {
    std::fill(dst, dst + HW, static_cast<T>(pr.out_const[0]));
    return;
  }
  for (int64_t start = 0; start < HW; start += kBlock) {
    const int64_t len = std::min(kBlock, HW - start);
    run_forward(en, pr, cx, mc, start, len, nullptr, false);
    std::copy(mc.vp[r], mc.vp[r] + len, dst + start);
  }
}

// absent: the plane's class has no pixel in the image (G = 0 everywhere); partials:
// keep the partial derivatives of the active stage programs (backward pass).
template <typename T>
void compute_stages(const Engine<T>& en, PlaneCtx<T>& cx, StageBufs<T>& bf, Machine<T>& mc,
                    bool absent, bool partials) {
  const int64_t HW = en.H * en.W;
  for (int64_t j = 0; j < en.num_stages(); ++j) {
    const int64_t* st = en.stages.data() + j * 4;
    const double ac = en.absent[j];
    if (absent && !st[3] && !std::isnan(ac)) {  // a constant map: so is its pool
      T* o = bf.out[j].data();
      std::fill(o, o + HW, static_cast<T>(ac));
      cx.sin[j] = o;
      cx.pool[j] = o;
      continue;
    }
    const T* src = cx.p;
    if (!st[2]) {
      const Program& pr = en.progs[2 + j];
      T* dst = bf.in[j].data();
      if (partials && bf.has_part[j]) {
        const int64_t r = pr.outs[0];
        const T one = T(1);
        PlaneCtx<T>& px = bf.pcx[j];
        px.p = cx.p, px.lab = cx.lab, px.mask = cx.mask, px.c = cx.c, px.x = cx.x;
        px.pool = cx.pool, px.sin = cx.sin;
        for (int64_t start = 0; start < HW; start += kBlock) {
          const int64_t len = std::min(kBlock, HW - start);
          run_forward(en, pr, px, mc, start, len, nullptr, true);
          std::copy(mc.vp[r], mc.vp[r] + len, dst + start);
          run_reverse(en, pr, px, mc, start, len, nullptr, &one, nullptr, true);
        }
      } else {
        program_to_plane(en, pr, cx, mc, dst);
      }
      src = dst;
    }
    bf.pad.resize(en.W + 2 * st[1]);
    if (st[0] == 0)
      pool_forward<T, true>(src, bf.rm[j].data(), bf.out[j].data(), bf.pad.data(), en.H, en.W,
                            st[1]);
    else
      pool_forward<T, false>(src, bf.rm[j].data(), bf.out[j].data(), bf.pad.data(), en.H, en.W,
                             st[1]);
    cx.sin[j] = src;
    cx.pool[j] = bf.out[j].data();
  }
}

// Labels as int32, the valid mask, and the pixels of each (image, class) grouped.
template <typename T>
struct LabelInfo {
  std::vector<int32_t> lab, idx;
  std::vector<T> mask;
  std::vector<int64_t> offsets;  // (N, C + 1)
  LabelInfo(const int64_t* label, int64_t N, int64_t C, int64_t HW, int64_t ignore_index)
      : lab(N * HW), idx(N * HW), mask(N * HW), offsets(N * (C + 1), 0) {
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t* l = label + n * HW;
        int64_t* off = offsets.data() + n * (C + 1);
        std::vector<int64_t> count(C + 1, 0);
        for (int64_t i = 0; i < HW; ++i) {
          const int64_t v = l[i];
          const bool cls = v >= 0 && v < C;
          lab[n * HW + i] = cls ? static_cast<int32_t>(v) : -1;
          mask[n * HW + i] = v != ignore_index ? T(1) : T(0);
          if (cls) ++count[v + 1];
        }
        for (int64_t c = 0; c < C; ++c) count[c + 1] += count[c];
        std::copy(count.begin(), count.end(), off);
        int32_t* ix = idx.data() + n * HW;
        for (int64_t i = 0; i < HW; ++i) {
          const int32_t v = lab[n * HW + i];
          if (v >= 0) ix[count[v]++] = static_cast<int32_t>(i);
        }
      }
    });
  }
};

// mode 0: per-plane sums (N * C, S) float64, or dL/dP (N, C, H, W) when grad (S, C) is
// given. mode 1: the final program's map reduced by a maximum over the classes
// [c_lo, C), (N, 1, H, W) (P-independent programs; no gradient).
torch::Tensor fused_engine(std::vector<torch::Tensor> codes, std::vector<torch::Tensor> outs,
                           std::vector<torch::Tensor> oconsts, torch::Tensor stages,
                           torch::Tensor absent, torch::Tensor consts, torch::Tensor curves, torch::Tensor curve_k,
                           bool correction, torch::Tensor p, torch::Tensor label,
                           std::vector<torch::Tensor> xs, int64_t ignore_index,
                           double min_slope, c10::optional<torch::Tensor> grad, int64_t mode,
                           int64_t c_lo) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 4, "fused_engine: p must be (N, C, H, W) on CPU");
  TORCH_CHECK(label.dim() == 3 && label.size(0) == p.size(0) && label.size(1) == p.size(2) &&
                  label.size(2) == p.size(3),
              "fused_engine: label must be (N, H, W) matching p");
  TORCH_CHECK(codes.size() == outs.size() && codes.size() == oconsts.size() && codes.size() >= 2,
              "fused_engine: programs");
  TORCH_CHECK(mode == 0 || mode == 1, "fused_engine: mode must be 0 or 1");
  auto pc = p.contiguous();
  auto lc = label.to(torch::kLong).contiguous();
  auto sc = stages.to(torch::kLong).contiguous();
  auto kc = consts.to(torch::kDouble).contiguous();
  auto cv = curves.to(torch::kDouble).contiguous();
  auto ck = curve_k.to(torch::kLong).contiguous();
  TORCH_CHECK(cv.dim() == 3 && cv.size(2) == 8 && ck.numel() == cv.size(0),
              "fused_engine: curves must be (num_curves, Kmax, 8)");
  const int64_t N = pc.size(0), C = pc.size(1), H = pc.size(2), W = pc.size(3), HW = H * W;
  TORCH_CHECK(HW < (int64_t(1) << 31), "fused_engine: plane too large");
  const int64_t J = sc.numel() / 4;
  TORCH_CHECK(sc.numel() == J * 4 && static_cast<int64_t>(codes.size()) == 2 + J,
              "fused_engine: one program per stage");
  const int64_t S = outs[0].numel();
  const bool backward = grad.has_value() && grad->defined();
  TORCH_CHECK(mode == 0 || (!backward && S == 1), "fused_engine: map mode has one output");
  torch::Tensor gs;
  if (backward) {
    gs = grad->to(torch::kDouble).contiguous();
    TORCH_CHECK(gs.numel() == S * C, "fused_engine: grad must be (S, C)");
  }
  std::vector<torch::Tensor> xcs;
  std::vector<bool> x_per_class;
  for (auto& x : xs) {
    TORCH_CHECK(x.dim() == 4 && x.size(0) == N && x.size(2) == H && x.size(3) == W &&
                    (x.size(1) == 1 || x.size(1) == C),
                "fused_engine: extra maps must be (N, 1 or C, H, W)");
    xcs.push_back(x.to(pc.scalar_type()).contiguous());
    x_per_class.push_back(x.size(1) == C && C > 1);
  }
  torch::Tensor result;
  if (mode == 1)
    result = torch::zeros({N, 1, H, W}, pc.options());
  else if (backward)
    result = torch::empty_like(pc);
  else
    result = torch::zeros({N * C, S}, pc.options().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(pc.scalar_type(), "fused_engine", [&] {
    using T = scalar_t;
    Engine<T> en;
    const int64_t nk = kc.numel(), ncurves = cv.size(0);
    for (size_t i = 0; i < codes.size(); ++i) {
      en.progs.push_back(read_program(codes[i], outs[i], oconsts[i], nk, ncurves,
                                      static_cast<int64_t>(xcs.size()),
                                      i < 2 ? J : static_cast<int64_t>(i) - 2));
      if (i == 1) TORCH_CHECK(static_cast<int64_t>(outs[1].numel()) == S || !correction,
                              "fused_engine: correction outputs");
      if (i >= 2) TORCH_CHECK(outs[i].numel() == 1, "fused_engine: a stage program has one output");
    }
    en.stages.assign(sc.data_ptr<int64_t>(), sc.data_ptr<int64_t>() + sc.numel());
    auto ab = absent.to(torch::kDouble).contiguous();
    TORCH_CHECK(ab.numel() == J, "fused_engine: one absent value per stage");
    en.absent.assign(ab.data_ptr<double>(), ab.data_ptr<double>() + J);
    en.consts.assign(kc.data_ptr<double>(), kc.data_ptr<double>() + nk);
    en.curves.kmax = cv.size(1);
    en.curves.k.assign(ck.data_ptr<int64_t>(), ck.data_ptr<int64_t>() + ncurves);
    en.curves.cols.resize(ncurves * 8 * en.curves.kmax);
    const double* cvp = cv.data_ptr<double>();
    for (int64_t q = 0; q < ncurves; ++q) {
      TORCH_CHECK(en.curves.k[q] >= 1 && en.curves.k[q] <= en.curves.kmax, "fused_engine: curve_k");
      for (int64_t k = 0; k < en.curves.kmax; ++k)
        for (int64_t j = 0; j < 8; ++j)
          en.curves.cols[(q * 8 + j) * en.curves.kmax + k] =
              static_cast<T>(cvp[(q * en.curves.kmax + k) * 8 + j]);
    }
    en.ms = static_cast<T>(min_slope);
    en.H = H, en.W = W;
    int64_t regs = 1;
    for (auto& pr : en.progs) regs = std::max(regs, pr.ni);
    LabelInfo<T> li(lc.data_ptr<int64_t>(), N, C, HW, ignore_index);
    const T* pp = pc.data_ptr<T>();
    std::vector<const T*> xp;
    for (auto& x : xcs) xp.push_back(x.data_ptr<T>());
    const double* gsp = backward ? gs.data_ptr<double>() : nullptr;

    auto setup = [&](PlaneCtx<T>& cx, int64_t n, int64_t c) {
      cx.p = pp + (n * C + c) * HW;
      cx.lab = li.lab.data() + n * HW;
      cx.mask = li.mask.data() + n * HW;
      cx.c = static_cast<int32_t>(c);
      cx.x.resize(xp.size());
      for (size_t q = 0; q < xp.size(); ++q)
        cx.x[q] = xp[q] + (x_per_class[q] ? (n * C + c) : n) * HW;
      cx.pool.assign(J, nullptr), cx.sin.assign(J, nullptr);
      cx.apool.assign(J, nullptr), cx.asin.assign(J, nullptr);
    };

    if (mode == 1) {
      T* out = result.data_ptr<T>();
      at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
        Machine<T> mc(regs);
        StageBufs<T> bf(en, false);
        PlaneCtx<T> cx;
        std::vector<T> plane(HW);
        for (int64_t n = n0; n < n1; ++n) {
          T* o = out + n * HW;
          for (int64_t c = c_lo; c < C; ++c) {
            setup(cx, n, c);
            const int64_t* off = li.offsets.data() + n * (C + 1);
            compute_stages(en, cx, bf, mc, off[c + 1] == off[c], false);
            program_to_plane(en, en.progs[0], cx, mc, plane.data());
            if (c == c_lo) {
              std::copy(plane.begin(), plane.end(), o);
            } else {
              for (int64_t i = 0; i < HW; ++i) o[i] = plane[i] > o[i] ? plane[i] : o[i];
            }
          }
        }
      });
      return;
    }

    at::parallel_for(0, N * C, 1, [&](int64_t b0, int64_t b1) {
      Machine<T> mc(regs);
      StageBufs<T> bf(en, backward);
      PlaneCtx<T> cx;
      std::vector<T> w(S);
      std::vector<double> acc(S);
      for (int64_t plane = b0; plane < b1; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        setup(cx, n, c);
        const int64_t* off = li.offsets.data() + n * (C + 1);
        const int32_t* ids = li.idx.data() + n * HW + off[c];
        const int64_t nl = correction ? off[c + 1] - off[c] : 0;
        const Program& fin = en.progs[0];
        const Program& cor = en.progs[1];
        if (!backward) {
          compute_stages(en, cx, bf, mc, off[c + 1] == off[c], false);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t start = 0; start < HW; start += kBlock) {
            const int64_t len = std::min(kBlock, HW - start);
            run_forward(en, fin, cx, mc, start, len, nullptr, false);
            for (int64_t s = 0; s < S; ++s) {
              const int64_t r = fin.outs[s];
              acc[s] += r >= 0 ? v_sum(mc.vp[r], len) : fin.out_const[s] * len;
            }
          }
          for (int64_t start = 0; start < nl; start += kBlock) {
            const int64_t len = std::min(kBlock, nl - start);
            run_forward(en, cor, cx, mc, 0, len, ids + start, false);
            for (int64_t s = 0; s < S; ++s) {
              const int64_t r = cor.outs[s];
              acc[s] += r >= 0 ? v_sum(mc.vp[r], len) : cor.out_const[s] * len;
            }
          }
          double* res = result.data_ptr<double>() + plane * S;
          for (int64_t s = 0; s < S; ++s) res[s] = acc[s];
          continue;
        }
        compute_stages(en, cx, bf, mc, off[c + 1] == off[c], true);
        T* dp = result.data_ptr<T>() + plane * HW;
        std::fill(dp, dp + HW, T(0));
        cx.dp = dp;
        for (int64_t j = 0; j < J; ++j) {
          const int64_t* st = en.stages.data() + j * 4;
          if (!st[3]) continue;
          std::fill(bf.aout[j].begin(), bf.aout[j].end(), T(0));
          cx.apool[j] = bf.aout[j].data();
          if (st[2]) {
            cx.asin[j] = dp;
          } else {
            std::fill(bf.ain[j].begin(), bf.ain[j].end(), T(0));
            cx.asin[j] = bf.ain[j].data();
          }
        }
        for (int64_t s = 0; s < S; ++s) w[s] = static_cast<T>(gsp[s * C + c]);
        for (int64_t start = 0; start < HW; start += kBlock) {
          const int64_t len = std::min(kBlock, HW - start);
          run_forward(en, fin, cx, mc, start, len, nullptr, true);
          run_reverse(en, fin, cx, mc, start, len, nullptr, w.data(), nullptr);
        }
        for (int64_t start = 0; start < nl; start += kBlock) {
          const int64_t len = std::min(kBlock, nl - start);
          run_forward(en, cor, cx, mc, 0, len, ids + start, true);
          run_reverse(en, cor, cx, mc, 0, len, ids + start, w.data(), nullptr);
        }
        for (int64_t j = J - 1; j >= 0; --j) {
          const int64_t* st = en.stages.data() + j * 4;
          if (!st[3]) continue;
          pool_backward(cx.sin[j], bf.rm[j].data(), bf.out[j].data(), bf.aout[j].data(),
                        cx.asin[j], bf.arm.data(), bf.pend.data(), H, W, st[1]);
          if (st[2] || !bf.has_part[j]) continue;
          const T* g = bf.ain[j].data();
          for (size_t q = 0; q < bf.leaf_op[j].size(); ++q) {
            const int64_t op = bf.leaf_op[j][q], a = bf.leaf_a[j][q];
            T* target = op == OP_P ? cx.dp : (op == OP_POOL ? cx.apool[a] : cx.asin[a]);
            if (target) v_acc_mul(target, g, bf.part[j][q].data(), HW);
          }
        }
      }
    });
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bezier_forward", &bezier_forward, "Piecewise quadratic Bezier curve (value, dy/dx)");
  m.def("window_max_forward", &window_max_forward, "Window max along one dim");
  m.def("window_max_backward", &window_max_backward, "Gradient of window_max_forward");
  m.def("fused_engine", &fused_engine,
        "Fused per-class sums of elementwise and pooled maps (or dL/dP, or a class max)");
}
