"""A hook for the tests' trainings (imported through a config's ``custom_imports``, with
``tests/`` on ``PYTHONPATH``): every rank saves its model parameters before and after
training, so that a test can compare the ranks of a distributed training."""
import os

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SaveParamsHook(Hook):
    """Write ``params_{before,after}_rank{rank}.pt`` (name -> tensor) in the work dir."""

    def _save(self, runner, when):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save(params, os.path.join(runner.work_dir, f'params_{when}_rank{get_rank()}.pt'))

    def before_train(self, runner):
        self._save(runner, 'before')

    def after_train(self, runner):
        self._save(runner, 'after')
