"""Monotone curves g: [0, 1] -> [0, 1] with g(0) = 0 and g(1) = 1.

These are the parameterized relaxations of the logical operations in Auto Seg-Loss
(Li et al., "Auto Seg-Loss: Searching Metric Surrogates for Semantic Segmentation",
ICLR 2021). Three families are provided:

* :class:`BezierCurve`: piecewise quadratic Bezier curve with ``K`` pieces (default 2).
  Control points ``P_0 = (0, 0)``, free ``P_1 .. P_{2K-1}``, ``P_{2K} = (1, 1)``.
* :class:`LinearCurve`: piecewise linear curve with ``K`` segments (default 5) whose
  x-knots are fixed at ``i / K``.
* :class:`IdentityCurve`: ``g(x) = x`` (the naive relaxation).

Each curve can be built from search parameters ``theta`` in (0, 1)
(:meth:`from_theta`) or from control-point coordinates (:meth:`from_points`), the
form in which the published parameters are given. The truth table (``g(0) = 0``,
``g(1) = 1``) and monotonicity hold by construction for every parameter value,
extremes included: inputs ``<= 0`` map to 0 and inputs ``>= 1`` map to 1, and the
control points are validated (or produced) to be non-decreasing per axis.

The Bezier evaluation is a custom autograd function: one pass computes the value and
the input derivative ``dy/dx = y'(t) / x'(t)``, the quadratic ``x(t) = x`` is solved
with the cancellation-free form ``t = 2d / (b + sqrt(b^2 + 4ad))``, and the backward
pass is a single multiplication. Where a curve has a vertical tangent (coincident x
coordinates), the derivative is capped at ``1 / MIN_SLOPE_DENOMINATOR`` so that input
gradients stay finite on all of [0, 1].
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

__all__ = [
    'Curve', 'BezierCurve', 'LinearCurve', 'IdentityCurve', 'PARAMETERIZATIONS',
    'build_curves', 'params_per_curve', 'identity_theta', 'theta_to_points',
    'MIN_SLOPE_DENOMINATOR', 'PIECE_COLUMNS'
]

#: Lower bound of x'(t) used in the derivative of a Bezier piece (caps dy/dx at 1e6).
MIN_SLOPE_DENOMINATOR = 1e-6


class Curve:
    """Base class of the monotone curves. Call it on a tensor of values in [0, 1]."""

    #: Name of the parameterization (``'bezier'``, ``'linear'``, ``'identity'``).
    name = 'curve'

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 coefficients of the curve as K quadratic pieces, the form the
        fused engines evaluate: per piece ``x0, b^2, 4a, b, y0, by, ay, 2ay`` with
        ``x(t) = x0 + b t + a t^2`` and ``y(t) = y0 + by t + ay t^2`` (see
        :data:`PIECE_COLUMNS`)."""
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 evaluation straight from the definition (slow; for tests)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class IdentityCurve(Curve):
    """``g(x) = x``: the naive relaxation, and what a plain operation uses."""

    name = 'identity'

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients (the fused kernels' curve format)."""
        return _piece_table(torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]],
                                         dtype=torch.float64))

    def __call__(self, x):
        return x

    def reference(self, x):
        return x.double()

    def describe(self):
        return 'identity'


def _cumulative(theta: torch.Tensor) -> torch.Tensor:
    """``c_1 = theta_1``, ``c_j = c_{j-1} + theta_j * (1 - c_{j-1})`` along the last dim."""
    out = []
    c = torch.zeros_like(theta[..., 0])
    for j in range(theta.shape[-1]):
        c = c + theta[..., j] * (1 - c)
        out.append(c)
    return torch.stack(out, dim=-1)


def theta_to_points(theta: Sequence[float], num_pieces: int) -> torch.Tensor:
    """Map one Bezier curve's raw search parameters to its free control points.

    Args:
        theta (Sequence[float]): ``2 * (2K - 1)`` numbers in [0, 1], laid out as
            ``(x_1, y_1, x_2, y_2, ...)``.
        num_pieces (int): ``K``.

    Returns:
        torch.Tensor: float64 tensor of shape ``(2K - 1, 2)``, non-decreasing per axis.
    """
    t = torch.as_tensor(theta, dtype=torch.float64).reshape(2 * num_pieces - 1, 2)
    return _cumulative(t.t()).t().contiguous()


#: The columns of a piece in :meth:`Curve.bezier_table`.
PIECE_COLUMNS = ('x0', 'b^2', '4a', 'b', 'y0', 'by', 'ay', '2ay')


def _piece_table(full: torch.Tensor) -> torch.Tensor:
    """Coefficients of the quadratic pieces through ``full`` = (P_0, P_1, ..., P_2K):
    per piece ``x0, b^2, 4a, b, y0, by, ay, 2ay`` with ``x(t) = x0 + b t + a t^2`` and
    ``y(t) = y0 + by t + ay t^2``."""
    p0, p1, p2 = full[0:-1:2], full[1::2], full[2::2]
    b = 2 * (p1[:, 0] - p0[:, 0])
    a = p0[:, 0] - 2 * p1[:, 0] + p2[:, 0]
    ay = p0[:, 1] - 2 * p1[:, 1] + p2[:, 1]
    return torch.stack([p0[:, 0], b * b, 4 * a, b, p0[:, 1], 2 * (p1[:, 1] - p0[:, 1]), ay,
                        2 * ay], dim=1).contiguous()


class _BezierFunction(torch.autograd.Function):
    """Value and input gradient of a piecewise quadratic Bezier curve in one pass."""

    @staticmethod
    def forward(ctx, x, curve):
        y, dydx = curve._evaluate(x, need_grad=ctx.needs_input_grad[0])
        if dydx is not None:
            ctx.save_for_backward(dydx)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (dydx, ) = ctx.saved_tensors
        return grad_y * dydx, None


class BezierCurve(Curve):
    """Piecewise quadratic Bezier curve.

    Args:
        points (Sequence): the ``2K - 1`` free control points as ``(x, y)`` pairs (or a
            flat list ``x_1, y_1, x_2, y_2, ...``), coordinates in [0, 1] and
            non-decreasing per axis.
    """

    name = 'bezier'

    def __init__(self, points):
        pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
        if pts.shape[0] % 2 != 1:
            raise ValueError(f'a Bezier curve needs an odd number (2K-1) of free control points, '
                             f'got {pts.shape[0]}: {pts.tolist()}')
        if not torch.isfinite(pts).all() or (pts < 0).any() or (pts > 1).any():
            raise ValueError(f'Bezier control points must lie in [0, 1], got {pts.tolist()}')
        for axis, name in ((0, 'x'), (1, 'y')):
            d = pts[1:, axis] - pts[:-1, axis]
            if (d < 0).any():
                raise ValueError(f'Bezier control points must be non-decreasing in {name}, got '
                                 f'{name} = {pts[:, axis].tolist()}')
        self.points = pts
        self.num_pieces = (pts.shape[0] + 1) // 2
        full = torch.cat([pts.new_zeros(1, 2), pts, pts.new_ones(1, 2)])
        self._coef = _piece_table(full)
        self._coef_list = self._coef.tolist()  # Python floats (traceable by torch.compile)

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients (the fused kernels' curve format)."""
        return self._coef

    @classmethod
    def from_theta(cls, theta, num_pieces: int = 2) -> 'BezierCurve':
        return cls(theta_to_points(theta, num_pieces))

    @classmethod
    def from_points(cls, points) -> 'BezierCurve':
        return cls(points)

    def describe(self):
        pts = ', '.join(f'({x:.4g}, {y:.4g})' for x, y in self.points.tolist())
        return f'bezier K={self.num_pieces}: {pts}'

    def _evaluate(self, x: torch.Tensor, need_grad: bool):
        """Return ``(y, dy/dx or None)`` for ``x`` (values in [0, 1]): plain PyTorch
        operations on any device, the same arithmetic as the engines."""
        coef = self._coef_list
        if self.num_pieces == 1:
            x0, bb, a4, b, y0, by, ay, ay2 = coef[0]
        else:
            # Coefficients of the piece holding x: the last piece whose start is <= x.
            masks = [x >= row[0] for row in coef[1:]]
            cols = []
            for j in range(8):
                col = torch.full_like(x, coef[0][j])
                for k, m in enumerate(masks):
                    col.masked_fill_(m, coef[k + 1][j])
                cols.append(col)
            x0, bb, a4, b, y0, by, ay, ay2 = cols
        d = x - x0
        s = (d * a4).add_(bb).clamp_(min=0).sqrt_()  # sqrt(b^2 + 4 a d) = x'(t)
        t = (d + d).div_(s + b).nan_to_num_(0.0, 0.0, 0.0).clamp_(0.0, 1.0)
        y = (t * ay).add_(by).mul_(t).add_(y0).clamp_(0.0, 1.0)
        y.masked_fill_(x >= 1, 1.0).masked_fill_(x <= 0, 0.0)
        dydx = None
        if need_grad:
            dydx = (t * ay2).add_(by).clamp_(min=0).div_(s.clamp_(min=MIN_SLOPE_DENOMINATOR))
        return y, dydx

    def __call__(self, x):
        if x.requires_grad and torch.is_grad_enabled():
            return _BezierFunction.apply(x, self)
        return self._evaluate(x, need_grad=False)[0]

    def reference(self, x):
        """Float64 evaluation from the definition: bisection on x(t) in the piece."""
        x = x.double()
        full = torch.cat([self.points.new_zeros(1, 2), self.points, self.points.new_ones(1, 2)])
        out = torch.empty_like(x)
        flat_x, flat_o = x.reshape(-1), out.reshape(-1)
        for i, xv in enumerate(flat_x.tolist()):
            if xv <= 0:
                flat_o[i] = 0.0
                continue
            if xv >= 1:
                flat_o[i] = 1.0
                continue
            k = max(j for j in range(self.num_pieces) if full[2 * j, 0] <= xv)
            p0, p1, p2 = full[2 * k], full[2 * k + 1], full[2 * k + 2]
            lo, hi = 0.0, 1.0
            for _ in range(80):
                mid = 0.5 * (lo + hi)
                xm = (1 - mid)**2 * p0[0] + 2 * mid * (1 - mid) * p1[0] + mid**2 * p2[0]
                if xm < xv:
                    lo = mid
                else:
                    hi = mid
            t = 0.5 * (lo + hi)
            flat_o[i] = (1 - t)**2 * p0[1] + 2 * t * (1 - t) * p1[1] + t**2 * p2[1]
        return out


class LinearCurve(Curve):
    """Piecewise linear curve with ``K`` segments and x-knots fixed at ``i / K``.

    Args:
        knots (Sequence[float]): the ``K - 1`` interior y values at ``x = i / K``,
            ``i = 1 .. K-1``, in [0, 1] and non-decreasing (``y(0) = 0``, ``y(1) = 1``).
    """

    name = 'linear'

    def __init__(self, knots):
        ys = torch.as_tensor(knots, dtype=torch.float64).reshape(-1)
        if not torch.isfinite(ys).all() or (ys < 0).any() or (ys > 1).any():
            raise ValueError(f'linear curve knots must lie in [0, 1], got {ys.tolist()}')
        if (ys[1:] < ys[:-1]).any():
            raise ValueError(f'linear curve knots must be non-decreasing, got {ys.tolist()}')
        self.knots = ys
        self.num_pieces = ys.numel() + 1
        self._ys = torch.cat([ys.new_zeros(1), ys, ys.new_ones(1)])

    @classmethod
    def from_theta(cls, theta, num_pieces: int = 5) -> 'LinearCurve':
        """``K`` raw parameters; the y-increments are ``softmax(theta)``."""
        inc = torch.as_tensor(theta, dtype=torch.float64).reshape(num_pieces).softmax(0)
        return cls(inc.cumsum(0)[:-1].clamp(0, 1))

    @classmethod
    def from_points(cls, points) -> 'LinearCurve':
        return cls(points)

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients: each segment as a quadratic Bezier piece
        whose middle control point is the segment's midpoint."""
        k = self.num_pieces
        xs = torch.linspace(0, 1, k + 1, dtype=torch.float64)
        ends = torch.stack([xs, self._ys], dim=1)
        full = torch.empty(2 * k + 1, 2, dtype=torch.float64)
        full[0::2] = ends
        full[1::2] = 0.5 * (ends[:-1] + ends[1:])
        return _piece_table(full)

    def describe(self):
        return f'linear K={self.num_pieces}: y = ' + ', '.join(f'{v:.4g}'
                                                             for v in self._ys.tolist())

    def __call__(self, x):
        k = self.num_pieces
        ys = self._ys.to(device=x.device, dtype=x.dtype)
        xk = x.clamp(0, 1) * k
        seg = xk.detach().floor().clamp_(max=k - 1).long()
        y0, y1 = ys[seg], ys[seg + 1]
        return torch.lerp(y0, y1, xk - seg)

    def reference(self, x):
        x = x.double().clamp(0, 1)
        xs = torch.linspace(0, 1, self.num_pieces + 1, dtype=torch.float64)
        return torch.from_numpy(__import__('numpy').interp(x.numpy(), xs.numpy(),
                                                           self._ys.numpy()))


#: name -> (curve class, raw parameters per curve(K), coordinates per curve(K), default K)
PARAMETERIZATIONS = {
    'bezier': (BezierCurve, lambda k: 2 * (2 * k - 1), lambda k: 2 * (2 * k - 1), 2),
    'linear': (LinearCurve, lambda k: k, lambda k: k - 1, 5),
    'identity': (IdentityCurve, lambda k: 0, lambda k: 0, 1),
}


def params_per_curve(parameterization: str, num_pieces: int, raw: bool) -> int:
    """Numbers per curve: raw search parameters (``raw=True``) or coordinates."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f'unknown parameterization {parameterization!r}; choose from '
                         f'{", ".join(PARAMETERIZATIONS)}')
    if isinstance(num_pieces, bool) or not isinstance(num_pieces, int) or num_pieces < 1:
        raise ValueError(f'num_pieces must be a positive integer, got {num_pieces!r}')
    _, raw_n, pts_n, _ = PARAMETERIZATIONS[parameterization]
    return raw_n(num_pieces) if raw else pts_n(num_pieces)


def identity_theta(parameterization: str, num_pieces: int) -> List[float]:
    """Raw parameters of one curve that give the identity (the search's starting mean)."""
    if parameterization == 'bezier':
        n = 2 * num_pieces - 1
        # c_j = j / (n + 1)  <=>  theta_j = 1 / (n + 2 - j)
        return [v for j in range(1, n + 1) for v in (1.0 / (n + 2 - j), ) * 2]
    if parameterization == 'linear':
        return [0.5] * num_pieces
    return []


def build_curves(parameterization: str, num_curves: int, num_pieces: int, theta=None,
                 raw_theta=None, layout: str = '') -> List[Curve]:
    """Build ``num_curves`` curves from coordinates (``theta``) or raw parameters.

    Args:
        parameterization (str): ``'bezier'``, ``'linear'`` or ``'identity'``.
        num_curves (int): number of curves (slots) of the compiled formula.
        num_pieces (int): ``K``.
        theta (Sequence[float], optional): control-point coordinates, all curves
            concatenated (Bezier: ``x, y`` of each free point; linear: the interior
            knot values).
        raw_theta (Sequence[float], optional): search parameters in (0, 1).
        layout (str): text appended to length errors to explain the expected layout.

    Returns:
        list[Curve]: one curve per slot. With neither ``theta`` nor ``raw_theta``,
        identity curves (the naive relaxation).

    Raises:
        ValueError: wrong length, values outside [0, 1], or non-increasing points.
    """
    if theta is not None and raw_theta is not None:
        raise ValueError('give either theta (control-point coordinates) or raw_theta '
                         '(search parameters), not both')
    if parameterization == 'identity' or (theta is None and raw_theta is None):
        params_per_curve(parameterization, num_pieces, raw=False)  # validates the names
        return [IdentityCurve() for _ in range(num_curves)]
    cls = PARAMETERIZATIONS[parameterization][0]
    raw = raw_theta is not None
    values = raw_theta if raw else theta
    try:
        flat = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f'{"raw_theta" if raw else "theta"} must be a list of numbers, got '
                         f'{values!r}') from None
    per = params_per_curve(parameterization, num_pieces, raw)
    what = 'raw_theta' if raw else 'theta'
    if len(flat) != per * num_curves:
        raise ValueError(f'{what} has {len(flat)} numbers, expected {per * num_curves} = '
                         f'{num_curves} curve(s) x {per} ({parameterization}, '
                         f'num_pieces={num_pieces}){layout}')
    if raw and parameterization == 'bezier':
        bad = [v for v in flat if not (0.0 <= v <= 1.0) or math.isnan(v)]
        if bad:
            raise ValueError(f'raw_theta values must lie in (0, 1), got {bad[:5]}')
    curves = []
    for i in range(num_curves):
        chunk = flat[i * per:(i + 1) * per]
        try:
            curves.append(cls.from_theta(chunk, num_pieces) if raw else cls.from_points(chunk))
        except ValueError as e:
            raise ValueError(f'{what} of curve {i}: {e}') from None
    return curves
