"""Triton source for the register programs of a :class:`~asl.engines.ir.FusedProgram`.

Each program becomes straight-line code in a kernel over a tile of ``BLOCK`` pixels of one
image and all ``CP`` class rows (``CP``: the classes rounded up to a power of two):

* ``stats_fwd``: the softmax, the final program (``G = 0``) on the whole tile, the
  correction program on the labelled pixels (one value per pixel, at its class), and the
  per-class sums of the tiles; each program sums a fixed set of tiles in float64 and writes
  one row of a (N, blocks, S, CP) buffer that torch sums in a fixed order (no atomics);
  it also counts invalid labels;
* ``stats_bwd``: the same values again and the reverse sweeps seeded with ``dL/dsum``;
  without stages it ends with the softmax backward and writes the logits' gradient,
  otherwise it writes ``dL/dP`` and the adjoints of the stage maps;
* ``stage_fwd_J``: the input map of stage J; ``stage_bwd_J``: the reverse sweep of its
  program, seeded with the adjoint of that map (added to the adjoints it reads from);
* ``map_fwd`` (map mode): the map's maximum over the classes ``[c_lo, C)``.

Every kernel takes the same arguments (:func:`kernel_arg_names`; unused ones are dummies). The
source is made only of this module's templates, register numbers and the program's
constants (finite floats, checked), never of text from a formula or a config.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from .. import ir
from ..ir import Op

__all__ = ['generate', 'kernel_arg_names']

#: Pointer arguments, then the integer ones; the extras, stage maps and adjoints follow
#: ``x_ptr`` .. ``w_ptr`` in the order of :func:`kernel_arg_names`.
SCALARS = ('C', 'HW', 'ignore_index', 'c_lo', 'T')


def kernel_arg_names(num_extras: int, num_stages: int) -> List[str]:
    """The arguments of every generated kernel (before the constexprs ``CP``, ``BLOCK``)."""
    names = ['x_ptr', 'lab_ptr', 'tab_ptr', 'w_ptr', 'dst_ptr', 'bad_ptr', 'dp_ptr']
    names += [f'X{e}' for e in range(num_extras)]
    for j in range(num_stages):
        names += [f'IN{j}', f'OUT{j}', f'AIN{j}', f'AOUT{j}']
    return names + list(SCALARS)



def _lit(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f'a fused program constant must be finite, got {v!r}')
    return f'({v!r})'


def _render(terms: List[Tuple[int, str]]) -> str:
    out = ''
    for sign, t in terms:
        if not out:
            out = t if sign > 0 else f'(-{t})'
        else:
            out += (' + ' if sign > 0 else ' - ') + t
    return out


class _Scope:
    """How leaves read in one kind of code: the whole tile (``dense``, (CP, BLOCK)) or
    one value per pixel at its labelled class (``vector``, (BLOCK, ))."""

    def __init__(self, vector: bool, stages: Sequence[ir.Stage]):
        self.vector = vector
        self.stages = stages

    def leaf(self, ins: ir.Instr) -> str:
        op, a = ins.op, ins.a
        if op is Op.P:
            return 'Plab' if self.vector else 'P'
        if op in (Op.G, Op.M) and self.vector:  # (folded to constants in the correction)
            return 'tl.full([BLOCK], 1.0, tl.float32)'
        if op is Op.G:
            return 'Gt'
        if op is Op.M:
            return 'Mrow'
        if op in (Op.POOL, Op.STAGE_IN):  # a stage map, at every class or the labelled one
            ptr = f'OUT{a}' if op is Op.POOL else f'IN{a}'
            at, mask = ('gat', 'lab_ok') if self.vector else ('tile', 'm2')
            return f'tl.load({ptr} + {at}, mask={mask}, other=0).to(tl.float32)'
        if op is Op.X:
            row = f'tl.load(X{a} + n * HW + offs, mask=pm, other=0).to(tl.float32)'
            return row if self.vector else row + '[None, :]'
        raise ValueError(f'not a leaf: {ins}')  # pragma: no cover

    def full(self, value: float) -> str:
        shape = '[BLOCK]' if self.vector else '[1, BLOCK]'
        return f'tl.full({shape}, {_lit(value)}, tl.float32)'


class _Gen:
    """The source of the kernels of one fused program and one set of curve piece
    counts."""

    def __init__(self, fp: ir.FusedProgram, pieces: Sequence[int], min_slope: float):
        self.fp = fp
        self.pieces = list(pieces)
        self.kmax = max(self.pieces + [1])
        self.min_slope = float(min_slope)
        self.lines: List[str] = []

    # -- program values -----------------------------------------------------------------
    def values(self, prog: ir.Program, p: str, scope: _Scope, only_needed: bool,
               out: List[str], ind: str = '    ') -> None:
        """Registers ``{p}{i}`` (and curve derivatives ``{p}d{i}``) of a program."""
        for i, ins in enumerate(prog.instrs):
            if only_needed and not ins.needed:
                continue
            v = f'{p}{i}'
            if ins.op in ir.LEAF_OPS:
                if ins.op is Op.CONST:
                    out.append(f'{ind}{v} = {scope.full(self.fp.consts[ins.a])}')
                else:
                    out.append(f'{ind}{v} = {scope.leaf(ins)}')
            elif ins.op is Op.CURVE:
                q = ins.b
                out.append(f'{ind}{v}, {p}d{i} = bezier({p}{ins.a}, tab_ptr + {q * self.kmax * 8}, '
                           f'K={self.pieces[q]}, MIN_SLOPE={_lit(self.min_slope)})')
            elif ins.op is Op.MUL:
                out.append(f'{ind}{v} = {p}{ins.a} * {p}{ins.b}')
            elif ins.op is Op.ADD:
                out.append(f'{ind}{v} = {p}{ins.a} + {p}{ins.b}')
            elif ins.op is Op.SUB:
                out.append(f'{ind}{v} = {p}{ins.a} - {p}{ins.b}')
            elif ins.op is Op.ONE_MINUS:
                out.append(f'{ind}{v} = 1.0 - {p}{ins.a}')
            else:  # pragma: no cover
                raise ValueError(f'unknown opcode {ins.op}')

    def output(self, prog: ir.Program, s: int, p: str) -> Optional[str]:
        """The expression of output ``s`` (None: the constant 0)."""
        out = prog.outputs[s]
        if out.reg < 0:
            return None if out.value == 0.0 else _lit(out.value)
        return f'{p}{out.reg}'

    def reverse(self, prog: ir.Program, p: str, seeds: Dict[int, List[Tuple[int, str]]],
                out: List[str]) -> Dict[Tuple[Op, int], List[Tuple[int, str]]]:
        """Reverse sweep from the seeds (register -> terms); returns the leaves' adjoint
        terms, keyed by (op, index)."""
        terms: Dict[int, List[Tuple[int, str]]] = defaultdict(list)
        for r, t in seeds.items():
            terms[r].extend(t)
        leaves: Dict[Tuple[Op, int], List[Tuple[int, str]]] = defaultdict(list)
        instrs = prog.instrs
        for i in reversed(range(len(instrs))):
            ins = instrs[i]
            if not ins.active or not terms.get(i):
                continue
            g = f'{p}a{i}'
            out.append(f'    {g} = {_render(terms[i])}')
            if ins.op is Op.CURVE:
                terms[ins.a].append((1, f'{g} * {p}d{i}'))
            elif ins.op is Op.MUL:
                if instrs[ins.a].active:
                    terms[ins.a].append((1, f'{g} * {p}{ins.b}'))
                if instrs[ins.b].active:
                    terms[ins.b].append((1, f'{g} * {p}{ins.a}'))
            elif ins.op is Op.ADD:
                for r in (ins.a, ins.b):
                    if instrs[r].active:
                        terms[r].append((1, g))
            elif ins.op is Op.SUB:
                if instrs[ins.a].active:
                    terms[ins.a].append((1, g))
                if instrs[ins.b].active:
                    terms[ins.b].append((-1, g))
            elif ins.op is Op.ONE_MINUS:
                terms[ins.a].append((-1, g))
            elif ins.op in (Op.P, Op.POOL, Op.STAGE_IN):
                leaves[(ins.op, ins.a if ins.op is not Op.P else 0)].append((1, g))
        return leaves

    # -- kernels ------------------------------------------------------------------------
    def signature(self, name: str, more: str = '') -> List[str]:
        args = kernel_arg_names(len(self.fp.extras), len(self.fp.stages))
        return ['', '', '@triton.jit',
                f'def {name}({", ".join(args)}, CP: tl.constexpr, BLOCK: tl.constexpr{more}):',
                '    n = tl.program_id(1).to(tl.int64)',
                '    cls = tl.arange(0, CP)',
                '    cm = cls < C']

    @staticmethod
    def tile_setup(ind: str = '    ') -> List[str]:
        """The tile ``pid`` of image ``n``: its pixels, labels, one-hot and masks."""
        return [ind + line for line in (
            'offs = pid * BLOCK + tl.arange(0, BLOCK)',
            'pm = offs < HW',
            'm2 = cm[:, None] & pm[None, :]',
            'base = n * C * HW',
            'tile = base + cls[:, None] * HW + offs[None, :]',
            'lab = tl.load(lab_ptr + n * HW + offs, mask=pm, other=ignore_index).to(tl.int32)',
            'valid = pm & (lab != ignore_index)',
            'lab_ok = valid & (lab >= 0) & (lab < C)',
            'labc = tl.where(lab_ok, lab, 0)',
            'gat = base + labc.to(tl.int64) * HW + offs',
            'onehot = (cls[:, None] == labc[None, :]) & lab_ok[None, :]',
            'Gt = onehot.to(tl.float32)',
            'Mrow = valid.to(tl.float32)[None, :]',
            'zero2 = tl.zeros([CP, BLOCK], tl.float32)')]

    def header(self, name: str) -> List[str]:
        """A kernel over one tile per program (grid axis 0: tiles, axis 1: images)."""
        return self.signature(name) + ['    pid = tl.program_id(0)'] + self.tile_setup()

    def uses_p(self, *progs: Optional[ir.Program]) -> bool:
        return any(ins.op is Op.P for prog in progs if prog is not None for ins in prog.instrs)

    def softmax_lines(self, vector: bool, ind: str = '    ') -> List[str]:
        out = [ind + 'P = softmax_tile(x_ptr, base, HW, offs, cls, pm, cm)']
        if vector:
            out.append(ind + 'Plab = tl.sum(tl.where(onehot, P, 0.0), 0)')
        return out

    def stats_fwd(self) -> List[str]:
        """Program ``g`` of image ``n`` sums the ``TILES`` tiles ``g, g + G, g + 2G, ...``
        (``G`` = the blocks per image; a constexpr loop count, a power of two) in
        float64 and writes one (S, CP) row of partial sums, so that the buffer is (N, G,
        S, CP) whatever the image size, and its count of invalid labels. The order of
        every sum is fixed by the shapes alone."""
        fp = self.fp
        S = len(fp.final.outputs)
        out = self.signature('stats_fwd', ', TILES: tl.constexpr')
        out += ['    g = tl.program_id(0)', '    G = tl.num_programs(0)',
                '    nbad = tl.zeros([1], tl.int32)']
        out += [f'    tot{s} = tl.zeros([CP], tl.float64)' for s in range(S)]
        out += ['    for i in range(TILES):',
                '        pid = g + i * G  # (past the last tile: every pixel masked)']
        ind = ' ' * 8
        out += self.tile_setup(ind)
        cor = fp.correction
        if self.uses_p(fp.final, cor):
            out += self.softmax_lines(cor is not None and self.uses_p(cor), ind)
        dense, vec = _Scope(False, fp.stages), _Scope(True, fp.stages)
        self.values(fp.final, 'f', dense, False, out, ind)
        if cor is not None:
            self.values(cor, 'c', vec, False, out, ind)
        for s in range(S):
            e = self.output(fp.final, s, 'f')
            acc = f'tl.sum(tl.where(m2, {e}, 0.0), 1)' if e else 'tl.zeros([CP], tl.float32)'
            out.append(f'{ind}acc{s} = {acc}')
            if cor is not None:
                c = self.output(cor, s, 'c')
                if c is not None:
                    cv = f'{c}[None, :]' if c.startswith('c') else c
                    out.append(f'{ind}acc{s} += tl.sum(tl.where(onehot, {cv}, 0.0), 1)')
            out.append(f'{ind}tot{s} += acc{s}.to(tl.float64)')
        out.append(f'{ind}bad = pm & (lab != ignore_index) & ((lab < 0) | (lab >= C))')
        out.append(f'{ind}nbad += tl.sum(bad.to(tl.int32), 0)')
        for s in range(S):
            out.append(f'    tl.store(dst_ptr + ((n * G + g) * {S} + {s}) * CP + cls, tot{s})')
        out.append('    tl.store(bad_ptr + n * G + g + tl.arange(0, 1), nbad)')
        return out

    def stats_bwd(self) -> List[str]:
        """Reverse sweeps of the final and correction programs. Without stages: the
        logits' gradient (``dst_ptr``); with stages: ``dL/dP`` (``dp_ptr``, written) and
        the stage maps' adjoints (``AIN``/``AOUT``, written where this kernel is their
        first writer, :meth:`first_writes`)."""
        fp = self.fp
        out = self.header('stats_bwd')
        cor = fp.correction
        out += self.softmax_lines(vector=cor is not None and self.uses_p(cor))
        dense, vec = _Scope(False, fp.stages), _Scope(True, fp.stages)
        self.values(fp.final, 'f', dense, True, out)
        if cor is not None:
            self.values(cor, 'c', vec, True, out)
        S = len(fp.final.outputs)
        seeds: Dict[int, List[Tuple[int, str]]] = defaultdict(list)
        cseeds: Dict[int, List[Tuple[int, str]]] = defaultdict(list)
        for s in range(S):
            r = fp.final.outputs[s].reg
            if r >= 0 and fp.final.instrs[r].active:
                out.append(f'    w{s} = tl.load(w_ptr + {s} * CP + cls)[:, None]')
                seeds[r].append((1, f'w{s}'))
            if cor is not None:
                rc = cor.outputs[s].reg
                if rc >= 0 and cor.instrs[rc].active:
                    out.append(f'    wl{s} = tl.load(w_ptr + {s} * CP + labc, mask=lab_ok, '
                               'other=0.0)')
                    cseeds[rc].append((1, f'wl{s}'))
        leaves = self.reverse(fp.final, 'f', seeds, out)
        cleaves = self.reverse(cor, 'c', cseeds, out) if cor is not None else {}
        keys = sorted(set(leaves) | set(cleaves))
        adj: Dict[Tuple[Op, int], str] = {}
        for key in keys:
            parts = []
            if leaves.get(key):
                parts.append(f'({_render(leaves[key])}) + zero2')
            if cleaves.get(key):
                parts.append(f'tl.where(onehot, ({_render(cleaves[key])})[None, :], 0.0)')
            name = f'adj_{key[0].name}{key[1]}'
            out.append(f'    {name} = {" + ".join(parts)}')
            adj[key] = name
        dp = adj.get((Op.P, 0), 'zero2')
        if not fp.stages:
            out.append(f'    dx = P * ({dp} - tl.sum(P * {dp}, 0)[None, :])')
            out.append('    tl.store(dst_ptr + tile, dx, mask=m2)')
            return out
        out.append(f'    tl.store(dp_ptr + tile, {dp}, mask=m2)')
        for (op, j), name in adj.items():
            if op is Op.P:
                continue
            ptr = f'AOUT{j}' if op is Op.POOL else f'AIN{j}'
            out.append(f'    tl.store({ptr} + tile, {name}, mask=m2)')
        return out

    def first_writes(self) -> List[Tuple[Op, int]]:
        """The stage adjoint maps ``stats_bwd`` writes (all others start at 0)."""
        fp = self.fp
        keys = set()
        for prog in (fp.final, fp.correction):
            if prog is None:
                continue
            for ins in prog.instrs:
                if ins.active and ins.op in (Op.POOL, Op.STAGE_IN):
                    keys.add((ins.op, ins.a))
        return sorted(keys)

    def stage_fwd(self, j: int) -> List[str]:
        prog = self.fp.stages[j].input
        out = self.header(f'stage_fwd_{j}')
        if self.uses_p(prog):
            out += self.softmax_lines(vector=False)
        self.values(prog, 's', _Scope(False, self.fp.stages), False, out)
        e = self.output(prog, 0, 's') or '0.0'
        out.append(f'    tl.store(dst_ptr + tile, {e} + zero2, mask=m2)')
        return out

    def stage_bwd(self, j: int) -> List[str]:
        """The reverse sweep of stage j's program seeded with ``AIN{j}``; adds to ``dL/dP``
        and the adjoints of the maps the program reads."""
        prog = self.fp.stages[j].input
        out = self.header(f'stage_bwd_{j}')
        if self.uses_p(prog):
            out += self.softmax_lines(vector=False)
        self.values(prog, 's', _Scope(False, self.fp.stages), True, out)
        r = prog.outputs[0].reg
        out.append(f'    seed = tl.load(AIN{j} + tile, mask=m2, other=0.0)')
        leaves = self.reverse(prog, 's', {r: [(1, 'seed')]} if r >= 0 else {}, out)
        for (op, k), terms in sorted(leaves.items()):
            ptr = 'dp_ptr' if op is Op.P else (f'AOUT{k}' if op is Op.POOL else f'AIN{k}')
            out.append(f'    prev = tl.load({ptr} + tile, mask=m2, other=0.0)')
            out.append(f'    tl.store({ptr} + tile, prev + ({_render(terms)}), mask=m2)')
        return out

    def map_fwd(self) -> List[str]:
        fp = self.fp
        out = self.header('map_fwd')
        if self.uses_p(fp.final):
            out += self.softmax_lines(vector=False)
        self.values(fp.final, 'f', _Scope(False, fp.stages), False, out)
        e = self.output(fp.final, 0, 'f') or '0.0'
        out.append('    keep = m2 & (cls >= c_lo)[:, None]')
        out.append(f'    v = tl.where(keep, {e} + zero2, float("-inf"))')
        out.append('    tl.store(dst_ptr + n * HW + offs, tl.max(v, 0), mask=pm)')
        return out

    def module(self) -> str:
        fp = self.fp
        lines = ['"""Generated by asl.engines.triton.codegen; do not edit."""',
                 'import triton', 'import triton.language as tl', '',
                 'from asl.engines.triton.kernels import bezier, softmax_tile']
        if fp.mode is ir.Mode.MAP:
            lines += self.map_fwd()
        else:
            lines += self.stats_fwd()
            lines += self.stats_bwd()
        for j, st in enumerate(fp.stages):
            lines += self.stage_fwd(j)
            if st.active and not st.direct_p:
                lines += self.stage_bwd(j)
        return '\n'.join(lines) + '\n'


def generate(fp: ir.FusedProgram, pieces: Sequence[int], min_slope: float) -> Tuple[str, list]:
    """The kernels' source for ``fp`` with curves of ``pieces`` pieces each, and the stage
    adjoint maps that ``stats_bwd`` writes (the others must start at 0)."""
    fp.validate()
    if len(pieces) < fp.num_curves:
        raise ValueError(f'the program reads {fp.num_curves} curves, got {len(pieces)}')
    gen = _Gen(fp, pieces, min_slope)
    return gen.module(), (gen.first_writes() if fp.mode is ir.Mode.STATS else [])
