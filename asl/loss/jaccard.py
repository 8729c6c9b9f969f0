"""The Jaccard metric losses of Wang & Blaschko, in plain PyTorch (no MMSeg import).

Z. Wang and M. B. Blaschko, *Jaccard Metric Losses: Optimizing the Jaccard Index with
Soft Labels*, NeurIPS 2023. For a class, with ``x`` the predicted probabilities and
``y`` the (possibly soft) labels of the pixels, both in [0, 1]:

* JML1 (``norm='l1'``): ``1 - (|x|_1 + |y|_1 - |x - y|_1) / (|x|_1 + |y|_1 + |x - y|_1)``
* JML2 (``norm='l2'``): the same with the squared distance ``||x - y||_2^2`` in place
  of ``|x - y|_1``.

JML1 is a metric on [0, 1]^p (zero only where ``x == y``, symmetric, triangle
inequality); JML2 a semimetric (zero only where ``x == y``, symmetric; the squared
distance breaks the triangle inequality). Both are therefore zero only on a prediction
equal to the label, also with soft labels (label smoothing), unlike the soft Jaccard
loss. With hard
labels JML1 equals the soft Jaccard loss ``1 - <x, y> / (|x|_1 + |y|_1 - <x, y>)``,
since then ``|x - y|_1 = |x|_1 + |y|_1 - 2 <x, y>``.

The loss of a batch is the mean of the per-class losses over the chosen classes,
either pooled over the batch (``per_image=False``) or computed per image and averaged
over the images (``per_image=True``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..engines.reference import prepare_targets

__all__ = ['JML_NORMS', 'JML_CLASSES', 'soft_labels', 'jaccard_metric_loss',
           'check_jml_options']

#: ``norm`` values: the distance in the Jaccard metric loss.
JML_NORMS = ('l1', 'l2')
#: ``classes`` keywords (a list of class indices is also accepted).
JML_CLASSES = ('present', 'all')


def check_jml_options(norm: str = 'l1', classes: Union[str, Sequence[int]] = 'present',
                      label_smoothing: float = 0.0, smooth: float = 0.0,
                      class_weight: Optional[Sequence[float]] = None) -> None:
    """Raise ValueError naming the first bad option of :func:`jaccard_metric_loss`."""
    if norm not in JML_NORMS:
        raise ValueError(f'norm must be one of {JML_NORMS}, got {norm!r}')
    if isinstance(classes, str):
        if classes not in JML_CLASSES:
            raise ValueError(f"classes must be 'present', 'all' or a list of class indices, "
                             f'got {classes!r}')
    elif not (isinstance(classes, (list, tuple)) and classes and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
        raise ValueError(f"classes must be 'present', 'all' or a non-empty list of class "
                         f'indices, got {classes!r}')
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f'label_smoothing must be a number in [0, 1), got {label_smoothing!r}')
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or smooth < 0:
        raise ValueError(f'smooth must be a non-negative number, got {smooth!r}')
    if class_weight is not None and not (
            isinstance(class_weight, (list, tuple)) and class_weight and all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                for w in class_weight)):
        raise ValueError(f'class_weight must be None or a list of non-negative numbers, '
                         f'got {class_weight!r}')


def soft_labels(label: torch.Tensor, num_classes: int, ignore_index: int = 255,
                label_smoothing: float = 0.0, dtype: torch.dtype = torch.float32):
    """Soft labels, valid mask and hard presence of a label map.

    Args:
        label (Tensor): (N, H, W) class indices or ``ignore_index``.
        num_classes (int): C.
        ignore_index (int): label of pixels that count nowhere. Default: 255.
        label_smoothing (float): ``eps``: the soft label of a valid pixel is
            ``(1 - eps) * one_hot + eps / C``. Default: 0.0 (hard labels).
        dtype (torch.dtype): dtype of the outputs. Default: float32.

    Returns:
        tuple: ``(target, valid, hard)``: ``target`` (N, C, H, W) soft labels, 0 on
        ignored pixels; ``valid`` (N, 1, H, W), 1 on valid pixels; ``hard`` (N, C, H, W)
        the one-hot labels (which classes are present).

    Raises:
        ValueError: a label is neither a class index in [0, C) nor ``ignore_index``.
    """
    hard, valid = prepare_targets(label, num_classes, ignore_index, dtype)
    if label_smoothing:
        target = ((1.0 - label_smoothing) * hard + label_smoothing / num_classes) * valid
    else:
        target = hard
    return target, valid, hard


def jaccard_metric_loss(probs: torch.Tensor, target: torch.Tensor,
                        valid: Optional[torch.Tensor] = None, norm: str = 'l1',
                        per_image: bool = False,
                        classes: Union[str, Sequence[int]] = 'present',
                        present: Optional[torch.Tensor] = None,
                        class_weight: Optional[Sequence[float]] = None,
                        smooth: float = 0.0) -> torch.Tensor:
    """Jaccard metric loss of probabilities against (soft) labels.

    Args:
        probs (Tensor): (N, C, ...) predicted probabilities in [0, 1].
        target (Tensor): (N, C, ...) labels in [0, 1], same shape.
        valid (Tensor, optional): (N, 1, ...) or (N, ...) pixel weights (1 valid, 0
            ignored); ``probs`` and ``target`` are multiplied by it. Default: all 1.
        norm (str): ``'l1'`` (JML1) or ``'l2'`` (JML2, squared L2 distance).
            Default: ``'l1'``.
        per_image (bool): per-image class losses averaged over the images (images
            with no chosen class skipped); else the sums pool over the batch.
            Default: False.
        classes (str | list[int]): the classes averaged: ``'present'`` (those with
            a labelled pixel, in the image or in the batch), ``'all'``, or a list of
            class indices. Default: ``'present'``.
        present (Tensor, optional): (N, C, ...) hard labels that decide presence for
            ``classes='present'`` (soft labels are non-zero everywhere); default:
            ``target > 0``.
        class_weight (list[float], optional): weights of the classes in the mean.
        smooth (float): added to the numerator and denominator of every ratio.
            Default: 0.0.

    Returns:
        Tensor: the scalar loss (0 with a zero gradient when no class is chosen).
    """
    check_jml_options(norm, classes, 0.0, smooth, class_weight)
    if probs.shape != target.shape or probs.dim() < 2:
        raise ValueError(f'probs and target must have the same shape (N, C, ...), got '
                         f'{tuple(probs.shape)} and {tuple(target.shape)}')
    num_classes = probs.shape[1]
    if valid is not None:
        if valid.dim() == probs.dim() - 1:
            valid = valid.unsqueeze(1)
        valid = valid.to(probs.dtype)
        probs, target = probs * valid, target * valid
    dims = tuple(range(2, probs.dim())) if per_image else (0, *range(2, probs.dim()))
    diff = (probs - target).abs() if norm == 'l1' else (probs - target) ** 2
    sum_x, sum_y, sum_d = probs.sum(dims), target.sum(dims), diff.sum(dims)
    ratio = (sum_x + sum_y - sum_d + smooth) / (sum_x + sum_y + sum_d + smooth).clamp_min(
        torch.finfo(probs.dtype).tiny)
    per_class = 1.0 - ratio  # (N, C) per image, (C,) pooled

    if isinstance(classes, str) and classes == 'all':
        chosen = torch.ones_like(per_class)
    elif isinstance(classes, str):  # 'present'
        hard = target if present is None else present
        chosen = ((hard * valid if valid is not None else hard).sum(dims) > 0).to(probs.dtype)
    else:
        bad = [c for c in classes if c >= num_classes]
        if bad:
            raise ValueError(f'classes {bad} are not below the {num_classes} classes of the '
                             f'prediction')
        chosen = torch.zeros_like(per_class)
        chosen[..., list(classes)] = 1.0
    if class_weight is not None:
        if len(class_weight) != num_classes:
            raise ValueError(f'class_weight has {len(class_weight)} entries, the prediction '
                             f'{num_classes} classes')
        chosen = chosen * torch.as_tensor(class_weight, dtype=probs.dtype, device=probs.device)
    total = chosen.sum(-1)
    rows = total > 0
    if not bool(rows.any()):
        return probs.sum() * 0.0
    mean = (per_class * chosen).sum(-1)[rows] / total[rows]
    return mean.mean()
