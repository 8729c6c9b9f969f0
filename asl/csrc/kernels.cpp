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
void bezier_kernel(const scalar_t* x, scalar_t* y, scalar_t* dydx, int64_t n,
                   const std::vector<double>& coef_d, int64_t K, double min_slope) {
  std::vector<scalar_t> coef(coef_d.begin(), coef_d.end());
  const scalar_t* c = coef.data();
  const scalar_t ms = static_cast<scalar_t>(min_slope);
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t xi = x[i];
      int64_t k = 0;
      for (int64_t j = 1; j < K; ++j) k += (xi >= c[j * 8]) ? 1 : 0;
      const scalar_t* p = c + k * 8;
      const scalar_t d = xi - p[0];
      scalar_t disc = p[1] + p[2] * d;
      disc = disc > scalar_t(0) ? disc : scalar_t(0);
      const scalar_t s = std::sqrt(disc);
      const scalar_t den = s + p[3];
      scalar_t t = den > scalar_t(0) ? (d + d) / den : scalar_t(0);
      t = t < scalar_t(0) ? scalar_t(0) : (t > scalar_t(1) ? scalar_t(1) : t);
      scalar_t yi = (p[6] * t + p[5]) * t + p[4];
      if (xi >= scalar_t(1)) yi = scalar_t(1);
      if (xi <= scalar_t(0)) yi = scalar_t(0);
      y[i] = yi;
      if (dydx != nullptr) {
        const scalar_t sl = s > ms ? s : ms;
        const scalar_t dy = p[7] * t + p[5];  // y'(t) >= 0; clamp rounding below 0
        dydx[i] = dy > scalar_t(0) ? dy / sl : scalar_t(0);
      }
    }
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

// Max over the window [l - r, l + r] along one dimension (border ignored) of a
// contiguous tensor viewed as (outer, L, inner).
torch::Tensor window_max_forward(torch::Tensor x, int64_t dim, int64_t r) {
  TORCH_CHECK(x.device().is_cpu(), "window_max: x must be a CPU tensor");
  TORCH_CHECK(r >= 0, "window_max: radius must be >= 0");
  auto xc = x.contiguous();
  const int64_t L = xc.size(dim);
  const int64_t inner = xc.stride(dim);
  const int64_t outer = L == 0 ? 0 : xc.numel() / (L * inner);
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
  const int64_t L = g.size(dim);
  const int64_t inner = g.stride(dim);
  const int64_t outer = L == 0 ? 0 : g.numel() / (L * inner);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bezier_forward", &bezier_forward, "Piecewise quadratic Bezier curve (value, dy/dx)");
  m.def("window_max_forward", &window_max_forward, "Window max along one dim");
  m.def("window_max_backward", &window_max_backward, "Gradient of window_max_forward");
}
