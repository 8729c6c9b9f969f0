"""The identity ``g(x) = x``: the naive relaxation, and what a plain operation uses."""
from __future__ import annotations

from typing import List, Optional

import torch

from .base import Curve, piece_table, register_curve

__all__ = ['IdentityCurve']


@register_curve
class IdentityCurve(Curve):
    """``g(x) = x``: the naive relaxation, and what a plain operation uses."""

    name = 'identity'
    default_pieces = 1

    @classmethod
    def num_raw(cls, num_pieces: int) -> int:
        return 0

    @classmethod
    def num_coords(cls, num_pieces: int) -> int:
        return 0

    @classmethod
    def pieces_from_coords(cls, n: int) -> Optional[int]:
        return 1 if n == 0 else None

    @classmethod
    def identity_raw(cls, num_pieces: int) -> List[float]:
        return []

    @classmethod
    def from_theta(cls, theta, num_pieces: int = 1) -> 'IdentityCurve':
        return cls()

    @classmethod
    def from_points(cls, points, num_pieces: Optional[int] = None) -> 'IdentityCurve':
        return cls()

    def coordinates(self) -> List[float]:
        return []

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 piece coefficients (the fused kernels' curve format)."""
        return piece_table(torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]],
                                         dtype=torch.float64))

    def __call__(self, x):
        return x

    def reference(self, x):
        return x.double()

    def describe(self):
        return 'identity'
