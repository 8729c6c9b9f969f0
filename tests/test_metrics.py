"""Surrogate vs exact metric: truth table, hand-computed tables, semantics."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asl import BUILTIN_FORMULAS, ExactMetrics, Surrogate
from asl.engines.reference import prepare_targets

from conftest import blob_labels

METRICS = list(BUILTIN_FORMULAS)


def onehot_logits(pred, c, scale=200.0):
    """Logits whose float32 softmax is exactly one-hot."""
    return torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).float() * scale


def exact(metric, pred, label, c, **kw):
    em = ExactMetrics([metric], c, **kw)
    em.update(pred, label)
    return em.compute()[metric]


@settings(max_examples=12, deadline=None)
@given(metric=st.sampled_from(METRICS), seed=st.integers(0, 10**6),
       param=st.sampled_from(['bezier', 'linear']), pieces=st.integers(1, 3),
       extreme=st.sampled_from([None, 0.0, 1.0]), drop_bg=st.booleans(),
       tol=st.integers(0, 3))
def test_truth_table_any_parameters(metric, seed, param, pieces, extreme, drop_bg, tol):
    """On binary predictions the surrogate equals the exact metric for any curves."""
    c = 4
    label = blob_labels(2, c, 24, 24, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    pred = blob_labels(2, c, 24, 24, seed=seed + 7, ignore_frac=0, all_classes=False)
    flip = torch.rand(pred.shape, generator=g) < 0.1
    pred[flip] = torch.randint(0, c, (int(flip.sum()), ), generator=g)
    s0 = Surrogate(metric, parameterization=param, num_pieces=pieces, tol=tol, drop_bg=drop_bg)
    raw = torch.rand(s0.num_params(raw=True), generator=g)
    if extreme is not None:
        raw[::2] = extreme
    s = Surrogate(metric, raw_theta=raw.tolist(), parameterization=param, num_pieces=pieces,
                  tol=tol, drop_bg=drop_bg)
    value = s(onehot_logits(pred, c), label).item()
    ref = exact(metric, pred, label, c, tol=tol, drop_bg=drop_bg)
    assert value == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize('metric', METRICS)
def test_truth_table_published_parameters(metric):
    c = 5
    label = blob_labels(3, c, 32, 32, seed=3)
    pred = blob_labels(3, c, 32, 32, seed=4, ignore_frac=0, all_classes=False)
    s = Surrogate(metric, theta='paper')
    ref = exact(metric, pred, label, c, tol=s.compiled.tol, drop_bg=s.compiled.drop_bg)
    assert s(onehot_logits(pred, c), label).item() == pytest.approx(ref, abs=1e-6)


def square_case():
    """8x8: class 1 is the square rows/cols 2..5, class 0 elsewhere; the prediction
    misses the square's corner pixel (2, 2)."""
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[0, 2:6, 2:6] = 1
    pred = label.clone()
    pred[0, 2, 2] = 0
    return pred, label


def test_hand_computed_one_pixel_off():
    pred, label = square_case()
    iou0, iou1 = 48 / 49, 15 / 16
    expected = {
        'mIoU': (iou0 + iou1) / 2,
        'FWIoU': 48 / 64 * iou0 + 16 / 64 * iou1,
        'mAcc': (1 + 15 / 16) / 2,
        'gAcc': 63 / 64,
        'BIoU': (iou0 + iou1) / 2,  # tol=5 covers the whole 8x8 image
    }
    for metric, value in expected.items():
        assert exact(metric, pred, label, 2) == pytest.approx(value, abs=1e-12), metric
    # BF1 with tol=0: class 1's boundary loses (2, 2) and gains (3, 3): 11 of 12 match;
    # class 0's boundary ring (20 px) swaps (1, 1) for (2, 2): 19 of 20 match.
    assert exact('BF1', pred, label, 2, tol=0) == pytest.approx((19 / 20 + 11 / 12) / 2)
    assert exact('BF1', pred, label, 2, tol=1) == pytest.approx(1.0)
    # with drop_bg the BF1 mean skips class 0
    assert exact('BF1', pred, label, 2, tol=0, drop_bg=True) == pytest.approx(11 / 12)


@pytest.mark.parametrize('metric', METRICS)
def test_hand_computed_perfect_and_disjoint(metric):
    _, label = square_case()
    assert exact(metric, label, label, 2) == pytest.approx(1.0)
    swapped = 1 - label
    if metric == 'BF1':
        # the swapped boundaries sit one pixel apart: matched with tol >= 1 only
        assert exact(metric, swapped, label, 2, tol=0) == pytest.approx(0.0)
        assert exact(metric, swapped, label, 2, tol=1) == pytest.approx(1.0)
    else:
        assert exact(metric, swapped, label, 2) == pytest.approx(0.0)


def test_biou_band_restricts_to_boundaries():
    label = torch.zeros(1, 20, 20, dtype=torch.long)
    label[0, 2:6, 2:6] = 1
    pred = label.clone()
    pred[0, 15:, 15:] = 1  # far from every boundary: outside the band with tol=1
    assert exact('BIoU', pred, label, 2, tol=1) == pytest.approx(1.0)
    assert exact('mIoU', pred, label, 2) < 1.0
    pred2 = label.clone()
    pred2[0, 6, 2:6] = 1  # next to the boundary: inside the band
    assert exact('BIoU', pred2, label, 2, tol=1) < 1.0


def test_ignored_pixels_count_nowhere_in_region_metrics():
    pred, label = square_case()
    label2 = label.clone()
    label2[0, 2, 2] = 255  # the only wrong pixel is now ignored
    for metric in ('mIoU', 'FWIoU', 'mAcc', 'gAcc'):
        assert exact(metric, pred, label2, 2) == pytest.approx(1.0), metric
    g, m = prepare_targets(label2, 2)
    assert g[0, :, 2, 2].sum() == 0 and m[0, 0, 2, 2] == 0


def test_sums_pool_over_the_set_not_per_batch():
    pred, label = square_case()
    em = ExactMetrics(['mIoU'], 2)
    em.update(pred, label)
    em.update(label, label)
    both = ExactMetrics(['mIoU'], 2)
    both.update(torch.cat([pred, label]), torch.cat([label, label]))
    assert em.compute()['mIoU'] == pytest.approx(both.compute()['mIoU'], abs=1e-15)
    assert em.compute()['mIoU'] == pytest.approx((96 / 97 + 31 / 32) / 2)


def test_absent_class_semantics():
    """Exact: a class absent from both skipped (nan-mean). Surrogate: counted as 0."""
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = label.clone()
    assert exact('mIoU', pred, label, 3) == pytest.approx(1.0)
    s = Surrogate('mIoU')
    assert s(onehot_logits(pred, 3), label).item() == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize('bad,match', [
    (torch.tensor([[[0, 7]]]), r'label values \[7\] are neither a class index in \[0, 3\)'),
    (torch.tensor([[[0, -1]]]), r'label values \[-1\]'),
])
def test_bad_labels(bad, match):
    with pytest.raises(ValueError, match=match):
        Surrogate('mIoU')(torch.zeros(1, 3, 1, 2), bad)
    with pytest.raises(ValueError, match=match):
        exact('mIoU', torch.zeros_like(bad), bad, 3)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r'label shape \(1, 4, 4\) does not match logits shape '
                       r'\(1, 3, 5, 5\)'):
        Surrogate('mIoU')(torch.zeros(1, 3, 5, 5), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='prediction shape'):
        exact('mIoU', torch.zeros(1, 4, 5, dtype=torch.long), torch.zeros(1, 4, 4,
                                                                           dtype=torch.long), 3)


def test_surrogate_gradients_finite_at_saturation():
    label = blob_labels(2, 3, 16, 16, seed=5)
    for metric in METRICS:
        logits = (onehot_logits(label.clamp(max=2), 3, scale=60.0)).requires_grad_()
        v = Surrogate(metric, theta='paper')(logits, label)
        (grad, ) = torch.autograd.grad(v, logits)
        assert torch.isfinite(grad).all(), metric


@pytest.mark.parametrize('formula', METRICS + [
    'mIoU + BIoU', 'mean_c(sum(M * (P ^ G)) / sum(G))', 'total(sum(~P & (0.5 * G))) / 100',
    'x = P | G; mean_c(sum(x * G) / sum(x))'
])
def test_fused_kernel_matches_pytorch_path(formula):
    """The C++ engine gives the same value and gradient as the PyTorch path (float64
    logits: both compute in float32)."""
    pytest.importorskip('asl.engines.cpp._C')
    from asl.engines.dispatch import surrogate_value as engine_value
    from asl.engines.reference import surrogate_value
    label = blob_labels(2, 5, 24, 24, seed=9)
    s0 = Surrogate(formula)
    g = torch.Generator().manual_seed(2)
    s = Surrogate(formula, raw_theta=torch.rand(s0.num_params(raw=True), generator=g).tolist())
    logits = (torch.randn(2, 5, 24, 24, generator=g) * 3).double()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    va = engine_value(s.compiled, s.curves, a, label, backend='cpp')
    vb = surrogate_value(s.compiled, s.curves, b, label)
    va.backward()
    vb.backward()
    assert va.item() == pytest.approx(vb.item(), abs=1e-7)
    assert torch.allclose(a.grad, b.grad, atol=1e-9, rtol=1e-5)
