"""Fused CPU evaluation of the surrogate's per-class sums.

Every statistic ``sum(X)`` whose map ``X`` is built from ``P``, ``G``, ``M``, constants,
elementwise operations (logic with curves, ``not``, ``+ - *``) and square pools
(``erode``, ``dilate``, ``min_pool``, ``max_pool``, on any map, ``P``-dependent or not)
is evaluated by one C++ kernel, plane by plane (one image and one class at a time),
without materializing any (N, C, H, W) intermediate:

* the elementwise parts are small register programs run on blocks of pixels;
* the input of every pool is computed for the plane only, row by row as the programs
  reading its pooled map need it (a *stage*); the programs read pooled maps and stage
  inputs as leaves;
* ``G`` is one-hot, so in a class plane it is 0 except at the pixels labelled with that
  class. The final program is compiled twice: with ``G = 0`` (run on every pixel) and as
  the difference ``(G = 1, M = 1) - (G = 0)`` (run on the labelled pixels only). For
  mIoU this evaluates one curve per element instead of two. Planes of classes absent
  from an image run a third version, folded for ``G = 0`` everywhere;
* the forward pass keeps the stage maps and the partial derivatives of the
  ``P``-dependent stage programs that the backward pass needs; the backward pass runs
  the programs in reverse mode and propagates ``dL/d(map)`` through the pools (the
  gradient of a pool goes to the first maximum of each window, along W then H, as
  :func:`asl.functional._window_max` does), and writes ``dL/dP`` plane by plane;
* from logits, the softmax runs in the same autograd function and its backward turns
  ``dL/dP`` into the logits' gradient in place.

Class maxima (``max_c``) of ``P``-independent maps (BIoU's band) are computed by the same
kernel in a map mode and fed in as extra single-channel maps; anything else (class
maxima of ``P``-dependent maps, statistics that are not per class) stays on the
PyTorch path. The result is the same function as :func:`asl.functional.evaluate_stats`
(tested against it); only the order of floating-point operations differs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ._ext import ext as _ext
from .curves import MIN_SLOPE_DENOMINATOR, Curve
from .formula.compiler import CompiledMetric, MapNode

__all__ = ['FusedPlan', 'plan_fused', 'fused_stat_sums', 'fused_class_max']

(OP_P, OP_G, OP_M, OP_X, OP_CONST, OP_CURVE, OP_MUL, OP_ADD, OP_SUB, OP_ONE_MINUS, OP_POOL,
 OP_STAGEIN) = range(12)

Value = Tuple[str, float]  # ('c', constant) or ('r', register)


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


class _Program:
    """One register program: rows ``(op, dst, a, b, active)``, one register per row,
    common subexpressions shared, identities with the constants 0 and 1 folded
    (``x * 0``, ``x * 1``, ``x + 0``, ``x - 0``: exact in floating point)."""

    def __init__(self, consts: List[float]):
        self.consts = consts  # shared by all programs of a plan
        self.code: List[List[int]] = []
        self.active: List[bool] = []
        self._keys: Dict[Tuple, Value] = {}
        self.outs: List[Value] = []

    def reg(self, key, op: int, a: int = -1, b: int = -1, active: bool = False) -> Value:
        if key not in self._keys:
            self._keys[key] = ('r', len(self.code))
            self.code.append([op, len(self.code), a, b, int(active)])
            self.active.append(active)
        return self._keys[key]

    def _act(self, v: Value) -> bool:
        return v[0] == 'r' and self.active[int(v[1])]

    def materialize(self, v: Value) -> int:
        if v[0] == 'r':
            return int(v[1])
        value = float(v[1])
        if value not in self.consts:
            self.consts.append(value)
        return int(self.reg(('const', value), OP_CONST, self.consts.index(value))[1])

    def curve(self, slot: Optional[int], v: Value) -> Value:
        if slot is None:
            return v
        if v[0] == 'c' and (v[1] <= 0 or v[1] >= 1):
            return ('c', 0.0 if v[1] <= 0 else 1.0)  # the truth table holds exactly
        r = self.materialize(v)
        return self.reg(('curve', slot, r), OP_CURVE, r, slot, self._act(v))

    def binary(self, op: str, x: Value, y: Value) -> Value:
        if x[0] == 'c' and y[0] == 'c':
            a, b = x[1], y[1]
            return ('c', a * b if op == '*' else (a + b if op == '+' else a - b))
        if op == '*':
            for u, w in ((x, y), (y, x)):
                if u == ('c', 0.0):
                    return ('c', 0.0)
                if u == ('c', 1.0):
                    return w
        elif op == '+':
            for u, w in ((x, y), (y, x)):
                if u == ('c', 0.0):
                    return w
        elif y == ('c', 0.0):
            return x
        a, b = self.materialize(x), self.materialize(y)
        code = {'*': OP_MUL, '+': OP_ADD, '-': OP_SUB}[op]
        if op != '-' and a > b:
            a, b = b, a  # commutative: one register for x * y and y * x
        return self.reg((op, a, b), code, a, b, self._act(x) or self._act(y))

    def one_minus(self, x: Value) -> Value:
        if x[0] == 'c':
            return ('c', 1.0 - x[1])
        r = self.materialize(x)
        return self.reg(('1-', r), OP_ONE_MINUS, r, -1, self._act(x))

    def live_code(self) -> Tuple[List[List[int]], List[int]]:
        """The rows the outputs need, renumbered, each with a sixth column: whether the
        backward pass runs it (its value is read by the reverse sweep, or it is an active
        curve, whose derivative the sweep reads); and the output registers (-1: a
        constant)."""
        n = len(self.code)
        operands = {OP_CURVE: 1, OP_ONE_MINUS: 1, OP_MUL: 2, OP_ADD: 2, OP_SUB: 2}
        live = [False] * n
        for v in self.outs:
            if v[0] == 'r':
                live[int(v[1])] = True
        for op, dst, a, b, _ in reversed(self.code):
            if live[dst] and op in operands:
                live[a] = True
                if operands[op] == 2:
                    live[b] = True
        need = [False] * n
        for op, dst, a, b, act in reversed(self.code):
            if not live[dst]:
                continue
            if act and op == OP_MUL:
                need[b] |= bool(self.active[a])
                need[a] |= bool(self.active[b])
            if act and op == OP_CURVE:
                need[dst] = need[a] = True
            if need[dst] and op in operands:
                need[a] = True
                if operands[op] == 2:
                    need[b] = True
        new: Dict[int, int] = {}
        code = []
        for op, dst, a, b, act in self.code:
            if not live[dst]:
                continue
            new[dst] = len(code)
            if op in operands:
                a = new[a]
                if operands[op] == 2:
                    b = new[b]
            code.append([op, new[dst], a, b, act, int(need[dst])])
        return code, [new[int(v[1])] if v[0] == 'r' else -1 for v in self.outs]

    def tensors(self):
        rows, regs = self.live_code()
        code = torch.tensor(rows, dtype=torch.long).reshape(-1, 6)
        outs = torch.tensor(regs, dtype=torch.long)
        oconst = torch.tensor([float(v[1]) if v[0] == 'c' else 0.0 for v in self.outs],
                              dtype=torch.float64)
        return code, outs, oconst


class _Emitter:
    """Emits map nodes into a program; ``g``/``m``: None (read per pixel) or a
    constant substituted for ``G``/``M``; ``stage_limit``: stage inputs below this index
    are read from their materialized planes instead of being recomputed."""

    def __init__(self, plan: 'FusedPlan', prog: _Program, g: Optional[float],
                 m: Optional[float], stage_limit: int, fold_pools: bool = False,
                 absent: bool = False):
        self.plan, self.prog, self.g, self.m = plan, prog, g, m
        self.stage_limit = stage_limit
        self.fold_pools = fold_pools  # a pool of a constant map is that constant
        self.absent = absent  # G = 0 everywhere: stage maps known constant there are
        self.memo: Dict[int, Value] = {}

    def __call__(self, node: MapNode) -> Value:
        key = id(node)
        if key not in self.memo:
            self.memo[key] = self._emit(node)
        return self.memo[key]

    def _emit(self, node: MapNode) -> Value:
        plan, prog = self.plan, self.prog
        kind, args = node.kind, node.args
        if self.absent:
            j = plan.stage_of_pool.get(id(node), plan.stage_of_input.get(id(node)))
            value = plan.stages[j].get('absent', float('nan')) if j is not None else None
            if value is not None and value == value:  # (not NaN)
                return ('c', value)
        j = plan.stage_of_input.get(id(node))
        if j is not None and j < self.stage_limit and kind not in ('input', 'const'):
            return prog.reg(('stagein', j), OP_STAGEIN, j, -1, plan.stages[j]['active'])
        if kind == 'input':
            name = args[0]
            if name == 'P':
                return prog.reg('P', OP_P, active=True)
            fixed = self.g if name == 'G' else self.m
            if fixed is not None:
                return ('c', float(fixed))
            return prog.reg(name, OP_G if name == 'G' else OP_M)
        if kind == 'const':
            return ('c', float(args[0]))
        if kind == 'pool':
            if args[2] == 1:
                return self(args[1])
            if self.fold_pools:
                inner = self(args[1])
                if inner[0] == 'c':
                    return inner
            j = plan.stage_of_pool[id(node)]
            return prog.reg(('pool', j), OP_POOL, j, -1, plan.stages[j]['active'])
        if kind == 'max_c':
            j = plan.extra_index[id(node)]
            return prog.reg(('x', j), OP_X, j)
        if kind == 'not':
            return prog.one_minus(self(args[0]))
        if kind == 'arith':
            op, a, b = args
            return prog.binary(op, self(a), self(b))
        # logic
        op, a_node, b_node, slots = args
        a, b = self(a_node), self(b_node)
        s = slots or (None, ) * (4 if op == '^' else 2)

        def and_(x, y):
            return prog.binary('*', x, y)

        def or_(x, y):
            return prog.binary('-', prog.binary('+', x, y), and_(x, y))

        if op == '&':
            return and_(prog.curve(s[0], a), prog.curve(s[1], b))
        if op == '|':
            return or_(prog.curve(s[0], a), prog.curve(s[1], b))
        o = or_(prog.curve(s[2], a), prog.curve(s[3], b))
        return prog.binary('-', o, and_(prog.curve(s[0], a), prog.curve(s[1], b)))


class FusedPlan:
    """Programs and pool stages for the fusable statistics of one compiled metric (or,
    with ``map_node``, for one per-class map reduced by a class maximum)."""

    def __init__(self, compiled: Optional[CompiledMetric], map_node: Optional[MapNode] = None):
        self.compiled = compiled
        self._dep: Dict[int, bool] = {}
        self.consts: List[float] = []
        self.stages: List[dict] = []
        self.stage_of_pool: Dict[int, int] = {}
        self.stage_of_input: Dict[int, int] = {}
        self.extras: List[MapNode] = []  # max_c nodes, computed before the kernel runs
        self.extra_plans: List[Optional['FusedPlan']] = []
        self.extra_index: Dict[int, int] = {}
        self.fused: List[int] = []  # indices of the statistics in the kernel
        if map_node is not None:
            roots = [map_node]
        else:
            for i, node in enumerate(compiled.stats):
                if node.per_class and self._supported(node, {}):
                    self.fused.append(i)
            roots = [compiled.stats[i] for i in self.fused]
        for node in roots:
            self._collect(node, set())
        nst = len(self.stages)
        for st in self.stages:
            # the stage's map in a plane whose class is absent from the image (G = 0
            # everywhere), when that is a constant (inner stages first)
            absent = _Emitter(self, _Program([]), 0.0, None, 0, fold_pools=True,
                              absent=True)(st['input'])
            st['absent'] = (float(absent[1]) if absent[0] == 'c' and not st['active'] else
                            float('nan'))
        self.final = _Program(self.consts)
        self.correction = _Program(self.consts)
        self.absent_final = _Program(self.consts)  # the final program where G = 0
        if map_node is not None:
            self.final.outs = [_Emitter(self, self.final, None, None, nst)(map_node)]
            self.absent_final.outs = [_Emitter(self, self.absent_final, 0.0, None, nst,
                                               fold_pools=True, absent=True)(map_node)]
        else:
            dense = _Emitter(self, self.final, 0.0, None, nst)
            one = _Emitter(self, self.correction, 1.0, 1.0, nst)
            zero = _Emitter(self, self.correction, 0.0, 1.0, nst)
            absent = _Emitter(self, self.absent_final, 0.0, None, nst, fold_pools=True,
                              absent=True)
            for node in roots:
                self.final.outs.append(dense(node))
                self.absent_final.outs.append(absent(node))
                v1, v0 = one(node), zero(node)
                # the same register in both: the statistic does not depend on G here
                self.correction.outs.append(('c', 0.0) if v1 == v0 else
                                            self.correction.binary('-', v1, v0))
        self.stage_programs = []
        for j, st in enumerate(self.stages):
            prog = _Program(self.consts)
            prog.outs = [_Emitter(self, prog, None, None, j)(st['input'])]
            self.stage_programs.append(prog)
        self.has_correction = any(v != ('c', 0.0) for v in self.correction.outs)
        self._tensors = None

    # -- analysis ---------------------------------------------------------------------
    def _supported(self, node: MapNode, memo: Dict[int, bool]) -> bool:
        key = id(node)
        if key not in memo:
            if node.kind == 'max_c':
                # a class maximum of a P-independent map is an extra input
                memo[key] = not _depends_on_p(node, self._dep)
            else:
                memo[key] = all(self._supported(a, memo) for a in node.args
                                if isinstance(a, MapNode))
        return memo[key]

    def _collect(self, node: MapNode, seen: set) -> None:
        """Pools in dependency order (inner first) and extras."""
        if id(node) in seen:
            return
        seen.add(id(node))
        if node.kind == 'max_c':
            if id(node) not in self.extra_index:
                self.extra_index[id(node)] = len(self.extras)
                self.extras.append(node)
                self.extra_plans.append(_class_max_plan(node))
            return
        for a in node.args:
            if isinstance(a, MapNode):
                self._collect(a, seen)
        if node.kind == 'pool' and node.args[2] > 1 and id(node) not in self.stage_of_pool:
            how, a, k = node.args
            j = len(self.stages)
            self.stage_of_pool[id(node)] = j
            self.stage_of_input.setdefault(id(a), j)
            direct_p = a.kind == 'input' and a.args[0] == 'P'
            self.stages.append(dict(input=a, how=how, r=k // 2, direct_p=direct_p,
                                    active=_depends_on_p(a, self._dep)))

    # -- kernel arguments -------------------------------------------------------------
    def tensors(self, curves: Sequence[Curve]):
        """Program tensors for the given curves, built once per curve list (the
        surrogate passes the same list on every call)."""
        cached = self._tensors
        if cached is not None and cached[0] == tuple(curves):  # curves compare by identity
            return cached[1]
        tables = [c.bezier_table() for c in curves]
        kmax = max([t.shape[0] for t in tables] + [1])
        table = torch.zeros(max(len(tables), 1), kmax, 8, dtype=torch.float64)
        ks = torch.ones(max(len(tables), 1), dtype=torch.long)
        for i, t in enumerate(tables):
            table[i, :t.shape[0]] = t
            ks[i] = t.shape[0]
        progs = [self.final, self.correction, self.absent_final] + self.stage_programs
        codes, outs, oconsts = zip(*[p.tensors() for p in progs])
        # planes the backward pass reads: leaves whose values the reverse sweeps of the
        # final and correction programs need, and the inputs of the active pools
        save_in = [s['active'] and not s['direct_p'] for s in self.stages]
        save_out = [False] * len(self.stages)
        for code in codes[:3]:  # (the P-independent stages are recomputed)
            for op, _, a, _, _, need in code.tolist():
                if need and op == OP_STAGEIN and self.stages[a]['active']:
                    save_in[a] = True
                elif need and op == OP_POOL and self.stages[a]['active']:
                    save_out[a] = True
        # stages a plane whose class is absent needs: its input, its pool
        need_in, need_pool = [False] * len(self.stages), [False] * len(self.stages)

        def refs(code):
            for op, _, a, _, _, _ in code.tolist():
                if op == OP_POOL:
                    need_pool[a] = True
                elif op == OP_STAGEIN:
                    need_in[a] = True

        refs(codes[2])
        for j in reversed(range(len(self.stages))):
            need_in[j] |= need_pool[j]
            if need_in[j] and not self.stages[j]['direct_p']:
                refs(codes[3 + j])
        masks = self._pool_masks(codes)
        stages = torch.tensor([[0 if s['how'] == 'max' else 1, s['r'], int(s['direct_p']),
                                int(s['active']), int(i), int(o), int(a), int(b), *mk]
                               for s, i, o, a, b, mk in zip(self.stages, save_in, save_out,
                                                             need_in, need_pool, masks)],
                              dtype=torch.long).reshape(-1, 10)
        absent = torch.tensor([s['absent'] for s in self.stages], dtype=torch.float64)
        program = (list(codes), list(outs), list(oconsts), stages, absent,
                   torch.tensor(self.consts + [0.0], dtype=torch.float64), table, ks,
                   int(self.has_correction))
        self._tensors = (tuple(curves), program)
        return program


    def _pool_masks(self, codes) -> List[Tuple[int, int]]:
        """Per stage, the leaf (op, a) of a P-independent map Y such that the pooled map
        is only used in products with Y (BF1's ``dilate(bp) & bg``): the kernel may then
        compute the pool only where Y is not 0. (-1, -1) where there is none."""
        nst = len(self.stages)
        mask: List[Optional[Tuple[int, int]]] = [None] * nst
        bad = [False] * nst
        for k, code in enumerate(codes):
            rows = code.tolist()
            pool_reg = {}  # register -> stage of its POOL leaf
            for op, dst, a, b, act, _ in rows:
                if op == OP_POOL:
                    if k >= 3:
                        bad[a] = True  # read by a stage program
                    pool_reg[dst] = a
            if not pool_reg:
                continue
            leaf = {dst: (op, a) for op, dst, a, b, act, _ in rows
                    if op in (OP_M, OP_X, OP_POOL, OP_STAGEIN) and not act}
            for op, dst, a, b, act, _ in rows:
                for reg, other in ((a, b), (b, a)) if op == OP_MUL else ((a, None), (b, None)):
                    if reg not in pool_reg or op in (OP_POOL, OP_STAGEIN, OP_X, OP_CONST):
                        continue
                    j = pool_reg[reg]
                    if op != OP_MUL or other not in leaf:
                        bad[j] = True
                    elif mask[j] not in (None, leaf[other]):
                        bad[j] = True
                    else:
                        mask[j] = leaf[other]
        for k, prog in enumerate([self.final, self.correction, self.absent_final]):
            _, regs = prog.live_code()
            rows = codes[k].tolist()
            for r in regs:
                if r >= 0 and rows[r][0] == OP_POOL:
                    bad[rows[r][2]] = True  # a statistic of the pool itself
        out = []
        for j in range(nst):
            m = mask[j]
            ok = m is not None and not bad[j] and (m[0] in (OP_M, OP_X) or m[1] < j)
            out.append(m if ok else (-1, -1))
        return out


def _class_max_plan(node: MapNode) -> Optional[FusedPlan]:
    """Kernel plan of a P-independent class maximum, or None (PyTorch computes it)."""
    a, _ = node.args
    dep: Dict[int, bool] = {}
    if not a.per_class or _depends_on_p(a, dep):
        return None

    def plain(n: MapNode) -> bool:  # no nested class maximum
        return n.kind != 'max_c' and all(plain(x) for x in n.args if isinstance(x, MapNode))

    return FusedPlan(None, map_node=a) if plain(a) else None


def _run(program, p, label, extras, ignore_index, mode=0, grad=None, saved=(), save=False,
         c_lo=0, out_slot=-1):
    codes, outs, oconsts, stages, absent, consts, table, ks, corr = program
    return _ext.fused_engine(codes, outs, oconsts, stages, absent, consts, table, ks, bool(corr), p,
                             label, list(extras), ignore_index, MIN_SLOPE_DENOMINATOR, grad,
                             list(saved), save, mode, c_lo, out_slot)


class _FusedStats(torch.autograd.Function):
    """The plan's sums of ``p``, or with ``from_logits`` of ``softmax(x, 1)`` (the softmax
    and its backward then run here: its output is kept, and the gradient is turned into
    the logits' gradient in place)."""

    @staticmethod
    def forward(ctx, x, label, program, ignore_index, from_logits, *extras):
        save = ctx.needs_input_grad[0]
        p = _ext.softmax_forward(x) if from_logits else x
        res = _run(program, p, label, extras, ignore_index, save=save)
        n, c = p.shape[:2]
        ctx.save_for_backward(p, label, *extras, *res[1:])
        ctx.program, ctx.ignore_index, ctx.num_extras = program, ignore_index, len(extras)
        ctx.from_logits = from_logits
        return res[0].view(n, c, -1).sum(0).t().to(p.dtype)  # (S, C)

    @staticmethod
    def backward(ctx, grad):
        p, label, *rest = ctx.saved_tensors
        extras, saved = rest[:ctx.num_extras], rest[ctx.num_extras:]
        if getattr(ctx, 'consumed', False):  # a second backward (retain_graph): recompute
            saved = _run(ctx.program, p, label, extras, ctx.ignore_index, save=True)[1:]
        # dL/dP goes into the first kept map (no new tensor to fault in); it is used up
        (dp, ) = _run(ctx.program, p, label, extras, ctx.ignore_index, grad=grad.contiguous(),
                      saved=saved, out_slot=0 if saved else -1)
        ctx.consumed = bool(saved)
        if ctx.from_logits:
            _ext.softmax_backward_(p, dp)
        return (dp, None, None, None, None) + (None, ) * len(extras)


def plan_fused(compiled: CompiledMetric) -> FusedPlan:
    """The fused plan of a compiled metric (built once, kept on the compiled object)."""
    plan = getattr(compiled, '_fused_plan', None)
    if plan is None:
        plan = FusedPlan(compiled)
        compiled._fused_plan = plan
    return plan


def fused_class_max(plan: FusedPlan, index: int, curves: Sequence[Curve], p: torch.Tensor,
                    label: torch.Tensor, ignore_index: int) -> Optional[torch.Tensor]:
    """Extra map ``index`` of the plan, (N, 1, H, W), or None if the kernel cannot
    compute it."""
    sub = plan.extra_plans[index]
    if sub is None:
        return None
    skip_bg = plan.extras[index].args[1]
    with torch.no_grad():
        return _run(sub.tensors(curves), p.detach(), label, [], ignore_index, mode=1,
                    c_lo=1 if skip_bg else 0)[0]


def fused_stat_sums(plan: FusedPlan, curves: Sequence[Curve], p: torch.Tensor,
                    label: torch.Tensor, ignore_index: int, extras: Sequence[torch.Tensor],
                    from_logits: bool = False) -> torch.Tensor:
    """(S, C) sums of the plan's statistics, differentiable with respect to ``p`` (or, with
    ``from_logits``, with respect to the logits ``p`` whose softmax over dim 1 is P)."""
    program = plan.tensors(curves)
    return _FusedStats.apply(p.contiguous(), label, program, ignore_index, from_logits,
                             *[e.contiguous() for e in extras])
