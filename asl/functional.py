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

from ._ext import ext as _ext
from ._ext import use_cpu_kernels
from .curves import Curve
from .formula.compiler import CompiledMetric, MapNode, StatNode
from .fused import fused_class_max, fused_stat_sums, plan_fused

__all__ = [
    'SURROGATE_EPS', 'check_labels', 'prepare_targets', 'evaluate_stats', 'evaluate_result',
    'per_class_values', 'surrogate_value', 'exact_stats'
]

#: Added to every denominator of the surrogate.
SURROGATE_EPS = 1e-8


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
    label = label.long()
    valid = label != ignore_index
    m = valid.unsqueeze(1).to(dtype)
    g = torch.zeros((label.shape[0], num_classes) + tuple(label.shape[1:]), dtype=dtype,
                    device=label.device)
    g.scatter_(1, torch.where(valid, label, 0).unsqueeze(1), m)
    return g, m


class _WindowMax(torch.autograd.Function):
    """C++ window max (CPU); the backward finds each window's first maximum again."""

    @staticmethod
    def forward(ctx, x, r, dim):
        y = _ext.window_max_forward(x, dim, r)
        ctx.save_for_backward(x, y)
        ctx.r, ctx.dim = r, dim
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, y = ctx.saved_tensors
        return _ext.window_max_backward(grad_y, x, y, ctx.dim, ctx.r), None, None


def _window_max(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Max over the window [i - r, i + r] along ``dim`` (same size, border ignored)."""
    if r == 0:
        return x
    if use_cpu_kernels(x):
        if x.requires_grad and torch.is_grad_enabled():
            return _WindowMax.apply(x, r, dim)
        return _ext.window_max_forward(x, dim, r)
    k = 2 * r + 1
    kernel, pad = ((k, 1), (r, 0)) if dim == 2 else ((1, k), (0, r))
    return F.max_pool2d(x, kernel, stride=1, padding=pad)


def _max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Square k x k max pool, stride 1, same size, image border ignored."""
    return _window_max(_window_max(x, k // 2, 2), k // 2, 3)


def _eval_map(node: MapNode, env: Dict[str, torch.Tensor], curves: Optional[Sequence[Curve]],
              memo: Dict[int, torch.Tensor]) -> torch.Tensor:
    key = id(node)
    if key in memo:
        return memo[key]
    kind, args = node.kind, node.args
    if kind == 'input':
        out = env[args[0]]
    elif kind == 'const':
        out = torch.tensor(args[0], dtype=env['G'].dtype, device=env['G'].device)
    elif kind == 'logic':
        op, a_node, b_node, slots = args
        a = _eval_map(a_node, env, curves, memo)
        b = _eval_map(b_node, env, curves, memo)

        def g(slot, v):
            return v if (slot is None or curves is None) else curves[slot](v)

        if op == '&':
            s = slots or (None, None)
            out = g(s[0], a) * g(s[1], b)
        elif op == '|':
            s = slots or (None, None)
            ga, gb = g(s[0], a), g(s[1], b)
            out = torch.addcmul(ga + gb, ga, gb, value=-1)
        else:  # '^': OR(g3 a, g4 b) - AND(g1 a, g2 b)
            s = slots or (None, ) * 4
            ga, gb = g(s[2], a), g(s[3], b)
            out = torch.addcmul(ga + gb, ga, gb, value=-1)
            out = torch.addcmul(out, g(s[0], a), g(s[1], b), value=-1)
    elif kind == 'not':
        out = 1 - _eval_map(args[0], env, curves, memo)
    elif kind == 'pool':
        how, a_node, k = args
        a = _eval_map(a_node, env, curves, memo)
        # min pool = -max_pool(-x); the implicit border (-inf) equals padding with 1 for
        # values in [0, 1], so the image border is not a boundary.
        out = _max_pool(a, k) if how == 'max' else -_max_pool(-a, k)
    elif kind == 'max_c':
        a_node, skip_bg = args
        a = _eval_map(a_node, env, curves, memo)
        if skip_bg:
            a = a[:, 1:]
        out = a.amax(1, keepdim=True) if a.shape[1] > 0 else a.new_zeros(
            (a.shape[0], 1) + a.shape[2:])
    elif kind == 'arith':
        op, a_node, b_node = args
        a = _eval_map(a_node, env, curves, memo)
        b = _eval_map(b_node, env, curves, memo)
        out = a + b if op == '+' else (a - b if op == '-' else a * b)
    else:  # pragma: no cover
        raise ValueError(f'unknown map node {kind!r}')
    memo[key] = out
    return out


def evaluate_stats(compiled: CompiledMetric, p: torch.Tensor, g: torch.Tensor, m: torch.Tensor,
                   curves: Optional[Sequence[Curve]] = None,
                   sum_dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
    """Per-class sums over (N, H, W) of each ``sum(...)`` in the formula (PyTorch path).

    Args:
        compiled: the compiled formula.
        p, g, m: ``P`` (N, C, H, W), ``G`` (N, C, H, W), ``M`` (N, 1, H, W).
        curves: one curve per slot (surrogate), or None for plain logic (exact).
        sum_dtype: accumulate the sums in this dtype (float64 for exact counts).
    """
    env = {'P': p, 'G': g, 'M': m}
    memo: Dict[int, torch.Tensor] = {}
    return [_eval_map(node, env, curves, memo).sum((0, 2, 3), dtype=sum_dtype)
            for node in compiled.stats]


def _surrogate_stats_fused(compiled: CompiledMetric, curves: Sequence[Curve],
                           logits: torch.Tensor, label: torch.Tensor,
                           ignore_index: int) -> List[torch.Tensor]:
    """Same sums as :func:`evaluate_stats` of ``P = softmax(logits)``, fusable ones through
    the C++ kernel (which then also runs the softmax, unless PyTorch needs ``P`` too)."""
    plan = plan_fused(compiled)
    if label.dim() != 3:
        check_labels(label, logits.shape[1], ignore_index)  # raises
    try:
        return _fused_sums(plan, compiled, curves, logits, label, ignore_index)
    except RuntimeError as e:  # the kernel validates the labels as it reads them
        if 'invalid label values' in str(e):
            check_labels(label, logits.shape[1], ignore_index)  # raises the ValueError
        raise


def _fused_sums(plan, compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                label: torch.Tensor, ignore_index: int) -> List[torch.Tensor]:
    """The work of :func:`_surrogate_stats_fused` (the kernel checks the labels)."""
    rest = [i for i in range(len(compiled.stats)) if i not in plan.fused]
    if rest:
        check_labels(label, logits.shape[1], ignore_index)
    from_logits = not rest and all(sub is not None for sub in plan.extra_plans)
    p = logits if from_logits else logits.softmax(1)
    memo: Dict[int, torch.Tensor] = {}
    env: Dict[str, torch.Tensor] = {}

    def torch_env() -> Dict[str, torch.Tensor]:
        if not env:
            g, m = prepare_targets(label, p.shape[1], ignore_index, dtype=p.dtype)
            env.update(P=p, G=g, M=m)
        return env

    extras = []
    for j, node in enumerate(plan.extras):
        x = fused_class_max(plan, j, curves, p, label, ignore_index)  # P-independent
        extras.append(x if x is not None else _eval_map(node, torch_env(), curves, memo))
    fused = fused_stat_sums(plan, curves, p, label, ignore_index, extras, from_logits)
    sums: List[Optional[torch.Tensor]] = [None] * len(compiled.stats)
    for row, i in enumerate(plan.fused):
        sums[i] = fused[row]
    for i in rest:
        sums[i] = _eval_map(compiled.stats[i], torch_env(), curves, memo).sum((0, 2, 3))
    return sums


def evaluate_result(node: StatNode, sums: Sequence[torch.Tensor], exact: bool) -> torch.Tensor:
    """Finish the arithmetic on the sums.

    With ``exact=True`` a division by 0 gives nan (``div0``: 0), ``total`` skips nan and
    class means skip nan classes; otherwise ``SURROGATE_EPS`` is added to every
    denominator and class means run over every selected class.
    """
    kind, args = node.kind, node.args
    ref = sums[0] if len(sums) else torch.zeros(1)
    if kind == 'sum':
        return sums[args[0]]
    if kind == 'const':
        return torch.tensor(args[0], dtype=ref.dtype, device=ref.device)
    if kind == 'arith':
        op, a, b = args
        a, b = evaluate_result(a, sums, exact), evaluate_result(b, sums, exact)
        return a + b if op == '+' else (a - b if op == '-' else a * b)
    if kind == 'compare':
        op, a, b = args
        a, b = evaluate_result(a, sums, exact), evaluate_result(b, sums, exact)
        res = {'>': a > b, '>=': a >= b, '<': a < b, '<=': a <= b, '==': a == b,
               '!=': a != b}[op]
        return res.to(ref.dtype)
    if kind == 'div':
        a, b, zero = args
        a, b = evaluate_result(a, sums, exact), evaluate_result(b, sums, exact)
        if not exact:
            return a / (b + SURROGATE_EPS)
        a, b = torch.broadcast_tensors(a, b)
        empty = torch.tensor(0.0 if zero else float('nan'), dtype=a.dtype, device=a.device)
        return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), empty)
    if kind == 'total':
        a = evaluate_result(args[0], sums, exact)
        return a.nansum() if exact else a.sum()
    if kind == 'mean_c':
        v_node, where, skip_bg = args
        v = evaluate_result(v_node, sums, exact)
        if v.dim() == 0:
            v = v.reshape(1)
        mask = torch.ones_like(v, dtype=torch.bool)
        if where is not None:
            mask = mask & (evaluate_result(where, sums, exact) > 0.5)
        if skip_bg:
            mask = mask.clone()
            mask[..., 0] = False
        if exact:
            mask = mask & ~torch.isnan(v)
            return torch.where(mask, v, 0).sum() / mask.sum()
        if where is None and not skip_bg:
            return v.mean()
        return (v * mask).sum() / (mask.sum() + SURROGATE_EPS)
    raise ValueError(f'unknown statistic node {kind!r}')  # pragma: no cover


def per_class_values(compiled: CompiledMetric, sums: Sequence[torch.Tensor],
                     exact: bool = True) -> Optional[torch.Tensor]:
    """The per-class values the formula reduces (the argument of its outermost
    ``mean_c``/``total``), or None when the formula has no such per-class stage."""
    node = compiled.result
    if node.kind in ('mean_c', 'total') and node.args[0].per_class:
        return evaluate_result(node.args[0], sums, exact)
    return None


def surrogate_value(compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                    label: torch.Tensor, ignore_index: int = 255,
                    fused: bool = True) -> torch.Tensor:
    """Differentiable surrogate metric of one batch (float32, sums pooled over the batch).

    ``fused=False`` forces the plain PyTorch path (the reference for the fused kernel).
    """
    if logits.dim() != 4:
        raise ValueError(f'logits must have shape (N, C, H, W), got {tuple(logits.shape)}')
    if label.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f'label shape {tuple(label.shape)} does not match logits shape '
                         f'{tuple(logits.shape)}; expected {tuple(logits.shape[:1] + logits.shape[2:])}')
    logits = logits.float()
    if fused and use_cpu_kernels(logits) and plan_fused(compiled).fused:
        sums = _surrogate_stats_fused(compiled, curves, logits, label, ignore_index)
    else:
        p = logits.softmax(1)
        g, m = prepare_targets(label, logits.shape[1], ignore_index, dtype=p.dtype)
        sums = evaluate_stats(compiled, p, g, m, curves)
    return evaluate_result(compiled.result, sums, exact=False)


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
