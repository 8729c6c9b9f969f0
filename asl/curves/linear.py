"""Piecewise linear curves (the paper, Appendix B).

``K`` segments with x-knots fixed at ``i / K``; the y-increments are ``softmax(theta)``,
so they are positive and sum to 1: monotone and truth-table by construction.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .base import Curve, piece_table, register_curve

__all__ = ['LinearCurve']


@register_curve
class LinearCurve(Curve):
    """Piecewise linear curve with ``K`` segments and x-knots fixed at ``i / K``.

    Args:
        knots (Sequence[float]): the ``K - 1`` interior y values at ``x = i / K``,
            ``i = 1 .. K-1``, in [0, 1] and non-decreasing (``y(0) = 0``, ``y(1) = 1``).
    """

    name = 'linear'
    default_pieces = 5

    @classmethod
    def num_raw(cls, num_pieces: int) -> int:
        return num_pieces

    @classmethod
    def num_coords(cls, num_pieces: int) -> int:
        return num_pieces - 1

    @classmethod
    def identity_raw(cls, num_pieces: int) -> List[float]:
        return [0.5] * num_pieces

    def coordinates(self) -> List[float]:
        return self.knots.reshape(-1).tolist()

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
    def from_points(cls, points, num_pieces: Optional[int] = None) -> 'LinearCurve':
        curve = cls(points)
        return curve._expect_pieces(num_pieces, f'{len(curve.knots)} interior knots')

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients: each segment as a quadratic Bezier piece
        whose middle control point is the segment's midpoint."""
        k = self.num_pieces
        xs = torch.linspace(0, 1, k + 1, dtype=torch.float64)
        ends = torch.stack([xs, self._ys], dim=1)
        full = torch.empty(2 * k + 1, 2, dtype=torch.float64)
        full[0::2] = ends
        full[1::2] = 0.5 * (ends[:-1] + ends[1:])
        return piece_table(full)

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
