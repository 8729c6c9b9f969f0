"""The compiled form of a formula: typed per-pixel map nodes and statistic nodes.

The compiler (:mod:`asl.formula.compiler`) lowers a syntax tree into two small graphs:

* **map nodes** (:class:`MapNode` subclasses): per-pixel expressions over ``P``, ``G`` and
  ``M``. Every map node has an ``index``: its position in
  :attr:`~asl.formula.compiler.CompiledMetric.maps`, which lists the nodes in
  topological order (operands first). Evaluators keep their values in a list indexed by
  it, never in dictionaries keyed by object identity;
* **statistic nodes** (:class:`StatNode` subclasses): the arithmetic on the per-class
  sums ``sum(X)`` of map nodes, down to one number.

Each node has named fields; the kinds are the classes themselves. Every node knows
whether its values are 0/1 whatever the prediction's softness (``binary``), whether it
has one channel per class (``per_class``) and, for map nodes, whether it depends on
the prediction ``P`` (``soft``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple

__all__ = [
    'LogicOp', 'PoolKind', 'MapNode', 'Input', 'Const', 'Logic', 'Not', 'Pool', 'ClassMax',
    'Arith', 'StatNode', 'StatSum', 'StatConst', 'StatArith', 'StatDiv', 'StatTotal',
    'StatMeanC', 'StatCompare', 'CurvePair'
]


class LogicOp(str, enum.Enum):
    """A logical operation of the formula language."""
    AND = '&'
    OR = '|'
    XOR = '^'


class PoolKind(str, enum.Enum):
    """A square pool: ``MAX`` (dilation) or ``MIN`` (erosion, image border padded with 1)."""
    MAX = 'max'
    MIN = 'min'


#: Curve indices of the two operands of an AND or an OR (None: the operand is binary, or
#: the operation is ``plain``, so it needs no curve).
CurvePair = Tuple[Optional[int], Optional[int]]


# ----------------------------------------------------------------------------------
# Map nodes
# ----------------------------------------------------------------------------------
@dataclass(eq=False)
class MapNode:
    """Base of the per-pixel map nodes."""
    binary: bool = field(kw_only=True)  # values are 0/1 whatever P's softness
    per_class: bool = field(kw_only=True)  # one channel per class (else a single channel)
    soft: bool = field(kw_only=True)  # depends on the prediction P
    index: int = field(default=-1, kw_only=True)  # position in CompiledMetric.maps

    def operands(self) -> Tuple['MapNode', ...]:
        """The map nodes this one reads."""
        return ()


@dataclass(eq=False)
class Input(MapNode):
    """``P`` (prediction), ``G`` (one-hot ground truth) or ``M`` (valid mask)."""
    name: str


@dataclass(eq=False)
class Const(MapNode):
    """A constant map."""
    value: float


@dataclass(eq=False)
class Logic(MapNode):
    """A logical operation. With curves ``g``: ``AND(a, b) = g(a) g(b)``,
    ``OR(a, b) = g(a) + g(b) - g(a) g(b)``, ``XOR(a, b) = OR(a, b) - AND(a, b)`` (each
    part with its own pair of curves)."""
    op: LogicOp
    a: MapNode
    b: MapNode
    and_curves: CurvePair = (None, None)  # AND, and the AND part of XOR
    or_curves: CurvePair = (None, None)  # OR, and the OR part of XOR

    def operands(self):
        return (self.a, self.b)


@dataclass(eq=False)
class Not(MapNode):
    """``1 - a``."""
    a: MapNode

    def operands(self):
        return (self.a, )


@dataclass(eq=False)
class Pool(MapNode):
    """Square pool of size ``2 * radius + 1``, stride 1, same size (windows clipped to the
    image, so the border is no boundary of an erosion)."""
    kind: PoolKind
    a: MapNode
    radius: int

    def operands(self):
        return (self.a, )


@dataclass(eq=False)
class ClassMax(MapNode):
    """Maximum over the classes (one channel), class 0 left out with ``skip_bg``."""
    a: MapNode
    skip_bg: bool

    def operands(self):
        return (self.a, )


@dataclass(eq=False)
class Arith(MapNode):
    """``a + b``, ``a - b`` or ``a * b`` (``op``)."""
    op: str
    a: MapNode
    b: MapNode

    def operands(self):
        return (self.a, self.b)


# ----------------------------------------------------------------------------------
# Statistic nodes
# ----------------------------------------------------------------------------------
@dataclass(eq=False)
class StatNode:
    """Base of the nodes computed from the sums."""
    per_class: bool = field(kw_only=True)


@dataclass(eq=False)
class StatSum(StatNode):
    """The per-class sum of ``CompiledMetric.stats[stat]``."""
    stat: int


@dataclass(eq=False)
class StatConst(StatNode):
    value: float


@dataclass(eq=False)
class StatArith(StatNode):
    """``a + b``, ``a - b`` or ``a * b`` (``op``)."""
    op: str
    a: StatNode
    b: StatNode


@dataclass(eq=False)
class StatDiv(StatNode):
    """``a / b``; with ``zero_if_empty`` (``div0``) 0 where ``b`` is 0."""
    a: StatNode
    b: StatNode
    zero_if_empty: bool


@dataclass(eq=False)
class StatTotal(StatNode):
    """Sum over the classes."""
    a: StatNode


@dataclass(eq=False)
class StatMeanC(StatNode):
    """Mean over the classes where ``where`` holds, class 0 left out with ``skip_bg``."""
    a: StatNode
    where: Optional[StatNode]
    skip_bg: bool


@dataclass(eq=False)
class StatCompare(StatNode):
    """A comparison (``op`` one of ``> >= < <= == !=``), 1.0 or 0.0."""
    op: str
    a: StatNode
    b: StatNode
