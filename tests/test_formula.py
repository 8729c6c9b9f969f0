import pytest
import torch

from asl import BUILTIN_FORMULAS, ExactMetrics, Surrogate, compile_formula
from asl.formula import FormulaError, parse, tokenize

EXPECTED_CURVES = {'mIoU': 2, 'FWIoU': 2, 'mAcc': 1, 'gAcc': 1, 'BIoU': 2, 'BF1': 4}


@pytest.mark.parametrize('name', list(BUILTIN_FORMULAS))
def test_builtin_layouts(name):
    compiled = compile_formula(name)
    assert compiled.num_curves == EXPECTED_CURVES[name]
    s = Surrogate(name, theta='paper')
    assert s.num_params() == {'mIoU': 12, 'FWIoU': 12, 'mAcc': 6, 'gAcc': 6, 'BIoU': 12,
                              'BF1': 8}[name]


def test_layout_text_names_operations():
    assert [s.op for s in compile_formula('mIoU').slots] == ['AND', 'OR']
    bf1 = compile_formula('BF1').slots
    assert [(s.op, s.operand_text) for s in bf1] == [('XOR/AND', 'P'), ('XOR/AND', 'erode(P)'),
                                                     ('XOR/OR', 'P'), ('XOR/OR', 'erode(P)')]
    text = Surrogate('mIoU').layout()
    assert 'theta[0:6] -> curve 0: AND operand 1 (P)' in text
    assert 'theta[6:12] -> curve 1: OR operand 1 (P)' in text


def test_names_are_case_insensitive_and_sums_get_own_curves():
    assert compile_formula('miou').name == 'mIoU'
    both = compile_formula('mIoU + BIoU')
    assert both.num_curves == 4
    weighted = compile_formula('0.5 * mIoU + 2 * BF1')
    assert weighted.num_curves == 6


def test_every_occurrence_gets_its_own_curve_but_bindings_are_shared():
    twice = compile_formula('mean_c(sum(P & G) / sum(P & G))')
    assert twice.num_curves == 2
    shared = compile_formula('x = P & G; mean_c(sum(x) / sum(x))')
    assert shared.num_curves == 1


def test_plain_marks_operations_without_curves():
    assert compile_formula('mean_c(sum(plain(P & G)) / sum(P | G))').num_curves == 1
    assert compile_formula('mean_c(sum(plain(P & P)) / sum(G))').num_curves == 0
    assert compile_formula('mean_c(sum(P & P) / sum(G))').num_curves == 2


def test_binary_operands_need_no_curve():
    assert compile_formula('mean_c(sum(G & erode(G)) / sum(G | M))').num_curves == 0
    assert compile_formula('mean_c(sum(~P & G) / sum(G))').num_curves == 1
    assert compile_formula('total(sum(xor(P, G))) / total(sum(G))').num_curves == 2


def test_user_formula_equals_builtin():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    label = torch.randint(0, 3, (2, 16, 16))
    mine = Surrogate('mean_c(sum(M * and(P, G)) / sum(M * or(P, G)))')
    ref = Surrogate('mIoU')
    assert torch.allclose(mine(logits, label), ref(logits, label))


@pytest.mark.parametrize('text,message,pos', [
    ('mean_c(sum(P & G) / sum(P | G)', "expected ',' or ')'", 30),
    ('mean_c(sum(P & G) $ 2)', "unexpected character '$'", 18),
    ('mean_c(sum(P & ) / 2)', 'expected a number, a name or "("', 15),
    ('', 'empty formula', 0),
    ('x = sum(G) mean_c(x)', 'expected \';\'', 11),
    ('mean_c(sum(P & Q))', "unknown name 'Q'", 15),
    ('mean_c(sums(P))', "unknown function 'sums'", 7),
    ('sum(P & G)', 'must reduce to one number', 0),
    ('P & G', 'must reduce its maps with sum', 2),
    ('mean_c(P & G)', 'mean_c() needs statistics', 9),
    ('total(sum(G) * P)', 'mixes a per-pixel map with a statistic', 13),
    ('mean_c(sum(dilate(G, 1.5)))', 'dilate() radius must be a non-negative integer', 21),
    ('mean_c(sum(min_pool(G, 4)))', 'kernel size must be an odd positive integer', 23),
    ('mean_c(sum(G), skip_bg=2)', 'skip_bg must be true or false', 23),
    ('mean_c(sum(G), foo=1)', "unknown keyword argument 'foo'", 19),
    ('P = G; total(sum(P))', "cannot bind the reserved name 'P'", 0),
])
def test_malformed_formulas_name_the_position(text, message, pos):
    with pytest.raises(FormulaError) as info:
        compile_formula(text) if text else parse(text)
    assert message in str(info.value)
    assert info.value.pos == pos
    assert f'position {pos}' in str(info.value)


def test_unknown_metric_name():
    with pytest.raises(FormulaError, match="unknown name 'mIoUU'"):
        compile_formula('mIoUU')
    with pytest.raises(ValueError, match='target metric must be'):
        compile_formula('')


def test_no_eval_of_python():
    with pytest.raises(FormulaError):
        compile_formula('__import__("os").system("echo hi")')
    kinds = [t[0] for t in tokenize('a = 1.5e-3; mean_c(sum(G) >= 2) # comment')]
    assert kinds[-1] == 'end' and 'ws' not in kinds


def test_paper_theta_only_for_builtins():
    with pytest.raises(ValueError, match="theta='paper' exists only for the built-in metrics"):
        Surrogate('mIoU + BIoU', theta='paper')
    with pytest.raises(ValueError, match="searched with num_pieces=2, got num_pieces=3"):
        Surrogate('mIoU', theta='paper', num_pieces=3)
    with pytest.raises(ValueError, match="theta must be a list of numbers or 'paper'"):
        Surrogate('mIoU', theta='published')


def test_exact_metric_formula_and_dict_specs():
    em = ExactMetrics(['mIoU', dict(name='acc', formula='gAcc'),
                       'total(sum(M * (P & G)))'], num_classes=2)
    pred = torch.tensor([[0, 1], [1, 1]])
    label = torch.tensor([[0, 1], [0, 255]])
    em.update(pred, label)
    out = em.compute()
    assert out['acc'] == pytest.approx(2 / 3)
    assert out['total(sum(M * (P & G)))'] == 2
    assert out['mIoU'] == pytest.approx((1 / 2 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="metric 'mIoU' is listed twice"):
        ExactMetrics(['mIoU', 'miou'], 2)
