// The engine of one call: the plane context, per-thread memory, the register machine
// and the plan of what the backward pass keeps (Engine).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "curves.h"
#include "ir_load.h"
#include "vec.h"

namespace {

// The maps one plane's programs read, and where their adjoints go.
template <typename T>
struct PlaneCtx {
  const T* p = nullptr;          // P of the plane (HW)
  const int32_t* lab = nullptr;  // labels of the image (HW)
  const T* mask = nullptr;       // valid mask of the image (HW)
  int32_t c = 0;                 // the plane's class
  std::vector<const T*> x;       // extra maps (this plane)
  std::vector<const T*> pool, sin;  // pooled map and input map of each stage
  T* dp = nullptr;                  // dL/dP of the plane
  std::vector<T*> apool, asin;      // adjoints of pool and sin (null: inactive)
  std::vector<const int32_t*> uniform;  // stages eroding G: the image's uniform classes
};

// Per-thread memory reused across calls: plane-sized buffers allocated afresh on every
// call would cost page faults comparable to the work done on them. get() hands out the
// next buffer (grown to n elements if needed); reset() makes them all available again.
template <typename T, int Tag>
class Arena {
 public:
  T* get(size_t n) {
    if (next_ == bufs_.size()) bufs_.emplace_back();
    std::vector<T>& b = bufs_[next_++];
    if (b.size() < n) b.resize(n);
    return b.data();
  }
  void reset() { next_ = 0; }

 private:
  std::vector<std::vector<T>> bufs_;  // (moving a vector keeps its buffer)
  size_t next_ = 0;
};

template <typename T, int Tag>
Arena<T, Tag>& thread_arena() {
  thread_local Arena<T, Tag> arena;
  return arena;
}

constexpr int kWorkerArena = 0, kCallArena = 1;

template <typename T>
struct Machine {
  std::vector<T> val, der, adj;
  std::vector<const T*> vp;  // value of each register (a block, or straight into a map)
  std::vector<char> done;    // adjoint written (run_reverse)
  explicit Machine(int64_t regs)
      : val(regs * kBlock), der(regs * kBlock), adj(regs * kBlock), vp(regs), done(regs) {}
};

// A fused program with its curves for one call, and the plan of what the backward pass
// keeps (derived from the program once per call; cheap).
template <typename T>
struct Engine {
  std::vector<Program> progs;  // final, correction, absent final, stage programs
  std::vector<StageInfo> stages;
  std::vector<double> consts;
  CurveSet<T> curves;
  T ms;
  int64_t H = 0, W = 0;
  // the active leaves (op, a) of each stage program whose partial derivatives are kept
  std::vector<std::vector<std::pair<int64_t, int64_t>>> leaves;
  // planes kept per (image, class) for the backward pass: slot of each stage's input,
  // output and partials (-1: not kept)
  std::vector<int64_t> slot_in, slot_out;
  std::vector<std::vector<int64_t>> slot_part;
  int64_t num_saved = 0;
  // the stage maps each program reads: (OP_POOL or OP_STAGE_IN, stage)
  std::vector<std::vector<std::pair<int64_t, int64_t>>> deps;
  // the stages whose kept partial derivatives add to stage j's pooled / input adjoint
  std::vector<std::vector<int64_t>> pool_users, input_users;
  // How the backward pass starts the adjoint maps of a plane, for the final program (0)
  // and the one of absent classes (1): the first write to a map that has a single first
  // writer assigns instead of adding to zeros.
  struct Init {
    std::vector<char> assign_rows;  // final program leaves that write their adjoint map
    bool zero_dp = true;
    std::vector<char> zero_aout, zero_ain;
    std::vector<std::vector<char>> part_assign;  // [stage][leaf]: the partial writes
    std::vector<char> ain_by_final;  // ain written by the final program: route behind it
  };
  Init init[2];
  // stages that erode G itself (a min pool of the one-hot map): computed from the labels
  std::vector<char> g_erode;
  int64_t num_stages() const { return static_cast<int64_t>(stages.size()); }
  const StageInfo& stage(int64_t j) const { return stages[j]; }

  void layout() {
    const int64_t J = num_stages();
    leaves.assign(J, {});
    slot_in.assign(J, -1), slot_out.assign(J, -1), slot_part.assign(J, {});
    num_saved = 0;
    deps.assign(progs.size(), {});
    pool_users.assign(J, {}), input_users.assign(J, {});
    g_erode.assign(J, 0);
    for (int64_t j = 0; j < J; ++j) {
      const Program& pr = progs[kFirstStageProgram + j];
      g_erode[j] = stage(j).is_min && !stage(j).direct_p && pr.ni == 1 &&
                   pr.code[0].op == OP_G && pr.outs[0] == 0;
    }
    for (size_t i = 0; i < progs.size(); ++i)
      for (int64_t ii = 0; ii < progs[i].ni; ++ii) {
        const Instr& row = progs[i].code[ii];
        if (row.op == OP_POOL || row.op == OP_STAGE_IN) deps[i].emplace_back(row.op, row.a);
      }
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = stage(j);
      if (st.keep_pool) slot_out[j] = num_saved++;
      if (st.keep_in && !st.direct_p) slot_in[j] = num_saved++;
      if (!st.active || st.direct_p) continue;
      const Program& pr = progs[kFirstStageProgram + j];
      const int64_t r = pr.outs[0];
      if (r < 0 || !pr.code[r].active) continue;  // constant after all
      for (int64_t ii = 0; ii < pr.ni; ++ii) {
        const Instr& row = pr.code[ii];
        if (row.active && (row.op == OP_P || row.op == OP_POOL || row.op == OP_STAGE_IN)) {
          leaves[j].emplace_back(row.op, row.a);
          slot_part[j].push_back(num_saved++);
          if (row.op == OP_POOL) pool_users[row.a].push_back(j);
          if (row.op == OP_STAGE_IN) input_users[row.a].push_back(j);
        }
      }
    }
    for (int v = 0; v < 2; ++v) plan_init(v);
  }

  void plan_init(int v) {
    const int64_t J = num_stages();
    const Program& fin = progs[v ? 2 : 0];
    Init& it = init[v];
    // active leaves the correction program (run first; none where the class is absent)
    // and the final program write
    std::vector<char> cor_pool(J, 0), cor_in(J, 0), fin_pool(J, 0), fin_in(J, 0);
    bool fin_p = false;
    if (!v) {
      const Program& cor = progs[1];
      for (int64_t ii = 0; ii < cor.ni; ++ii) {
        const Instr& row = cor.code[ii];
        if (!row.active) continue;
        if (row.op == OP_POOL) cor_pool[row.a] = 1;
        if (row.op == OP_STAGE_IN) cor_in[row.a] = 1;
      }
    }
    it.assign_rows.assign(std::max<int64_t>(fin.ni, 1), 0);
    for (int64_t ii = 0; ii < fin.ni; ++ii) {
      const Instr& row = fin.code[ii];
      if (!row.active) continue;
      if (row.op == OP_P && J == 0) {  // no stages: the final program runs first
        it.assign_rows[ii] = 1;
        fin_p = true;
      } else if (row.op == OP_POOL && !cor_pool[row.a]) {
        it.assign_rows[ii] = 1;
        fin_pool[row.a] = 1;
      } else if (row.op == OP_STAGE_IN && !cor_in[row.a]) {
        it.assign_rows[ii] = 1;
        fin_in[row.a] = 1;
      }
    }
    it.zero_dp = !fin_p;
    it.zero_aout.assign(J, 1), it.zero_ain.assign(J, 1), it.ain_by_final = fin_in;
    it.part_assign.assign(J, {});
    for (int64_t j = 0; j < J; ++j) it.part_assign[j].assign(leaves[j].size(), 0);
    for (int64_t j = 0; j < J; ++j) {
      const StageInfo& st = stage(j);
      if (!st.active) continue;
      it.zero_ain[j] = !fin_in[j];
      bool used_v = true;  // (stages a plane of an absent class skips write nothing)
      for (int64_t k : pool_users[j]) used_v = used_v && (!v || stage(k).absent_in);
      if (fin_pool[j]) {
        it.zero_aout[j] = 0;
      } else if (pool_users[j].size() == 1 && !cor_pool[j] && used_v) {
        const int64_t k = pool_users[j][0];  // the only writer: its partial
        for (size_t q = 0; q < leaves[k].size(); ++q)
          if (leaves[k][q].first == OP_POOL && leaves[k][q].second == j)
            it.part_assign[k][q] = 1;
        it.zero_aout[j] = 0;
      }
    }
  }
};

}  // namespace
