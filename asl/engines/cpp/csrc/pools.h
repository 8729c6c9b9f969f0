// Pools: the square max / min pool of a plane, row by row, and its backward pass.
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace {

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

}  // namespace
