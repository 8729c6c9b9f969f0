"""The fused program: the typed description every engine evaluates.

:func:`asl.engines.lower.lower` turns the statistics of a compiled metric
(:class:`~asl.formula.compiler.CompiledMetric`) into a :class:`FusedProgram`; the C++
engine (``asl/engines/cpp/csrc/kernels.cpp``) and the Triton engine (:mod:`asl.engines.triton`)
evaluate it. This module is the single definition of the opcodes (:class:`Op`) and pool
kinds (:class:`Pool`); ``asl/engines/cpp/csrc/ir_ops.h`` is generated from it
(``python -m asl.engines.ir asl/engines/cpp/csrc/ir_ops.h``; a test checks that it is up to date).

What can be fused (the rule, applied by :func:`fusable`):

* a statistic ``sum(X)`` is fused when ``X`` is per class and built from ``P``, ``G``,
  ``M``, constants, logical operations (with or without curves), ``not``, ``+ - *`` and
  square pools (``erode``, ``dilate``, ``min_pool``, ``max_pool``) of any of these, and
  class maxima (``max_c``) of maps that do not depend on ``P``;
* a class maximum of a ``P``-independent map is computed before the statistics, as an
  extra single-channel input (:class:`ClassMaxMap`): by the engine's map mode when the map
  holds no class maximum itself, else by the PyTorch reference path;
* everything else (a statistic that is not per class, a class maximum of a
  ``P``-dependent map) is evaluated by the PyTorch reference path
  (:func:`asl.engines.reference.evaluate_stats`), and the engines sum the rest.

How a program is evaluated: a :class:`Program` is a list of instructions, one register
each (register ``i`` holds the value of ``instrs[i]``), run on a block of pixels of one
(image, class) plane. ``G`` is one-hot, so in a class plane it is 0 except at the pixels
labelled with that class: the ``final`` program is compiled with ``G = 0`` and runs on
every pixel, the ``correction`` program is ``(G = 1, M = 1) - (G = 0)`` and runs on the
labelled pixels only. Pools read whole planes: each pool is a :class:`Stage`, whose input
map is computed by its own program (or is ``P`` itself) and pooled before the programs
that read it (``Op.POOL``: the pooled map, ``Op.STAGE_IN``: the input map) run.
"""
from __future__ import annotations

import enum
import math
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

from ..formula.graph import ClassMax, Input, MapNode

__all__ = [
    'Op', 'Pool', 'Mode', 'LEAF_OPS', 'UNARY_OPS', 'BINARY_OPS', 'Instr', 'Output', 'Program',
    'Leaf', 'Stage', 'ClassMaxMap', 'FusedProgram', 'fusable', 'header'
]


class Op(enum.IntEnum):
    """Opcodes of a register program.

    Leaves (``a`` indexes what they read): ``P`` prediction, ``G`` one-hot ground truth
    (label == the plane's class), ``M`` valid mask, ``X`` extra map ``a``, ``CONST``
    constant ``consts[a]``, ``POOL`` pooled map of stage ``a``, ``STAGE_IN`` input map of
    stage ``a``. Operations (``a``, ``b`` are earlier registers): ``CURVE`` curve ``b`` of
    register ``a``, ``MUL``, ``ADD``, ``SUB`` (``a - b``), ``ONE_MINUS`` (``1 - a``).
    """
    P = 0
    G = 1
    M = 2
    X = 3
    CONST = 4
    CURVE = 5
    MUL = 6
    ADD = 7
    SUB = 8
    ONE_MINUS = 9
    POOL = 10
    STAGE_IN = 11


LEAF_OPS = frozenset({Op.P, Op.G, Op.M, Op.X, Op.CONST, Op.POOL, Op.STAGE_IN})
UNARY_OPS = frozenset({Op.CURVE, Op.ONE_MINUS})
BINARY_OPS = frozenset({Op.MUL, Op.ADD, Op.SUB})


class Pool(enum.IntEnum):
    """A stage's pool: the first maximum (``MAX``) or minimum (``MIN``) of each square
    window, windows clipped to the image."""
    MAX = 0
    MIN = 1


class Mode(enum.IntEnum):
    """``STATS``: per-class sums of the final program's outputs; ``MAP``: the final
    program's single output reduced by a maximum over classes (a :class:`ClassMaxMap`)."""
    STATS = 0
    MAP = 1


@dataclass(frozen=True)
class Instr:
    """One instruction; it computes the register of its own position in the program.

    Attributes:
        op: the opcode.
        a: the operand register (``CURVE``, ``ONE_MINUS``, ``MUL``, ``ADD``, ``SUB``) or
            what a leaf reads (``X``: extra map, ``CONST``: constant, ``POOL`` and
            ``STAGE_IN``: stage); -1 if unused.
        b: the second operand register (``MUL``, ``ADD``, ``SUB``) or the curve
            (``CURVE``); -1 if unused.
        active: the value depends on ``P`` (the reverse sweep visits it).
        needed: the reverse sweep reads the value (the backward pass computes it).
    """
    op: Op
    a: int = -1
    b: int = -1
    active: bool = False
    needed: bool = False


@dataclass(frozen=True)
class Output:
    """One output of a program: register ``reg``, or the constant ``value`` if ``reg`` is
    -1."""
    reg: int
    value: float = 0.0


@dataclass(frozen=True)
class Program:
    """A straight-line register program (see the module docstring)."""
    instrs: Tuple[Instr, ...]
    outputs: Tuple[Output, ...]

    def validate(self, n_consts: int, n_curves: int, n_extras: int, n_stages: int) -> None:
        """Raise ValueError unless every operand refers to something that exists."""
        for i, ins in enumerate(self.instrs):
            ok = True
            if ins.op in (Op.P, Op.G, Op.M):
                pass
            elif ins.op is Op.X:
                ok = 0 <= ins.a < n_extras
            elif ins.op is Op.CONST:
                ok = 0 <= ins.a < n_consts
            elif ins.op in (Op.POOL, Op.STAGE_IN):
                ok = 0 <= ins.a < n_stages
            elif ins.op is Op.CURVE:
                ok = 0 <= ins.a < i and 0 <= ins.b < n_curves
            elif ins.op is Op.ONE_MINUS:
                ok = 0 <= ins.a < i
            else:
                ok = 0 <= ins.a < i and 0 <= ins.b < i
            if not ok:
                raise ValueError(f'malformed instruction {i}: {ins}')
        for out in self.outputs:
            if not -1 <= out.reg < len(self.instrs):
                raise ValueError(f'output register {out.reg} out of range')


@dataclass(frozen=True)
class Leaf:
    """A leaf of a program: ``op`` (``M``, ``X``, ``POOL`` or ``STAGE_IN``) and what it
    reads (``index``)."""
    op: Op
    index: int


@dataclass(frozen=True)
class Stage:
    """A square pool of a map: ``pool`` over a window of size ``2 * radius + 1``.

    Attributes:
        pool: ``Pool.MAX`` or ``Pool.MIN``.
        radius: the window's half size (>= 1).
        input: the program that computes the input map (one output); unused when
            ``direct_p``.
        direct_p: the input map is ``P`` itself.
        active: the input map depends on ``P``.
        binary: the input map's values are 0/1 (so are the pooled ones).
        per_class: the input map has one channel per class.
        absent_value: the input map where the plane's class is absent from the image
            (``G = 0`` everywhere), when that is a constant (else None).
        keep_input, keep_pool: the forward pass keeps the input / pooled map for the
            backward pass (C++ engine).
        absent_input, absent_pool: a plane whose class is absent from the image needs
            the input / pooled map.
        mask: a ``P``-independent leaf ``Y`` such that the pooled map is only used in
            products with ``Y``: the pool need only be computed where ``Y`` is not 0.
    """
    pool: Pool
    radius: int
    input: Program
    direct_p: bool
    active: bool
    binary: bool
    per_class: bool
    absent_value: Optional[float]
    keep_input: bool
    keep_pool: bool
    absent_input: bool
    absent_pool: bool
    mask: Optional[Leaf]


@dataclass(frozen=True)
class ClassMaxMap:
    """An extra input map: the maximum over classes ``[1 if skip_bg else 0, C)`` of a
    ``P``-independent per-class map, (N, 1, H, W).

    Attributes:
        node: the class-maximum node of the compiled metric.
        skip_bg: leave class 0 out.
        program: the :class:`FusedProgram` (``Mode.MAP``) of the map, or None when the
            PyTorch reference path computes it.
    """
    node: ClassMax
    skip_bg: bool
    program: Optional['FusedProgram']


@dataclass(frozen=True)
class FusedProgram:
    """Everything an engine needs to evaluate the fusable statistics of a metric.

    Attributes:
        mode: ``Mode.STATS`` or ``Mode.MAP``.
        stats: the indices (into ``CompiledMetric.stats``) of the statistics computed, in
            the order of the programs' outputs (``Mode.STATS``).
        final: runs on every pixel (``Mode.STATS``: with ``G = 0``; ``Mode.MAP``: the map,
            ``G`` read per pixel).
        correction: ``(G = 1, M = 1) - (G = 0)``, run on the labelled pixels of the
            plane's class and added; None when no statistic depends on ``G`` that way.
        absent_final: ``final`` for a plane whose class is absent from the image
            (stage maps constant there folded in).
        stages: the pools, inner ones first.
        consts: the constants ``Op.CONST`` reads.
        extras: the extra maps ``Op.X`` reads.
        num_curves: the number of curves ``Op.CURVE`` may read.
    """
    mode: Mode
    stats: Tuple[int, ...]
    final: Program
    correction: Optional[Program]
    absent_final: Program
    stages: Tuple[Stage, ...]
    consts: Tuple[float, ...]
    extras: Tuple[ClassMaxMap, ...]
    num_curves: int

    def programs(self) -> Tuple[Program, ...]:
        """Every program: final, correction (if any), absent final, the stages' inputs."""
        head = (self.final, ) + ((self.correction, ) if self.correction else ())
        return head + (self.absent_final, ) + tuple(s.input for s in self.stages)

    def validate(self) -> None:
        """Raise ValueError if an instruction refers to something that does not exist or a
        stage is inconsistent (the engines trust a validated program)."""
        for j, st in enumerate(self.stages):
            if st.radius < 1 or (st.direct_p and not st.active):
                raise ValueError(f'bad stage {j}: {st}')
            if st.mask is not None and not (
                    st.mask.op is Op.M or (st.mask.op is Op.X and
                                           0 <= st.mask.index < len(self.extras)) or
                    (st.mask.op in (Op.POOL, Op.STAGE_IN) and 0 <= st.mask.index < j)):
                raise ValueError(f'bad mask of stage {j}: {st.mask}')
            st.input.validate(len(self.consts), self.num_curves, len(self.extras), j)
            if len(st.input.outputs) != 1:
                raise ValueError(f'the input program of stage {j} must have one output')
        n = len(self.stages)
        for prog in (self.final, self.correction, self.absent_final):
            if prog is not None:
                prog.validate(len(self.consts), self.num_curves, len(self.extras), n)
        width = 1 if self.mode is Mode.MAP else len(self.stats)
        for prog in (self.final, self.correction, self.absent_final):
            if prog is not None and len(prog.outputs) != width:
                raise ValueError(f'a program has {len(prog.outputs)} outputs, expected {width}')
        if any(not math.isfinite(c) for c in self.consts):
            raise ValueError(f'constants must be finite, got {self.consts}')


def fusable(node: MapNode) -> bool:
    """Whether the engines evaluate ``sum(node)`` (the rule of the module docstring)."""
    if not node.per_class:
        return False
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n.index in seen:
            continue
        seen.add(n.index)
        if isinstance(n, ClassMax):
            if n.soft:
                return False
            continue  # an extra map, computed first
        stack.extend(n.operands())
    return True


def class_max_in_map_mode(node: ClassMax) -> bool:
    """Whether a fusable class maximum's map is computed by the engines' map mode (it
    holds no class maximum itself and is per class), rather than by PyTorch."""
    if not node.a.per_class:
        return False
    stack = [node.a]
    while stack:
        n = stack.pop()
        if isinstance(n, ClassMax):
            return False
        stack.extend(n.operands())
    return True


def header() -> str:
    """The C++ header that mirrors :class:`Op`, :class:`Pool` and :class:`Mode`."""
    lines = ['// Generated from asl/engines/ir.py by `python -m asl.engines.ir asl/engines/cpp/csrc/ir_ops.h`;',
             '// do not edit (tests/test_ir.py checks that it is up to date).', '#pragma once',
             '#include <cstdint>', '']
    for enum_cls, prefix in ((Op, 'OP_'), (Pool, 'POOL_'), (Mode, 'MODE_')):
        items = ', '.join(f'{prefix}{m.name} = {int(m)}' for m in enum_cls)
        lines.append(f'enum {enum_cls.__name__}Code : int64_t {{ {items} }};')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':  # pragma: no cover - a build helper
    if len(sys.argv) != 2:
        sys.exit('usage: python -m asl.engines.ir OUTPUT.h')
    with open(sys.argv[1], 'w') as f:
        f.write(header())
