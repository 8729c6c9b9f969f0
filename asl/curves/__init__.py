"""Monotone curves g: [0, 1] -> [0, 1] with g(0) = 0 and g(1) = 1.

These are the parameterized relaxations of the logical operations in Auto Seg-Loss
(Li et al., "Auto Seg-Loss: Searching Metric Surrogates for Semantic Segmentation",
ICLR 2021). Each family is one module of this package (a :class:`Curve` subclass
registered in :data:`CURVES`); every module here is imported, so adding a family is
adding one file:

* ``bezier`` (:class:`BezierCurve`): piecewise quadratic Bezier curve, ``K`` pieces
  (default 2);
* ``linear`` (:class:`LinearCurve`): piecewise linear, ``K`` segments (default 5) with
  x-knots fixed at ``i / K``;
* ``identity`` (:class:`IdentityCurve`): ``g(x) = x`` (the naive relaxation).

Each curve can be built from search parameters ``theta`` in (0, 1) (``from_theta``) or
from coordinates (``from_points``), the form in which the published parameters are
given. The truth table (``g(0) = 0``, ``g(1) = 1``) and monotonicity hold by
construction for every parameter value, extremes included: inputs ``<= 0`` map to 0 and
inputs ``>= 1`` map to 1.
"""
import importlib
import pkgutil

from .base import (CURVES, MIN_SLOPE_DENOMINATOR, PIECE_COLUMNS, Curve, build_curves,
                   curve_family, identity_theta, params_per_curve, piece_table,
                   register_curve)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != 'base':
        importlib.import_module(f'{__name__}.{_module.name}')

from .bezier import BezierCurve, theta_to_points  # noqa: E402
from .identity import IdentityCurve  # noqa: E402
from .linear import LinearCurve  # noqa: E402

__all__ = [
    'Curve', 'CURVES', 'register_curve', 'curve_family', 'BezierCurve', 'LinearCurve',
    'IdentityCurve', 'build_curves', 'params_per_curve', 'identity_theta', 'theta_to_points',
    'piece_table', 'MIN_SLOPE_DENOMINATOR', 'PIECE_COLUMNS'
]
