"""Compile a metric formula into an intermediate form shared by two evaluators.

One compilation yields:

* ``stats``: the per-pixel expressions that are summed (``sum(...)`` calls). These are
  the sufficient statistics: per-class sums pooled over a batch or a whole set.
* ``result``: the arithmetic on those sums (divisions, class means, totals).
* ``slots``: one entry per curve, i.e. per non-binary operand of every logical
  operation that is not marked ``plain``, in the order they appear. This is the
  parameter layout of the surrogate.

The surrogate (:mod:`asl.loss.surrogate`) evaluates the per-pixel part on softmax
probabilities with a curve per slot; the exact evaluator (:mod:`asl.loss.exact`)
evaluates it on one-hot predictions with plain logic and accumulates the sums in
float64 across batches. Both finish with :func:`evaluate_result`.

Names available in formulas:

======================  =========================================================
``P``, ``G``            prediction and ground truth, one map per class
``M``                   valid-pixel mask (0 where the label is ``ignore_index``)
``tol``, ``drop_bg``    the metric options (a number and a boolean)
``true``, ``false``     booleans
``mIoU`` ... ``BF1``    a built-in metric (its own curves; e.g. ``mIoU + BIoU``)
======================  =========================================================

Operators: ``&`` AND, ``|`` OR, ``^`` XOR, ``~`` NOT, ``+ - * /``, comparisons.
Functions: ``and(a, b)``, ``or(a, b)``, ``xor(a, b)``, ``not(a)``, ``plain(x)``
(logical operations written directly inside get no curve), ``erode(X)`` (3x3 min
pool, border padded with 1), ``dilate(X, r=tol)`` (square max pool of size 2r+1),
``min_pool(X, k)``, ``max_pool(X, k)``, ``boundary(X)`` (``X ^ erode(X)``),
``max_c(X, skip_bg=false)`` (max over classes), ``sum(X)`` (per-class sum over
images and pixels), ``total(v)`` (sum over classes), ``mean_c(v, where=..., skip_bg=false)``
(class mean), ``div0(a, b)`` (a / b, but 0 where b is 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .graph import (Arith, ClassMax, Const, Input, Logic, LogicOp, MapNode, Not, Pool, PoolKind,
                    StatArith, StatCompare, StatConst, StatDiv, StatMeanC, StatNode, StatSum,
                    StatTotal)
from .nodes import Binary, Call, Name, Node, Number, Program, Unary
from .parser import FormulaSyntaxError, parse

__all__ = [
    'CompiledMetric', 'CurveSlot', 'FormulaError', 'compile_formula', 'unparse', 'MapNode',
    'StatNode'
]

FormulaError = FormulaSyntaxError


@dataclass
class CurveSlot:
    """One curve of the surrogate: which operand of which logical operation."""
    index: int
    op: str
    operand: int  # 1 or 2
    operand_text: str
    pos: int

    def describe(self) -> str:
        return f'curve {self.index}: {self.op} operand {self.operand} ({self.operand_text})'


@dataclass(eq=False)
class CompiledMetric:
    """A compiled formula (see the module docstring and :mod:`asl.formula.graph`).

    Attributes:
        name: display name.
        text: the formula text.
        maps: every map node the statistics read, in topological order
            (``maps[i].index == i``).
        stats: the map of each ``sum(...)``, in the order of :class:`StatSum` indices.
        result: the statistic node of the whole formula (one number).
        slots: one entry per curve.
        tol, drop_bg: the compile options.
    """
    name: str
    text: str
    maps: List[MapNode]
    stats: List[MapNode]
    result: StatNode
    slots: List[CurveSlot]
    tol: int
    drop_bg: bool

    @property
    def num_curves(self) -> int:
        return len(self.slots)

    def layout(self) -> str:
        lines = [f'{self.name}: {self.num_curves} curve(s)']
        lines += ['  ' + s.describe() for s in self.slots]
        return '\n'.join(lines)


# ----------------------------------------------------------------------------------
# Lowering
# ----------------------------------------------------------------------------------
_LOGIC_FUNCS = {'and': '&', 'or': '|', 'xor': '^'}
_MAP_FUNCS = ('erode', 'dilate', 'min_pool', 'max_pool', 'boundary', 'max_c', 'plain', 'not')
_STAT_FUNCS = ('sum', 'total', 'mean_c', 'div0')
_OP_NAMES = {'&': 'AND', '|': 'OR', '^': 'XOR'}


def unparse(node: Node) -> str:
    """Formula text of a syntax tree (fully parenthesized where needed)."""
    if isinstance(node, Number):
        v = node.value
        return str(int(v)) if v == int(v) else repr(v)
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Unary):
        return f'{node.op}{unparse(node.operand)}'
    if isinstance(node, Binary):
        return f'({unparse(node.left)} {node.op} {unparse(node.right)})'
    if isinstance(node, Call):
        parts = [unparse(a) for a in node.args]
        parts += [f'{k}={unparse(v)}' for k, v in node.kwargs.items()]
        return f'{node.func}({", ".join(parts)})'
    raise TypeError(node)


@dataclass
class _Scope:
    bindings: Dict[str, object] = field(default_factory=dict)


class _Compiler:

    def __init__(self, tol: int, drop_bg: bool, builtins: Dict[str, str]):
        self.tol = tol
        self.drop_bg = drop_bg
        self.builtins = {k.lower(): v for k, v in builtins.items()}
        self.stats: List[MapNode] = []
        self.created: List[MapNode] = []  # every map node, in creation order
        self.slots: List[CurveSlot] = []
        self.text = ''
        self._expanding: List[str] = []

    def error(self, message: str, node) -> None:
        pos = node if isinstance(node, int) else node.pos
        raise FormulaError(message, self.text, pos)

    # -- entry ----------------------------------------------------------------------
    def program(self, prog: Program) -> StatNode:
        saved_text, self.text = self.text, prog.text
        scope = _Scope()
        for name, value, pos in prog.bindings:
            if name in ('P', 'G', 'M', 'tol', 'drop_bg', 'true', 'false'):
                self.error(f'cannot bind the reserved name {name!r}', pos)
            scope.bindings[name] = self.lower(value, scope, plain=False)
        out = self.lower(prog.body, scope, plain=False)
        if isinstance(out, MapNode):
            self.error('a formula must reduce its maps with sum(...), got a per-pixel '
                       'expression', prog.body)
        if not isinstance(out, StatNode):
            self.error('a formula must end in an expression of statistics, got a constant',
                       prog.body)
        if out.per_class:
            self.error('a formula must reduce to one number: wrap the per-class values in '
                       'mean_c(...) or total(...)', prog.body)
        self.text = saved_text
        return out

    # -- constants ------------------------------------------------------------------
    def constant(self, node: Node, scope: _Scope, what: str):
        value = self.lower(node, scope, plain=False)
        if isinstance(value, (MapNode, StatNode)):
            self.error(f'{what} must be a constant (a number, true/false, tol or drop_bg)',
                       node)
        return value

    def int_constant(self, node: Node, scope: _Scope, what: str, odd: bool = False) -> int:
        value = self.constant(node, scope, what)
        if isinstance(value, bool) or float(value) != int(value) or value < 0 or (
                odd and int(value) % 2 != 1):
            kind = 'an odd positive integer' if odd else 'a non-negative integer'
            self.error(f'{what} must be {kind}, got {value!r}', node)
        return int(value)

    def bool_constant(self, node: Optional[Node], scope: _Scope, what: str) -> bool:
        if node is None:
            return False
        value = self.constant(node, scope, what)
        if not isinstance(value, bool):
            self.error(f'{what} must be true or false, got {value!r}', node)
        return value

    # -- lowering ---------------------------------------------------------------------
    def lower(self, node: Node, scope: _Scope, plain: bool):
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Name):
            return self.name(node, scope)
        if isinstance(node, Unary):
            a = self.lower(node.operand, scope, plain)
            if node.op == '~':
                return self.logic_not(a, node.operand)
            return self.arith('*', -1.0, a, node)
        if isinstance(node, Binary):
            if node.op in _OP_NAMES:
                return self.logic(node.op, node.left, node.right, scope, plain, node)
            a = self.lower(node.left, scope, plain)
            b = self.lower(node.right, scope, plain)
            if node.op in ('>', '>=', '<', '<=', '==', '!='):
                return self.compare(node.op, a, b, node)
            return self.arith(node.op, a, b, node)
        if isinstance(node, Call):
            return self.call(node, scope, plain)
        raise TypeError(node)  # pragma: no cover

    def name(self, node: Name, scope: _Scope):
        n = node.name
        if n in scope.bindings:
            return scope.bindings[n]
        if n in ('P', 'G', 'M'):
            return self.node(Input(n, binary=(n != 'P'), per_class=(n != 'M'), soft=(n == 'P')))
        if n == 'tol':
            return float(self.tol)
        if n == 'drop_bg':
            return bool(self.drop_bg)
        if n in ('true', 'false'):
            return n == 'true'
        if n.lower() in self.builtins:
            key = n.lower()
            if key in self._expanding:
                self.error(f'built-in metric {n!r} refers to itself', node)
            self._expanding.append(key)
            try:
                return self.program(parse(self.builtins[key]))
            finally:
                self._expanding.pop()
        known = sorted(set(scope.bindings) | {'P', 'G', 'M', 'tol', 'drop_bg'} |
                       set(self.builtins))
        self.error(f'unknown name {n!r} (known: {", ".join(known)})', node)

    def as_map(self, value, node, what: str) -> MapNode:
        if isinstance(value, MapNode):
            return value
        if isinstance(value, StatNode):
            self.error(f'{what} needs a per-pixel map, got a statistic', node)
        if isinstance(value, bool):
            self.error(f'{what} needs a per-pixel map, got a boolean', node)
        return self.node(Const(float(value), binary=value in (0.0, 1.0), per_class=False,
                               soft=False))

    def logic(self, op: str, left: Node, right: Node, scope: _Scope, plain: bool, node: Node):
        a = self.as_map(self.lower(left, scope, plain), left, f'{_OP_NAMES[op]}')
        b = self.as_map(self.lower(right, scope, plain), right, f'{_OP_NAMES[op]}')
        return self.logic_nodes(op, a, b, (unparse(left), unparse(right)), node.pos, plain)

    def logic_not(self, a, node):
        a = self.as_map(a, node, 'NOT')
        return self.node(Not(a, binary=a.binary, per_class=a.per_class, soft=a.soft))

    def arith(self, op: str, a, b, node):
        if isinstance(a, bool) or isinstance(b, bool):
            self.error(f'arithmetic {op!r} on a boolean', node)
        if not isinstance(a, (MapNode, StatNode)) and not isinstance(b, (MapNode, StatNode)):
            if op == '/' and b == 0:
                self.error('division by the constant 0', node)
            return {'+': a + b, '-': a - b, '*': a * b, '/': a / b if b else 0.0}[op]
        if isinstance(a, MapNode) or isinstance(b, MapNode):
            if isinstance(a, StatNode) or isinstance(b, StatNode):
                self.error(f'{op!r} mixes a per-pixel map with a statistic; sum(...) the map '
                           'first', node)
            if op == '/':
                self.error('division of per-pixel maps is not supported; divide sums instead',
                           node)
            a = self.as_map(a, node, op)
            b = self.as_map(b, node, op)
            binary = op == '*' and a.binary and b.binary
            return self.node(Arith(op, a, b, binary=binary, per_class=a.per_class or b.per_class,
                                   soft=a.soft or b.soft))
        a, b = self.as_stat(a), self.as_stat(b)
        if op == '/':
            return StatDiv(a, b, False, per_class=a.per_class or b.per_class)
        return StatArith(op, a, b, per_class=a.per_class or b.per_class)

    def as_stat(self, value) -> StatNode:
        if isinstance(value, StatNode):
            return value
        return StatConst(float(value), per_class=False)

    def compare(self, op: str, a, b, node):
        if isinstance(a, MapNode) or isinstance(b, MapNode):
            self.error('comparisons apply to statistics, not per-pixel maps', node)
        a, b = self.as_stat(a), self.as_stat(b)
        return StatCompare(op, a, b, per_class=a.per_class or b.per_class)

    def call(self, node: Call, scope: _Scope, plain: bool):
        f = node.func
        allowed_kw = {'dilate': ('r', ), 'max_c': ('skip_bg', ), 'mean_c': ('where', 'skip_bg')}
        nargs = {'and': 2, 'or': 2, 'xor': 2, 'not': 1, 'plain': 1, 'erode': 1, 'dilate': (1, 2),
                 'min_pool': 2, 'max_pool': 2, 'boundary': 1, 'max_c': 1, 'sum': 1, 'total': 1,
                 'mean_c': 1, 'div0': 2}
        if f not in nargs:
            self.error(f'unknown function {f!r} (known: {", ".join(sorted(nargs))})', node)
        expected = nargs[f] if isinstance(nargs[f], tuple) else (nargs[f], )
        if len(node.args) not in expected:
            self.error(f'{f}() takes {" or ".join(map(str, expected))} positional argument(s), '
                       f'got {len(node.args)}', node)
        for key in node.kwargs:
            if key not in allowed_kw.get(f, ()):
                self.error(f'{f}() got an unknown keyword argument {key!r}', node.kwargs[key])
        args = node.args
        if f in _LOGIC_FUNCS:
            return self.logic(_LOGIC_FUNCS[f], args[0], args[1], scope, plain, node)
        if f == 'plain':
            return self.lower(args[0], scope, plain=True)
        a = self.lower(args[0], scope, plain)
        if f == 'not':
            return self.logic_not(a, args[0])
        if f in ('erode', 'dilate', 'min_pool', 'max_pool', 'boundary', 'max_c', 'sum'):
            a = self.as_map(a, args[0], f'{f}()')
        if f == 'erode':
            return self.pool(PoolKind.MIN, a, 1)
        if f in ('min_pool', 'max_pool'):
            k = self.int_constant(args[1], scope, f'{f}() kernel size', odd=True)
            return self.pool(PoolKind(f[:3]), a, k // 2)
        if f == 'dilate':
            r_node = args[1] if len(args) > 1 else node.kwargs.get('r')
            r = self.tol if r_node is None else self.int_constant(r_node, scope, 'dilate() radius')
            if r == 0:
                return a
            return self.pool(PoolKind.MAX, a, r)
        if f == 'boundary':
            eroded = self.pool(PoolKind.MIN, a, 1)
            text = unparse(args[0])
            return self.logic_nodes('^', a, eroded, (text, f'erode({text})'), node.pos, plain)
        if f == 'max_c':
            skip = self.bool_constant(node.kwargs.get('skip_bg'), scope, 'max_c() skip_bg')
            return self.node(ClassMax(a, skip, binary=a.binary, per_class=False, soft=a.soft))
        if f == 'sum':
            self.stats.append(a)
            return StatSum(len(self.stats) - 1, per_class=a.per_class)
        # statistics functions
        if isinstance(a, MapNode):
            self.error(f'{f}() needs statistics; sum(...) the map first', args[0])
        a = self.as_stat(a)
        if f == 'total':
            return StatTotal(a, per_class=False)
        if f == 'div0':
            b = self.lower(args[1], scope, plain)
            if isinstance(b, MapNode):
                self.error('div0() needs statistics; sum(...) the map first', args[1])
            b = self.as_stat(b)
            return StatDiv(a, b, True, per_class=a.per_class or b.per_class)
        # mean_c
        where = node.kwargs.get('where')
        if where is not None:
            w = self.lower(where, scope, plain)
            if isinstance(w, MapNode):
                self.error('mean_c(where=...) needs a per-class condition on statistics',
                           where)
            where = self.as_stat(w)
        skip = self.bool_constant(node.kwargs.get('skip_bg'), scope, 'mean_c() skip_bg')
        return StatMeanC(a, where, skip, per_class=False)

    def logic_nodes(self, op: str, a: MapNode, b: MapNode, texts: Tuple[str, str], pos: int,
                    plain: bool) -> MapNode:
        """A logical operation on lowered operands; allocates one curve per soft operand.

        XOR(a, b) = OR(a, b) - AND(a, b): the AND's operands get curves first, then the OR's.
        """
        pairs = {LogicOp.AND: [None, None], LogicOp.OR: [None, None]}
        if not plain:
            parts = (LogicOp.AND, LogicOp.OR) if op == '^' else (LogicOp(op), )
            for part in parts:
                label = _OP_NAMES[part.value] if op != '^' else f'XOR/{_OP_NAMES[part.value]}'
                for k, (val, text) in enumerate(zip((a, b), texts), start=1):
                    if not val.binary:
                        self.slots.append(CurveSlot(len(self.slots), label, k, text, pos))
                        pairs[part][k - 1] = len(self.slots) - 1
        return self.node(Logic(LogicOp(op), a, b, and_curves=tuple(pairs[LogicOp.AND]),
                               or_curves=tuple(pairs[LogicOp.OR]), binary=a.binary and b.binary,
                               per_class=a.per_class or b.per_class, soft=a.soft or b.soft))

    def node(self, node: MapNode) -> MapNode:
        """Register a new map node (creation order is a topological order)."""
        self.created.append(node)
        return node

    def pool(self, kind: PoolKind, a: MapNode, radius: int) -> MapNode:
        if radius == 0:
            return a
        return self.node(Pool(kind, a, radius, binary=a.binary, per_class=a.per_class,
                              soft=a.soft))

    def reachable_maps(self) -> List[MapNode]:
        """The map nodes the statistics read, in creation order, indexed."""
        seen = set()
        stack = list(self.stats)
        while stack:
            n = stack.pop()
            if id(n) not in seen:
                seen.add(id(n))
                stack.extend(n.operands())
        out = [n for n in self.created if id(n) in seen]
        for i, n in enumerate(out):
            n.index = i
        return out


def compile_formula(formula: str, tol: int = 5, drop_bg: bool = False,
                    name: Optional[str] = None) -> CompiledMetric:
    """Compile a built-in metric name or a formula.

    Args:
        formula (str): a built-in name (``'mIoU'``, ``'FWIoU'``, ``'mAcc'``, ``'gAcc'``,
            ``'BIoU'``, ``'BF1'``; case-insensitive) or a formula in the language above,
            for example ``'mIoU + BIoU'``.
        tol (int): boundary tolerance in pixels (``tol`` in formulas). Default: 5.
        drop_bg (bool): the ``drop_bg`` option of the built-ins. Default: False.
        name (str, optional): display name. Default: the formula itself.

    Raises:
        FormulaError: the formula is malformed or refers to something unknown.
    """
    from .builtins import BUILTIN_FORMULAS
    if isinstance(tol, bool) or not isinstance(tol, int) or tol < 0:
        raise ValueError(f'tol must be a non-negative integer, got {tol!r}')
    if not isinstance(drop_bg, bool):
        raise ValueError(f'drop_bg must be True or False, got {drop_bg!r}')
    if not isinstance(formula, str) or not formula.strip():
        raise ValueError(f'target metric must be a built-in name ({", ".join(BUILTIN_FORMULAS)}) '
                         f'or a formula string, got {formula!r}')
    comp = _Compiler(tol, drop_bg, BUILTIN_FORMULAS)
    text = formula.strip()
    builtin = {k.lower(): k for k in BUILTIN_FORMULAS}.get(text.lower())
    program = parse(BUILTIN_FORMULAS[builtin] if builtin else text)
    result = comp.program(program)
    return CompiledMetric(name=name or builtin or text, text=program.text,
                          maps=comp.reachable_maps(), stats=comp.stats, result=result,
                          slots=comp.slots, tol=tol, drop_bg=drop_bg)
