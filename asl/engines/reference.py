"""Plain PyTorch evaluation of compiled metrics (no MMSeg import).

Two evaluators share this module:

* the surrogate: softmax probabilities for ``P``, a curve on every soft operand of
  every logical operation, differentiable, sums pooled over the batch and ``1e-8``
  added to every denominator (the semantics the published parameters assume);
* the exact metric: one-hot argmax predictions for ``P``, plain logic, sums
  accumulated in float64 over any number of batches, and classes whose denominator
  is 0 skipped in class means (nan-mean, as MMSeg's ``IoUMetric`` does).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..curves import Curve
from ..formula.compiler import CompiledMetric
from ..formula.graph import (Arith, ClassMax, Const, Input, Logic, LogicOp, MapNode, Not, Pool,
                            PoolKind, StatArith, StatCompare, StatConst, StatDiv, StatMeanC,
                            StatNode, StatSum, StatTotal)

__all__ = [
    'SURROGATE_EPS', 'check_labels', 'check_shapes', 'prepare_targets', 'max_pool', 'eval_maps',
    'evaluate_stats', 'evaluate_result', 'per_class_values', 'surrogate_stats',
    'surrogate_value', 'exact_stats'
]

#: Added to every denominator of the surrogate.
SURROGATE_EPS = 1e-8


@torch.compiler.disable  # (reads values: torch.compile runs it eagerly, between graphs)
def check_labels(label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Raise ValueError unless ``label`` is (N, H, W) of class indices or ``ignore_index``."""
    if label.dim() != 3:
        raise ValueError(f'label must have shape (N, H, W), got {tuple(label.shape)}')
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bad.any():
        values = torch.unique(label[bad])[:10].tolist()
        raise ValueError(f'label values {values} are neither a class index in '
                         f'[0, {num_classes}) nor ignore_index={ignore_index}')


def prepare_targets(label: torch.Tensor, num_classes: int, ignore_index: int = 255,
                    dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """One-hot ground truth ``G`` (N, C, H, W) and valid mask ``M`` (N, 1, H, W).

    Pixels labelled ``ignore_index`` are 0 in every class of ``G`` and 0 in ``M``.

    Raises:
        ValueError: a label value is neither a class index in ``[0, num_classes)`` nor
            ``ignore_index``, or the label is not 3-dimensional.
    """
    check_labels(label, num_classes, ignore_index)
    return _one_hot(label, num_classes, ignore_index, dtype)


def _one_hot(label: torch.Tensor, num_classes: int, ignore_index: int,
             dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_targets` of labels already checked."""
    label = label.long()
    valid = label != ignore_index
    m = valid.unsqueeze(1).to(dtype)
    known = (valid & (label >= 0) & (label < num_classes)).unsqueeze(1).to(dtype)
    g = torch.zeros((label.shape[0], num_classes) + tuple(label.shape[1:]), dtype=dtype,
                    device=label.device)
    g.scatter_(1, torch.where(known > 0, label.unsqueeze(1), 0), known)
    return g, m


def _window_max(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Max over the window [i - r, i + r] along ``dim`` (same size, windows clipped to the
    image). Its gradient goes to the first maximum of each window."""
    if r == 0:
        return x
    k = 2 * r + 1
    kernel, pad = ((k, 1), (r, 0)) if dim == 2 else ((1, k), (0, r))
    return F.max_pool2d(x, kernel, stride=1, padding=pad)


def max_pool(x: torch.Tensor, r: int) -> torch.Tensor:
    """Square (2r + 1) x (2r + 1) max pool, stride 1, same size, windows clipped to the
    image: along H, then along W (the order the engines' gradients follow)."""
    return _window_max(_window_max(x, r, 2), r, 3)


def _eval_node(node: MapNode, values: List[Optional[torch.Tensor]], env: Dict[str, torch.Tensor],
               curves: Optional[Sequence[Curve]]) -> torch.Tensor:
    """The value of one map node from its operands' values."""
    if isinstance(node, Input):
        return env[node.name]
    if isinstance(node, Const):
        return env['G'].new_full((), node.value)  # (a fill, not a host-to-device copy)
    if isinstance(node, Logic):
        a, b = values[node.a.index], values[node.b.index]

        def g(slot, v):
            return v if (slot is None or curves is None) else curves[slot](v)

        if node.op is LogicOp.AND:
            return g(node.and_curves[0], a) * g(node.and_curves[1], b)
        ga, gb = g(node.or_curves[0], a), g(node.or_curves[1], b)
        out = torch.addcmul(ga + gb, ga, gb, value=-1)
        if node.op is LogicOp.XOR:  # OR(g3 a, g4 b) - AND(g1 a, g2 b)
            out = torch.addcmul(out, g(node.and_curves[0], a), g(node.and_curves[1], b),
                                value=-1)
        return out
    if isinstance(node, Not):
        return 1 - values[node.a.index]
    if isinstance(node, Pool):
        a = values[node.a.index]
        # min pool = -max_pool(-x); windows clipped to the image equal padding with 1 for
        # values in [0, 1], so the image border is not a boundary.
        return max_pool(a, node.radius) if node.kind is PoolKind.MAX else -max_pool(
            -a, node.radius)
    if isinstance(node, ClassMax):
        a = values[node.a.index]
        if node.skip_bg:
            a = a[:, 1:]
        return a.amax(1, keepdim=True) if a.shape[1] > 0 else a.new_zeros(
            (a.shape[0], 1) + a.shape[2:])
    if isinstance(node, Arith):
        a, b = values[node.a.index], values[node.b.index]
        return a + b if node.op == '+' else (a - b if node.op == '-' else a * b)
    raise TypeError(f'unknown map node {type(node).__name__}')  # pragma: no cover


def eval_maps(compiled: CompiledMetric, env: Dict[str, torch.Tensor],
              curves: Optional[Sequence[Curve]] = None,
              nodes: Optional[Sequence[MapNode]] = None) -> List[Optional[torch.Tensor]]:
    """Values of the compiled metric's map nodes, indexed by ``node.index``.

    Args:
        compiled: the compiled formula.
        env: ``P`` (N, C, H, W), ``G`` (N, C, H, W) and ``M`` (N, 1, H, W).
        curves: one curve per slot (surrogate), or None for plain logic (exact).
        nodes: evaluate only these (in topological order, with everything they read);
            default: every node.
    """
    values: List[Optional[torch.Tensor]] = [None] * len(compiled.maps)
    for node in (compiled.maps if nodes is None else nodes):
        values[node.index] = _eval_node(node, values, env, curves)
    return values


def evaluate_stats(compiled: CompiledMetric, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor,
                   curves: Optional[Sequence[Curve]] = None,
                   sum_dtype: Optional[torch.dtype] = None,
                   which: Optional[Sequence[int]] = None) -> List[Optional[torch.Tensor]]:
    """Per-class sums over (N, H, W) of each ``sum(...)`` in the formula: the reference
    evaluation, plain PyTorch operations on any device.

    Args:
        compiled: the compiled formula.
        p, g, m: ``P`` (N, C, H, W), ``G`` (N, C, H, W), ``M`` (N, 1, H, W).
        curves: one curve per slot (surrogate), or None for plain logic (exact).
        sum_dtype: accumulate the sums in this dtype (float64 for exact counts).
        which: the statistics to compute (default: all; the others are None).
    """
    values = eval_maps(compiled, {'P': p, 'G': g, 'M': m}, curves)
    wanted = range(len(compiled.stats)) if which is None else which
    out: List[Optional[torch.Tensor]] = [None] * len(compiled.stats)
    for i in wanted:
        out[i] = values[compiled.stats[i].index].sum((0, 2, 3), dtype=sum_dtype)
    return out


def evaluate_result(node: StatNode, sums: Sequence[torch.Tensor], exact: bool) -> torch.Tensor:
    """Finish the arithmetic on the sums.

    With ``exact=True`` a division by 0 gives nan (``div0``: 0), ``total`` skips nan and
    class means skip nan classes; otherwise ``SURROGATE_EPS`` is added to every
    denominator and class means run over every selected class.
    """
    ref = sums[0] if len(sums) else torch.zeros(1)
    if isinstance(node, StatSum):
        return sums[node.stat]
    if isinstance(node, StatConst):
        return ref.new_full((), node.value)  # (a fill, not a host-to-device copy)
    if isinstance(node, StatArith):
        a, b = evaluate_result(node.a, sums, exact), evaluate_result(node.b, sums, exact)
        return a + b if node.op == '+' else (a - b if node.op == '-' else a * b)
    if isinstance(node, StatCompare):
        a, b = evaluate_result(node.a, sums, exact), evaluate_result(node.b, sums, exact)
        op = node.op
        res = (a > b if op == '>' else a >= b if op == '>=' else a < b if op == '<' else
               a <= b if op == '<=' else a == b if op == '==' else a != b)
        return res.to(ref.dtype)
    if isinstance(node, StatDiv):
        a, b = evaluate_result(node.a, sums, exact), evaluate_result(node.b, sums, exact)
        if not exact:
            return a / (b + SURROGATE_EPS)
        a, b = torch.broadcast_tensors(a, b)
        empty = a.new_full((), 0.0 if node.zero_if_empty else float('nan'))
        return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), empty)
    if isinstance(node, StatTotal):
        a = evaluate_result(node.a, sums, exact)
        return a.nansum() if exact else a.sum()
    if isinstance(node, StatMeanC):
        v = evaluate_result(node.a, sums, exact)
        if v.dim() == 0:
            v = v.reshape(1)
        mask = torch.ones_like(v, dtype=torch.bool)
        if node.where is not None:
            mask = mask & (evaluate_result(node.where, sums, exact) > 0.5)
        if node.skip_bg:
            mask = mask.clone()
            mask[..., 0] = False
        if exact:
            mask = mask & ~torch.isnan(v)
            return torch.where(mask, v, 0).sum() / mask.sum()
        if node.where is None and not node.skip_bg:
            return v.mean()
        return (v * mask).sum() / (mask.sum() + SURROGATE_EPS)
    raise TypeError(f'unknown statistic node {type(node).__name__}')  # pragma: no cover


def per_class_values(compiled: CompiledMetric, sums: Sequence[torch.Tensor],
                     exact: bool = True) -> Optional[torch.Tensor]:
    """The per-class values the formula reduces (the argument of its outermost
    ``mean_c``/``total``), or None when the formula has no such per-class stage."""
    node = compiled.result
    if isinstance(node, (StatMeanC, StatTotal)) and node.a.per_class:
        return evaluate_result(node.a, sums, exact)
    return None


def check_shapes(logits: torch.Tensor, label: torch.Tensor) -> None:
    """Raise ValueError unless ``logits`` is (N, C, H, W) with at least one pixel and
    ``label`` (N, H, W)."""
    if logits.dim() != 4:
        raise ValueError(f'logits must have shape (N, C, H, W), got {tuple(logits.shape)}')
    if label.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f'label shape {tuple(label.shape)} does not match logits shape '
                         f'{tuple(logits.shape)}; expected '
                         f'{tuple(logits.shape[:1] + logits.shape[2:])}')
    if logits.numel() == 0:
        raise ValueError(f'logits of shape {tuple(logits.shape)} are empty: the surrogate '
                         f'of an empty batch is not defined (skip the loss for it)')


def surrogate_stats(compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                    label: torch.Tensor, ignore_index: int = 255,
                    which: Optional[Sequence[int]] = None,
                    check: bool = True) -> List[Optional[torch.Tensor]]:
    """The surrogate's per-class sums of ``P = softmax(logits)`` (float32), the reference
    the engines of :mod:`asl.engines` are tested against. ``check=False``: the caller
    checks the labels (labels outside ``[0, C)`` then count as ignored here)."""
    if check:
        check_labels(label, logits.shape[1], ignore_index)
    p = logits.float().softmax(1)
    g, m = _one_hot(label, logits.shape[1], ignore_index, p.dtype)
    return evaluate_stats(compiled, p, g, m, curves, which=which)


def surrogate_value(compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                    label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Differentiable surrogate metric of one batch (float32, sums pooled over the batch),
    evaluated with plain PyTorch operations: the reference definition. Training code goes
    through :func:`asl.engines.dispatch.surrogate_value`, which picks a faster engine.

    Under ``torch.compile`` the whole evaluation is one graph; the label check (which
    reads values, so it cannot be traced) runs after it.
    """
    check_shapes(logits, label)
    compiling = torch.compiler.is_compiling()
    sums = surrogate_stats(compiled, curves, logits, label, ignore_index, check=not compiling)
    value = evaluate_result(compiled.result, sums, exact=False)
    if compiling:
        check_labels(label, logits.shape[1], ignore_index)
    return value


def exact_stats(compiled: CompiledMetric, pred: torch.Tensor, label: torch.Tensor,
                num_classes: int, ignore_index: int = 255) -> List[torch.Tensor]:
    """Float64 sufficient statistics of one batch of hard predictions.

    Args:
        pred: predicted class indices (N, H, W) (or (H, W) for one image).
        label: ground truth of the same shape.
    """
    if pred.dim() == 2:
        pred, label = pred.unsqueeze(0), label.unsqueeze(0)
    if pred.shape != label.shape:
        raise ValueError(f'prediction shape {tuple(pred.shape)} does not match label shape '
                         f'{tuple(label.shape)}')
    g, m = prepare_targets(label, num_classes, ignore_index)
    pred = pred.long()
    if ((pred < 0) | (pred >= num_classes)).any():
        bad = torch.unique(pred[(pred < 0) | (pred >= num_classes)])[:10].tolist()
        raise ValueError(f'predicted class indices {bad} are outside [0, {num_classes})')
    p = torch.zeros_like(g).scatter_(1, pred.unsqueeze(1), 1.0)
    return evaluate_stats(compiled, p, g, m, curves=None, sum_dtype=torch.float64)
