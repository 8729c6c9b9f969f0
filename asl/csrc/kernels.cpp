// The C++ engine of asl (CPU tensors): evaluates an asl.engines.ir.FusedProgram, the
// surrogate's per-class sums and their gradient, plane by plane, and the softmax with its
// backward. Curves are monotone piecewise quadratic Bezier curves given as piece
// coefficient tables (asl.curves.PIECE_COLUMNS: x0, b^2, 4a, b, y0, by, ay, 2ay); for an
// input x the piece holding x (the last whose start is <= x) is selected, x(t) = x is
// solved with the cancellation-free root t = 2d / (b + sqrt(b^2 + 4ad)), d = x - x0, and
// y(t) and dy/dx = y'(t) / x'(t) are returned, x'(t) = sqrt(b^2 + 4ad) clamped below by
// min_slope. Inputs >= 1 map to exactly 1 and inputs <= 0 to exactly 0 (truth table).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <vector>

#include "ir_ops.h"

namespace {

// ---------------------------------------------------------------------------------
// Fused per-class statistics (asl/engines/lower.py builds the program). One (image, class)
// plane at a time:
//   * stages: the input map of every pool is computed for the plane by a register
//     program (or is P itself), then pooled (square window, separable: rows, then
//     columns; border ignored);
//   * the final program (G = 0) runs on every pixel, the correction program
//     ((G = 1, M = 1) - (G = 0)) on the pixels labelled with the plane's class, and
//     their outputs are summed per plane;
//   * the forward pass keeps the stage maps the backward pass reads and the partial
//     derivatives of the active stage programs (run in reverse mode seeded with 1);
//   * backward: the final and correction programs are run in reverse mode seeded with
//     dL/dsum, the adjoints of pooled maps go to the first maximum of each window (along
//     W, then H), like asl.functional.max_pool's, and through the kept partial derivatives;
//     dL/dP is written per plane.
// A register program (asl/engines/ir.py: Program) is a list of instructions, register i
// computed by instruction i; "active" instructions depend on P, "needed" ones are run by
// the backward pass (the values its reverse sweep reads). Leaves: P, G (label == class),
// M (valid mask), X (extra map a), CONST (consts[a]), POOL (pooled map of stage a),
// STAGE_IN (input map of stage a). Operations: CURVE (curve b of register a), MUL, ADD,
// SUB, ONE_MINUS. The opcodes come from ir_ops.h, generated from asl/engines/ir.py.

constexpr int64_t kBlock = 256;

struct Instr {
  int64_t op = 0, a = -1, b = -1;
  bool active = false, needed = false;
};

struct Program {
  std::vector<Instr> code;    // register i = code[i]
  int64_t ni = 0;
  std::vector<int64_t> outs;  // register of each output, -1: constant out_const
  std::vector<double> out_const;
};

// A pool stage (asl/engines/ir.py: Stage).
struct StageInfo {
  bool is_min = false;    // Pool.MIN (else MAX)
  int64_t r = 1;          // radius
  bool direct_p = false;  // the input map is P
  bool active = false;    // the input map depends on P
  bool keep_in = false, keep_pool = false;        // kept by the forward pass
  bool absent_in = false, absent_pool = false;    // needed where the class is absent
  int64_t mask_op = -1, mask_a = -1;  // sparse pool: the leaf of its only factor (-1: none)
  double absent = std::numeric_limits<double>::quiet_NaN();  // constant input if absent
};

constexpr int64_t kFirstStageProgram = 3;  // programs: final, correction, absent final

// A fused program (asl/engines/ir.py: FusedProgram), read once by load_program.
struct FusedIR {
  int64_t mode = MODE_STATS;
  bool correction = false;
  std::vector<Program> progs;  // final, correction (empty if none), absent final, stages
  std::vector<StageInfo> stages;
  std::vector<double> consts;
  int64_t num_curves = 0, num_extras = 0, num_outputs = 0;
};

Program read_program(const py::handle& prog, int64_t n_consts, int64_t n_curves,
                     int64_t n_x, int64_t n_stages) {
  Program p;
  for (const py::handle ins : prog.attr("instrs")) {
    Instr in;
    in.op = ins.attr("op").cast<int64_t>();
    in.a = ins.attr("a").cast<int64_t>();
    in.b = ins.attr("b").cast<int64_t>();
    in.active = ins.attr("active").cast<bool>();
    in.needed = ins.attr("needed").cast<bool>();
    const int64_t i = p.ni++, a = in.a, b = in.b;
    bool ok = true;
    switch (in.op) {
      case OP_P: case OP_G: case OP_M: break;
      case OP_X: ok = a >= 0 && a < n_x; break;
      case OP_CONST: ok = a >= 0 && a < n_consts; break;
      case OP_POOL: case OP_STAGE_IN: ok = a >= 0 && a < n_stages; break;
      case OP_CURVE: ok = a >= 0 && a < i && b >= 0 && b < n_curves; break;
      case OP_ONE_MINUS: ok = a >= 0 && a < i; break;
      case OP_MUL: case OP_ADD: case OP_SUB: ok = a >= 0 && a < i && b >= 0 && b < i; break;
      default: ok = false;
    }
    TORCH_CHECK(ok, "load_program: malformed instruction ", i);
    p.code.push_back(in);
  }
  for (const py::handle out : prog.attr("outputs")) {
    const int64_t r = out.attr("reg").cast<int64_t>();
    TORCH_CHECK(r >= -1 && r < p.ni, "load_program: bad output register ", r);
    p.outs.push_back(r);
    p.out_const.push_back(out.attr("value").cast<double>());
  }
  return p;
}

// Reads a FusedProgram (validated in Python) into the engine's own structures.
std::shared_ptr<FusedIR> load_program(const py::object& fp) {
  auto ir = std::make_shared<FusedIR>();
  ir->mode = fp.attr("mode").cast<int64_t>();
  TORCH_CHECK(ir->mode == MODE_STATS || ir->mode == MODE_MAP, "load_program: mode");
  for (const py::handle c : fp.attr("consts")) ir->consts.push_back(c.cast<double>());
  ir->num_curves = fp.attr("num_curves").cast<int64_t>();
  ir->num_extras = static_cast<int64_t>(py::len(fp.attr("extras")));
  const int64_t nk = static_cast<int64_t>(ir->consts.size()), nc = ir->num_curves,
                nx = ir->num_extras;
  const py::list stages = fp.attr("stages");
  const int64_t J = static_cast<int64_t>(stages.size());
  ir->progs.push_back(read_program(fp.attr("final"), nk, nc, nx, J));
  const int64_t S = static_cast<int64_t>(ir->progs[0].outs.size());
  ir->num_outputs = S;
  const py::object cor = fp.attr("correction");
  ir->correction = !cor.is_none();
  if (ir->correction) {
    ir->progs.push_back(read_program(cor, nk, nc, nx, J));
  } else {
    Program zero;
    zero.outs.assign(S, -1), zero.out_const.assign(S, 0.0);
    ir->progs.push_back(zero);
  }
  ir->progs.push_back(read_program(fp.attr("absent_final"), nk, nc, nx, J));
  TORCH_CHECK(ir->progs[1].outs.size() == static_cast<size_t>(S) &&
                  ir->progs[2].outs.size() == static_cast<size_t>(S),
              "load_program: the programs' outputs differ in number");
  TORCH_CHECK(ir->mode == MODE_STATS || S == 1, "load_program: map mode has one output");
  for (int64_t j = 0; j < J; ++j) {
    const py::handle st = stages[j];
    StageInfo si;
    si.is_min = st.attr("pool").cast<int64_t>() == POOL_MIN;
    si.r = st.attr("radius").cast<int64_t>();
    si.direct_p = st.attr("direct_p").cast<bool>();
    si.active = st.attr("active").cast<bool>();
    si.keep_in = st.attr("keep_input").cast<bool>();
    si.keep_pool = st.attr("keep_pool").cast<bool>();
    si.absent_in = st.attr("absent_input").cast<bool>();
    si.absent_pool = st.attr("absent_pool").cast<bool>();
    const py::object av = st.attr("absent_value");
    if (!av.is_none()) si.absent = av.cast<double>();
    const py::object mask = st.attr("mask");
    if (!mask.is_none()) {
      si.mask_op = mask.attr("op").cast<int64_t>();
      si.mask_a = mask.attr("index").cast<int64_t>();
    }
    const bool mask_ok = si.mask_op == -1 || si.mask_op == OP_M ||
                         (si.mask_op == OP_X && si.mask_a >= 0 && si.mask_a < nx) ||
                         ((si.mask_op == OP_POOL || si.mask_op == OP_STAGE_IN) &&
                          si.mask_a >= 0 && si.mask_a < j);
    TORCH_CHECK(si.r >= 0 && (!si.direct_p || si.active) && mask_ok,
                "load_program: bad stage ", j);
    ir->stages.push_back(si);
    ir->progs.push_back(read_program(st.attr("input"), nk, nc, nx, j));
    TORCH_CHECK(ir->progs.back().outs.size() == 1, "load_program: a stage program has one output");
  }
  return ir;
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
void v_neg(const T* __restrict__ a, T* __restrict__ o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = -a[i];
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
// border is ignored: windows are clipped to the image). Row by row: a chunk of outputs
// stays in registers while the window goes by (one store per output), and the row of rm
// is consumed at once by the pass along W (row_pool).
template <typename T, bool MAX>
inline T pick(T a, T b) {
  return MAX ? (b > a ? b : a) : (b < a ? b : a);
}

constexpr int64_t kChunk = 64;

// d[0..W) = op over rows lo..hi of in (row stride W).
template <typename T, bool MAX>
void rows_pool(const T* in, int64_t lo, int64_t hi, int64_t W, T* __restrict__ d) {
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
}

// o[w] = op over pad[w .. w + 2r] (pad: the row with r sentinels on both sides).
template <typename T, bool MAX>
void row_pool(const T* pad, int64_t W, int64_t r, T* __restrict__ o) {
  int64_t w0 = 0;
  for (; w0 + kChunk <= W; w0 += kChunk) {
    T acc[kChunk];
    const T* __restrict__ s = pad + w0;
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

template <typename T, bool MAX>
void set_sentinels(T* pad, int64_t W, int64_t r) {
  const T s = MAX ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
  std::fill(pad, pad + r, s);
  std::fill(pad + r + W, pad + 2 * r + W, s);
}

// Adds to ain the gradient of the pool of in (rows_pool, then row_pool): the adjoint of each output goes to the
// first position of its W window where rm equals the output, then to the first position
// of that column's H window where in equals rm (two window_max_backward passes). rm and
// the output are recomputed row by row. Sparse adjoints (BF1's dilated boundary) are
// routed one by one. Output rows [h0, h1) (their gradient goes to the rows within r).
// Scratch: pad (W + 2r), yrow, arow, pend (W each).
template <typename T, bool MAX>
void pool_backward(const T* in, const T* aout, T* ain, T* pad, T* yrow, T* arow, T* pend,
                   int64_t H, int64_t W, int64_t r, int64_t h0, int64_t h1) {
  const int64_t i0 = h0 * W, i1 = h1 * W, k = 2 * r + 1;
  int64_t nnz = 0;
#pragma omp simd reduction(+ : nnz)
  for (int64_t i = i0; i < i1; ++i) nnz += aout[i] != T(0) ? 1 : 0;
  if (nnz == 0) return;
  if (nnz * k * 4 < i1 - i0) {
    T* rmw = pad;  // rm of the 2r + 1 columns of one window
    constexpr int64_t kScan = 32;
    for (int64_t i = i0; i < i1; ++i) {
      if ((i - i0) % kScan == 0 && i + kScan <= i1) {  // skip zero runs a vector at a time
        int any = 0;
#pragma omp simd reduction(| : any)
        for (int64_t q = 0; q < kScan; ++q) any |= aout[i + q] != T(0) ? 1 : 0;
        if (!any) {
          i += kScan - 1;
          continue;
        }
      }
      const T g = aout[i];
      if (g == T(0)) continue;
      const int64_t h = i / W, w = i % W;
      const int64_t wlo = w - r < 0 ? 0 : w - r, whi = w + r >= W ? W - 1 : w + r;
      const int64_t hlo = h - r < 0 ? 0 : h - r, hhi = h + r >= H ? H - 1 : h + r;
      const int64_t nw = whi - wlo + 1;
      std::copy(in + hlo * W + wlo, in + hlo * W + whi + 1, rmw);
      for (int64_t j = hlo + 1; j <= hhi; ++j) {  // row by row (contiguous)
        const T* __restrict__ s = in + j * W + wlo;
        for (int64_t x = 0; x < nw; ++x) rmw[x] = pick<T, MAX>(rmw[x], s[x]);
      }
      T m = rmw[0];
      for (int64_t x = wlo + 1; x <= whi; ++x) m = pick<T, MAX>(m, rmw[x - wlo]);
      int64_t wp = wlo;
      while (wp < whi && rmw[wp - wlo] != m) ++wp;
      const T v = rmw[wp - wlo];
      int64_t hp = hlo;
      while (hp < hhi && in[hp * W + wp] != v) ++hp;
      ain[hp * W + wp] += g;
    }
    return;
  }
  set_sentinels<T, MAX>(pad, W, r);
  const T* s = pad + r;  // rm of row h
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t lo = h - r < 0 ? 0 : h - r, hi = h + r >= H ? H - 1 : h + r;
    rows_pool<T, MAX>(in, lo, hi, W, pad + r);
    row_pool<T, MAX>(pad, W, r, yrow);
    std::fill(arow, arow + W, T(0));
    std::copy(aout + h * W, aout + (h + 1) * W, pend);
    for (int64_t o = -r; o <= r; ++o) {  // along W: aout -> arow (rm's adjoint)
      const int64_t wlo = o < 0 ? -o : 0, whi = o > 0 ? W - o : W;
      T* __restrict__ d = arow + o;
      const T* __restrict__ x = s + o;
      const T* __restrict__ y = yrow;
      T* __restrict__ p = pend;
      for (int64_t w = wlo; w < whi; ++w) {
        const bool hit = x[w] == y[w];
        d[w] += hit ? p[w] : T(0);
        p[w] = hit ? T(0) : p[w];
      }
    }
    std::copy(arow, arow + W, pend);
    for (int64_t j = lo; j <= hi; ++j) {  // along H: arow -> ain rows lo..hi
      const T* __restrict__ x = in + j * W;
      T* __restrict__ d = ain + j * W;
      const T* __restrict__ y = s;
      T* __restrict__ p = pend;
      for (int64_t w = 0; w < W; ++w) {
        const bool hit = x[w] == y[w];
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
  std::vector<const int32_t*> uniform;  // stages eroding G: the image's uniform classes
};

// Per-thread memory reused across calls: plane-sized buffers allocated afresh on every
// call would cost page faults comparable to the work done on them. get() hands out the
// next buffer (grown to n elements if needed); reset() makes them all available again.
template <typename T, int Tag>
class Arena {
 public:
  T* get(size_t n) {
    if (next_ == bufs_.size()) bufs_.emplace_back();
    std::vector<T>& b = bufs_[next_++];
    if (b.size() < n) b.resize(n);
    return b.data();
  }
  void reset() { next_ = 0; }

 private:
  std::vector<std::vector<T>> bufs_;  // (moving a vector keeps its buffer)
  size_t next_ = 0;
};

template <typename T, int Tag>
Arena<T, Tag>& thread_arena() {
  thread_local Arena<T, Tag> arena;
  return arena;
}

constexpr int kWorkerArena = 0, kCallArena = 1;

template <typename T>
struct Machine {
  std::vector<T> val, der, adj;
  std::vector<const T*> vp;  // value of each register (a block, or straight into a map)
  std::vector<char> done;    // adjoint written (run_reverse)
  explicit Machine(int64_t regs)
      : val(regs * kBlock), der(regs * kBlock), adj(regs * kBlock), vp(regs), done(regs) {}
};

// A fused program with its curves for one call, and the plan of what the backward pass
// keeps (derived from the program once per call; cheap).
template <typename T>
struct Engine {
  std::vector<Program> progs;  // final, correction, absent final, stage programs
  std::vector<StageInfo> stages;
  std::vector<double> consts;
  CurveSet<T> curves;
  T ms;
  int64_t H = 0, W = 0;
  // the active leaves (op, a) of each stage program whose partial derivatives are kept
  std::vector<std::vector<std::pair<int64_t, int64_t>>> leaves;
  // planes kept per (image, class) for the backward pass: slot of each stage's input,
  // output and partials (-1: not kept)
  std::vector<int64_t> slot_in, slot_out;
  std::vector<std::vector<int64_t>> slot_part;
  int64_t num_saved = 0;
  // the stage maps each program reads: (OP_POOL or OP_STAGE_IN, stage)
  std::vector<std::vector<std::pair<int64_t, int64_t>>> deps;
  // the stages whose kept partial derivatives add to stage j's pooled / input adjoint
  std::vector<std::vector<int64_t>> pool_users, input_users;
  // How the backward pass starts the adjoint maps of a plane, for the final program (0)
  // and the one of absent classes (1): the first write to a map that has a single first
  // writer assigns instead of adding to zeros.
  struct Init {
    std::vector<char> assign_rows;  // final program leaves that write their adjoint map
    bool zero_dp = true;
    std::vector<char> zero_aout, zero_ain;
    std::vector<std::vector<char>> part_assign;  // [stage][leaf]: the partial writes
    std::vector<char> ain_by_final;  // ain written by the final program: route behind it
  };
  Init init[2];
  // stages that erode G itself (a min pool of the one-hot map): computed from the labels
  std::vector<char> g_erode;
  int64_t num_stages() const { return static_cast<int64_t>(stages.size()); }
  const StageInfo& stage(int64_t j) const { return stages[j]; }

  void layout() {
    const int64_t J = num_stages();
    leaves.assign(J, {});
    slot_in.assign(J, -1), slot_out.assign(J, -1), slot_part.assign(J, {});
    num_saved = 0;
    deps.assign(progs.size(), {});
    pool_users.assign(J, {}), input_users.assign(J, {});
    g_erode.assign(J, 0);
    for (int64_t j = 0; j < J; ++j) {
      const Program& pr = progs[kFirstStageProgram + j];
      g_erode[j] = stage(j).is_min && !stage(j).direct_p && pr.ni == 1 &&
                   pr.code[0].op == OP_G && pr.outs[0] == 0;
    }
    for (size_t i = 0; i < progs.size(); ++i)
      for (int64_t ii = 0; ii < progs[i].ni; ++ii) {
        const Instr& row = progs[i].code[ii];
        if (row.op == OP_POOL || row.op == OP_STAGE_IN) deps[i].emplace_back(row.op, row.a);
      }
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = stage(j);
      if (st.keep_pool) slot_out[j] = num_saved++;
      if (st.keep_in && !st.direct_p) slot_in[j] = num_saved++;
      if (!st.active || st.direct_p) continue;
      const Program& pr = progs[kFirstStageProgram + j];
      const int64_t r = pr.outs[0];
      if (r < 0 || !pr.code[r].active) continue;  // constant after all
      for (int64_t ii = 0; ii < pr.ni; ++ii) {
        const Instr& row = pr.code[ii];
        if (row.active && (row.op == OP_P || row.op == OP_POOL || row.op == OP_STAGE_IN)) {
          leaves[j].emplace_back(row.op, row.a);
          slot_part[j].push_back(num_saved++);
          if (row.op == OP_POOL) pool_users[row.a].push_back(j);
          if (row.op == OP_STAGE_IN) input_users[row.a].push_back(j);
        }
      }
    }
    for (int v = 0; v < 2; ++v) plan_init(v);
  }

  void plan_init(int v) {
    const int64_t J = num_stages();
    const Program& fin = progs[v ? 2 : 0];
    Init& it = init[v];
    // active leaves the correction program (run first; none where the class is absent)
    // and the final program write
    std::vector<char> cor_pool(J, 0), cor_in(J, 0), fin_pool(J, 0), fin_in(J, 0);
    bool fin_p = false;
    if (!v) {
      const Program& cor = progs[1];
      for (int64_t ii = 0; ii < cor.ni; ++ii) {
        const Instr& row = cor.code[ii];
        if (!row.active) continue;
        if (row.op == OP_POOL) cor_pool[row.a] = 1;
        if (row.op == OP_STAGE_IN) cor_in[row.a] = 1;
      }
    }
    it.assign_rows.assign(std::max<int64_t>(fin.ni, 1), 0);
    for (int64_t ii = 0; ii < fin.ni; ++ii) {
      const Instr& row = fin.code[ii];
      if (!row.active) continue;
      if (row.op == OP_P && J == 0) {  // no stages: the final program runs first
        it.assign_rows[ii] = 1;
        fin_p = true;
      } else if (row.op == OP_POOL && !cor_pool[row.a]) {
        it.assign_rows[ii] = 1;
        fin_pool[row.a] = 1;
      } else if (row.op == OP_STAGE_IN && !cor_in[row.a]) {
        it.assign_rows[ii] = 1;
        fin_in[row.a] = 1;
      }
    }
    it.zero_dp = !fin_p;
    it.zero_aout.assign(J, 1), it.zero_ain.assign(J, 1), it.ain_by_final = fin_in;
    it.part_assign.assign(J, {});
    for (int64_t j = 0; j < J; ++j) it.part_assign[j].assign(leaves[j].size(), 0);
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = stage(j);
      if (!st.active) continue;
      it.zero_ain[j] = !fin_in[j];
      bool used_v = true;  // (stages a plane of an absent class skips write nothing)
      for (int64_t k : pool_users[j]) used_v = used_v && (!v || stage(k).absent_in);
      if (fin_pool[j]) {
        it.zero_aout[j] = 0;
      } else if (pool_users[j].size() == 1 && !cor_pool[j] && used_v) {
        const int64_t k = pool_users[j][0];  // the only writer: its partial
        for (size_t q = 0; q < leaves[k].size(); ++q)
          if (leaves[k][q].first == OP_POOL && leaves[k][q].second == j)
            it.part_assign[k][q] = 1;
        it.zero_aout[j] = 0;
      }
    }
  }
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

// Values of the registers on pixels [start, start + n) of the plane, or on the pixels
// idx[0..n) when idx is given; with need_der, active curve rows also keep dy/dx; with
// only_needed, only the rows the reverse sweep reads are run (column 5).
template <typename T>
void run_forward(const Engine<T>& en, const Program& pr, const PlaneCtx<T>& cx, Machine<T>& mc,
                 int64_t start, int64_t n, const int32_t* idx, bool need_der,
                 bool only_needed = false, int64_t out_reg = -1, T* out = nullptr) {
  for (int64_t ii = 0; ii < pr.ni; ++ii) {
    const Instr& in = pr.code[ii];
    if (only_needed && !in.needed) continue;
    const int64_t op = in.op, dst = ii, a = in.a, b = in.b;
    // out: where register out_reg goes (a computed register; a leaf is only pointed at)
    T* v = dst == out_reg ? out : mc.val.data() + dst * kBlock;
    const T** vp = mc.vp.data();
    switch (op) {
      case OP_P: vp[dst] = load(cx.p, start, n, idx, v); break;
      case OP_M: vp[dst] = load(cx.mask, start, n, idx, v); break;
      case OP_X: vp[dst] = load(cx.x[a], start, n, idx, v); break;
      case OP_POOL: vp[dst] = load(cx.pool[a], start, n, idx, v); break;
      case OP_STAGE_IN: vp[dst] = load(cx.sin[a], start, n, idx, v); break;
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
        if (need_der && in.active)
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

template <typename U>
struct Same {  // a non-deduced context (for nullptr arguments)
  using type = U;
};

// Reverse mode after run_forward(need_der=true) on the same pixels: seeds the output
// adjoints with w[s] (seed == nullptr) or with seed[0..n) (single-output programs) and
// adds (assign: writes) the adjoints of the leaves that depend on P to the plane's maps.
template <typename T>
void run_reverse(const Engine<T>& /*en*/, const Program& pr, const PlaneCtx<T>& cx, Machine<T>& mc,
                 int64_t start, int64_t n, const int32_t* idx, const typename Same<T>::type* w,
                 const typename Same<T>::type* seed, bool assign = false,
                 const char* assign_rows = nullptr) {
  const Instr* code = pr.code.data();
  T* adj = mc.adj.data();
  // The first contribution to an adjoint writes it, later ones add (no zeroing).
  std::vector<char>& done = mc.done;
  std::fill(done.begin(), done.begin() + pr.ni, 0);
  auto acc = [&](int64_t r, const T* g) {  // adj[r] += g
    T* o = adj + r * kBlock;
    if (done[r]) v_acc(o, g, n); else std::copy(g, g + n, o);
    done[r] = 1;
  };
  auto acc_neg = [&](int64_t r, const T* g) {  // adj[r] -= g
    T* o = adj + r * kBlock;
    if (done[r]) v_acc_neg(o, g, n); else v_neg(g, o, n);
    done[r] = 1;
  };
  auto acc_mul = [&](int64_t r, const T* g, const T* x) {  // adj[r] += g * x
    T* o = adj + r * kBlock;
    if (done[r]) v_acc_mul(o, g, x, n); else v_mul(g, x, o, n);
    done[r] = 1;
  };
  bool any = false;
  for (size_t s = 0; s < pr.outs.size(); ++s) {
    const int64_t r = pr.outs[s];
    if (r < 0 || !code[r].active) continue;
    if (seed) {
      acc(r, seed);
    } else {
      T* g = adj + r * kBlock;
      const T ws = w[s];
      if (done[r])
        for (int64_t i = 0; i < n; ++i) g[i] += ws;
      else
        std::fill(g, g + n, ws);
      done[r] = 1;
    }
    any = true;
  }
  if (!any && !assign && !assign_rows) return;
  const T** vp = mc.vp.data();
  for (int64_t ii = pr.ni - 1; ii >= 0; --ii) {
    const Instr& in = code[ii];
    if (!in.active) continue;
    const int64_t op = in.op, dst = ii, a = in.a, b = in.b;
    const bool set = assign || (assign_rows && assign_rows[ii]);  // write, not add
    if (!done[ii]) {  // no path to an output: a zero adjoint
      if (!set) continue;
      std::fill(adj + dst * kBlock, adj + dst * kBlock + n, T(0));
      done[ii] = 1;
    }
    const T* g = adj + dst * kBlock;
    const bool act_a = a >= 0 && code[a].active, act_b = b >= 0 && code[b].active;
    switch (op) {
      case OP_P: store(cx.dp, start, n, idx, g, set); break;
      case OP_POOL:
        if (cx.apool[a]) store(cx.apool[a], start, n, idx, g, set);
        break;
      case OP_STAGE_IN:
        if (cx.asin[a]) store(cx.asin[a], start, n, idx, g, set);
        break;
      case OP_CURVE: acc_mul(a, g, mc.der.data() + dst * kBlock); break;
      case OP_MUL:
        if (act_a) acc_mul(a, g, vp[b]);
        if (act_b) acc_mul(b, g, vp[a]);
        break;
      case OP_ADD:
        if (act_a) acc(a, g);
        if (act_b) acc(b, g);
        break;
      case OP_SUB:
        if (act_a) acc(a, g);
        if (act_b) acc_neg(b, g);
        break;
      case OP_ONE_MINUS: acc_neg(a, g); break;
      default: break;  // G, M, X, CONST are never active
    }
  }
}

// Per-thread plane buffers: the stage maps not kept in the saved tensor, and the
// adjoints of the backward pass.
template <typename T>
struct Scratch {
  std::vector<T*> in, out, ain, aout;  // planes (null: not needed)
  T *pad, *yrow, *arow, *pend, *plane, *tmp;
  Scratch(const Engine<T>& en, bool backward) {
    const int64_t J = en.num_stages(), HW = en.H * en.W;
    Arena<T, kWorkerArena>& arena = thread_arena<T, kWorkerArena>();
    arena.reset();
    int64_t rmax = 0;
    in.assign(J, nullptr), out.assign(J, nullptr), ain.assign(J, nullptr);
    aout.assign(J, nullptr);
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = en.stage(j);
      rmax = std::max(rmax, st.r);
      if (backward && st.active) {  // active: kept by the forward pass; adjoints
        aout[j] = arena.get(HW);
        if (!st.direct_p) ain[j] = arena.get(HW);
        continue;
      }
      if (!st.direct_p) in[j] = arena.get(HW);
      out[j] = arena.get(HW);
    }
    pad = arena.get(en.W + 2 * rmax + 2 * kChunk);
    yrow = arena.get(en.W), arow = arena.get(en.W), pend = arena.get(en.W);
    plane = arena.get(HW), tmp = arena.get(HW);
  }
};

// Calls f(i) for the i in [i0, i1) where v[i] != 0, skipping zero runs a vector at a time.
template <typename T, typename F>
void for_nonzero(const T* v, int64_t i0, int64_t i1, F&& f) {
  constexpr int64_t kScan = 32;
  int64_t i = i0;
  for (; i + kScan <= i1; i += kScan) {
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t q = 0; q < kScan; ++q) any |= v[i + q] != T(0) ? 1 : 0;
    if (!any) continue;
    for (int64_t q = 0; q < kScan; ++q)
      if (v[i + q] != T(0)) f(i + q);
  }
  for (; i < i1; ++i)
    if (v[i] != T(0)) f(i);
}

// Computes the stage maps of a plane on demand, row by row: a program (the final one, or
// a stage's) asks for the rows it is about to read, and each stage computes its input
// and pooled map only that far (plus the rows its own window needs), so that the maps
// are consumed while still in cache. absent: the plane's class has no pixel in the image
// (G = 0 everywhere). saved: the plane in each kept map (empty: no backward pass), where
// the kept maps and the partial derivatives of the active stage programs go.
// only_inactive (backward pass): the P-independent stages only (the others are kept).
template <typename T>
class Stages {
 public:
  Stages(const Engine<T>& en, PlaneCtx<T>& cx, Scratch<T>& sc, Machine<T>& mc, bool absent,
         const std::vector<T*>& saved, bool only_inactive = false)
      : en_(en), cx_(cx), sc_(sc), mc_(mc) {
    const int64_t J = en.num_stages(), H = en.H, HW = en.H * en.W;
    const bool keep = !saved.empty();
    in_rows_.assign(J, H), out_rows_.assign(J, H), in_.assign(J, nullptr);
    out_.assign(J, nullptr), partials_.assign(J, false), pcx_.resize(J);
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = en.stage(j);
      if (only_inactive && st.active) continue;
      if (absent && !st.absent_in) continue;  // not needed where the class is absent
      T* out = keep && en.slot_out[j] >= 0 ? saved[en.slot_out[j]] : sc.out[j];
      T* in = st.direct_p ? nullptr : (keep && en.slot_in[j] >= 0 ? saved[en.slot_in[j]] : sc.in[j]);
      cx.sin[j] = st.direct_p ? cx.p : in;
      const double ac = en.stage(j).absent;
      if (absent && !st.active && !std::isnan(ac)) {  // a constant map: so is its pool
        std::fill(out, out + HW, static_cast<T>(ac));
        if (in) std::fill(in, in + HW, static_cast<T>(ac));
        cx.pool[j] = out;
        continue;
      }
      in_[j] = in, out_[j] = out;
      if (!st.direct_p && !en.g_erode[j]) in_rows_[j] = 0;
      if (!(absent && !st.absent_pool)) {
        out_rows_[j] = 0;
        cx.pool[j] = out;
      }
      if (keep && !st.direct_p && !en.leaves[j].empty()) {
        // the stage program's partial derivatives go to their kept maps
        partials_[j] = true;
        PlaneCtx<T>& px = pcx_[j];
        px.dp = nullptr;
        px.apool.assign(J, nullptr), px.asin.assign(J, nullptr);
        for (size_t q = 0; q < en.leaves[j].size(); ++q) {
          T* plane = saved[en.slot_part[j][q]];
          const int64_t op = en.leaves[j][q].first, a = en.leaves[j][q].second;
          if (op == OP_P) px.dp = plane;
          else if (op == OP_POOL) px.apool[a] = plane;
          else px.asin[a] = plane;
        }
      }
    }
  }

  // Rows [0, rows) of every map program pr reads.
  void need(int64_t prog, int64_t rows) {
    for (const auto& d : en_.deps[prog]) {
      if (d.first == OP_POOL) need_out(d.second, rows);
      else need_in(d.second, rows);
    }
  }

  // Everything, as the backward pass expects.
  void finish() {
    for (int64_t j = 0; j < en_.num_stages(); ++j) need_out(j, en_.H), need_in(j, en_.H);
  }

 private:
  void need_in(int64_t j, int64_t rows) {
    rows = std::min(rows, en_.H);
    if (in_rows_[j] >= rows) return;
    const int64_t prog = kFirstStageProgram + j;
    need(prog, rows);
    const Program& pr = en_.progs[prog];
    const int64_t W = en_.W, end = rows * W, r = pr.outs[0];
    T* in = in_[j];
    for (int64_t start = in_rows_[j] * W; start < end; start += kBlock) {
      const int64_t len = std::min(kBlock, end - start);
      if (r < 0) {
        std::fill(in + start, in + start + len, static_cast<T>(pr.out_const[0]));
      } else if (partials_[j]) {  // value and partial derivatives (reverse mode, seed 1)
        PlaneCtx<T>& px = pcx_[j];
        if (start == in_rows_[j] * W) {
          px.p = cx_.p, px.lab = cx_.lab, px.mask = cx_.mask, px.c = cx_.c, px.x = cx_.x;
          px.pool = cx_.pool, px.sin = cx_.sin;
        }
        const T one = T(1);
        run_forward(en_, pr, px, mc_, start, len, nullptr, true, false, r, in + start);
        if (mc_.vp[r] != in + start) std::copy(mc_.vp[r], mc_.vp[r] + len, in + start);
        run_reverse(en_, pr, px, mc_, start, len, nullptr, &one, nullptr, true);
      } else {
        run_forward(en_, pr, cx_, mc_, start, len, nullptr, false, false, r, in + start);
        if (mc_.vp[r] != in + start) std::copy(mc_.vp[r], mc_.vp[r] + len, in + start);
      }
    }
    in_rows_[j] = rows;
  }

  void need_out(int64_t j, int64_t rows) {
    rows = std::min(rows, en_.H);
    if (out_rows_[j] >= rows) return;
    const StageInfo& st = en_.stage(j);
    const int64_t r = st.r, H = en_.H, W = en_.W, o0 = out_rows_[j], k = 2 * r + 1;
    T* out = out_[j];
    if (en_.g_erode[j]) {  // from the image's uniform classes
      const int32_t* u = cx_.uniform[j];
      const int32_t c = cx_.c;
      for (int64_t i = o0 * W; i < rows * W; ++i) out[i] = u[i] == c ? T(1) : T(0);
      out_rows_[j] = rows;
      return;
    }
    if (!st.is_min && !st.active && o0 == 0) {
      // A max pool of a sparse P-independent map without negative values (BF1's
      // ground-truth boundaries): its values are spread over their windows instead.
      need_in(j, H);
      const T* src = cx_.sin[j];
      int64_t nnz = 0, neg = 0;
#pragma omp simd reduction(+ : nnz, neg)
      for (int64_t i = 0; i < H * W; ++i) {
        nnz += src[i] != T(0) ? 1 : 0;
        neg += src[i] >= T(0) ? 0 : 1;  // negative or NaN
      }
      if (neg == 0 && nnz * k * 4 < H * W) {
        // along W into tmp, then along H from tmp's nonzero pixels (fewer than k per
        // pixel of src where src lies along lines, as boundaries do)
        T* tmp = sc_.tmp;
        std::fill(tmp, tmp + H * W, T(0));
        for_nonzero(src, 0, H * W, [&](int64_t i) {
          const T v = src[i];
          const int64_t w = i % W, row = i - w;
          T* o = tmp + row;
          for (int64_t x = std::max<int64_t>(0, w - r); x <= std::min(W - 1, w + r); ++x)
            o[x] = v > o[x] ? v : o[x];
        });
        std::fill(out, out + H * W, T(0));
        for_nonzero(tmp, 0, H * W, [&](int64_t i) {
          const T v = tmp[i];
          const int64_t h = i / W, w = i % W;
          for (int64_t y = std::max<int64_t>(0, h - r); y <= std::min(H - 1, h + r); ++y) {
            T* o = out + y * W + w;
            *o = v > *o ? v : *o;
          }
        });
        out_rows_[j] = H;
        return;
      }
    }
    need_in(j, rows + r);
    const T* src = cx_.sin[j];
    const T* mask = mask_of(j, rows);
    if (mask) {
      // Only the products with a P-independent map use this pool: it is computed where
      // that map is not 0 (0 elsewhere), if that is a small part of the rows.
      int64_t nnz = 0;
#pragma omp simd reduction(+ : nnz)
      for (int64_t i = o0 * W; i < rows * W; ++i) nnz += mask[i] != T(0) ? 1 : 0;
      if (nnz * k < (rows - o0) * W / 4) {
        std::fill(out + o0 * W, out + rows * W, T(0));
        if (!st.is_min)
          for_nonzero(mask, o0 * W, rows * W, [&](int64_t i) { out[i] = window<true>(src, i, r); });
        else
          for_nonzero(mask, o0 * W, rows * W, [&](int64_t i) { out[i] = window<false>(src, i, r); });
        out_rows_[j] = rows;
        return;
      }
    }
    for (int64_t h = o0; h < rows; ++h) {
      const int64_t lo = h - r < 0 ? 0 : h - r, hi = h + r >= H ? H - 1 : h + r;
      if (!st.is_min) {
        set_sentinels<T, true>(sc_.pad, W, r);
        rows_pool<T, true>(src, lo, hi, W, sc_.pad + r);
        row_pool<T, true>(sc_.pad, W, r, out + h * W);
      } else {
        set_sentinels<T, false>(sc_.pad, W, r);
        rows_pool<T, false>(src, lo, hi, W, sc_.pad + r);
        row_pool<T, false>(sc_.pad, W, r, out + h * W);
      }
    }
    out_rows_[j] = rows;
  }

  // The pool of src at pixel i, computed directly.
  template <bool MAX>
  T window(const T* src, int64_t i, int64_t r) const {
    const int64_t H = en_.H, W = en_.W, h = i / W, w = i % W;
    const int64_t hlo = std::max<int64_t>(0, h - r), hhi = std::min(H - 1, h + r);
    const int64_t wlo = std::max<int64_t>(0, w - r), whi = std::min(W - 1, w + r);
    T m = src[hlo * W + wlo];
    for (int64_t y = hlo; y <= hhi; ++y)
      for (int64_t x = wlo; x <= whi; ++x) m = pick<T, MAX>(m, src[y * W + x]);
    return m;
  }

  // The P-independent map whose products with stage j's pool are its only uses (rows
  // [0, rows) made available), or null.
  const T* mask_of(int64_t j, int64_t rows) {
    const StageInfo& st = en_.stage(j);
    const int64_t op = st.mask_op, a = st.mask_a;
    if (op < 0) return nullptr;
    if (op == OP_POOL) need_out(a, rows);
    if (op == OP_STAGE_IN) need_in(a, rows);
    switch (op) {
      case OP_M: return cx_.mask;
      case OP_X: return cx_.x[a];
      case OP_POOL: return cx_.pool[a];
      case OP_STAGE_IN: return cx_.sin[a];
      default: return nullptr;
    }
  }


  const Engine<T>& en_;
  PlaneCtx<T>& cx_;
  Scratch<T>& sc_;
  Machine<T>& mc_;
  std::vector<int64_t> in_rows_, out_rows_;  // rows computed so far
  std::vector<T*> in_, out_;
  std::vector<bool> partials_;
  std::vector<PlaneCtx<T>> pcx_;
};

// Rows per step when a plane is computed row by row.
constexpr int64_t kRowStep = 4;

// Labels as int32, the valid mask, and the pixels of each (image, class) grouped.
template <typename T>
struct LabelInfo {
  int32_t *lab, *idx;
  T* mask;
  std::vector<int64_t> offsets;  // (N, C + 1)
  std::atomic<bool> invalid{false};  // a label neither a class nor ignore_index
  LabelInfo(const int64_t* label, int64_t N, int64_t C, int64_t HW, int64_t ignore_index)
      : offsets(N * (C + 1), 0) {
    Arena<int32_t, kCallArena>& ia = thread_arena<int32_t, kCallArena>();
    Arena<T, kCallArena>& ta = thread_arena<T, kCallArena>();
    ia.reset(), ta.reset();
    lab = ia.get(N * HW), idx = ia.get(N * HW), mask = ta.get(N * HW);
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t* l = label + n * HW;
        int64_t* off = offsets.data() + n * (C + 1);
        int32_t* ln = lab + n * HW;
        T* mn = mask + n * HW;
        int64_t bad = 0;
        for (int64_t i = 0; i < HW; ++i) {
          const int64_t v = l[i];
          const bool cls = v >= 0 && v < C;
          ln[i] = cls ? static_cast<int32_t>(v) : -1;
          mn[i] = v != ignore_index ? T(1) : T(0);
          bad += !cls && v != ignore_index ? 1 : 0;
        }
        if (bad) invalid = true;
        // counting sort of the pixels by class, run by run (labels come in runs; one
        // counter update per run instead of a chain of dependent updates per pixel)
        std::vector<int64_t> count(C + 1, 0);
        for (int64_t i = 0; i < HW;) {
          const int32_t v = ln[i];
          int64_t e = i + 1;
          while (e < HW && ln[e] == v) ++e;
          if (v >= 0) count[v + 1] += e - i;
          i = e;
        }
        for (int64_t c = 0; c < C; ++c) count[c + 1] += count[c];
        std::copy(count.begin(), count.end(), off);
        int32_t* ix = idx + n * HW;
        for (int64_t i = 0; i < HW;) {
          const int32_t v = ln[i];
          int64_t e = i + 1;
          while (e < HW && ln[e] == v) ++e;
          if (v >= 0) {
            int32_t* d = ix + count[v];
            for (int64_t q = i; q < e; ++q) d[q - i] = static_cast<int32_t>(q);
            count[v] += e - i;
          }
          i = e;
        }
      }
    });
  }

  // Per r: each pixel's class where every pixel of its (2r + 1)^2 window (clipped to the
  // image) has that class, else -1. The erosion of G (a min pool of the one-hot map) of
  // class c is then [uniform == c], for every class at once.
  std::vector<std::pair<int64_t, const int32_t*>> uniform;

  const int32_t* uniform_of(int64_t r) const {
    for (const auto& u : uniform)
      if (u.first == r) return u.second;
    return nullptr;
  }

  void add_uniform(int64_t r, int64_t N, int64_t H, int64_t W) {
    if (uniform_of(r)) return;
    Arena<int32_t, kCallArena>& ia = thread_arena<int32_t, kCallArena>();
    const int64_t HW = H * W;
    int32_t* out = ia.get(N * HW);
    int32_t* rowu = ia.get(N * HW);
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int32_t* L = lab + n * HW;
        int32_t* R = rowu + n * HW;
        int32_t* U = out + n * HW;
        for (int64_t h = 0; h < H; ++h) {  // along W
          const int32_t* __restrict__ l = L + h * W;
          int32_t* __restrict__ t = R + h * W;
          std::copy(l, l + W, t);
          for (int64_t o = 1; o <= r && o < W; ++o) {
            for (int64_t w = 0; w + o < W; ++w) t[w] = l[w + o] != l[w] ? -1 : t[w];
            for (int64_t w = o; w < W; ++w) t[w] = l[w - o] != l[w] ? -1 : t[w];
          }
        }
        for (int64_t h = 0; h < H; ++h) {  // along H
          const int32_t* __restrict__ l = L + h * W;
          int32_t* __restrict__ u = U + h * W;
          std::copy(R + h * W, R + (h + 1) * W, u);
          for (int64_t y = std::max<int64_t>(0, h - r); y <= std::min(H - 1, h + r); ++y) {
            const int32_t* __restrict__ t = R + y * W;
            for (int64_t w = 0; w < W; ++w) u[w] = t[w] != l[w] ? -1 : u[w];
          }
        }
      }
    });
    uniform.emplace_back(r, out);
  }
};

// Calls worker(next) once on each of torch's threads (at most n); the workers take items
// [0, n) one at a time from next, so that the threads stay busy when items differ in cost
// (planes of absent classes are cheap) or a thread is held up.
template <typename F>
void run_workers(int64_t n, F&& worker) {
  std::atomic<int64_t> next(0);
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) { worker(next); });
}

// One call of the engine: the program with its curves, the labels and the inputs.
template <typename T>
struct Call {
  Engine<T> en;
  int64_t N = 0, C = 0, H = 0, W = 0, HW = 0, J = 0, S = 0, regs = 1;
  bool correction = false;
  std::unique_ptr<LabelInfo<T>> li;
  const T* pp = nullptr;
  std::vector<const T*> xp;
  std::vector<bool> x_per_class;

  // The pixels of plane (n, c) labelled c (ids; nl of them, 0 without a correction
  // program) and whether c is absent from image n.
  struct Labelled {
    const int32_t* ids;
    int64_t nl;
    bool absent;
  };
  Labelled labelled(int64_t n, int64_t c) const {
    const int64_t* off = li->offsets.data() + n * (C + 1);
    return {li->idx + n * HW + off[c], correction ? off[c + 1] - off[c] : 0,
            off[c + 1] == off[c]};
  }

  // Points cx at plane (n, c).
  void setup(PlaneCtx<T>& cx, int64_t n, int64_t c) const {
    cx.p = pp + (n * C + c) * HW;
    cx.lab = li->lab + n * HW;
    cx.mask = li->mask + n * HW;
    cx.c = static_cast<int32_t>(c);
    cx.x.resize(xp.size());
    for (size_t q = 0; q < xp.size(); ++q)
      cx.x[q] = xp[q] + (x_per_class[q] ? (n * C + c) : n) * HW;
    cx.pool.assign(J, nullptr), cx.sin.assign(J, nullptr);
    cx.apool.assign(J, nullptr), cx.asin.assign(J, nullptr);
    cx.dp = nullptr;
    cx.uniform.assign(J, nullptr);
    for (int64_t j = 0; j < J; ++j)
      if (en.g_erode[j]) cx.uniform[j] = li->uniform_of(en.stage(j).r) + n * HW;
  }
};

// The engine of a loaded program for curves cv ((num_curves, Kmax, 8) float64 piece
// coefficients, ck pieces per curve) on planes of H x W.
template <typename T>
void build_engine(Engine<T>& en, const FusedIR& ir, const torch::Tensor& cv,
                  const torch::Tensor& ck, double min_slope, int64_t H, int64_t W) {
  en.progs = ir.progs;
  en.stages = ir.stages;
  en.consts = ir.consts;
  const int64_t ncurves = cv.size(0);
  TORCH_CHECK(ncurves >= ir.num_curves, "fused_engine: the program reads ", ir.num_curves,
              " curves, got ", ncurves);
  en.curves.kmax = cv.size(1);
  en.curves.k.assign(ck.data_ptr<int64_t>(), ck.data_ptr<int64_t>() + ncurves);
  en.curves.cols.resize(ncurves * 8 * en.curves.kmax);
  const double* cvp = cv.data_ptr<double>();
  for (int64_t q = 0; q < ncurves; ++q) {
    TORCH_CHECK(en.curves.k[q] >= 1 && en.curves.k[q] <= en.curves.kmax,
                "fused_engine: curve_k");
    for (int64_t k = 0; k < en.curves.kmax; ++k)
      for (int64_t j = 0; j < 8; ++j)
        en.curves.cols[(q * 8 + j) * en.curves.kmax + k] =
            static_cast<T>(cvp[(q * en.curves.kmax + k) * 8 + j]);
  }
  en.ms = static_cast<T>(min_slope);
  en.H = H, en.W = W;
  en.layout();
}

// Map mode: the final program's map reduced by a maximum over the classes [c_lo, C),
// (N, 1, H, W) (P-independent programs; no gradient).
template <typename T>
torch::Tensor class_max_map(const Call<T>& call, int64_t c_lo, const torch::TensorOptions& opt) {
  const Engine<T>& en = call.en;
  const int64_t N = call.N, C = call.C, H = call.H, W = call.W, HW = call.HW;
  const int64_t regs = call.regs;
  auto result = torch::zeros({N, 1, H, W}, opt);
  T* out = result.data_ptr<T>();
  const int64_t nc = std::max<int64_t>(0, C - c_lo), nt = at::get_num_threads();
  std::vector<std::vector<T>> acc(nt);  // per worker: max so far per image
  std::vector<std::vector<char>> seen(nt);
  std::atomic<int64_t> slots(0);
  run_workers(N * nc, [&](std::atomic<int64_t>& next) {
    const int64_t slot = slots.fetch_add(1);
    TORCH_CHECK(slot < nt, "fused_engine: more workers than threads");
    acc[slot].assign(N * HW, T(0));
    seen[slot].assign(N, 0);
    Machine<T> mc(regs);
    Scratch<T> scr(en, false);
    PlaneCtx<T> cx;
    T* plane = scr.plane;
    for (int64_t item; (item = next.fetch_add(1)) < N * nc;) {
      const int64_t n = item / nc, c = c_lo + item % nc;
      call.setup(cx, n, c);
      const bool absent = call.labelled(n, c).absent;
      Stages<T> stg(en, cx, scr, mc, absent, std::vector<T*>());
      const int64_t fp = absent ? 2 : 0;
      const Program& pr = en.progs[fp];
      for (int64_t h0 = 0; h0 < H; h0 += kRowStep) {
        const int64_t h1 = std::min(H, h0 + kRowStep), end = h1 * W;
        stg.need(fp, h1);
        for (int64_t start = h0 * W; start < end; start += kBlock) {
          const int64_t len = std::min(kBlock, end - start);
          if (pr.outs[0] < 0) {
            std::fill(plane + start, plane + start + len, static_cast<T>(pr.out_const[0]));
          } else {
            run_forward(en, pr, cx, mc, start, len, nullptr, false);
            std::copy(mc.vp[pr.outs[0]], mc.vp[pr.outs[0]] + len, plane + start);
          }
        }
      }
      T* o = acc[slot].data() + n * HW;
      if (!seen[slot][n]) {
        std::copy(plane, plane + HW, o);
        seen[slot][n] = 1;
      } else {
        for (int64_t i = 0; i < HW; ++i) o[i] = plane[i] > o[i] ? plane[i] : o[i];
      }
    }
  });
  for (int64_t n = 0; n < N; ++n) {  // the workers' maxima
    T* o = out + n * HW;
    bool first = true;
    for (int64_t s = 0; s < nt; ++s) {
      if (seen[s].empty() || !seen[s][n]) continue;
      const T* a = acc[s].data() + n * HW;
      if (first) {
        std::copy(a, a + HW, o);
        first = false;
      } else {
        for (int64_t i = 0; i < HW; ++i) o[i] = a[i] > o[i] ? a[i] : o[i];
      }
    }
  }
  return result;
}

// Forward pass: per-plane sums (N * C, S) float64 and, with save, the K maps the
// backward pass needs, one (N * C, H * W) tensor each (separate tensors: allocations
// above 32 MB are fresh pages every time).
template <typename T>
std::vector<torch::Tensor> forward_sums(const Call<T>& call, bool save,
                                        const torch::TensorOptions& opt) {
  const Engine<T>& en = call.en;
  const int64_t N = call.N, C = call.C, H = call.H, W = call.W, HW = call.HW, S = call.S;
  const int64_t regs = call.regs, K = en.num_saved;
  const Program& cor = en.progs[1];
  auto sums = torch::zeros({N * C, S}, opt.dtype(torch::kDouble));
  std::vector<torch::Tensor> keep;
  std::vector<T*> keep_p;
  for (int64_t k = 0; save && k < K; ++k) {
    keep.push_back(torch::empty({N * C, HW}, opt));
    keep_p.push_back(keep.back().data_ptr<T>());
  }
  run_workers(N * C, [&](std::atomic<int64_t>& next) {
    Machine<T> mc(regs);
    Scratch<T> scr(en, false);
    PlaneCtx<T> cx;
    std::vector<double> acc(S);
    std::vector<T*> kp(keep_p.size());
    for (int64_t plane; (plane = next.fetch_add(1)) < N * C;) {
      const int64_t n = plane / C, c = plane % C;
      call.setup(cx, n, c);
      const auto [ids, nl, absent] = call.labelled(n, c);
      for (size_t k = 0; k < kp.size(); ++k) kp[k] = keep_p[k] + plane * HW;
      const int64_t fp = absent ? 2 : 0;
      const Program& fin = en.progs[fp];
      Stages<T> stg(en, cx, scr, mc, absent, kp);
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t h0 = 0; h0 < H; h0 += kRowStep) {
        const int64_t h1 = std::min(H, h0 + kRowStep), end = h1 * W;
        stg.need(fp, h1);
        for (int64_t start = h0 * W; start < end; start += kBlock) {
          const int64_t len = std::min(kBlock, end - start);
          run_forward(en, fin, cx, mc, start, len, nullptr, false);
          for (int64_t s = 0; s < S; ++s) {
            const int64_t r = fin.outs[s];
            acc[s] += r >= 0 ? v_sum(mc.vp[r], len) : fin.out_const[s] * len;
          }
        }
      }
      if (nl > 0) stg.need(1, H);
      for (int64_t start = 0; start < nl; start += kBlock) {
        const int64_t len = std::min(kBlock, nl - start);
        run_forward(en, cor, cx, mc, 0, len, ids + start, false);
        for (int64_t s = 0; s < S; ++s) {
          const int64_t r = cor.outs[s];
          acc[s] += r >= 0 ? v_sum(mc.vp[r], len) : cor.out_const[s] * len;
        }
      }
      if (!kp.empty()) stg.finish();  // the kept maps, whole
      double* res = sums.data_ptr<double>() + plane * S;
      for (int64_t s = 0; s < S; ++s) res[s] = acc[s];
    }
  });
  std::vector<torch::Tensor> results{sums};
  for (auto& k : keep) results.push_back(k);
  return results;
}

// Per-thread state of the backward pass.
template <typename T>
struct BackwardWorker {
  Machine<T> mc;
  Scratch<T> scr;
  PlaneCtx<T> cx;
  std::vector<T> w;
  std::vector<int64_t> routed, applied;  // rows done, per stage
  BackwardWorker(const Engine<T>& en, int64_t regs, int64_t S)
      : mc(regs), scr(en, true), w(S), routed(en.num_stages()), applied(en.num_stages()) {}
};

// Backward pass, rows [0, h1) of a plane: every stage's gradient routing and partial
// derivatives as far as their adjoints are complete (kp: the plane's kept maps).
template <typename T, typename KP>
void stages_backward(const Engine<T>& en, const typename Engine<T>::Init& it,
                     BackwardWorker<T>& bw, bool absent, int64_t h1, KP&& kp) {
  const int64_t H = en.H, W = en.W, J = en.num_stages();
  PlaneCtx<T>& cx = bw.cx;
  Scratch<T>& scr = bw.scr;
  std::vector<int64_t>& routed = bw.routed;
  std::vector<int64_t>& applied = bw.applied;
  for (int64_t j = J - 1; j >= 0; --j) {
    const StageInfo& st = en.stage(j);
    if (!st.active || (absent && !st.absent_in)) continue;
    const int64_t r = st.r;
    // rows of the pooled map's adjoint that nothing will add to any more
    int64_t a = h1;
    for (int64_t k : en.pool_users[j]) a = std::min(a, applied[k]);
    // (the final program writes the input map's adjoint: route behind it)
    if (it.ain_by_final[j] && h1 < H) a = std::min(a, std::max<int64_t>(0, h1 - r));
    if (a > routed[j]) {
      if (absent && !st.absent_pool) {  // pool unused where the class is absent
      } else if (!st.is_min) {
        pool_backward<T, true>(cx.sin[j], scr.aout[j], cx.asin[j], scr.pad, scr.yrow,
                               scr.arow, scr.pend, H, W, r, routed[j], a);
      } else {
        pool_backward<T, false>(cx.sin[j], scr.aout[j], cx.asin[j], scr.pad, scr.yrow,
                                scr.arow, scr.pend, H, W, r, routed[j], a);
      }
      routed[j] = a;
    }
    if (st.direct_p || en.leaves[j].empty()) continue;
    // rows of the input map's adjoint that are complete
    int64_t b = std::min(h1, routed[j] == H ? H : std::max<int64_t>(0, routed[j] - r));
    for (int64_t k : en.input_users[j]) b = std::min(b, applied[k]);
    if (b > applied[j]) {
      const int64_t lo = applied[j] * W, n = (b - applied[j]) * W;
      const T* g = scr.ain[j] + lo;
      for (size_t q = 0; q < en.leaves[j].size(); ++q) {
        const int64_t op = en.leaves[j][q].first, l = en.leaves[j][q].second;
        T* target = op == OP_P ? cx.dp : (op == OP_POOL ? cx.apool[l] : cx.asin[l]);
        if (!target) continue;
        if (it.part_assign[j][q])
          v_mul(g, kp(en.slot_part[j][q]) + lo, target + lo, n);
        else
          v_acc_mul(target + lo, g, kp(en.slot_part[j][q]) + lo, n);
      }
      applied[j] = b;
    }
  }
}

// Backward pass: with gsp the (S, C) gradient of the sums and the maps the forward pass
// kept, dL/dP (N, C, H, W), written into kept map out_slot (>= 0; its contents are then
// gone) or a new tensor.
template <typename T>
torch::Tensor backward_dp(const Call<T>& call, const double* gsp,
                          const std::vector<torch::Tensor>& saved, int64_t out_slot,
                          const torch::Tensor& pc) {
  const Engine<T>& en = call.en;
  const int64_t N = call.N, C = call.C, H = call.H, W = call.W, HW = call.HW;
  const int64_t J = call.J, S = call.S, K = en.num_saved;
  const Program& cor = en.progs[1];
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == K,
              "fused_engine: the backward pass needs the maps kept by the forward pass");
  std::vector<torch::Tensor> keep;
  std::vector<const T*> keep_p;
  for (auto& t : saved) {
    TORCH_CHECK(t.numel() == N * C * HW && t.scalar_type() == pc.scalar_type(),
                "fused_engine: kept maps of the wrong size or type");
    keep.push_back(t.contiguous());
    keep_p.push_back(keep.back().data_ptr<T>());
  }
  // dL/dP goes into a kept map (whose plane is no longer needed once the plane is
  // done: dL/dP is built in a scratch plane and copied there), or into a new tensor.
  TORCH_CHECK(out_slot < K, "fused_engine: out_slot");
  auto result = out_slot >= 0 ? keep[out_slot].view(pc.sizes()) : torch::empty_like(pc);
  run_workers(N * C, [&](std::atomic<int64_t>& next) {
    BackwardWorker<T> bw(en, call.regs, S);
    Machine<T>& mc = bw.mc;
    Scratch<T>& scr = bw.scr;
    PlaneCtx<T>& cx = bw.cx;
    T* dp_scratch = out_slot >= 0 ? thread_arena<T, kWorkerArena>().get(HW) : nullptr;
    for (int64_t plane; (plane = next.fetch_add(1)) < N * C;) {
      const int64_t n = plane / C, c = plane % C;
      call.setup(cx, n, c);
      const auto [ids, nl, absent] = call.labelled(n, c);
      auto kp = [&](int64_t slot) { return keep_p[slot] + plane * HW; };
      T* dp_out = result.data_ptr<T>() + plane * HW;
      T* dp = dp_scratch ? dp_scratch : dp_out;
      const int64_t fp = absent ? 2 : 0;
      const Program& fin = en.progs[fp];
      const typename Engine<T>::Init& it = en.init[absent ? 1 : 0];
      if (it.zero_dp) std::fill(dp, dp + HW, T(0));
      cx.dp = dp;
      Stages<T> stg(en, cx, scr, mc, absent, std::vector<T*>(), true);
      for (int64_t j = 0; j < J; ++j) {
        const StageInfo& st = en.stage(j);
        if (!st.active || (absent && !st.absent_in)) continue;
        if (en.slot_out[j] >= 0) cx.pool[j] = kp(en.slot_out[j]);
        cx.sin[j] = st.direct_p ? cx.p : (en.slot_in[j] >= 0 ? kp(en.slot_in[j]) : nullptr);
        if (it.zero_aout[j]) std::fill(scr.aout[j], scr.aout[j] + HW, T(0));
        cx.apool[j] = scr.aout[j];
        if (st.direct_p) {
          cx.asin[j] = dp;
        } else {
          if (it.zero_ain[j]) std::fill(scr.ain[j], scr.ain[j] + HW, T(0));
          cx.asin[j] = scr.ain[j];
        }
      }
      for (int64_t s = 0; s < S; ++s) bw.w[s] = static_cast<T>(gsp[s * C + c]);
      // The labelled pixels first (their adjoints land anywhere in the plane), then the
      // plane row by row: the final program's reverse sweep, and every stage's gradient
      // routing and partial derivatives as far as their adjoints are complete.
      // (Without stages, the final program first: it writes dL/dP, the labelled pixels
      // add to it.)
      auto labelled = [&]() {
        if (nl > 0) stg.need(1, H);
        for (int64_t start = 0; start < nl; start += kBlock) {
          const int64_t len = std::min(kBlock, nl - start);
          run_forward(en, cor, cx, mc, 0, len, ids + start, true, true);
          run_reverse(en, cor, cx, mc, 0, len, ids + start, bw.w.data(), nullptr);
        }
      };
      if (J > 0) labelled();
      std::fill(bw.routed.begin(), bw.routed.end(), 0);
      std::fill(bw.applied.begin(), bw.applied.end(), 0);
      for (int64_t h0 = 0; h0 < H; h0 += kRowStep) {
        const int64_t h1 = std::min(H, h0 + kRowStep), end = h1 * W;
        stg.need(fp, h1);
        for (int64_t start = h0 * W; start < end; start += kBlock) {
          const int64_t len = std::min(kBlock, end - start);
          run_forward(en, fin, cx, mc, start, len, nullptr, true, true);
          run_reverse(en, fin, cx, mc, start, len, nullptr, bw.w.data(), nullptr, false,
                      it.assign_rows.data());
        }
        stages_backward(en, it, bw, absent, h1, kp);
      }
      if (J == 0) labelled();
      if (dp_scratch) std::copy(dp_scratch, dp_scratch + HW, dp_out);
    }
  });
  return result;
}

// The fused engine on a program loaded by load_program:
//   * grad absent, map mode: the class maximum of the program's map over the classes
//     [c_lo, C), (N, 1, H, W);
//   * grad absent: per-plane sums (N * C, S) float64 and, with save, the maps the
//     backward pass needs;
//   * grad (S, C) with those maps: dL/dP (N, C, H, W) (into kept map out_slot if >= 0).
// Labels that are neither a class index nor ignore_index raise "invalid label values".
std::vector<torch::Tensor> fused_engine(
    const FusedIR& ir, torch::Tensor curves, torch::Tensor curve_k, torch::Tensor p,
    torch::Tensor label, std::vector<torch::Tensor> xs, int64_t ignore_index,
    double min_slope, c10::optional<torch::Tensor> grad, std::vector<torch::Tensor> saved,
    bool save, int64_t c_lo, int64_t out_slot) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 4, "fused_engine: p must be (N, C, H, W) on CPU");
  TORCH_CHECK(label.dim() == 3 && label.size(0) == p.size(0) && label.size(1) == p.size(2) &&
                  label.size(2) == p.size(3),
              "fused_engine: label must be (N, H, W) matching p");
  auto pc = p.contiguous();
  auto lc = label.to(torch::kLong).contiguous();
  auto cv = curves.to(torch::kDouble).contiguous();
  auto ck = curve_k.to(torch::kLong).contiguous();
  TORCH_CHECK(cv.dim() == 3 && cv.size(2) == 8 && ck.numel() == cv.size(0),
              "fused_engine: curves must be (num_curves, Kmax, 8)");
  const int64_t N = pc.size(0), C = pc.size(1), H = pc.size(2), W = pc.size(3), HW = H * W;
  TORCH_CHECK(HW < (int64_t(1) << 31), "fused_engine: plane too large");
  const int64_t S = ir.num_outputs;
  const bool backward = grad.has_value() && grad->defined();
  TORCH_CHECK(ir.mode == MODE_STATS || !backward, "fused_engine: map mode has no gradient");
  TORCH_CHECK(static_cast<int64_t>(xs.size()) == ir.num_extras,
              "fused_engine: the program reads ", ir.num_extras, " extra maps, got ", xs.size());
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
  std::vector<torch::Tensor> results;
  AT_DISPATCH_FLOATING_TYPES(pc.scalar_type(), "fused_engine", [&] {
    using T = scalar_t;
    Call<T> call;
    build_engine(call.en, ir, cv, ck, min_slope, H, W);
    call.N = N, call.C = C, call.H = H, call.W = W, call.HW = HW;
    call.J = call.en.num_stages(), call.S = S, call.correction = ir.correction;
    for (auto& pr : call.en.progs) call.regs = std::max(call.regs, pr.ni);
    call.li = std::make_unique<LabelInfo<T>>(lc.data_ptr<int64_t>(), N, C, HW, ignore_index);
    TORCH_CHECK(!call.li->invalid, "fused_engine: invalid label values");
    for (int64_t j = 0; j < call.J; ++j)
      if (call.en.g_erode[j]) call.li->add_uniform(call.en.stage(j).r, N, H, W);
    call.pp = pc.data_ptr<T>();
    for (auto& x : xcs) call.xp.push_back(x.data_ptr<T>());
    call.x_per_class = x_per_class;
    if (ir.mode == MODE_MAP)
      results.push_back(class_max_map(call, c_lo, pc.options()));
    else if (!backward)
      results = forward_sums(call, save, pc.options());
    else
      results.push_back(backward_dp(call, gs.data_ptr<double>(), saved, out_slot, pc));
  });
  return results;
}

// exp(x) in float32 for x <= 0, vectorizable (Cephes' expf: a degree-6 polynomial on
// [-ln2/2, ln2/2] and a power of two; within 2 ulp); 0 below the smallest normal result.
inline float exp_nonpositive(float x) {
  const bool under = x < -87.33654f;
  x = under ? -87.33654f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float q = 1.9875691500E-4f;
  q = q * r + 1.3981999507E-3f;
  q = q * r + 8.3334519073E-3f;
  q = q * r + 4.1665795894E-2f;
  q = q * r + 1.6666665459E-1f;
  q = q * r + 5.0000001201E-1f;
  q = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof(s));
  return under ? 0.0f : q * s;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// Softmax over dim 1 of a contiguous (N, C, H, W) tensor, pixels in blocks (every class
// of a block stays in cache): max, exp(x - max) and their sum, then the scaling.
torch::Tensor softmax_forward(torch::Tensor x) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "softmax_forward: x must be (N, C, H, W)");
  auto xc = x.contiguous();
  auto p = torch::empty_like(xc);
  const int64_t N = xc.size(0), C = xc.size(1), HW = xc.size(2) * xc.size(3);
  const int64_t blocks = (HW + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "softmax_forward", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* pp = p.data_ptr<scalar_t>();
    at::parallel_for(0, N * blocks, 1, [&](int64_t b0, int64_t b1) {
      scalar_t m[kBlock], s[kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b / blocks, i0 = (b % blocks) * kBlock;
        const int64_t len = std::min(kBlock, HW - i0);
        const scalar_t* x0 = xp + n * C * HW + i0;
        std::copy(x0, x0 + len, m);
        for (int64_t c = 1; c < C; ++c) {
          const scalar_t* __restrict__ xr = x0 + c * HW;
          for (int64_t i = 0; i < len; ++i) m[i] = xr[i] > m[i] ? xr[i] : m[i];
        }
        std::fill(s, s + len, scalar_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* __restrict__ xr = x0 + c * HW;
          scalar_t* __restrict__ pr = pp + n * C * HW + c * HW + i0;
          for (int64_t i = 0; i < len; ++i) {
            const scalar_t e = exp_nonpositive(xr[i] - m[i]);
            pr[i] = e;
            s[i] += e;
          }
        }
        for (int64_t i = 0; i < len; ++i) s[i] = scalar_t(1) / s[i];
        for (int64_t c = 0; c < C; ++c) {
          scalar_t* __restrict__ pr = pp + n * C * HW + c * HW + i0;
          for (int64_t i = 0; i < len; ++i) pr[i] *= s[i];
        }
      }
    });
  });
  return p;
}

// Softmax backward over dim 1, in place: g <- p * (g - sum_c p * g), p = softmax output
// (N, C, H, W). Pixels in blocks, so that a block of every class stays in cache.
void softmax_backward_(torch::Tensor p, torch::Tensor g) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 4 && p.sizes() == g.sizes() &&
                  p.scalar_type() == g.scalar_type() && p.is_contiguous() && g.is_contiguous(),
              "softmax_backward_: p and g must be contiguous (N, C, H, W) CPU tensors alike");
  const int64_t N = p.size(0), C = p.size(1), HW = p.size(2) * p.size(3);
  const int64_t blocks = (HW + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "softmax_backward_", [&] {
    const scalar_t* pp = p.data_ptr<scalar_t>();
    scalar_t* gp = g.data_ptr<scalar_t>();
    at::parallel_for(0, N * blocks, 1, [&](int64_t b0, int64_t b1) {
      scalar_t acc[kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b / blocks, i0 = (b % blocks) * kBlock;
        const int64_t len = std::min(kBlock, HW - i0);
        std::fill(acc, acc + len, scalar_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t o = (n * C + c) * HW + i0;
          v_acc_mul(acc, pp + o, gp + o, len);
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* __restrict__ x = pp + (n * C + c) * HW + i0;
          scalar_t* __restrict__ y = gp + (n * C + c) * HW + i0;
          for (int64_t i = 0; i < len; ++i) y[i] = x[i] * (y[i] - acc[i]);
        }
      }
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_forward", &softmax_forward, "Softmax over dim 1 (N, C, H, W)");
  m.def("softmax_backward_", &softmax_backward_, "In-place softmax backward over dim 1");
  py::class_<FusedIR, std::shared_ptr<FusedIR>>(m, "FusedIR",
                                                "A fused program read by load_program");
  m.def("load_program", &load_program, "Read an asl.engines.ir.FusedProgram");
  m.def("opcodes", []() {
    return std::vector<int64_t>{OP_P, OP_G, OP_M, OP_X, OP_CONST, OP_CURVE, OP_MUL, OP_ADD,
                                OP_SUB, OP_ONE_MINUS, OP_POOL, OP_STAGE_IN};
  }, "The opcodes the engine was built with (checked against asl.engines.ir.Op)");
  m.def("fused_engine", &fused_engine,
        "Fused per-class sums of elementwise and pooled maps (or dL/dP, or a class max)");
}
