"""``JaccardMetricLoss``: the Jaccard metric loss as an MMSeg 1.x loss (a baseline)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.registry import MODELS

from ..loss.jaccard import check_jml_options, jaccard_metric_loss, soft_labels

__all__ = ['JaccardMetricLoss']


@MODELS.register_module()
class JaccardMetricLoss(nn.Module):
    """Jaccard metric loss (Wang & Blaschko, NeurIPS 2023), on softmax probabilities.

    Per class, ``1 - (|x| + |y| - d(x, y)) / (|x| + |y| + d(x, y))`` with ``x`` the
    softmax probabilities, ``y`` the (optionally smoothed) labels and ``d`` the L1
    distance (``norm='l1'``) or the squared L2 distance (``norm='l2'``); averaged over
    the chosen classes. With hard labels and ``norm='l1'`` it is the soft Jaccard
    (IoU) loss. See :mod:`asl.loss.jaccard` for the maths.

    Args:
        norm (str): ``'l1'`` or ``'l2'``. Default: ``'l1'``.
        per_image (bool): average per-image losses; else pool over the batch.
            Default: False.
        classes (str | list[int]): ``'present'``, ``'all'`` or class indices.
            Default: ``'present'``.
        label_smoothing (float): ``eps`` in [0, 1): soft labels
            ``(1 - eps) * one_hot + eps / C``. Default: 0.0.
        class_weight (list[float], optional): weights of the classes in the mean.
        smooth (float): added to the numerator and denominator. Default: 0.0.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): name in the log; must start with ``loss_``.
            Default: ``'loss_jml'``.

    ``ignore_index`` (forward): pixels with this label count in no sum (neither the
    prediction nor the label), and never make a class present.
    """

    def __init__(self,
                 norm: str = 'l1',
                 per_image: bool = False,
                 classes: Union[str, Sequence[int]] = 'present',
                 label_smoothing: float = 0.0,
                 class_weight: Optional[Sequence[float]] = None,
                 smooth: float = 0.0,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_jml'):
        super().__init__()
        if not isinstance(loss_name, str) or not loss_name.startswith('loss_'):
            raise ValueError(f"loss_name must start with 'loss_' (MMEngine sums logged keys "
                             f"containing 'loss'), got {loss_name!r}")
        if not isinstance(per_image, bool):
            raise ValueError(f'per_image must be True or False, got {per_image!r}')
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, (int, float)):
            raise ValueError(f'loss_weight must be a number, got {loss_weight!r}')
        classes = list(classes) if isinstance(classes, tuple) else classes
        class_weight = list(class_weight) if isinstance(class_weight, tuple) else class_weight
        check_jml_options(norm, classes, label_smoothing, smooth, class_weight)
        self.norm = norm
        self.per_image = per_image
        self.classes = classes
        self.label_smoothing = float(label_smoothing)
        self.class_weight = class_weight
        self.smooth = float(smooth)
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor,
                weight: Optional[torch.Tensor] = None, ignore_index: int = 255,
                **kwargs) -> torch.Tensor:
        """Loss of a batch.

        Args:
            cls_score (Tensor): logits (N, C, H, W); computed in float32.
            label (Tensor): labels (N, H, W): class indices or ``ignore_index``.
            weight (Tensor, optional): (N, H, W) per-pixel weights (a pixel sampler's),
                multiplied into the valid mask. Default: None.
            ignore_index (int): label of ignored pixels. Default: 255.
        """
        if cls_score.dim() != 4:
            raise ValueError(f'cls_score must be (N, C, H, W) logits, got shape '
                             f'{tuple(cls_score.shape)}')
        with torch.autocast(device_type=cls_score.device.type, enabled=False):
            probs = cls_score.float().softmax(dim=1)
            target, valid, hard = soft_labels(label, probs.shape[1], ignore_index,
                                              self.label_smoothing)
            if weight is not None:
                if weight.shape != label.shape:
                    raise ValueError(f'weight must have the shape of label '
                                     f'{tuple(label.shape)}, got {tuple(weight.shape)}')
                valid = valid * weight.float().unsqueeze(1)
            loss = jaccard_metric_loss(probs, target, valid, norm=self.norm,
                                       per_image=self.per_image, classes=self.classes,
                                       present=hard, class_weight=self.class_weight,
                                       smooth=self.smooth)
        return self.loss_weight * loss

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f'norm={self.norm!r}, per_image={self.per_image}, classes={self.classes!r}, '
                f'label_smoothing={self.label_smoothing}, loss_weight={self.loss_weight}')
