"""The C++ engine: a :class:`~asl.engines.ir.FusedProgram` on CPU tensors (``asl.engines.cpp._C``).

The engine works plane by plane (one image and one class at a time), without
materializing any (N, C, H, W) intermediate:

* the elementwise parts are register programs run on blocks of pixels;
* the input of every pool is computed for the plane only, row by row as the programs
  reading its pooled map need it; programs read pooled maps and stage inputs as leaves;
* the final program (``G = 0``) runs on every pixel, the correction program on the
  pixels labelled with the plane's class (for mIoU one curve per element instead of
  two); planes of classes absent from an image run the absent-class version;
* the forward pass keeps the stage maps and the partial derivatives of the
  ``P``-dependent stage programs that the backward pass needs; the backward pass runs the
  programs in reverse mode and propagates ``dL/d(map)`` through the pools (the gradient
  of a pool goes to the first maximum of each window, along W then H, as
  :func:`asl.engines.reference.max_pool`'s does) and writes ``dL/dP`` plane by plane;
* from logits, the softmax runs in the same autograd function and its backward turns
  ``dL/dP`` into the logits' gradient in place.

The result is the function of :func:`asl.engines.reference.evaluate_stats` (tested against
it); only the order of floating-point operations differs. Sums are accumulated per plane
in float64 and the planes are summed in a fixed order, so the result does not depend on
the number of threads.
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import torch

from ...curves import MIN_SLOPE_DENOMINATOR, Curve
from .. import ir
from ..lower import curve_table
from ..reference import check_labels
from .extension import ext

__all__ = ['available', 'Program', 'stat_sums', 'class_max']


def available() -> bool:
    """Whether the C++ extension is built (and matches this package's opcodes)."""
    return ext is not None


class Program:
    """A fused program loaded into the C++ engine, with the curve table of its last
    curve list (the surrogate passes the same list on every call)."""

    def __init__(self, fp: ir.FusedProgram):
        if ext is None:
            raise RuntimeError('the C++ engine is not built (asl.engines.cpp._C is missing): reinstall '
                               'asl with a C++ compiler, or use backend="torch"')
        self.fp = fp
        self.loaded = ext.load_program(fp)
        self._curves: Optional[tuple] = None
        self._table = None

    def table(self, curves: Sequence[Curve]):
        if self._curves != tuple(curves):  # curves compare by identity
            self._table = curve_table(curves, self.fp.num_curves)
            self._curves = tuple(curves)
        return self._table

    def forward(self, curves, p, label, extras, ignore_index, save=False) -> List[torch.Tensor]:
        """Per-plane sums (N * C, S) float64 and, with ``save``, the maps :meth:`backward`
        needs."""
        table, ks = self.table(curves)
        with _label_errors(label, p.shape[1], ignore_index):
            return ext.fused_forward(self.loaded, table, ks, p, label, list(extras), ignore_index,
                                     MIN_SLOPE_DENOMINATOR, save=save)

    def backward(self, curves, p, label, extras, ignore_index, grad, saved,
                 out_slot=-1) -> torch.Tensor:
        """``dL/dP`` (N, C, H, W) from ``grad``, the (S, C) gradient of the sums, and the maps
        :meth:`forward` kept; written into ``saved[out_slot]`` if ``out_slot >= 0``."""
        table, ks = self.table(curves)
        with _label_errors(label, p.shape[1], ignore_index):
            return ext.fused_backward(self.loaded, table, ks, p, label, list(extras),
                                      ignore_index, MIN_SLOPE_DENOMINATOR, grad, list(saved),
                                      out_slot=out_slot)

    def class_max(self, curves, p, label, ignore_index, c_lo=0) -> torch.Tensor:
        """The (N, 1, H, W) class maximum over the classes ``[c_lo, C)`` of a map-mode
        program (``p`` gives the shape and dtype)."""
        table, ks = self.table(curves)
        with _label_errors(label, p.shape[1], ignore_index):
            return ext.fused_map(self.loaded, table, ks, p, label, ignore_index, c_lo=c_lo)


@contextlib.contextmanager
def _label_errors(label, num_classes, ignore_index):
    """The kernel validates the labels as it reads them: its "invalid label values" becomes
    :func:`~asl.engines.reference.check_labels`' ValueError."""
    try:
        yield
    except RuntimeError as e:
        if 'invalid label values' in str(e):
            check_labels(label, num_classes, ignore_index)  # raises the ValueError
        raise


def loaded(fp: ir.FusedProgram) -> Program:
    """The C++ engine's copy of ``fp`` (made once; kept in a cache on the program)."""
    cache = _CACHE.get(id(fp))
    if cache is None or cache.fp is not fp:
        cache = Program(fp)
        _CACHE[id(fp)] = cache
    return cache


_CACHE: dict = {}


class _FusedStats(torch.autograd.Function):
    """The program's sums of ``p``, or with ``from_logits`` of ``softmax(x, 1)`` (the
    softmax and its backward then run here: its output is kept, and the gradient is turned
    into the logits' gradient in place)."""

    @staticmethod
    def forward(ctx, x, label, prog, curves, ignore_index, from_logits, *extras):
        save = ctx.needs_input_grad[0]
        p = ext.softmax_forward(x) if from_logits else x
        res = prog.forward(curves, p, label, extras, ignore_index, save=save)
        n, c = p.shape[:2]
        ctx.save_for_backward(p, label, *extras, *res[1:])
        ctx.prog, ctx.curves, ctx.ignore_index = prog, curves, ignore_index
        ctx.num_extras, ctx.from_logits = len(extras), from_logits
        return res[0].view(n, c, -1).sum(0).t().to(p.dtype)  # (S, C)

    @staticmethod
    def backward(ctx, grad):
        p, label, *rest = ctx.saved_tensors
        extras, saved = rest[:ctx.num_extras], rest[ctx.num_extras:]
        prog, curves = ctx.prog, ctx.curves
        if getattr(ctx, 'consumed', False):  # a second backward (retain_graph): recompute
            saved = prog.forward(curves, p, label, extras, ctx.ignore_index, save=True)[1:]
        # dL/dP goes into the first kept map (no new tensor to fault in); it is used up
        dp = prog.backward(curves, p, label, extras, ctx.ignore_index, grad.contiguous(), saved,
                           out_slot=0 if saved else -1)
        ctx.consumed = bool(saved)
        if ctx.from_logits:
            ext.softmax_backward_(p, dp)
        return (dp, None, None, None, None, None) + (None, ) * len(extras)


def stat_sums(fp: ir.FusedProgram, curves: Sequence[Curve], x: torch.Tensor,
              label: torch.Tensor, ignore_index: int, extras: Sequence[torch.Tensor],
              from_logits: bool = True) -> torch.Tensor:
    """(S, C) sums of the program's statistics, differentiable with respect to ``x``: the
    logits (float32 or float64), whose softmax over dim 1 is ``P``, or with
    ``from_logits=False`` ``P`` itself."""
    return _FusedStats.apply(x.contiguous(), label, loaded(fp), tuple(curves), ignore_index,
                             from_logits, *[e.contiguous() for e in extras])


def class_max(fp: ir.FusedProgram, skip_bg: bool, curves: Sequence[Curve], label: torch.Tensor,
              x: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The (N, 1, H, W) class maximum of a map-mode program (``P``-independent): ``x``
    (N, C, H, W), the logits or ``P``, gives the classes and the dtype (its values are not
    read; passing the tensor the statistics use saves allocating another one)."""
    with torch.no_grad():
        return loaded(fp).class_max(curves, x.detach(), label, ignore_index,
                                    c_lo=1 if skip_bg else 0)
