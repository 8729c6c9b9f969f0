"""Fused CPU evaluation of the surrogate's per-class sums.

Most statistics of region metrics are sums of an *elementwise* expression of ``P``:
``sum(M * (g1(P) * G))``, ``sum(M * (g2(P) + G - g2(P) * G))``. Their gradient with
respect to ``P`` is elementwise too, so one C++ pass evaluates every such statistic
block by block without materializing any intermediate map, and the backward pass
re-evaluates the expressions with forward-mode derivatives and writes ``dL/dP``
directly. Sub-expressions that do not depend on ``P`` but are not plain inputs (a
boundary band, a dilation) are computed once by PyTorch and fed in as extra maps.
Statistics that pool over a ``P``-dependent map (BF1's boundaries) stay on the
PyTorch path. The result is the same function as :func:`asl.functional.evaluate_stats`
(tested against it); only the number of memory passes differs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ._ext import ext as _ext
from .curves import MIN_SLOPE_DENOMINATOR, Curve
from .formula.compiler import CompiledMetric, MapNode

__all__ = ['FusedPlan', 'plan_fused', 'fused_stat_sums']

OP_P, OP_G, OP_M, OP_X, OP_CONST, OP_CURVE, OP_MUL, OP_ADD, OP_SUB, OP_ONE_MINUS = range(10)


def _depends_on_p(node: MapNode, memo: Dict[int, bool]) -> bool:
    key = id(node)
    if key not in memo:
        if node.kind == 'input':
            memo[key] = node.args[0] == 'P'
        elif node.kind == 'const':
            memo[key] = False
        else:
            memo[key] = any(_depends_on_p(a, memo) for a in node.args if isinstance(a, MapNode))
    return memo[key]


class FusedPlan:
    """Register program for the fusable statistics of one compiled metric."""

    def __init__(self, compiled: CompiledMetric):
        self.compiled = compiled
        self.code: List[Tuple[int, int, int, int]] = []
        self.consts: List[float] = []
        self.extras: List[MapNode] = []  # P-independent maps computed by PyTorch
        self.fused: List[int] = []  # indices of the statistics in the program
        self.outs: List[int] = []  # their registers
        self.num_regs = 0
        self._regs: Dict[Tuple, int] = {}
        self._dep: Dict[int, bool] = {}
        for i, node in enumerate(compiled.stats):
            if node.per_class and _depends_on_p(node, self._dep) and self._fusable(node):
                self.fused.append(i)
                self.outs.append(self._emit(node))

    def _fusable(self, node: MapNode) -> bool:
        if not _depends_on_p(node, self._dep):
            return True  # an input, a constant, or an extra map
        if node.kind in ('input', 'logic', 'not', 'arith'):
            return all(self._fusable(a) for a in node.args if isinstance(a, MapNode))
        return False  # a pool or class max over a P-dependent map

    def _reg(self, key, op: int, a: int = -1, b: int = -1) -> int:
        if key not in self._regs:
            self._regs[key] = self.num_regs
            self.code.append((op, self.num_regs, a, b))
            self.num_regs += 1
        return self._regs[key]

    def _curve(self, slot: Optional[int], reg: int) -> int:
        return reg if slot is None else self._reg(('curve', slot, reg), OP_CURVE, reg, slot)

    def _emit(self, node: MapNode) -> int:
        key = id(node)
        if key in self._regs:
            return self._regs[key]
        kind, args = node.kind, node.args
        if kind == 'input':
            return self._reg(key, {'P': OP_P, 'G': OP_G, 'M': OP_M}[args[0]])
        if kind == 'const':
            self.consts.append(float(args[0]))
            return self._reg(key, OP_CONST, len(self.consts) - 1)
        if not _depends_on_p(node, self._dep):
            self.extras.append(node)
            return self._reg(key, OP_X, len(self.extras) - 1)
        if kind == 'not':
            return self._reg(key, OP_ONE_MINUS, self._emit(args[0]))
        if kind == 'arith':
            op, a, b = args
            code = {'+': OP_ADD, '-': OP_SUB, '*': OP_MUL}[op]
            return self._reg(key, code, self._emit(a), self._emit(b))
        # logic
        op, a_node, b_node, slots = args
        a, b = self._emit(a_node), self._emit(b_node)
        s = slots or (None, ) * (4 if op == '^' else 2)

        def and_(x, y):
            return self._reg(('and', x, y), OP_MUL, x, y)

        def or_(x, y):
            both = self._reg(('sum', x, y), OP_ADD, x, y)
            return self._reg(('or', x, y), OP_SUB, both, and_(x, y))

        if op == '&':
            out = and_(self._curve(s[0], a), self._curve(s[1], b))
        elif op == '|':
            out = or_(self._curve(s[0], a), self._curve(s[1], b))
        else:
            o = or_(self._curve(s[2], a), self._curve(s[3], b))
            n = and_(self._curve(s[0], a), self._curve(s[1], b))
            out = self._reg(('xor', o, n), OP_SUB, o, n)
        self._regs[key] = out
        return out

    def tensors(self, curves: Sequence[Curve]):
        """Program tensors for the given curves, built once per curve list (the
        surrogate passes the same list on every call)."""
        cached = getattr(self, '_tensors', None)
        if cached is not None and cached[0] == tuple(curves):  # curves compare by identity
            return cached[1]
        tables = [c.bezier_table() for c in curves]
        kmax = max([t.shape[0] for t in tables] + [1])
        table = torch.zeros(max(len(tables), 1), kmax, 8, dtype=torch.float64)
        ks = torch.ones(max(len(tables), 1), dtype=torch.long)
        for i, t in enumerate(tables):
            table[i, :t.shape[0]] = t
            ks[i] = t.shape[0]
        code = torch.tensor(self.code, dtype=torch.long).reshape(-1, 4)
        program = (code, torch.tensor(self.consts + [0.0], dtype=torch.float64), table, ks,
                   torch.tensor(self.outs, dtype=torch.long))
        self._tensors = (tuple(curves), program)
        return program


class _FusedStats(torch.autograd.Function):

    @staticmethod
    def forward(ctx, p, label, program, num_regs, ignore_index, *extras):
        code, consts, table, ks, outs = program
        planes = _ext.fused_stats(code, consts, table, ks, num_regs, outs, p, label,
                                  list(extras), ignore_index, MIN_SLOPE_DENOMINATOR, None)
        n, c = p.shape[:2]
        ctx.save_for_backward(p, label, *extras)
        ctx.program, ctx.num_regs, ctx.ignore_index = program, num_regs, ignore_index
        return planes.view(n, c, -1).sum(0).t().to(p.dtype)  # (S, C)

    @staticmethod
    def backward(ctx, grad):
        p, label, *extras = ctx.saved_tensors
        code, consts, table, ks, outs = ctx.program
        dp = _ext.fused_stats(code, consts, table, ks, ctx.num_regs, outs, p, label, extras,
                              ctx.ignore_index, MIN_SLOPE_DENOMINATOR, grad.contiguous())
        return (dp, None, None, None, None) + (None, ) * len(extras)


def plan_fused(compiled: CompiledMetric) -> FusedPlan:
    """The fused plan of a compiled metric (built once, kept on the compiled object)."""
    plan = getattr(compiled, '_fused_plan', None)
    if plan is None:
        plan = FusedPlan(compiled)
        compiled._fused_plan = plan
    return plan


def fused_stat_sums(plan: FusedPlan, curves: Sequence[Curve], p: torch.Tensor,
                    label: torch.Tensor, ignore_index: int,
                    extras: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S, C) sums of the plan's statistics, differentiable with respect to ``p``."""
    program = plan.tensors(curves)
    return _FusedStats.apply(p, label, program, plan.num_regs, ignore_index,
                             *[e.contiguous() for e in extras])
