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
