"""``ASLMetric``: exact segmentation metrics (built-in or formulas) for MMSeg 1.x."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmseg.registry import METRICS

from ..loss.exact import ExactMetrics

__all__ = ['ASLMetric']

ALL_METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')


@METRICS.register_module()
class ASLMetric(BaseMetric):
    """Exact metrics from per-class sufficient statistics, for ``val_evaluator`` and
    ``test_evaluator``.

    Each image contributes its per-class sums (float64 counts); the sums are pooled over
    the whole set, across processes, before any division. Values are reported in
    percent, like MMSeg's ``IoUMetric``, with a per-class table in the log.

    Args:
        metric_names (list): names (``'mIoU'``, ``'FWIoU'``, ``'mAcc'``, ``'gAcc'``,
            ``'BIoU'``, ``'BF1'``), formulas, or ``dict(formula=..., name=..., tol=...,
            drop_bg=...)``. Default: all six.
        tol (int): boundary tolerance in pixels. Default: 5.
        drop_bg (bool): ``drop_bg`` option. Default: False.
        ignore_index (int): label of pixels that count in no region sum. Default: 255.
        collect_device (str): ``'cpu'`` or ``'gpu'``. Default: ``'cpu'``.
        prefix (str, optional): prefix of the metric names. Default: None.
    """

    default_prefix = None

    def __init__(self, metric_names: Sequence = ALL_METRICS, tol: int = 5, drop_bg: bool = False,
                 ignore_index: int = 255, collect_device: str = 'cpu',
                 prefix: Optional[str] = None, **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.metric_specs = (list(metric_names) if not isinstance(metric_names, (str, dict))
                             else [metric_names])
        self.tol = tol
        self.drop_bg = drop_bg
        self.ignore_index = ignore_index
        # Compile now so that a bad formula fails when the config is built.
        ExactMetrics(self.metric_specs, 1, tol, drop_bg, ignore_index)
        self._acc: Optional[ExactMetrics] = None

    def _accumulator(self) -> ExactMetrics:
        num_classes = len(self.dataset_meta['classes'])
        if self._acc is None or self._acc.num_classes != num_classes:
            self._acc = ExactMetrics(self.metric_specs, num_classes, self.tol, self.drop_bg,
                                     self.ignore_index)
        return self._acc

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        acc = self._accumulator()
        for sample in data_samples:
            pred = sample['pred_sem_seg']['data'].squeeze(0)
            label = sample['gt_sem_seg']['data'].squeeze(0).to(pred)
            self.results.append(acc.batch_stats(pred, label))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        logger: MMLogger = MMLogger.get_current_instance()
        acc = self._accumulator()
        acc.reset()
        for stats in results:
            acc.add(stats)
        values = acc.compute()
        per_class = acc.per_class()
        classes = self.dataset_meta['classes']
        table = OrderedDict(Class=list(classes))
        for name, v in per_class.items():
            if v is not None:
                table[name] = [f'{x * 100:.2f}' for x in v]
        if len(table) > 1:
            try:
                from prettytable import PrettyTable
                pt = PrettyTable()
                for key, col in table.items():
                    pt.add_column(key, col)
                print_log('per class results:\n' + pt.get_string(), logger=logger)
            except ImportError:  # pragma: no cover
                print_log(f'per class results: {dict(table)}', logger=logger)
        return {name: float(np.round(v * 100, 4)) for name, v in values.items()}
