"""Exact metrics from sufficient statistics (plain PyTorch/NumPy, no MMSeg)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..engines.reference import evaluate_result, exact_stats, per_class_values
from ..formula.compiler import CompiledMetric, compile_formula

__all__ = ['ExactMetrics', 'compile_metric_specs']

MetricSpec = Union[str, dict]


def compile_metric_specs(metrics: Union[MetricSpec, Sequence[MetricSpec]], tol: int = 5,
                         drop_bg: bool = False) -> List[CompiledMetric]:
    """Compile metric specs: a name/formula, or ``dict(formula=..., name=..., tol=...,
    drop_bg=...)`` to override the shared options for one metric."""
    if isinstance(metrics, (str, dict)):
        metrics = [metrics]
    out, names = [], set()
    for spec in metrics:
        if isinstance(spec, str):
            compiled = compile_formula(spec, tol=tol, drop_bg=drop_bg)
        elif isinstance(spec, dict):
            unknown = set(spec) - {'formula', 'name', 'tol', 'drop_bg'}
            if unknown or 'formula' not in spec:
                raise ValueError(f'a metric given as a dict needs "formula" and may have '
                                 f'"name", "tol", "drop_bg"; got {spec!r}')
            compiled = compile_formula(spec['formula'], tol=spec.get('tol', tol),
                                       drop_bg=spec.get('drop_bg', drop_bg),
                                       name=spec.get('name'))
        else:
            raise ValueError(f'a metric must be a name, a formula or a dict, got {spec!r}')
        if compiled.name in names:
            raise ValueError(f'metric {compiled.name!r} is listed twice')
        names.add(compiled.name)
        out.append(compiled)
    return out


class ExactMetrics:
    """Accumulates sufficient statistics of several metrics over a set of images.

    Args:
        metrics: names, formulas or dicts (see :func:`compile_metric_specs`).
        num_classes (int): number of classes.
        tol (int): boundary tolerance in pixels. Default: 5.
        drop_bg (bool): ``drop_bg`` option. Default: False.
        ignore_index (int): label value of pixels that count nowhere in region sums
            (they are 0 in every class of ``G`` and in the mask ``M``). Default: 255.
    """

    def __init__(self, metrics, num_classes: int, tol: int = 5, drop_bg: bool = False,
                 ignore_index: int = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
        self.compiled = compile_metric_specs(metrics, tol, drop_bg)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self):
        self.sums: List[Optional[List[np.ndarray]]] = [None] * len(self.compiled)

    def batch_stats(self, pred: torch.Tensor, label: torch.Tensor) -> List[List[np.ndarray]]:
        """Float64 statistics of one batch (what a distributed evaluator collects)."""
        return [[s.cpu().numpy() for s in exact_stats(c, pred, label, self.num_classes,
                                                      self.ignore_index)]
                for c in self.compiled]

    def add(self, stats: List[List[np.ndarray]]):
        for i, st in enumerate(stats):
            self.sums[i] = [s.copy() for s in st] if self.sums[i] is None else [
                a + b for a, b in zip(self.sums[i], st)]

    def update(self, pred: torch.Tensor, label: torch.Tensor):
        """Add one batch of predicted class indices and labels ((N, H, W) or (H, W))."""
        self.add(self.batch_stats(pred, label))

    def compute(self) -> Dict[str, float]:
        """Metric values in [0, 1] (nan where nothing was evaluated)."""
        out = {}
        for c, sums in zip(self.compiled, self.sums):
            if sums is None:
                out[c.name] = float('nan')
                continue
            t = [torch.from_numpy(np.asarray(s)) for s in sums]
            out[c.name] = float(evaluate_result(c.result, t, exact=True))
        return out

    def per_class(self) -> Dict[str, Optional[np.ndarray]]:
        """Per-class values of each metric whose formula ends in a class mean or total."""
        out = {}
        for c, sums in zip(self.compiled, self.sums):
            if sums is None:
                out[c.name] = None
                continue
            v = per_class_values(c, [torch.from_numpy(np.asarray(s)) for s in sums])
            out[c.name] = None if v is None or v.numel() != self.num_classes else v.numpy()
        return out
