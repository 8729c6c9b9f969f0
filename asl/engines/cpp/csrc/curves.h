// Curves: monotone piecewise quadratic Bezier curves given as piece coefficient tables
// (asl.curves.PIECE_COLUMNS: x0, b^2, 4a, b, y0, by, ay, 2ay); for an input x the piece
// holding x (the last whose start is <= x) is selected, x(t) = x is solved with the
// cancellation-free root t = 2d / (b + sqrt(b^2 + 4ad)), d = x - x0, and y(t) and
// dy/dx = y'(t) / x'(t) are returned, x'(t) = sqrt(b^2 + 4ad) clamped below by min_slope.
// Inputs >= 1 map to exactly 1 and inputs <= 0 to exactly 0 (truth table).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

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

}  // namespace
