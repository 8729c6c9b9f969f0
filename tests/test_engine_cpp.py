"""The C++ engine (asl.engines.cpp) against the plain PyTorch reference (asl.engines.reference),
which uses no C++ at all.

Values and gradients of whole surrogates and of the kernel's parts: the one-hot ``G``
specialisation (dense pass plus labelled-pixel correction), classes absent from an
image, pool stages (P-dependent and not, nested, shared), the gradient routing of pools
when window values tie, the class-maximum map mode, float64 inputs, and calls without
gradient.
"""
import pytest
import torch

from asl import Surrogate
from asl.engines.cpp.extension import ext
from asl.engines.dispatch import surrogate_value as engine_value
from asl.engines import cpp
from asl.engines.ir import Op
from asl.engines.lower import fused_program
from asl.engines.reference import eval_maps, evaluate_stats, prepare_targets
from asl.engines.reference import surrogate_value as reference_value

from conftest import blob_labels

pytestmark = pytest.mark.skipif(ext is None, reason='C++ engine not built')

FORMULAS = [
    'mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1', 'mIoU + BIoU',
    'mean_c(sum(dilate(P & G, 2) * M) / sum(G))',
    'mean_c(sum(erode(P) | dilate(G, 1)) / sum(G + 1))',
    'mean_c(sum(max_pool(P, 5) * min_pool(G, 3) + dilate(erode(P))) / sum(G + 1))',
    'mean_c(sum(dilate(boundary(P) & ~G, 2) + erode(1 - G) * P) / sum(G + 1))',
    'b = max_c(dilate(G, 1)); mean_c(sum(b * (P & G)) / sum(b * (P | G)))',
    'x = P ^ G; mean_c(sum(x * dilate(x, 1)) / sum(G + 1))',
    'mean_c(sum(min_pool(G, 5) * P + erode(G) * (1 - P) + dilate(G, 2) * P) / sum(G + 1))',
]


def case(kind, c=6, seed=9):
    """Logits and labels: every class present ('all'), classes absent from an image or
    from the batch ('absent'), or probabilities with many exact ties ('ties')."""
    label = blob_labels(2, c, 24, 20, seed=seed, all_classes=(kind == 'all'))
    if kind != 'all':
        label[label == 3] = 1  # class 3 absent from both images
        label[0][label[0] == 4] = 2  # class 4 absent from the first one
    g = torch.Generator().manual_seed(seed + 1)
    logits = torch.randn(2, c, 24, 20, generator=g) * 3
    if kind == 'ties':
        logits = (logits * 2).round() / 2
    return logits, label


def surrogate_value(compiled, curves, logits, label, ignore_index=255, fused=True):
    """The C++ engine (fused) or the reference."""
    if fused:
        return engine_value(compiled, curves, logits, label, ignore_index, backend='cpp')
    return reference_value(compiled, curves, logits, label, ignore_index)


def surrogate(formula, seed=2):
    s0 = Surrogate(formula)
    g = torch.Generator().manual_seed(seed)
    return Surrogate(formula, raw_theta=torch.rand(s0.num_params(raw=True), generator=g).tolist())


def _compare(s, logits, label):
    """The engine's value and gradient against the reference's."""
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    va = surrogate_value(s.compiled, s.curves, a, label, fused=True)
    vb = surrogate_value(s.compiled, s.curves, b, label, fused=False)
    va.backward()
    vb.backward()
    # float32 sums of some 10^4 terms each, in another order (torch's vectorised sums
    # differ between processors): a few 1e-6 relative
    assert va.item() == pytest.approx(vb.item(), abs=2e-7, rel=5e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-9, rtol=1e-5)


@pytest.mark.parametrize('kind', ['all', 'absent', 'ties'])
@pytest.mark.parametrize('formula', FORMULAS)
def test_fused_matches_pytorch(formula, kind):
    _compare(surrogate(formula), *case(kind))


@pytest.mark.parametrize('formula', FORMULAS)
def test_all_statistics_run_in_the_kernel(formula):
    """Only class maxima of P-dependent maps and non-per-class sums stay on PyTorch."""
    compiled = surrogate(formula).compiled
    fp = fused_program(compiled)
    assert list(fp.stats) == list(range(len(compiled.stats)))
    assert all(x.program is not None for x in fp.extras)


def test_g_specialisation_evaluates_one_curve_per_element():
    """mIoU's dense (G = 0) program keeps the OR curve only; the AND curve runs on the
    labelled pixels."""
    fp = fused_program(Surrogate('mIoU').compiled)
    assert [ins.b for ins in fp.final.instrs if ins.op is Op.CURVE] == [1]
    assert sorted(ins.b for ins in fp.correction.instrs if ins.op is Op.CURVE) == [0, 1]


@pytest.mark.parametrize('formula', ['mIoU', 'BF1', 'mean_c(sum(dilate(P & G, 2)) / sum(G))'])
def test_float64_sums_and_gradients(formula):
    """The engine in float64 against evaluate_stats in float64."""
    s = surrogate(formula)
    logits, label = case('absent')
    p = logits.double().softmax(1)
    pa, pb = p.clone().requires_grad_(), p.clone().requires_grad_()
    fp = fused_program(s.compiled)
    sums = cpp.stat_sums(fp, s.curves, pa, label, 255, [], from_logits=False)
    g, m = prepare_targets(label, p.shape[1], dtype=torch.float64)
    ref = torch.stack([evaluate_stats(s.compiled, pb, g, m, s.curves)[i] for i in fp.stats])
    assert sums.dtype == torch.float64
    assert torch.allclose(sums, ref, atol=1e-10, rtol=1e-12)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (sums * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.allclose(pa.grad, pb.grad, atol=1e-12, rtol=1e-9)


def test_class_max_map_mode():
    """BIoU's band (a class maximum of a P-independent pooled map) from the engine."""
    s = Surrogate('BIoU', theta='paper')
    fp = fused_program(s.compiled)
    logits, label = case('absent')
    p = logits.softmax(1)
    x = fp.extras[0]
    band = cpp.class_max(x.program, x.skip_bg, s.curves, label, p, 255)
    g, m = prepare_targets(label, p.shape[1])
    ref = eval_maps(s.compiled, {'P': p, 'G': g, 'M': m}, s.curves)[x.node.index]
    assert band.shape == ref.shape
    assert torch.equal(band, ref)


def test_without_gradient():
    """A forward pass without gradient keeps nothing and gives the same value."""
    s = surrogate('BF1')
    logits, label = case('all')
    with torch.no_grad():
        v = surrogate_value(s.compiled, s.curves, logits, label, fused=True)
    ref = surrogate_value(s.compiled, s.curves, logits, label, fused=False)
    assert v.item() == pytest.approx(ref.item(), abs=2e-7)


def test_ignore_index_and_single_class():
    """Pixels labelled ignore_index only, and one class (C = 1)."""
    s = surrogate('mIoU + BF1')
    logits = torch.randn(1, 1, 9, 7)
    label = torch.zeros(1, 9, 7, dtype=torch.long)
    label[0, :3] = 255
    for lab in (label, torch.full_like(label, 255)):
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        va = surrogate_value(s.compiled, s.curves, a, lab, fused=True)
        vb = surrogate_value(s.compiled, s.curves, b, lab, fused=False)
        va.backward()
        vb.backward()
        assert va.item() == pytest.approx(vb.item(), abs=1e-6)
        assert torch.allclose(a.grad, b.grad, atol=1e-9)


@pytest.mark.parametrize('formula', [
    'BF1', 'mean_c(sum(dilate(P, 3) * erode(P)) / sum(G + 1))',
    'mean_c(sum(dilate(boundary(P), 2) & G) / sum(G + 1))'
])
def test_wide_planes(formula):
    """Rows longer than the kernels' chunks (and not a multiple of them); dense and sparse
    gradient routing of the pools."""
    label = blob_labels(1, 4, 37, 150, seed=4)
    logits = torch.randn(1, 4, 37, 150, generator=torch.Generator().manual_seed(5)) * 3
    _compare(surrogate(formula), logits, label)


@pytest.mark.parametrize('formula', [
    'BF1', 'mean_c(sum(dilate(P, 3) * boundary(G)) + sum(dilate(boundary(G), 4) * P) / '
    'sum(G + 1))'
])
def test_sparse_ground_truth_maps(formula):
    """Small objects: the ground-truth boundaries are sparse, so their dilation is spread
    from the nonzero pixels and the pools used only against them are computed there
    only."""
    label = torch.zeros(2, 96, 128, dtype=torch.long)
    for i, (y, x) in enumerate([(10, 20), (50, 90), (70, 10), (30, 60)]):
        label[i % 2, y:y + 7, x:x + 6] = 1 + i % 3
    label[0, 80:83, 100:110] = 255
    logits = torch.randn(2, 4, 96, 128, generator=torch.Generator().manual_seed(6)) * 3
    _compare(surrogate(formula), logits, label)


def test_backward_twice():
    """The backward pass writes dL/dP over a map kept by the forward pass; a second
    backward (retain_graph) recomputes it and gives the same gradient."""
    s = surrogate('BF1')
    logits, label = case('all')
    x = logits.clone().requires_grad_()
    v = surrogate_value(s.compiled, s.curves, x, label, fused=True)
    (g1, ) = torch.autograd.grad(v, x, retain_graph=True)
    (g2, ) = torch.autograd.grad(v, x)
    y = logits.clone().requires_grad_()
    surrogate_value(s.compiled, s.curves, y, label, fused=False).backward()
    assert torch.equal(g1, g2)
    assert torch.allclose(g1, y.grad, atol=1e-9, rtol=1e-5)


@pytest.mark.parametrize('formula', ['mIoU', 'FWIoU', 'BIoU', 'BF1'])
def test_linear_curves_with_random_parameters(formula):
    """Piecewise linear curves (each segment a Bezier piece in the engine's table)."""
    s0 = Surrogate(formula, parameterization='linear')
    g = torch.Generator().manual_seed(7)
    raw = (torch.randn(s0.num_params(raw=True), generator=g) * 2).tolist()
    s = Surrogate(formula, parameterization='linear', raw_theta=raw)
    logits, label = case('absent')
    _compare(s, logits, label)
