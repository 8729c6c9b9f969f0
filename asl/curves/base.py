"""The base of every curve family, the family registry, and building curves from it.

A curve family is one subclass of :class:`Curve` in its own module of this package,
registered with :func:`register_curve`; the package imports every module in it, so a new
family is one file. Everything else (the surrogate, the search settings, the engines)
reads the families through the registry.
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Optional, Sequence, Type

import torch

__all__ = [
    'Curve', 'CURVES', 'register_curve', 'curve_family', 'params_per_curve', 'identity_theta',
    'build_curves', 'piece_table', 'MIN_SLOPE_DENOMINATOR', 'PIECE_COLUMNS'
]

#: Lower bound of x'(t) used in the derivative of a Bezier piece (caps dy/dx at 1e6).
MIN_SLOPE_DENOMINATOR = 1e-6

#: The columns of a piece in :meth:`Curve.bezier_table`.
PIECE_COLUMNS = ('x0', 'b^2', '4a', 'b', 'y0', 'by', 'ay', '2ay')

#: name -> curve family
CURVES: Dict[str, Type['Curve']] = {}


class Curve:
    """A monotone curve ``g: [0, 1] -> [0, 1]`` with ``g(0) = 0`` and ``g(1) = 1``, and,
    as class methods, what its family provides.

    A family (a subclass) declares:

    * ``name`` (its registry name) and ``default_pieces``;
    * :meth:`num_raw` and :meth:`num_coords`: numbers per curve of ``K`` pieces, as
      search parameters in [0, 1] and as coordinates (the published form);
      :meth:`pieces_from_coords` inverts the latter (to infer ``K`` from a ``theta``);
    * :meth:`identity_raw`: the search parameters of the identity (the search's start);
    * :meth:`from_theta` and :meth:`from_points`: a curve from either form;
      :meth:`coordinates`: its coordinates back;
    * :meth:`bezier_table`: the curve as quadratic pieces, the form the engines evaluate
      (every family must be expressible so; the identity is one straight piece);
    * ``__call__`` (float32 PyTorch evaluation, differentiable), :meth:`reference`
      (float64, from the definition) and :meth:`describe`.

    The truth table and monotonicity must hold for every parameter value.
    """

    name: ClassVar[str] = 'curve'
    default_pieces: ClassVar[int] = 1

    # -- the family ----------------------------------------------------------------------
    @classmethod
    def num_raw(cls, num_pieces: int) -> int:
        raise NotImplementedError

    @classmethod
    def num_coords(cls, num_pieces: int) -> int:
        raise NotImplementedError

    @classmethod
    def pieces_from_coords(cls, n: int) -> Optional[int]:
        """The ``K`` whose curves have ``n`` coordinates, or None."""
        for k in range(1, max(n, 1) + 2):
            if cls.num_coords(k) == n:
                return k
        return None

    @classmethod
    def identity_raw(cls, num_pieces: int) -> List[float]:
        raise NotImplementedError

    @classmethod
    def from_theta(cls, theta: Sequence[float], num_pieces: int) -> 'Curve':
        raise NotImplementedError

    @classmethod
    def from_points(cls, points: Sequence[float], num_pieces: Optional[int] = None) -> 'Curve':
        raise NotImplementedError

    def _expect_pieces(self, num_pieces: Optional[int], what: str) -> 'Curve':
        """``self``, or ValueError if it does not have ``num_pieces`` pieces (``what``: the
        numbers that made it, for the message)."""
        if num_pieces is not None and self.num_pieces != num_pieces:
            raise ValueError(f'{what} make {self.num_pieces} piece(s), expected '
                             f'num_pieces={num_pieces}')
        return self

    # -- one curve -----------------------------------------------------------------------
    def coordinates(self) -> List[float]:
        """The curve's coordinates, in the layout ``theta=`` takes."""
        raise NotImplementedError

    def bezier_table(self) -> torch.Tensor:
        """(K, 8) float64 coefficients of the curve as K quadratic pieces, the form the
        engines evaluate: per piece ``x0, b^2, 4a, b, y0, by, ay, 2ay`` with
        ``x(t) = x0 + b t + a t^2`` and ``y(t) = y0 + by t + ay t^2`` (see
        :data:`PIECE_COLUMNS`)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 evaluation straight from the definition (slow; for tests)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def register_curve(cls: Type[Curve]) -> Type[Curve]:
    """Class decorator: add a curve family to :data:`CURVES` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Curve)):
        raise TypeError(f'a curve family must subclass Curve, got {cls!r}')
    if cls.name in CURVES and CURVES[cls.name] is not cls:
        raise ValueError(f'a curve family named {cls.name!r} is already registered')
    CURVES[cls.name] = cls
    return cls


def curve_family(name: str) -> Type[Curve]:
    """The family registered as ``name``.

    Raises:
        ValueError: no family has that name (the known ones are listed).
    """
    cls = CURVES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f'unknown parameterization {name!r}; choose from '
                         f'{", ".join(CURVES)}')
    return cls


def _check_pieces(num_pieces) -> None:
    if isinstance(num_pieces, bool) or not isinstance(num_pieces, int) or num_pieces < 1:
        raise ValueError(f'num_pieces must be a positive integer, got {num_pieces!r}')


def params_per_curve(parameterization: str, num_pieces: int, raw: bool) -> int:
    """Numbers per curve: raw search parameters (``raw=True``) or coordinates."""
    cls = curve_family(parameterization)
    _check_pieces(num_pieces)
    return cls.num_raw(num_pieces) if raw else cls.num_coords(num_pieces)


def identity_theta(parameterization: str, num_pieces: int) -> List[float]:
    """Raw parameters of one curve that give the identity (the search's starting mean)."""
    cls = curve_family(parameterization)
    _check_pieces(num_pieces)
    return list(cls.identity_raw(num_pieces))


def piece_table(full: torch.Tensor) -> torch.Tensor:
    """Coefficients of the quadratic pieces through ``full`` = (P_0, P_1, ..., P_2K):
    per piece ``x0, b^2, 4a, b, y0, by, ay, 2ay`` with ``x(t) = x0 + b t + a t^2`` and
    ``y(t) = y0 + by t + ay t^2``."""
    p0, p1, p2 = full[0:-1:2], full[1::2], full[2::2]
    b = 2 * (p1[:, 0] - p0[:, 0])
    a = p0[:, 0] - 2 * p1[:, 0] + p2[:, 0]
    ay = p0[:, 1] - 2 * p1[:, 1] + p2[:, 1]
    return torch.stack([p0[:, 0], b * b, 4 * a, b, p0[:, 1], 2 * (p1[:, 1] - p0[:, 1]), ay,
                        2 * ay], dim=1).contiguous()


def build_curves(parameterization: str, num_curves: int, num_pieces: int, theta=None,
                 raw_theta=None, layout: str = '') -> List[Curve]:
    """Build ``num_curves`` curves from coordinates (``theta``) or raw parameters.

    Args:
        parameterization (str): a registered family (:data:`CURVES`).
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
    cls = curve_family(parameterization)
    _check_pieces(num_pieces)
    if theta is None and raw_theta is None:
        return [CURVES['identity']() for _ in range(num_curves)]
    raw = raw_theta is not None
    values = raw_theta if raw else theta
    what = 'raw_theta' if raw else 'theta'
    try:
        flat = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f'{what} must be a list of numbers, got {values!r}') from None
    per = cls.num_raw(num_pieces) if raw else cls.num_coords(num_pieces)
    if len(flat) != per * num_curves:
        raise ValueError(f'{what} has {len(flat)} numbers, expected {per * num_curves} = '
                         f'{num_curves} curve(s) x {per} ({parameterization}, '
                         f'num_pieces={num_pieces}){layout}')
    curves = []
    for i in range(num_curves):
        chunk = flat[i * per:(i + 1) * per]
        try:
            curves.append(cls.from_theta(chunk, num_pieces) if raw else
                          cls.from_points(chunk, num_pieces))
        except ValueError as e:
            raise ValueError(f'{what} of curve {i}: {e}') from None
    return curves
