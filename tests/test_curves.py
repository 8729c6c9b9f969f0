import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asl import curves as C
from asl.curves import (BezierCurve, IdentityCurve, LinearCurve, build_curves, identity_theta,
                        theta_to_points)
from asl.loss.presets import PAPER_PRESETS

EDGE = st.sampled_from([0.0, 1.0, 1e-9, 1 - 1e-9, 0.5])
UNIT = st.one_of(EDGE, st.floats(0.0, 1.0, allow_nan=False))
GRID = torch.cat([torch.linspace(0, 1, 513), torch.tensor([1e-12, 1e-7, 1e-5, 1 - 1e-7])])


def check_curve(curve, x=GRID):
    x = x.clone().float().requires_grad_()
    y = curve(x)
    (grad, ) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert y.min() >= 0 and y.max() <= 1
    assert (grad >= 0).all()
    order = torch.argsort(x.detach())
    ys = y.detach()[order]
    assert (ys[1:] >= ys[:-1] - 1e-7).all(), 'not monotone'
    ends = curve(torch.tensor([0.0, 1.0]))
    assert ends[0].item() == 0.0 and ends[1].item() == 1.0


@settings(max_examples=150, deadline=None)
@given(k=st.integers(1, 3), data=st.data())
def test_bezier_from_theta_properties(k, data):
    theta = data.draw(st.lists(UNIT, min_size=2 * (2 * k - 1), max_size=2 * (2 * k - 1)))
    check_curve(BezierCurve.from_theta(theta, k))


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 3), data=st.data())
def test_bezier_from_sorted_points_properties(k, data):
    n = 2 * k - 1
    xs = sorted(data.draw(st.lists(UNIT, min_size=n, max_size=n)))
    ys = sorted(data.draw(st.lists(UNIT, min_size=n, max_size=n)))
    check_curve(BezierCurve([v for p in zip(xs, ys) for v in p]))


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 8), data=st.data())
def test_linear_properties(k, data):
    theta = data.draw(st.lists(st.floats(-30, 30), min_size=k, max_size=k))
    check_curve(LinearCurve.from_theta(theta, k))


def test_coincident_x_coordinates_stay_finite():
    # vertical tangent at 0 and a zero-width piece at 1
    for pts in ([0, 0.9, 0, 0.95, 0.5, 0.97], [1, 0.2, 1, 0.3, 1, 0.4], [0, 0, 0, 0, 0, 0],
                [1, 1, 1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]):
        check_curve(BezierCurve(pts))


def test_identity_theta_is_identity():
    for k in (1, 2, 3):
        theta = identity_theta('bezier', k)
        curve = BezierCurve.from_theta(theta, k)
        assert torch.allclose(curve(GRID), GRID, atol=1e-6)
    assert torch.allclose(theta_to_points([0.25, 0.25, 1 / 3, 1 / 3, 0.5, 0.5], 2),
                          torch.tensor([[0.25, 0.25], [0.5, 0.5], [0.75, 0.75]],
                                       dtype=torch.float64))
    lin = LinearCurve.from_theta(identity_theta('linear', 5), 5)
    assert torch.allclose(lin(GRID), GRID, atol=1e-6)


@pytest.mark.parametrize('metric', list(PAPER_PRESETS))
def test_published_curves_match_float64_definition(metric):
    preset = PAPER_PRESETS[metric]
    curves = build_curves('bezier', len(preset['theta']) // (2 * (2 * preset['num_pieces'] - 1)),
                          preset['num_pieces'], theta=preset['theta'])
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(1500, generator=g)**4, torch.tensor([0, 1e-7, 1e-6, 1e-4, 1.0])])
    for curve in curves:
        err = (curve(x.float()).double() - curve.reference(x.double())).abs().max().item()
        assert err < 1e-5, (metric, err)


def test_gradient_matches_finite_difference_in_float64():
    curve = BezierCurve(PAPER_PRESETS['mIoU']['theta'][:6])
    x = torch.tensor([1e-4, 0.01, 0.2, 0.33, 0.34, 0.5, 0.7, 0.9], dtype=torch.float64,
                     requires_grad=True)
    (grad, ) = torch.autograd.grad(curve(x).sum(), x)
    h = 1e-7
    fd = (curve.reference(x.detach() + h) - curve.reference(x.detach() - h)) / (2 * h)
    assert torch.allclose(grad, fd, rtol=1e-4, atol=1e-3)


def test_float32_evaluation_matches_float64_definition():
    """The float32 evaluation (the arithmetic every engine uses) of steep published curves
    and a 3-piece curve, near 0 and 1 included."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(20000, generator=g)**3, torch.tensor([0.0, 1e-6, 1.0])])
    for theta, k in ((PAPER_PRESETS['mIoU']['theta'][6:], 2), (PAPER_PRESETS['BF1']['theta'][:2],
                                                                 1), ([0.1] * 10, 3)):
        curve = BezierCurve(theta) if k != 3 else BezierCurve.from_theta(theta, 3)
        y, d = curve._evaluate(x, need_grad=True)
        ref = curve.reference(x[::50])
        assert (y[::50].double() - ref).abs().max() <= 1e-5
        assert torch.isfinite(d).all() and (d >= 0).all()


def test_identity_curve():
    x = torch.rand(10)
    assert IdentityCurve()(x) is x


@pytest.mark.parametrize('kwargs,match', [
    (dict(theta=[0.1] * 5), r'has 5 numbers, expected 12 = 2 curve\(s\) x 6'),
    (dict(raw_theta=[0.1] * 11 + [1.5]), r'raw_theta values must lie in \(0, 1\), got \[1.5\]'),
    (dict(theta=[0.5, 0.5, 0.4, 0.6, 0.9, 0.9] * 2), r'non-decreasing in x'),
    (dict(theta=[0.5, 0.5, 0.6, 0.4, 0.9, 0.9] * 2), r'non-decreasing in y'),
    (dict(theta=[0.5, 1.5, 0.6, 0.7, 0.9, 0.9] * 2), r'must lie in \[0, 1\]'),
    (dict(theta='abc'), r'must be a list of numbers'),
])
def test_bad_theta_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_curves('bezier', 2, 2, **kwargs)


def test_unknown_parameterization():
    with pytest.raises(ValueError, match="unknown parameterization 'spline'"):
        build_curves('spline', 1, 2)
    with pytest.raises(ValueError, match='num_pieces must be a positive integer, got 0'):
        build_curves('bezier', 1, 0, theta=[])
