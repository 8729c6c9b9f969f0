"""Curves by registry: a curve family is one class; the surrogate, the search settings and
the engines read it from the registry."""
import pytest
import torch

from asl import Surrogate
from asl.engines.cpp.extension import ext
from asl.engines.dispatch import surrogate_value as engine_value
from asl.curves import CURVES, Curve, curve_family, piece_table, register_curve
from asl.engines.reference import surrogate_value as reference_value
from asl.search.settings import SearchConfigError, parse_search_section

from conftest import blob_labels


class SymmetricCurve(Curve):
    """A one-piece quadratic Bezier curve through (t, 1 - t): one number per curve (what a
    newcomer's family looks like: the class methods and the four instance methods)."""

    name = 'symmetric'
    default_pieces = 1

    def __init__(self, t):
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f'symmetric curve: t must lie in [0, 1], got {t!r}')
        self.t = t
        full = torch.tensor([[0.0, 0.0], [t, 1.0 - t], [1.0, 1.0]], dtype=torch.float64)
        self._table = piece_table(full)
        from asl.curves.bezier import BezierCurve
        self._bezier = BezierCurve([t, 1.0 - t])

    @classmethod
    def num_raw(cls, num_pieces):
        return 1

    @classmethod
    def num_coords(cls, num_pieces):
        return 1

    @classmethod
    def identity_raw(cls, num_pieces):
        return [0.5]

    @classmethod
    def from_theta(cls, theta, num_pieces=1):
        return cls(theta[0])

    @classmethod
    def from_points(cls, points, num_pieces=None):
        return cls(points[0])

    def coordinates(self):
        return [self.t]

    def bezier_table(self):
        return self._table

    def __call__(self, x):
        return self._bezier(x)

    def reference(self, x):
        return self._bezier.reference(x)

    def describe(self):
        return f'symmetric t={self.t:.4g}'


@pytest.fixture
def family():
    register_curve(SymmetricCurve)
    yield SymmetricCurve
    CURVES.pop('symmetric')


def test_a_family_in_one_class(family):
    assert curve_family('symmetric') is family
    s = Surrogate('mIoU', parameterization='symmetric', raw_theta=[0.3, 0.7])
    assert s.num_params(raw=True) == 2 and s.coordinates() == [0.3, 0.7]
    assert Surrogate('mIoU', parameterization='symmetric', theta=[0.3, 0.7]).num_pieces == 1
    assert parse_search_section(dict(parameterization='symmetric')).parameterization == \
        'symmetric'
    label = blob_labels(2, 4, 16, 16, seed=1)
    logits = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    ref = reference_value(s.compiled, s.curves, logits, label)
    if ext is not None:  # the C++ engine evaluates it from its table
        v = engine_value(s.compiled, s.curves, logits, label, backend='cpp')
        assert v.item() == pytest.approx(ref.item(), abs=1e-6)
    assert 'symmetric' in str(s.curves[0].describe())


def test_unknown_families_are_named():
    with pytest.raises(ValueError, match="unknown parameterization 'spline'; choose from "
                                         "bezier, identity, linear"):
        Surrogate('mIoU', parameterization='spline')
    with pytest.raises(SearchConfigError, match="with parameters .*got 'identity'"):
        parse_search_section(dict(parameterization='identity'))
    with pytest.raises(TypeError, match='must subclass Curve'):
        register_curve(int)
