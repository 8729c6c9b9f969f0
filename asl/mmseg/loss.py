"""``AutoSegLoss``: a searched metric surrogate as an MMSeg 1.x loss."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS

from ..loss.surrogate import Surrogate

__all__ = ['AutoSegLoss']


@MODELS.register_module()
class AutoSegLoss(nn.Module):
    """Auto Seg-Loss surrogate loss (Li et al., ICLR 2021).

    ``loss = loss_weight * (1 - surrogate_metric)``, where the surrogate metric is the
    target metric with softmax probabilities in place of the one-hot prediction and a
    monotone curve on every soft operand of every logical operation. Its sums pool
    over the whole batch (N, H, W), like the metric pools over a data set.

    Args:
        target_metric (str): ``'mIoU'``, ``'FWIoU'``, ``'mAcc'``, ``'gAcc'``, ``'BIoU'``,
            ``'BF1'`` or a formula (see docs/loss.md, "Metrics as formulas"). Default: ``'mIoU'``.
        theta (list[float] | str, optional): control-point coordinates of the curves, or
            ``'paper'`` for the published parameters. Default: None (identity curves,
            the naive relaxation).
        raw_theta (list[float], optional): search parameters in (0, 1) instead of
            coordinates. Default: None.
        parameterization (str): ``'bezier'``, ``'linear'`` or ``'identity'``.
            Default: ``'bezier'``.
        num_pieces (int, optional): pieces per curve (Bezier default 2, linear 5).
        tol (int, optional): boundary tolerance in pixels. Default: 5.
        drop_bg (bool, optional): the metric's ``drop_bg`` option. Default: False.
        num_class (int, optional): expected number of classes; checked against the
            logits (the classes always come from the logits). Default: None.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): name in the log; must start with ``loss_``. Default: ``'loss_asl'``.
        backend (str): the engine that evaluates the surrogate: ``'auto'`` (Triton on
            CUDA, C++ on CPU, else plain PyTorch; ``$ASL_BACKEND`` can force one),
            ``'torch'``, ``'cpp'`` or ``'triton'``. Default: ``'auto'``.

    ``ignore_index`` (forward): pixels with this label count in no sum of a region
    metric (they are 0 in the ground truth and in the valid mask ``M``); boundary
    statistics see them as background of every class.
    """

    def __init__(self,
                 target_metric: str = 'mIoU',
                 theta: Union[Sequence[float], str, None] = None,
                 raw_theta: Optional[Sequence[float]] = None,
                 parameterization: str = 'bezier',
                 num_pieces: Optional[int] = None,
                 tol: Optional[int] = None,
                 drop_bg: Optional[bool] = None,
                 num_class: Optional[int] = None,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_asl',
                 backend: str = 'auto'):
        super().__init__()
        if not isinstance(loss_name, str) or not loss_name.startswith('loss_'):
            raise ValueError(f"loss_name must start with 'loss_' (MMEngine sums logged keys "
                             f"containing 'loss'), got {loss_name!r}")
        if num_class is not None and (isinstance(num_class, bool) or
                                      not isinstance(num_class, int) or num_class < 1):
            raise ValueError(f'num_class must be a positive integer, got {num_class!r}')
        self.surrogate = Surrogate(target_metric, theta=theta, raw_theta=raw_theta,
                                   parameterization=parameterization, num_pieces=num_pieces,
                                   tol=tol, drop_bg=drop_bg, backend=backend)
        self.num_class = num_class
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor,
                weight: Optional[torch.Tensor] = None, ignore_index: int = 255,
                **kwargs) -> torch.Tensor:
        """Loss of a batch.

        Args:
            cls_score (Tensor): logits (N, C, H, W), any floating dtype; computed in
                float32 with autocast disabled (the gradient has the logits' dtype).
            label (Tensor): labels (N, H, W): class indices or ``ignore_index``.
            weight (Tensor, optional): per-pixel weights are not defined for a metric
                surrogate; must be None.
            ignore_index (int): label of ignored pixels. Default: 255.
        """
        if weight is not None:
            raise ValueError('AutoSegLoss does not take per-pixel weights (weight must be '
                             'None); a pixel sampler cannot be combined with it')
        if self.num_class is not None and cls_score.dim() >= 2 and \
                cls_score.shape[1] != self.num_class:
            raise ValueError(f'num_class={self.num_class} but the logits have '
                             f'{cls_score.shape[1]} classes (shape {tuple(cls_score.shape)})')
        with torch.autocast(device_type=cls_score.device.type, enabled=False):
            value = self.surrogate(cls_score, label, ignore_index)
        return self.loss_weight * (1.0 - value)

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f'target_metric={self.surrogate.name!r}, '
                f'parameterization={self.surrogate.parameterization!r}, '
                f'num_pieces={self.surrogate.num_pieces}, loss_weight={self.loss_weight}, '
                f'backend={self.surrogate.backend!r}')
