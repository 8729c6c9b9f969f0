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
// Fused per-class statistics: a small register machine evaluates an elementwise
// expression of P (softmax probabilities), G (one-hot of the label), M (valid mask)
// and precomputed maps, block by block inside one (image, class) plane, and sums it
// per class. The backward pass re-evaluates the program with forward-mode derivatives
// (d/dP of each expression is elementwise) and writes dL/dP in one pass.
//
// code: (I, 4) int64 rows (op, dst, a, b); ops below. consts: float64 values.
// curves: (num_curves, Kmax, 8) float64 Bezier piece tables (see bezier_forward),
// curve_k: pieces per curve. outs: register of each statistic.
enum Op : int64_t {
  OP_P = 0, OP_G = 1, OP_M = 2, OP_X = 3, OP_CONST = 4, OP_CURVE = 5, OP_MUL = 6,
  OP_ADD = 7, OP_SUB = 8, OP_ONE_MINUS = 9
};

constexpr int64_t kBlock = 256;

template <typename scalar_t>
void run_program(const int64_t* code, int64_t ni, const double* consts, const scalar_t* curves,
                 const int64_t* curve_k, int64_t kmax, scalar_t min_slope, const scalar_t* p,
                 const int64_t* label, int64_t c, int64_t ignore_index,
                 const std::vector<const scalar_t*>& xs, const std::vector<bool>& x_per_class,
                 int64_t n_off, int64_t c_off, int64_t n, bool deriv, scalar_t* val,
                 scalar_t* der, scalar_t* tmp) {
  // val/der: (R, kBlock) registers; tmp: kBlock scratch. Offsets: c_off (this class's
  // plane), n_off (this image's pixels).
  for (int64_t ii = 0; ii < ni; ++ii) {
    const int64_t* in = code + ii * 4;
    scalar_t* v = val + in[1] * kBlock;
    scalar_t* d = der + in[1] * kBlock;
    const scalar_t* va = in[2] >= 0 ? val + in[2] * kBlock : nullptr;
    const scalar_t* da = in[2] >= 0 ? der + in[2] * kBlock : nullptr;
    const scalar_t* vb = in[3] >= 0 ? val + in[3] * kBlock : nullptr;
    const scalar_t* db = in[3] >= 0 ? der + in[3] * kBlock : nullptr;
    switch (in[0]) {
      case OP_P:
        for (int64_t i = 0; i < n; ++i) v[i] = p[c_off + i];
        if (deriv) std::fill(d, d + n, scalar_t(1));
        break;
      case OP_G:
        for (int64_t i = 0; i < n; ++i) v[i] = label[n_off + i] == c ? scalar_t(1) : scalar_t(0);
        if (deriv) std::fill(d, d + n, scalar_t(0));
        break;
      case OP_M:
        for (int64_t i = 0; i < n; ++i)
          v[i] = label[n_off + i] != ignore_index ? scalar_t(1) : scalar_t(0);
        if (deriv) std::fill(d, d + n, scalar_t(0));
        break;
      case OP_X: {
        const scalar_t* x = xs[in[2]] + (x_per_class[in[2]] ? c_off : n_off);
        std::copy(x, x + n, v);
        if (deriv) std::fill(d, d + n, scalar_t(0));
        break;
      }
      case OP_CONST:
        std::fill(v, v + n, scalar_t(consts[in[2]]));
        if (deriv) std::fill(d, d + n, scalar_t(0));
        break;
      case OP_CURVE: {
        const scalar_t* table = curves + in[3] * kmax * 8;
        if (deriv) {
          curve_eval<scalar_t>(table, curve_k[in[3]], va, v, tmp, n, min_slope);
          for (int64_t i = 0; i < n; ++i) d[i] = tmp[i] * da[i];
        } else {
          curve_eval<scalar_t>(table, curve_k[in[3]], va, v, nullptr, n, min_slope);
        }
        break;
      }
      case OP_MUL:
        if (deriv)
          for (int64_t i = 0; i < n; ++i) d[i] = da[i] * vb[i] + va[i] * db[i];
        for (int64_t i = 0; i < n; ++i) v[i] = va[i] * vb[i];
        break;
      case OP_ADD:
        if (deriv)
          for (int64_t i = 0; i < n; ++i) d[i] = da[i] + db[i];
        for (int64_t i = 0; i < n; ++i) v[i] = va[i] + vb[i];
        break;
      case OP_SUB:
        if (deriv)
          for (int64_t i = 0; i < n; ++i) d[i] = da[i] - db[i];
        for (int64_t i = 0; i < n; ++i) v[i] = va[i] - vb[i];
        break;
      case OP_ONE_MINUS:
        if (deriv)
          for (int64_t i = 0; i < n; ++i) d[i] = -da[i];
        for (int64_t i = 0; i < n; ++i) v[i] = scalar_t(1) - va[i];
        break;
      default:
        TORCH_CHECK(false, "fused_stats: unknown op ", in[0]);
    }
  }
}

// Returns (N * C, S) float64 per-plane sums, or dL/dP when grad_sums is defined.
torch::Tensor fused_stats(torch::Tensor code, torch::Tensor consts, torch::Tensor curves,
                          torch::Tensor curve_k, int64_t num_regs, torch::Tensor outs,
                          torch::Tensor p, torch::Tensor label, std::vector<torch::Tensor> xs,
                          int64_t ignore_index, double min_slope,
                          c10::optional<torch::Tensor> grad_sums) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 4, "fused_stats: p must be (N, C, H, W) on CPU");
  auto pc = p.contiguous();
  auto lc = label.to(torch::kLong).contiguous();
  auto cc = code.to(torch::kLong).contiguous();
  auto kc = consts.to(torch::kDouble).contiguous();
  auto cv = curves.to(torch::kDouble).contiguous();
  auto ck = curve_k.to(torch::kLong).contiguous();
  auto oc = outs.to(torch::kLong).contiguous();
  const int64_t N = pc.size(0), C = pc.size(1), HW = pc.size(2) * pc.size(3);
  const int64_t S = oc.numel(), ni = cc.size(0);
  const int64_t kmax = cv.dim() == 3 ? cv.size(1) : 1;
  const bool backward = grad_sums.has_value();
  torch::Tensor gs;
  if (backward) gs = grad_sums->to(torch::kDouble).contiguous();  // (S, C)
  std::vector<torch::Tensor> xcs;
  std::vector<bool> x_per_class;
  for (auto& x : xs) {
    xcs.push_back(x.to(pc.scalar_type()).contiguous());
    x_per_class.push_back(x.size(1) == C && C > 1);
  }
  auto result = backward ? torch::empty_like(pc)
                         : torch::zeros({N * C, S}, pc.options().dtype(torch::kDouble));
  AT_DISPATCH_FLOATING_TYPES(pc.scalar_type(), "fused_stats", [&] {
    std::vector<const scalar_t*> xp;
    for (auto& x : xcs) xp.push_back(x.data_ptr<scalar_t>());
    const scalar_t* pp = pc.data_ptr<scalar_t>();
    const int64_t* lp = lc.data_ptr<int64_t>();
    const int64_t* op = oc.data_ptr<int64_t>();
    std::vector<scalar_t> table(cv.data_ptr<double>(), cv.data_ptr<double>() + cv.numel());
    const scalar_t ms = static_cast<scalar_t>(min_slope);
    at::parallel_for(0, N * C, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> val(num_regs * kBlock), der(num_regs * kBlock), tmp(kBlock);
      for (int64_t plane = b0; plane < b1; ++plane) {
        const int64_t n = plane / C, c = plane % C;
        std::vector<double> acc(S, 0.0);
        for (int64_t start = 0; start < HW; start += kBlock) {
          const int64_t len = std::min(kBlock, HW - start);
          run_program<scalar_t>(cc.data_ptr<int64_t>(), ni, kc.data_ptr<double>(),
                                table.data(), ck.data_ptr<int64_t>(), kmax, ms, pp, lp, c,
                                ignore_index, xp, x_per_class, n * HW + start,
                                plane * HW + start, len, backward, val.data(), der.data(),
                                tmp.data());
          if (backward) {
            scalar_t* out = result.data_ptr<scalar_t>() + plane * HW + start;
            std::fill(out, out + len, scalar_t(0));
            for (int64_t s = 0; s < S; ++s) {
              const scalar_t w = scalar_t(gs.data_ptr<double>()[s * C + c]);
              const scalar_t* d = der.data() + op[s] * kBlock;
              for (int64_t i = 0; i < len; ++i) out[i] += w * d[i];
            }
          } else {
            for (int64_t s = 0; s < S; ++s) {
              const scalar_t* v = val.data() + op[s] * kBlock;
              scalar_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // vectorizable partial sums
              int64_t i = 0;
              for (; i + 8 <= len; i += 8)
                for (int64_t q = 0; q < 8; ++q) part[q] += v[i + q];
              double a = 0.0;
              for (; i < len; ++i) a += v[i];
              for (int64_t q = 0; q < 8; ++q) a += part[q];
              acc[s] += a;
            }
          }
        }
        if (!backward) {
          double* r = result.data_ptr<double>() + plane * S;
          for (int64_t s = 0; s < S; ++s) r[s] = acc[s];
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
  m.def("fused_stats", &fused_stats, "Fused per-class sums of elementwise expressions (or dL/dP)");
}
