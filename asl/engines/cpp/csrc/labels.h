// Labels: the labels as int32, the valid mask, the pixels of each (image, class) and
// the uniform-class maps of eroded G (LabelInfo).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine.h"

namespace {

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

}  // namespace
