"""The compiled differentiable surrogate of a metric (plain PyTorch, no MMSeg)."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from ..curves import Curve, build_curves, curve_family, params_per_curve
from ..engines import dispatch as _backend
from ..formula.compiler import CompiledMetric, compile_formula
from .presets import paper_preset

__all__ = ['Surrogate']


class Surrogate:
    """A metric formula compiled into a differentiable surrogate with parameterized curves.

    Args:
        target_metric (str): built-in metric name or formula. Default: ``'mIoU'``.
        theta (list[float] | str, optional): control-point coordinates of all curves
            (the form of the published parameters), or ``'paper'`` for the published
            parameters of a built-in metric. Default: identity curves.
        raw_theta (list[float], optional): search parameters in (0, 1) instead of
            coordinates (what the search samples).
        parameterization (str): ``'bezier'``, ``'linear'`` or ``'identity'``.
            Default: ``'bezier'``.
        num_pieces (int, optional): pieces per curve. Default: inferred from the length of
            ``theta`` when it is given (as the official loss did; the official re-training
            configs never set it), else the family's default (Bezier 2, linear 5), or the
            preset's with ``theta='paper'``.
        tol (int, optional): boundary tolerance in pixels. Default: 5.
        drop_bg (bool, optional): the metric's ``drop_bg`` option. Default: False, or
            the preset's with ``theta='paper'``.
        backend (str): the engine: ``'auto'`` (Triton on CUDA tensors, C++ on CPU
            tensors, else plain PyTorch; ``$ASL_BACKEND`` can force one), ``'torch'``,
            ``'cpp'`` or ``'triton'`` (see :mod:`asl.engines.dispatch`). Default: ``'auto'``.
    """

    def __init__(self, target_metric: str = 'mIoU', theta: Union[Sequence[float], str,
                                                                  None] = None,
                 raw_theta: Optional[Sequence[float]] = None, parameterization: str = 'bezier',
                 num_pieces: Optional[int] = None, tol: Optional[int] = None,
                 drop_bg: Optional[bool] = None, backend: str = 'auto'):
        self.backend = _backend.requested_backend(backend)
        _backend.probe()
        family = curve_family(parameterization)  # raises for an unknown name
        if isinstance(theta, str):
            if theta != 'paper':
                raise ValueError(f"theta must be a list of numbers or 'paper', got {theta!r}")
            preset = paper_preset(target_metric)
            for key, given in (('parameterization', parameterization), ('num_pieces', num_pieces),
                               ('tol', tol), ('drop_bg', drop_bg)):
                if given is not None and key != 'parameterization' and given != preset[key]:
                    raise ValueError(f"theta='paper' for {target_metric} was searched with "
                                     f"{key}={preset[key]!r}, got {key}={given!r}")
            if parameterization != preset['parameterization']:
                raise ValueError(f"theta='paper' is a {preset['parameterization']} curve, got "
                                 f'parameterization={parameterization!r}')
            theta, num_pieces = preset['theta'], preset['num_pieces']
            tol, drop_bg = preset['tol'], preset['drop_bg']
        self.compiled: CompiledMetric = compile_formula(
            target_metric, tol=5 if tol is None else tol,
            drop_bg=False if drop_bg is None else drop_bg)
        if num_pieces is None:
            num_pieces = self._infer_pieces(family, theta) or family.default_pieces
        self.parameterization = parameterization
        self.num_pieces = num_pieces
        params_per_curve(parameterization, num_pieces, raw=True)  # validates num_pieces
        self.curves: List[Curve] = build_curves(parameterization, self.compiled.num_curves,
                                                num_pieces, theta=theta, raw_theta=raw_theta,
                                                layout='\n' + self.layout())

    def _infer_pieces(self, family, theta) -> Optional[int]:
        """The pieces per curve that ``theta``'s length implies, or None (no ``theta``, or
        a length that fits no number of pieces: the length check then explains)."""
        if theta is None or isinstance(theta, str) or not self.compiled.num_curves:
            return None
        try:
            n = len(theta)
        except TypeError:
            return None
        if n % self.compiled.num_curves:
            return None
        return family.pieces_from_coords(n // self.compiled.num_curves)

    @property
    def name(self) -> str:
        return self.compiled.name

    def num_params(self, raw: bool = False) -> int:
        """Number of curve parameters (coordinates, or raw search parameters)."""
        return self.compiled.num_curves * params_per_curve(self.parameterization,
                                                           self.num_pieces, raw)

    def layout(self) -> str:
        """Readable layout: which curve belongs to which logical operation."""
        per = params_per_curve(self.parameterization, self.num_pieces, raw=False)
        lines = [f'{self.compiled.name}: {self.compiled.num_curves} curve(s) x {per} '
                 f'number(s) ({self.parameterization}, num_pieces={self.num_pieces})']
        for slot in self.compiled.slots:
            lo = slot.index * per
            lines.append(f'  theta[{lo}:{lo + per}] -> {slot.describe()}')
        return '\n'.join(lines)

    def coordinates(self) -> List[float]:
        """All curves' control-point coordinates, flat, in the layout ``theta=`` takes
        (Bezier: ``x, y`` of each free point; linear: the interior knots). Building a
        surrogate from them gives the same curves."""
        return [v for c in self.curves for v in c.coordinates()]

    def describe_curves(self) -> str:
        """The curves' control points, one line per curve."""
        return '\n'.join(f'  curve {i}: {c.describe()}' for i, c in enumerate(self.curves))

    def __call__(self, logits: torch.Tensor, label: torch.Tensor,
                 ignore_index: int = 255) -> torch.Tensor:
        """Surrogate metric value of a batch: a differentiable scalar (higher is better).

        Args:
            logits: (N, C, H, W), any floating dtype (computed in float32).
            label: (N, H, W) class indices or ``ignore_index``.
            ignore_index: label of ignored pixels. Default: 255.
        """
        return _backend.surrogate_value(self.compiled, self.curves, logits, label,
                                        ignore_index, self.backend)
