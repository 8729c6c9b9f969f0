"""The typed fused-program IR (asl.engines.ir), its lowering and what the engines accept."""
import dataclasses
import os

import pytest
import torch

from asl import Surrogate, compile_formula
from asl.engines.cpp.extension import ext
from asl.engines import ir
from asl.engines.ir import Op
from asl.engines.lower import fused_program, lower

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpp_header_is_generated_from_the_opcodes():
    with open(os.path.join(ROOT, 'asl', 'engines', 'cpp', 'csrc', 'ir_ops.h')) as f:
        assert f.read() == ir.header(), 'run: python -m asl.engines.ir asl/engines/cpp/csrc/ir_ops.h'


@pytest.mark.skipif(ext is None, reason='C++ engine not built')
def test_built_engine_has_the_same_opcodes():
    assert list(ext.opcodes()) == [int(op) for op in Op]


def test_programs_are_typed_with_named_fields():
    fp = fused_program(compile_formula('BF1'))
    assert fp.mode is ir.Mode.STATS and fp.stats == (0, 1, 2, 3, 4)
    for prog in fp.programs():
        for ins in prog.instrs:
            assert isinstance(ins, ir.Instr) and isinstance(ins.op, Op)
        for out in prog.outputs:
            assert isinstance(out, ir.Output)
    names = {f.name for f in dataclasses.fields(ir.Stage)}
    assert {'pool', 'radius', 'input', 'direct_p', 'active', 'keep_input', 'mask'} <= names
    pools = [(st.pool, st.radius, st.direct_p, st.active) for st in fp.stages]
    # erode(P), erode(G), dilate(bg, 5), dilate(bp, 5)
    assert pools == [(ir.Pool.MIN, 1, True, True), (ir.Pool.MIN, 1, False, False),
                     (ir.Pool.MAX, 5, False, False), (ir.Pool.MAX, 5, False, True)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fp.stages[0].radius = 2


def test_one_hot_g_specialisation():
    """mIoU: the dense program (G = 0) evaluates the OR curve only; the correction
    program, run on the labelled pixels, both."""
    fp = fused_program(compile_formula('mIoU'))
    assert [ins.b for ins in fp.final.instrs if ins.op is Op.CURVE] == [1]
    assert sorted(ins.b for ins in fp.correction.instrs if ins.op is Op.CURVE) == [0, 1]
    assert fp.final.outputs[0] == ir.Output(-1, 0.0)  # AND with G = 0


@pytest.mark.parametrize('formula,fused', [
    ('mIoU', True), ('BIoU', True), ('BF1', True),
    ('mean_c(sum(max_c(P) * G) / sum(G + 1))', False),  # a class max of a P-dependent map
    ('total(sum(M)) / total(sum(G))', False),  # not per class
])
def test_fusion_rule(formula, fused):
    compiled = compile_formula(formula)
    assert [ir.fusable(n) for n in compiled.stats][0] is fused


def test_class_max_in_map_mode_or_pytorch():
    fp = fused_program(compile_formula('BIoU'))
    assert len(fp.extras) == 1 and fp.extras[0].program.mode is ir.Mode.MAP
    nested = fused_program(compile_formula(
        'b = max_c(dilate(G * max_c(G), 1)); mean_c(sum(b * (P & G)) / sum(G + 1))'))
    assert [x.program is None for x in nested.extras] == [True]


def test_validation_names_the_bad_instruction():
    fp = lower(compile_formula('mIoU'))
    bad = dataclasses.replace(fp.final, instrs=fp.final.instrs + (ir.Instr(Op.MUL, 0, 99), ))
    with pytest.raises(ValueError, match='malformed instruction'):
        dataclasses.replace(fp, final=bad).validate()
    with pytest.raises(ValueError, match='constants must be finite'):
        dataclasses.replace(fp, consts=(float('inf'), )).validate()


@pytest.mark.skipif(ext is None, reason='C++ engine not built')
def test_cpp_engine_checks_what_it_reads():
    fp = lower(compile_formula('mIoU'))
    bad = dataclasses.replace(fp.final, instrs=fp.final.instrs + (ir.Instr(Op.CURVE, 0, 7), ))
    with pytest.raises(RuntimeError, match='malformed instruction'):
        ext.load_program(dataclasses.replace(fp, final=bad))


def test_triton_source_has_only_generated_text():
    """The generated kernels hold register names, opcodes' templates and the program's
    constants; a constant that is not a finite number is refused."""
    pytest.importorskip('triton')
    from asl.engines.triton import codegen
    s = Surrogate('x = 0.25 * P; mean_c(sum(x & G) / sum(G + 0.5))')
    fp = fused_program(s.compiled)
    src, _ = codegen.generate(fp, [2] * fp.num_curves, 1e-6)
    assert 'def stats_fwd(' in src and 'def stats_bwd(' in src
    assert '(0.25)' in src and 'x = 0.25' not in src
    with pytest.raises(ValueError, match='finite'):
        codegen.generate(dataclasses.replace(fp, consts=fp.consts + (float('nan'), )), [2], 1e-6)


def test_engine_sums_match_the_reference_through_the_ir():
    """End to end through the lowering: the C++ engine's sums equal the reference's."""
    if ext is None:
        pytest.skip('C++ engine not built')
    from asl.engines.dispatch import surrogate_stats
    from asl.engines.reference import surrogate_stats as reference_stats
    s = Surrogate('BF1', theta='paper')
    label = torch.randint(0, 4, (2, 17, 19), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(2, 4, 17, 19, generator=torch.Generator().manual_seed(1))
    a = surrogate_stats(s.compiled, s.curves, logits, label, backend='cpp')
    b = reference_stats(s.compiled, s.curves, logits, label)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)
