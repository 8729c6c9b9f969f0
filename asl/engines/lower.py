"""Lowering: the fusable statistics of a compiled metric as a :class:`FusedProgram`.

:func:`lower` (cached per compiled metric by :func:`fused_program`) builds the register
programs and pool stages described in :mod:`asl.engines.ir`:

* the elementwise parts become register programs with common subexpressions shared and
  identities with the constants 0 and 1 folded (``x * 0``, ``x * 1``, ``x + 0``,
  ``x - 0``: exact in floating point), the truth table of the curves applied to constant
  inputs (``g(0) = 0``, ``g(1) = 1``);
* every square pool becomes a stage whose input map has its own program (or is ``P``);
* ``G`` is one-hot: the final program is compiled with ``G = 0`` and the correction
  program as ``(G = 1, M = 1) - (G = 0)``; a third version folds the stage maps that are
  constant in a plane whose class is absent from the image;
* each instruction is marked ``active`` (depends on ``P``) and ``needed`` (its value is
  read by the reverse sweep), and each stage with what the backward pass keeps and where
  its pool may be computed sparsely (:class:`~asl.engines.ir.Stage`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..curves import Curve
from ..formula.compiler import CompiledMetric
from ..formula.graph import (Arith, ClassMax, Const, Input, Logic, LogicOp, MapNode, Not,
                             Pool, PoolKind)
from . import ir
from .ir import Op

__all__ = ['lower', 'fused_program', 'curve_table']


@dataclass(frozen=True)
class _Val:
    """A value while lowering: register ``reg``, or the constant ``const`` (reg -1)."""
    reg: int = -1
    const: float = 0.0

    @property
    def is_const(self) -> bool:
        return self.reg < 0


_ZERO, _ONE = _Val(const=0.0), _Val(const=1.0)


@dataclass
class _Row:
    op: Op
    a: int
    b: int
    active: bool


class _Builder:
    """One register program being built (one register per row)."""

    def __init__(self, consts: List[float]):
        self.consts = consts  # shared by all programs of a fused program
        self.rows: List[_Row] = []
        self._keys: Dict[tuple, _Val] = {}
        self.outs: List[_Val] = []

    def reg(self, key, op: Op, a: int = -1, b: int = -1, active: bool = False) -> _Val:
        if key not in self._keys:
            self._keys[key] = _Val(reg=len(self.rows))
            self.rows.append(_Row(op, a, b, active))
        return self._keys[key]

    def active(self, v: _Val) -> bool:
        return not v.is_const and self.rows[v.reg].active

    def materialize(self, v: _Val) -> int:
        if not v.is_const:
            return v.reg
        value = float(v.const)
        if value not in self.consts:
            self.consts.append(value)
        return self.reg(('const', value), Op.CONST, self.consts.index(value)).reg

    def curve(self, slot: Optional[int], v: _Val) -> _Val:
        if slot is None:
            return v
        if v.is_const and (v.const <= 0 or v.const >= 1):
            return _ZERO if v.const <= 0 else _ONE  # the truth table holds exactly
        r = self.materialize(v)
        return self.reg(('curve', slot, r), Op.CURVE, r, slot, self.active(v))

    def binary(self, op: str, x: _Val, y: _Val) -> _Val:
        if x.is_const and y.is_const:
            a, b = x.const, y.const
            return _Val(const=a * b if op == '*' else (a + b if op == '+' else a - b))
        if op == '*':
            for u, w in ((x, y), (y, x)):
                if u == _ZERO:
                    return _ZERO
                if u == _ONE:
                    return w
        elif op == '+':
            for u, w in ((x, y), (y, x)):
                if u == _ZERO:
                    return w
        elif y == _ZERO:
            return x
        a, b = self.materialize(x), self.materialize(y)
        code = {'*': Op.MUL, '+': Op.ADD, '-': Op.SUB}[op]
        if op != '-' and a > b:
            a, b = b, a  # commutative: one register for x * y and y * x
        return self.reg((op, a, b), code, a, b, self.active(x) or self.active(y))

    def one_minus(self, x: _Val) -> _Val:
        if x.is_const:
            return _Val(const=1.0 - x.const)
        return self.reg(('1-', x.reg), Op.ONE_MINUS, x.reg, -1, self.active(x))

    def build(self) -> ir.Program:
        """The rows the outputs need, renumbered, with ``needed`` marked (the value is read
        by the reverse sweep, or the row is an active curve, whose derivative it reads)."""
        n = len(self.rows)
        live = [False] * n
        for v in self.outs:
            if not v.is_const:
                live[v.reg] = True
        for i in reversed(range(n)):
            row = self.rows[i]
            if live[i] and row.op in ir.UNARY_OPS | ir.BINARY_OPS:
                live[row.a] = True
                if row.op in ir.BINARY_OPS:
                    live[row.b] = True
        need = [False] * n
        for i in reversed(range(n)):
            row = self.rows[i]
            if not live[i]:
                continue
            if row.active and row.op is Op.MUL:
                need[row.b] |= self.rows[row.a].active
                need[row.a] |= self.rows[row.b].active
            if row.active and row.op is Op.CURVE:
                need[i] = need[row.a] = True
            if need[i] and row.op in ir.UNARY_OPS | ir.BINARY_OPS:
                need[row.a] = True
                if row.op in ir.BINARY_OPS:
                    need[row.b] = True
        new: Dict[int, int] = {}
        instrs = []
        for i, row in enumerate(self.rows):
            if not live[i]:
                continue
            new[i] = len(instrs)
            a, b = row.a, row.b
            if row.op in ir.UNARY_OPS | ir.BINARY_OPS:
                a = new[a]
                if row.op in ir.BINARY_OPS:
                    b = new[b]
            instrs.append(ir.Instr(row.op, a, b, row.active, need[i]))
        outs = tuple(ir.Output(-1, float(v.const)) if v.is_const else ir.Output(new[v.reg])
                     for v in self.outs)
        return ir.Program(tuple(instrs), outs)


@dataclass
class _StageInfo:
    node: Pool
    direct_p: bool
    active: bool
    absent: Optional[float] = None


class _Lowering:
    """The stages and programs of a set of root maps (the statistics, or one class-max
    map)."""

    def __init__(self, roots: Sequence[MapNode]):
        self.stages: List[_StageInfo] = []
        self.stage_of_pool: Dict[int, int] = {}  # node index -> stage
        self.stage_of_input: Dict[int, int] = {}
        self.extras: List[ClassMax] = []
        self.extra_index: Dict[int, int] = {}
        self.consts: List[float] = []
        seen: set = set()
        for node in roots:
            self._collect(node, seen)

    def _collect(self, node: MapNode, seen: set) -> None:
        """Pools in dependency order (inner first) and extras."""
        if node.index in seen:
            return
        seen.add(node.index)
        if isinstance(node, ClassMax):
            if node.index not in self.extra_index:
                self.extra_index[node.index] = len(self.extras)
                self.extras.append(node)
            return
        for a in node.operands():
            self._collect(a, seen)
        if isinstance(node, Pool) and node.index not in self.stage_of_pool:
            j = len(self.stages)
            self.stage_of_pool[node.index] = j
            self.stage_of_input.setdefault(node.a.index, j)
            direct_p = isinstance(node.a, Input) and node.a.name == 'P'
            self.stages.append(_StageInfo(node, direct_p, node.a.soft))


class _Emitter:
    """Emits map nodes into a program; ``g``/``m``: None (read per pixel) or a constant
    substituted for ``G``/``M``; ``stage_limit``: stage inputs below this index are read
    from their maps instead of being recomputed; ``fold_pools``: a pool of a constant map
    is that constant; ``absent``: the plane's class is absent (G = 0 everywhere), so stage
    maps known to be constant there are."""

    def __init__(self, low: _Lowering, prog: _Builder, g: Optional[float], m: Optional[float],
                 stage_limit: int, fold_pools: bool = False, absent: bool = False):
        self.low, self.prog, self.g, self.m = low, prog, g, m
        self.stage_limit = stage_limit
        self.fold_pools = fold_pools
        self.absent = absent
        self.memo: Dict[int, _Val] = {}

    def __call__(self, node: MapNode) -> _Val:
        if node.index not in self.memo:
            self.memo[node.index] = self._emit(node)
        return self.memo[node.index]

    def _emit(self, node: MapNode) -> _Val:
        low, prog = self.low, self.prog
        if self.absent:
            j = low.stage_of_pool.get(node.index, low.stage_of_input.get(node.index))
            if j is not None and low.stages[j].absent is not None:
                return _Val(const=low.stages[j].absent)
        j = low.stage_of_input.get(node.index)
        if j is not None and j < self.stage_limit and not isinstance(node, (Input, Const)):
            return prog.reg(('stagein', j), Op.STAGE_IN, j, -1, low.stages[j].active)
        if isinstance(node, Input):
            if node.name == 'P':
                return prog.reg('P', Op.P, active=True)
            fixed = self.g if node.name == 'G' else self.m
            if fixed is not None:
                return _Val(const=float(fixed))
            return prog.reg(node.name, Op.G if node.name == 'G' else Op.M)
        if isinstance(node, Const):
            return _Val(const=float(node.value))
        if isinstance(node, Pool):
            if self.fold_pools:
                inner = self(node.a)
                if inner.is_const:
                    return inner
            j = low.stage_of_pool[node.index]
            return prog.reg(('pool', j), Op.POOL, j, -1, low.stages[j].active)
        if isinstance(node, ClassMax):
            j = low.extra_index[node.index]
            return prog.reg(('x', j), Op.X, j)
        if isinstance(node, Not):
            return prog.one_minus(self(node.a))
        if isinstance(node, Arith):
            return prog.binary(node.op, self(node.a), self(node.b))
        assert isinstance(node, Logic)
        a, b = self(node.a), self(node.b)

        def and_(x, y):
            return prog.binary('*', x, y)

        def or_(x, y):
            return prog.binary('-', prog.binary('+', x, y), and_(x, y))

        ca, cb = node.and_curves
        if node.op is LogicOp.AND:
            return and_(prog.curve(ca, a), prog.curve(cb, b))
        oa, ob = node.or_curves
        o = or_(prog.curve(oa, a), prog.curve(ob, b))
        if node.op is LogicOp.OR:
            return o
        return prog.binary('-', o, and_(prog.curve(ca, a), prog.curve(cb, b)))


def _lower(roots: Sequence[MapNode], stats: Tuple[int, ...], mode: ir.Mode,
           num_curves: int) -> ir.FusedProgram:
    low = _Lowering(roots)
    nst = len(low.stages)
    for st in low.stages:
        # the stage's input map in a plane whose class is absent from the image (G = 0
        # everywhere), when that is a constant (inner stages first)
        v = _Emitter(low, _Builder([]), 0.0, None, 0, fold_pools=True, absent=True)(st.node.a)
        st.absent = float(v.const) if v.is_const and not st.active else None
    final, correction, absent_final = (_Builder(low.consts) for _ in range(3))
    if mode is ir.Mode.MAP:
        (root, ) = roots
        final.outs = [_Emitter(low, final, None, None, nst)(root)]
        absent_final.outs = [_Emitter(low, absent_final, 0.0, None, nst, fold_pools=True,
                                      absent=True)(root)]
    else:
        dense = _Emitter(low, final, 0.0, None, nst)
        one = _Emitter(low, correction, 1.0, 1.0, nst)
        zero = _Emitter(low, correction, 0.0, 1.0, nst)
        absent = _Emitter(low, absent_final, 0.0, None, nst, fold_pools=True, absent=True)
        for node in roots:
            final.outs.append(dense(node))
            absent_final.outs.append(absent(node))
            v1, v0 = one(node), zero(node)
            # the same register in both: the statistic does not depend on G here
            correction.outs.append(_ZERO if v1 == v0 else correction.binary('-', v1, v0))
    stage_progs = []
    for j, st in enumerate(low.stages):
        b = _Builder(low.consts)
        b.outs = [_Emitter(low, b, None, None, j)(st.node.a)]
        stage_progs.append(b.build())
    has_correction = any(v != _ZERO for v in correction.outs)
    fin, cor, absf = final.build(), correction.build(), absent_final.build()
    heads = [fin, cor, absf] if has_correction else [fin, absf]
    stages = _stages(low, heads, fin, cor if has_correction else None, absf, stage_progs)
    extras = tuple(
        ir.ClassMaxMap(node, node.skip_bg,
                       _lower([node.a], (), ir.Mode.MAP, num_curves)
                       if ir.class_max_in_map_mode(node) else None) for node in low.extras)
    fp = ir.FusedProgram(mode=mode, stats=stats, final=fin,
                         correction=cor if has_correction else None, absent_final=absf,
                         stages=stages, consts=tuple(low.consts), extras=extras,
                         num_curves=num_curves)
    fp.validate()
    return fp


def _stages(low: _Lowering, heads: List[ir.Program], fin: ir.Program,
            cor: Optional[ir.Program], absf: ir.Program,
            stage_progs: List[ir.Program]) -> Tuple[ir.Stage, ...]:
    """The stages with what the C++ engine's backward pass keeps, what a plane of an absent
    class needs and the masks of sparse pools."""
    nst = len(low.stages)
    # maps the backward pass reads: leaves whose values the reverse sweeps of the final
    # and correction programs need, and the inputs of the active pools
    keep_in = [s.active and not s.direct_p for s in low.stages]
    keep_pool = [False] * nst
    for prog in heads:  # (the P-independent stages are recomputed)
        for ins in prog.instrs:
            if ins.needed and ins.op is Op.STAGE_IN and low.stages[ins.a].active:
                keep_in[ins.a] = True
            elif ins.needed and ins.op is Op.POOL and low.stages[ins.a].active:
                keep_pool[ins.a] = True
    # stages a plane whose class is absent needs: its input, its pool
    need_in, need_pool = [False] * nst, [False] * nst

    def refs(prog: ir.Program):
        for ins in prog.instrs:
            if ins.op is Op.POOL:
                need_pool[ins.a] = True
            elif ins.op is Op.STAGE_IN:
                need_in[ins.a] = True

    refs(absf)
    for j in reversed(range(nst)):
        need_in[j] |= need_pool[j]
        if need_in[j] and not low.stages[j].direct_p:
            refs(stage_progs[j])
    masks = _pool_masks(nst, heads, stage_progs, [fin, cor, absf])
    out = []
    for j, s in enumerate(low.stages):
        out.append(ir.Stage(
            pool=ir.Pool.MAX if s.node.kind is PoolKind.MAX else ir.Pool.MIN,
            radius=s.node.radius, input=stage_progs[j], direct_p=s.direct_p, active=s.active,
            binary=s.node.a.binary, per_class=s.node.a.per_class, absent_value=s.absent,
            keep_input=keep_in[j], keep_pool=keep_pool[j], absent_input=need_in[j],
            absent_pool=need_pool[j], mask=masks[j]))
    return tuple(out)


def _pool_masks(nst: int, heads: List[ir.Program], stage_progs: List[ir.Program],
                outputs_of: List[Optional[ir.Program]]) -> List[Optional[ir.Leaf]]:
    """Per stage, the leaf of a P-independent map Y such that the pooled map is only used
    in products with Y (BF1's ``dilate(bp) & bg``): the pool may then be computed only
    where Y is not 0. None where there is none."""
    mask: List[Optional[Tuple[Op, int]]] = [None] * nst
    bad = [False] * nst
    for k, prog in enumerate(heads + stage_progs):
        pool_reg: Dict[int, int] = {}  # register -> stage of its POOL leaf
        for i, ins in enumerate(prog.instrs):
            if ins.op is Op.POOL:
                if k >= len(heads):
                    bad[ins.a] = True  # read by a stage program
                pool_reg[i] = ins.a
        if not pool_reg:
            continue
        leaf = {i: (ins.op, ins.a) for i, ins in enumerate(prog.instrs)
                if ins.op in (Op.M, Op.X, Op.POOL, Op.STAGE_IN) and not ins.active}
        for ins in prog.instrs:
            pairs = ((ins.a, ins.b), (ins.b, ins.a)) if ins.op is Op.MUL else (
                (ins.a, None), (ins.b, None))
            for reg, other in pairs:
                if reg not in pool_reg or ins.op in (Op.POOL, Op.STAGE_IN, Op.X, Op.CONST):
                    continue
                j = pool_reg[reg]
                if ins.op is not Op.MUL or other not in leaf:
                    bad[j] = True
                elif mask[j] not in (None, leaf[other]):
                    bad[j] = True
                else:
                    mask[j] = leaf[other]
    for prog in outputs_of:
        if prog is None:
            continue
        for out in prog.outputs:
            if out.reg >= 0 and prog.instrs[out.reg].op is Op.POOL:
                bad[prog.instrs[out.reg].a] = True  # a statistic of the pool itself
    out: List[Optional[ir.Leaf]] = []
    for j in range(nst):
        m = mask[j]
        ok = m is not None and not bad[j] and (m[0] in (Op.M, Op.X) or m[1] < j)
        out.append(ir.Leaf(m[0], m[1]) if ok else None)
    return out


def lower(compiled: CompiledMetric) -> ir.FusedProgram:
    """The fused program of the fusable statistics of ``compiled`` (see
    :func:`asl.engines.ir.fusable`)."""
    stats = tuple(i for i, node in enumerate(compiled.stats) if ir.fusable(node))
    return _lower([compiled.stats[i] for i in stats], stats, ir.Mode.STATS,
                  compiled.num_curves)


def fused_program(compiled: CompiledMetric) -> ir.FusedProgram:
    """:func:`lower`, built once and kept on the compiled metric."""
    fp = compiled.__dict__.get('_fused_program')
    if fp is None:
        fp = lower(compiled)
        compiled.__dict__['_fused_program'] = fp
    return fp


def curve_table(curves: Sequence[Curve], num_curves: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The curves in the engines' format: a (num_curves, Kmax, 8) float64 table of piece
    coefficients (columns :data:`asl.curves.PIECE_COLUMNS`, unused pieces 0) and the
    number of pieces of each curve (int64)."""
    if len(curves) != num_curves:
        raise ValueError(f'the fused program reads {num_curves} curve(s), got {len(curves)}')
    tables = [c.bezier_table() for c in curves]
    kmax = max([t.shape[0] for t in tables] + [1])
    table = torch.zeros(max(len(tables), 1), kmax, 8, dtype=torch.float64)
    ks = torch.ones(max(len(tables), 1), dtype=torch.long)
    for i, t in enumerate(tables):
        table[i, :t.shape[0]] = t
        ks[i] = t.shape[0]
    return table, ks
