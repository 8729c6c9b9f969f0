// Softmax over dim 1 of (N, C, H, W) tensors and its backward (in place).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "vec.h"

namespace {

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
