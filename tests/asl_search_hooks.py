"""A hook for the search tests' trials (imported through a config's ``custom_imports``,
with ``tests/`` on ``PYTHONPATH``)."""
import os
import time
from typing import Dict

import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class DestructiveRegionHook(Hook):
    """A destructive region of the search space, for testing the search's rollback: a
    trial whose raw surrogate parameters lie farther than ``radius`` (max norm) from
    ``center`` has its model's parameters zeroed after its last training iteration, so it
    predicts one class everywhere and gets a low (but valid) reward."""

    def __init__(self, center, radius: float = 1e-9):
        self.center = [float(x) for x in center]
        self.radius = float(radius)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 != runner.max_iters:
            return
        loss = runner.cfg.model.decode_head.loss_decode
        raw = loss.get('raw_theta') if isinstance(loss, dict) else None
        if raw is None or max(abs(a - b) for a, b in zip(raw, self.center)) <= self.radius:
            return
        with torch.no_grad():
            for p in runner.model.parameters():
                p.zero_()


@HOOKS.register_module()
class CollapseHook(Hook):
    """Chosen trials that learn nothing, whatever the CPU's arithmetic (for testing early
    stopping): in a trial whose work directory contains one of ``trials`` (e.g.
    ``'step01/cand01'``), after every training iteration (before the trial's own hook
    probes the hold-out) the model's parameters are zeroed and the decode head's
    classifier bias is set so that it predicts class ``predict`` everywhere. Its hold-out
    mIoU is then that class's share of the pixels divided by the number of classes: far
    below a trial that has learned even the dominant class alone."""

    priority = 'VERY_HIGH'

    def __init__(self, trials, predict: int = 1):
        self.trials = [str(t) for t in trials]
        self.predict = int(predict)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not any(t in str(runner.work_dir) for t in self.trials):
            return
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            model.decode_head.conv_seg.bias[self.predict] = 1.0


@HOOKS.register_module()
class FaultInjectionHook(Hook):
    """Inject a fault into chosen search trials, to test how a search copes.

    The trial is recognised by the ``ASL_TRIAL_ID`` environment variable that the
    search's executors set (``s<step>-c<candidate>-a<attempt>``); a key of ``faults``
    matches a trial whose id starts with it (``'s00-c01'`` matches every attempt).
    Kinds:

    * ``'crash'``: raise ``RuntimeError`` at iteration ``at_iter``;
    * ``'nonfinite'``: fill the model's parameters with NaN after iteration
      ``at_iter``, so the following losses are NaN (caught by :class:`ASLTrialHook`);
    * ``'oom'``: raise ``torch.OutOfMemoryError`` with PyTorch's ``CUDA out of memory``
      message at iteration ``at_iter`` (what a trial packed with too many siblings on
      one GPU meets);
    * ``'hang'``: stop making progress at iteration ``at_iter`` (sleep until killed),
      to test time limits.

    Args:
        faults (dict): trial id prefix -> kind.
        at_iter (int): iteration at which the fault happens. Default: 2.
    """

    priority = 'LOW'
    KINDS = ('crash', 'nonfinite', 'oom', 'hang')

    def __init__(self, faults: Dict[str, str], at_iter: int = 2):
        bad = {k: v for k, v in faults.items() if v not in self.KINDS}
        if bad:
            raise ValueError(f'fault kinds must be one of {self.KINDS}, got {bad}')
        self.faults = dict(faults)
        self.at_iter = at_iter
        tid = os.environ.get('ASL_TRIAL_ID', '')
        self.kind = next((v for k, v in self.faults.items() if tid.startswith(k)), None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.kind is None or runner.iter + 1 != self.at_iter:
            return
        if self.kind == 'crash':
            raise RuntimeError(f'injected crash at iteration {self.at_iter}')
        if self.kind == 'oom':
            raise torch.OutOfMemoryError(
                f'CUDA out of memory. Tried to allocate 2.00 GiB (injected at iteration '
                f'{self.at_iter})')
        if self.kind == 'hang':
            while True:
                time.sleep(1.0)
        with torch.no_grad():
            for p in runner.model.parameters():
                p.fill_(float('nan'))
