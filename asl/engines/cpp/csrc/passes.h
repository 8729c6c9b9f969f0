// The passes of one call (Call) over its planes: the map mode's class maximum, the
// forward pass (per-plane sums, kept maps) and the backward pass (dL/dP).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "engine.h"
#include "ir_load.h"
#include "labels.h"
#include "pools.h"
#include "stages.h"
#include "sweeps.h"
#include "vec.h"

namespace {

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
// coefficients, ck pieces per curve) on planes of H x W (name: the entry point, for the
// messages).
template <typename T>
void build_engine(Engine<T>& en, const char* name, const FusedIR& ir, const torch::Tensor& cv,
                  const torch::Tensor& ck, double min_slope, int64_t H, int64_t W) {
  en.progs = ir.progs;
  en.stages = ir.stages;
  en.consts = ir.consts;
  const int64_t ncurves = cv.size(0);
  TORCH_CHECK(ncurves >= ir.num_curves, name, ": the program reads ", ir.num_curves,
              " curves, got ", ncurves);
  en.curves.kmax = cv.size(1);
  en.curves.k.assign(ck.data_ptr<int64_t>(), ck.data_ptr<int64_t>() + ncurves);
  en.curves.cols.resize(ncurves * 8 * en.curves.kmax);
  const double* cvp = cv.data_ptr<double>();
  for (int64_t q = 0; q < ncurves; ++q) {
    TORCH_CHECK(en.curves.k[q] >= 1 && en.curves.k[q] <= en.curves.kmax, name, ": curve_k");
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
    TORCH_CHECK(slot < nt, "fused_map: more workers than threads");
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
              "fused_backward: the backward pass needs the maps kept by the forward pass");
  std::vector<torch::Tensor> keep;
  std::vector<const T*> keep_p;
  for (auto& t : saved) {
    TORCH_CHECK(t.numel() == N * C * HW && t.scalar_type() == pc.scalar_type(),
                "fused_backward: kept maps of the wrong size or type");
    keep.push_back(t.contiguous());
    keep_p.push_back(keep.back().data_ptr<T>());
  }
  // dL/dP goes into a kept map (whose plane is no longer needed once the plane is
  // done: dL/dP is built in a scratch plane and copied there), or into a new tensor.
  TORCH_CHECK(out_slot < K, "fused_backward: out_slot");
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

}  // namespace
