// The C++ engine of asl (CPU tensors): evaluates an asl.engines.ir.FusedProgram, the
// surrogate's per-class sums and their gradient, plane by plane, and the softmax with its
// backward. This file is the translation unit (kernels_avx2.cpp compiles it again with
// AVX2/FMA): the parts below are headers of this folder, included in this order (each
// includes the parts it uses), then the entry points and the Python bindings:
//   ir_load.h  the engine's copy of a FusedProgram (load_program)
//   curves.h   piecewise quadratic Bezier curves from their piece coefficient tables
//   vec.h      the block size of register programs, small vector loops
//   pools.h    square max / min pools of a plane and their backward pass
//   engine.h   per-call plan (Engine), register machine, plane context, per-thread memory
//   sweeps.h   register programs run forward and in reverse mode on blocks of pixels
//   stages.h   pooled maps of a plane computed on demand, row by row
//   labels.h   labels, valid mask and the pixels of each (image, class)
//   passes.h   one call (Call) and its passes: class maximum, forward, backward
//   softmax.h  softmax over dim 1 and its backward
//
// Fused per-class statistics (asl/engines/lower.py builds the program). One (image, class)
// plane at a time:
//   * stages: the input map of every pool is computed for the plane by a register
//     program (or is P itself), then pooled (square window, separable: rows, then
//     columns; border ignored);
//   * the final program (G = 0) runs on every pixel, the correction program
//     ((G = 1, M = 1) - (G = 0)) on the pixels labelled with the plane's class, and
//     their outputs are summed per plane;
//   * the forward pass keeps the stage maps the backward pass reads and the partial
//     derivatives of the active stage programs (run in reverse mode seeded with 1);
//   * backward: the final and correction programs are run in reverse mode seeded with
//     dL/dsum, the adjoints of pooled maps go to the first maximum of each window (along
//     W, then H), like asl.engines.reference.max_pool's, and through the kept partial derivatives;
//     dL/dP is written per plane.
#include <torch/extension.h>
#include <algorithm>
#include <memory>
#include <vector>

#include "ir_ops.h"
#include "ir_load.h"
#include "curves.h"
#include "vec.h"
#include "pools.h"
#include "engine.h"
#include "sweeps.h"
#include "stages.h"
#include "labels.h"
#include "passes.h"
#include "softmax.h"

namespace {

// The inputs of an entry point, checked, contiguous and of the engine's types: p
// (N, C, H, W), label (N, H, W) int64, the curves (num_curves, Kmax, 8) float64 with their
// numbers of pieces (int64), the extra maps (N, 1 or C, H, W) of p's dtype.
struct Inputs {
  torch::Tensor p, label, curves, curve_k;
  std::vector<torch::Tensor> xs;
  std::vector<bool> x_per_class;  // (N, C, H, W) rather than (N, 1, H, W)
};

Inputs check_inputs(const char* name, const FusedIR& ir, const torch::Tensor& curves,
                    const torch::Tensor& curve_k, const torch::Tensor& p,
                    const torch::Tensor& label, const std::vector<torch::Tensor>& xs) {
  TORCH_CHECK(p.device().is_cpu() && p.dim() == 4, name, ": p must be (N, C, H, W) on CPU");
  TORCH_CHECK(label.dim() == 3 && label.size(0) == p.size(0) && label.size(1) == p.size(2) &&
                  label.size(2) == p.size(3),
              name, ": label must be (N, H, W) matching p");
  Inputs in;
  in.p = p.contiguous();
  in.label = label.to(torch::kLong).contiguous();
  in.curves = curves.to(torch::kDouble).contiguous();
  in.curve_k = curve_k.to(torch::kLong).contiguous();
  TORCH_CHECK(in.curves.dim() == 3 && in.curves.size(2) == 8 &&
                  in.curve_k.numel() == in.curves.size(0),
              name, ": curves must be (num_curves, Kmax, 8)");
  const int64_t N = p.size(0), C = p.size(1), H = p.size(2), W = p.size(3);
  TORCH_CHECK(H * W < (int64_t(1) << 31), name, ": plane too large");
  TORCH_CHECK(static_cast<int64_t>(xs.size()) == ir.num_extras, name, ": the program reads ",
              ir.num_extras, " extra maps, got ", xs.size());
  for (auto& x : xs) {
    TORCH_CHECK(x.dim() == 4 && x.size(0) == N && x.size(2) == H && x.size(3) == W &&
                    (x.size(1) == 1 || x.size(1) == C),
                name, ": extra maps must be (N, 1 or C, H, W)");
    in.xs.push_back(x.to(in.p.scalar_type()).contiguous());
    in.x_per_class.push_back(x.size(1) == C && C > 1);
  }
  return in;
}

// The call of an entry point on checked inputs: the engine of the program with the curves,
// the labels read (a label neither a class index nor ignore_index raises "invalid label
// values") and the inputs' pointers.
template <typename T>
void prepare_call(Call<T>& call, const char* name, const FusedIR& ir, const Inputs& in,
                  int64_t ignore_index, double min_slope) {
  const int64_t N = in.p.size(0), C = in.p.size(1), H = in.p.size(2), W = in.p.size(3);
  const int64_t HW = H * W;
  build_engine(call.en, name, ir, in.curves, in.curve_k, min_slope, H, W);
  call.N = N, call.C = C, call.H = H, call.W = W, call.HW = HW;
  call.J = call.en.num_stages(), call.S = ir.num_outputs, call.correction = ir.correction;
  for (auto& pr : call.en.progs) call.regs = std::max(call.regs, pr.ni);
  call.li = std::make_unique<LabelInfo<T>>(in.label.data_ptr<int64_t>(), N, C, HW, ignore_index);
  TORCH_CHECK(!call.li->invalid, name, ": invalid label values");
  for (int64_t j = 0; j < call.J; ++j)
    if (call.en.g_erode[j]) call.li->add_uniform(call.en.stage(j).r, N, H, W);
  call.pp = in.p.data_ptr<T>();
  for (auto& x : in.xs) call.xp.push_back(x.data_ptr<T>());
  call.x_per_class = in.x_per_class;
}

// Forward pass of a stats-mode program: the per-plane sums (N * C, S) float64 and, with
// save, the maps the backward pass needs (one (N * C, H * W) tensor each).
std::vector<torch::Tensor> fused_forward(const FusedIR& ir, torch::Tensor curves,
                                         torch::Tensor curve_k, torch::Tensor p,
                                         torch::Tensor label, std::vector<torch::Tensor> extras,
                                         int64_t ignore_index, double min_slope, bool save) {
  const char* name = "fused_forward";
  TORCH_CHECK(ir.mode == MODE_STATS, name, ": a map-mode program (use fused_map)");
  const Inputs in = check_inputs(name, ir, curves, curve_k, p, label, extras);
  std::vector<torch::Tensor> results;
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "fused_forward", [&] {
    Call<scalar_t> call;
    prepare_call(call, name, ir, in, ignore_index, min_slope);
    results = forward_sums(call, save, in.p.options());
  });
  return results;
}

// Backward pass of a stats-mode program: dL/dP (N, C, H, W) from grad, the (S, C) gradient
// of the sums, and saved, the maps fused_forward kept (save=true) on the same inputs;
// written into saved[out_slot] if out_slot >= 0 (its contents are then gone), else into a
// new tensor.
torch::Tensor fused_backward(const FusedIR& ir, torch::Tensor curves, torch::Tensor curve_k,
                             torch::Tensor p, torch::Tensor label,
                             std::vector<torch::Tensor> extras, int64_t ignore_index,
                             double min_slope, torch::Tensor grad,
                             std::vector<torch::Tensor> saved, int64_t out_slot) {
  const char* name = "fused_backward";
  TORCH_CHECK(ir.mode == MODE_STATS, name, ": a map-mode program has no gradient");
  const Inputs in = check_inputs(name, ir, curves, curve_k, p, label, extras);
  TORCH_CHECK(grad.defined(), name, ": grad must be (S, C)");
  const torch::Tensor gs = grad.to(torch::kDouble).contiguous();
  TORCH_CHECK(gs.numel() == ir.num_outputs * in.p.size(1), name, ": grad must be (S, C)");
  torch::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "fused_backward", [&] {
    Call<scalar_t> call;
    prepare_call(call, name, ir, in, ignore_index, min_slope);
    result = backward_dp(call, gs.data_ptr<double>(), saved, out_slot, in.p);
  });
  return result;
}

// Map mode: the class maximum of a map-mode program's map over the classes [c_lo, C),
// (N, 1, H, W). p (N, C, H, W) gives the shape and the dtype; the program does not read P
// and has no extra maps (no gradient: min_slope is not used).
torch::Tensor fused_map(const FusedIR& ir, torch::Tensor curves, torch::Tensor curve_k,
                        torch::Tensor p, torch::Tensor label, int64_t ignore_index, int64_t c_lo) {
  const char* name = "fused_map";
  TORCH_CHECK(ir.mode == MODE_MAP, name, ": a stats-mode program (use fused_forward)");
  const Inputs in = check_inputs(name, ir, curves, curve_k, p, label, {});
  torch::Tensor result;
  AT_DISPATCH_FLOATING_TYPES(in.p.scalar_type(), "fused_map", [&] {
    Call<scalar_t> call;
    prepare_call(call, name, ir, in, ignore_index, 0.0);
    result = class_max_map(call, c_lo, in.p.options());
  });
  return result;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_forward", &softmax_forward, "Softmax over dim 1 (N, C, H, W)", py::arg("x"));
  m.def("softmax_backward_", &softmax_backward_, "In-place softmax backward over dim 1",
        py::arg("p"), py::arg("g"));
  py::class_<FusedIR, std::shared_ptr<FusedIR>>(m, "FusedIR",
                                                "A fused program read by load_program");
  m.def("load_program", &load_program, "Read an asl.engines.ir.FusedProgram", py::arg("fp"));
  m.def("opcodes", []() {
    return std::vector<int64_t>{OP_P, OP_G, OP_M, OP_X, OP_CONST, OP_CURVE, OP_MUL, OP_ADD,
                                OP_SUB, OP_ONE_MINUS, OP_POOL, OP_STAGE_IN};
  }, "The opcodes the engine was built with (checked against asl.engines.ir.Op)");
  m.def("fused_forward", &fused_forward,
        "Per-plane sums (N * C, S) float64 of a stats-mode program and, with save, the maps "
        "fused_backward needs",
        py::arg("program"), py::arg("curves"), py::arg("curve_k"), py::arg("p"),
        py::arg("label"), py::arg("extras"), py::arg("ignore_index"), py::arg("min_slope"),
        py::arg("save") = false);
  m.def("fused_backward", &fused_backward,
        "dL/dP (N, C, H, W) of a stats-mode program from the (S, C) gradient of its sums and "
        "the maps fused_forward kept (into saved[out_slot] if out_slot >= 0)",
        py::arg("program"), py::arg("curves"), py::arg("curve_k"), py::arg("p"),
        py::arg("label"), py::arg("extras"), py::arg("ignore_index"), py::arg("min_slope"),
        py::arg("grad"), py::arg("saved"), py::arg("out_slot") = -1);
  m.def("fused_map", &fused_map,
        "The (N, 1, H, W) class maximum of a map-mode program's map over the classes [c_lo, C)",
        py::arg("program"), py::arg("curves"), py::arg("curve_k"), py::arg("p"),
        py::arg("label"), py::arg("ignore_index"), py::arg("c_lo") = 0);
}
