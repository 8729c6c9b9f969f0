// Stages: the pooled maps of a plane, computed on demand row by row (Stages).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine.h"
#include "pools.h"
#include "sweeps.h"

namespace {

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

}  // namespace
