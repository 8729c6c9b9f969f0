"""The official re-training configs' loss dicts built verbatim (no num_pieces: inferred
from theta, as the official loss did), and the last bad inputs: empty batches, formulas
nested too deeply."""
import pytest
import torch

from asl import Surrogate, compile_formula
from asl.formula import FormulaError
from asl.formula.parser import MAX_DEPTH

# The numbers of the official re-training configs, typed in test_presets.py.
from test_presets import BF1, FWIOU, MACC, MIOU  # noqa: E402

OFFICIAL = {
    'mIoU': dict(theta=MIOU, drop_bg=False),
    'FWIoU': dict(theta=FWIOU, drop_bg=False),
    'mAcc': dict(theta=MACC, drop_bg=False),
    'gAcc': dict(theta=MACC, drop_bg=False),
    'BIoU': dict(theta=FWIOU, drop_bg=True),
    'BF1': dict(theta=BF1, drop_bg=False),
}


@pytest.mark.parametrize('metric', list(OFFICIAL))
def test_official_loss_dicts_build_verbatim(metric):
    pytest.importorskip('mmseg')
    import asl.mmseg  # noqa: F401  (registers AutoSegLoss)
    from mmseg.registry import MODELS
    cfg = dict(type='AutoSegLoss', target_metric=metric, num_class=21,
               theta=OFFICIAL[metric]['theta'], parameterization='bezier',
               drop_bg=OFFICIAL[metric]['drop_bg'], tol=5, loss_weight=1.0)
    loss = MODELS.build(cfg)
    paper = Surrogate(metric, theta='paper')
    s = loss.surrogate
    assert s.num_pieces == paper.num_pieces == (1 if metric == 'BF1' else 2)
    assert s.coordinates() == paper.coordinates()
    g = torch.Generator().manual_seed(0)
    logits, label = torch.randn(2, 21, 16, 16, generator=g), torch.randint(0, 21, (2, 16, 16),
                                                                         generator=g)
    assert loss(logits, label).item() == pytest.approx(1 - paper(logits, label).item(),
                                                       abs=1e-7)


def test_inconsistent_theta_length_is_still_named():
    with pytest.raises(ValueError, match=r'theta has 10 numbers, expected 12 = 2 curve\(s\) x 6'):
        Surrogate('mIoU', theta=MIOU[:10])
    with pytest.raises(ValueError, match=r'theta has 7 numbers, expected'):
        Surrogate('BF1', theta=BF1[:7])


@pytest.mark.parametrize('shape', [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0)])
@pytest.mark.parametrize('backend', ['torch', 'auto'])
def test_empty_batches_are_refused_with_their_shape(shape, backend):
    s = Surrogate('BF1', backend=backend)
    label = torch.zeros(shape[:1] + shape[2:], dtype=torch.long)
    with pytest.raises(ValueError, match=rf'logits of shape \({shape[0]}, 3, {shape[2]}, '
                                         rf'{shape[3]}\) are empty'):
        s(torch.randn(shape), label)


@pytest.mark.parametrize('formula', [
    '(' * 80 + 'mean_c(sum(P))' + ')' * 80,           # parentheses
    '~' * 120 + 'P',                                   # unary operators
    ' + '.join(['mean_c(sum(P))'] * 300),              # a long chain of binary operators
    'mean_c(' * 60 + 'sum(P)' + ')' * 60,              # calls
])
def test_formulas_nested_too_deeply_name_the_limit(formula):
    with pytest.raises(FormulaError, match=f'nested deeper than the limit of {MAX_DEPTH} levels'):
        compile_formula(formula)


def test_deep_but_allowed_formula_works():
    f = 'mean_c(' + '(' * 40 + 'sum(M * (P & G))' + ')' * 40 + ' / sum(G))'
    assert compile_formula(f).num_curves == 1  # (the AND's P)
