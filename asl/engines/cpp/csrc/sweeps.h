// Sweeps: a register program run forward on a block of pixels, and in reverse mode.
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <torch/extension.h>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "curves.h"
#include "engine.h"
#include "vec.h"

namespace {

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
      default: TORCH_CHECK(false, "run_forward: unknown op ", op);
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

}  // namespace
