"""Piecewise quadratic Bezier curves (the paper's default family).

``K`` pieces through ``P_0 = (0, 0)``, free ``P_1 .. P_{2K-1}`` and ``P_{2K} = (1, 1)``;
piece ``k`` uses ``(P_{2k}, P_{2k+1}, P_{2k+2})``. Search parameters ``theta`` in (0, 1)
map to the free points coordinate-wise and cumulatively per axis
(``c_1 = theta_1``, ``c_j = c_{j-1} + theta_j (1 - c_{j-1})``), so the points increase and
stay in [0, 1]: monotone by construction.

The evaluation is a custom autograd function: one pass computes the value and the input
derivative ``dy/dx = y'(t) / x'(t)``, the quadratic ``x(t) = x`` is solved with the
cancellation-free form ``t = 2d / (b + sqrt(b^2 + 4ad))``, and the backward pass is a
single multiplication. Where a curve has a vertical tangent (coincident x coordinates),
the derivative is capped at ``1 / MIN_SLOPE_DENOMINATOR`` so that input gradients stay
finite on all of [0, 1].
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .base import MIN_SLOPE_DENOMINATOR, Curve, piece_table, register_curve

__all__ = ['BezierCurve', 'theta_to_points']


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


@register_curve
class BezierCurve(Curve):
    """Piecewise quadratic Bezier curve.

    Args:
        points (Sequence): the ``2K - 1`` free control points as ``(x, y)`` pairs (or a
            flat list ``x_1, y_1, x_2, y_2, ...``), coordinates in [0, 1] and
            non-decreasing per axis.
    """

    name = 'bezier'
    default_pieces = 2

    @classmethod
    def num_raw(cls, num_pieces: int) -> int:
        return 2 * (2 * num_pieces - 1)

    @classmethod
    def num_coords(cls, num_pieces: int) -> int:
        return 2 * (2 * num_pieces - 1)

    @classmethod
    def identity_raw(cls, num_pieces: int) -> List[float]:
        n = 2 * num_pieces - 1
        # c_j = j / (n + 1)  <=>  theta_j = 1 / (n + 2 - j)
        return [v for j in range(1, n + 1) for v in (1.0 / (n + 2 - j), ) * 2]

    def coordinates(self) -> List[float]:
        return self.points.reshape(-1).tolist()

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
        self._coef = piece_table(full)
        self._coef_list = self._coef.tolist()  # Python floats (traceable by torch.compile)

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients (the fused kernels' curve format)."""
        return self._coef

    @classmethod
    def from_theta(cls, theta, num_pieces: int = 2) -> 'BezierCurve':
        bad = [float(v) for v in theta if not (0.0 <= float(v) <= 1.0) or math.isnan(v)]
        if bad:
            raise ValueError(f'raw_theta values must lie in (0, 1), got {bad[:5]}')
        return cls(theta_to_points(theta, num_pieces))

    @classmethod
    def from_points(cls, points, num_pieces: Optional[int] = None) -> 'BezierCurve':
        curve = cls(points)
        return curve._expect_pieces(num_pieces, f'{len(curve.points)} control points')

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
        """Float64 evaluation from the definition: bisection on x(t) in the piece (80
        halvings, every point at once)."""
        x = x.double()
        full = torch.cat([self.points.new_zeros(1, 2), self.points,
                          self.points.new_ones(1, 2)]).double()
        flat = x.reshape(-1)
        starts = full[0:2 * self.num_pieces:2, 0]
        # the last piece whose start is at or below x
        idx = torch.arange(self.num_pieces, device=flat.device)
        k = torch.where(starts[None, :] <= flat[:, None], idx[None, :], 0).amax(1)
        p0, p1, p2 = full[2 * k], full[2 * k + 1], full[2 * k + 2]
        lo, hi = torch.zeros_like(flat), torch.ones_like(flat)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            xm = (1 - mid)**2 * p0[:, 0] + 2 * mid * (1 - mid) * p1[:, 0] + mid**2 * p2[:, 0]
            below = xm < flat
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        t = 0.5 * (lo + hi)
        y = (1 - t)**2 * p0[:, 1] + 2 * t * (1 - t) * p1[:, 1] + t**2 * p2[:, 1]
        y = torch.where(flat <= 0, 0.0, torch.where(flat >= 1, 1.0, y))
        return y.reshape(x.shape)
