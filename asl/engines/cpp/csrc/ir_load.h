// IR loading: the engine's copy of an asl.engines.ir.FusedProgram (load_program).
// Part of the C++ engine's translation unit (kernels.cpp includes it; unnamed
// namespace: one copy per extension module).
#pragma once

#include <torch/extension.h>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "ir_ops.h"

namespace {

// A register program (asl/engines/ir.py: Program) is a list of instructions, register i
// computed by instruction i; "active" instructions depend on P, "needed" ones are run by
// the backward pass (the values its reverse sweep reads). Leaves: P, G (label == class),
// M (valid mask), X (extra map a), CONST (consts[a]), POOL (pooled map of stage a),
// STAGE_IN (input map of stage a). Operations: CURVE (curve b of register a), MUL, ADD,
// SUB, ONE_MINUS. The opcodes come from ir_ops.h, generated from asl/engines/ir.py.

struct Instr {
  int64_t op = 0, a = -1, b = -1;
  bool active = false, needed = false;
};

struct Program {
  std::vector<Instr> code;    // register i = code[i]
  int64_t ni = 0;
  std::vector<int64_t> outs;  // register of each output, -1: constant out_const
  std::vector<double> out_const;
};

// A pool stage (asl/engines/ir.py: Stage).
struct StageInfo {
  bool is_min = false;    // Pool.MIN (else MAX)
  int64_t r = 1;          // radius
  bool direct_p = false;  // the input map is P
  bool active = false;    // the input map depends on P
  bool keep_in = false, keep_pool = false;        // kept by the forward pass
  bool absent_in = false, absent_pool = false;    // needed where the class is absent
  int64_t mask_op = -1, mask_a = -1;  // sparse pool: the leaf of its only factor (-1: none)
  double absent = std::numeric_limits<double>::quiet_NaN();  // constant input if absent
};

constexpr int64_t kFirstStageProgram = 3;  // programs: final, correction, absent final

// A fused program (asl/engines/ir.py: FusedProgram), read once by load_program.
struct FusedIR {
  int64_t mode = MODE_STATS;
  bool correction = false;
  std::vector<Program> progs;  // final, correction (empty if none), absent final, stages
  std::vector<StageInfo> stages;
  std::vector<double> consts;
  int64_t num_curves = 0, num_extras = 0, num_outputs = 0;
};

Program read_program(const py::handle& prog, int64_t n_consts, int64_t n_curves,
                     int64_t n_x, int64_t n_stages) {
  Program p;
  for (const py::handle ins : prog.attr("instrs")) {
    Instr in;
    in.op = ins.attr("op").cast<int64_t>();
    in.a = ins.attr("a").cast<int64_t>();
    in.b = ins.attr("b").cast<int64_t>();
    in.active = ins.attr("active").cast<bool>();
    in.needed = ins.attr("needed").cast<bool>();
    const int64_t i = p.ni++, a = in.a, b = in.b;
    bool ok = true;
    switch (in.op) {
      case OP_P: case OP_G: case OP_M: break;
      case OP_X: ok = a >= 0 && a < n_x; break;
      case OP_CONST: ok = a >= 0 && a < n_consts; break;
      case OP_POOL: case OP_STAGE_IN: ok = a >= 0 && a < n_stages; break;
      case OP_CURVE: ok = a >= 0 && a < i && b >= 0 && b < n_curves; break;
      case OP_ONE_MINUS: ok = a >= 0 && a < i; break;
      case OP_MUL: case OP_ADD: case OP_SUB: ok = a >= 0 && a < i && b >= 0 && b < i; break;
      default: ok = false;
    }
    TORCH_CHECK(ok, "load_program: malformed instruction ", i);
    p.code.push_back(in);
  }
  for (const py::handle out : prog.attr("outputs")) {
    const int64_t r = out.attr("reg").cast<int64_t>();
    TORCH_CHECK(r >= -1 && r < p.ni, "load_program: bad output register ", r);
    p.outs.push_back(r);
    p.out_const.push_back(out.attr("value").cast<double>());
  }
  return p;
}

// Reads a FusedProgram (validated in Python) into the engine's own structures.
std::shared_ptr<FusedIR> load_program(const py::object& fp) {
  auto ir = std::make_shared<FusedIR>();
  ir->mode = fp.attr("mode").cast<int64_t>();
  TORCH_CHECK(ir->mode == MODE_STATS || ir->mode == MODE_MAP, "load_program: mode");
  for (const py::handle c : fp.attr("consts")) ir->consts.push_back(c.cast<double>());
  ir->num_curves = fp.attr("num_curves").cast<int64_t>();
  ir->num_extras = static_cast<int64_t>(py::len(fp.attr("extras")));
  const int64_t nk = static_cast<int64_t>(ir->consts.size()), nc = ir->num_curves,
                nx = ir->num_extras;
  const py::list stages = fp.attr("stages");
  const int64_t J = static_cast<int64_t>(stages.size());
  ir->progs.push_back(read_program(fp.attr("final"), nk, nc, nx, J));
  const int64_t S = static_cast<int64_t>(ir->progs[0].outs.size());
  ir->num_outputs = S;
  const py::object cor = fp.attr("correction");
  ir->correction = !cor.is_none();
  if (ir->correction) {
    ir->progs.push_back(read_program(cor, nk, nc, nx, J));
  } else {
    Program zero;
    zero.outs.assign(S, -1), zero.out_const.assign(S, 0.0);
    ir->progs.push_back(zero);
  }
  ir->progs.push_back(read_program(fp.attr("absent_final"), nk, nc, nx, J));
  TORCH_CHECK(ir->progs[1].outs.size() == static_cast<size_t>(S) &&
                  ir->progs[2].outs.size() == static_cast<size_t>(S),
              "load_program: the programs' outputs differ in number");
  TORCH_CHECK(ir->mode == MODE_STATS || S == 1, "load_program: map mode has one output");
  for (int64_t j = 0; j < J; ++j) {
    const py::handle st = stages[j];
    StageInfo si;
    si.is_min = st.attr("pool").cast<int64_t>() == POOL_MIN;
    si.r = st.attr("radius").cast<int64_t>();
    si.direct_p = st.attr("direct_p").cast<bool>();
    si.active = st.attr("active").cast<bool>();
    si.keep_in = st.attr("keep_input").cast<bool>();
    si.keep_pool = st.attr("keep_pool").cast<bool>();
    si.absent_in = st.attr("absent_input").cast<bool>();
    si.absent_pool = st.attr("absent_pool").cast<bool>();
    const py::object av = st.attr("absent_value");
    if (!av.is_none()) si.absent = av.cast<double>();
    const py::object mask = st.attr("mask");
    if (!mask.is_none()) {
      si.mask_op = mask.attr("op").cast<int64_t>();
      si.mask_a = mask.attr("index").cast<int64_t>();
    }
    const bool mask_ok = si.mask_op == -1 || si.mask_op == OP_M ||
                         (si.mask_op == OP_X && si.mask_a >= 0 && si.mask_a < nx) ||
                         ((si.mask_op == OP_POOL || si.mask_op == OP_STAGE_IN) &&
                          si.mask_a >= 0 && si.mask_a < j);
    TORCH_CHECK(si.r >= 0 && (!si.direct_p || si.active) && mask_ok,
                "load_program: bad stage ", j);
    ir->stages.push_back(si);
    ir->progs.push_back(read_program(st.attr("input"), nk, nc, nx, j));
    TORCH_CHECK(ir->progs.back().outs.size() == 1, "load_program: a stage program has one output");
  }
  return ir;
}

}  // namespace
