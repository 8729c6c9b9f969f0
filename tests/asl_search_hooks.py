"""A hook for the search tests' trials (imported through a config's ``custom_imports``,
with ``tests/`` on ``PYTHONPATH``)."""
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
