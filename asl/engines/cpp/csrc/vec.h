// The block size of the register programs and small vector loops.
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <cstdint>

namespace {

// Pixels per block of a register program (and of the softmax).
constexpr int64_t kBlock = 256;

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

}  // namespace
