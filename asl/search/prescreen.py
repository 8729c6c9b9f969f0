"""Pre-screening: reject hopeless candidates before any proxy training (``search.prescreen``).

In the spirit of AutoLoss-Zero's loss-rejection protocol, a candidate surrogate is scored
on a task that needs no network: a few label maps of the proxy training split (never the
hold-out), logits that start as small seeded noise, ``steps`` Adam steps on the logits
themselves with the candidate's surrogate loss, and the exact target metric of the
result's arg-max. A surrogate with a useful gradient drives the free logits to the labels
within a few steps (the identity curves and the published parameters reach the metric's
maximum on the demo data in 10 steps); a curve that is flat where the probabilities are,
or that saturates at once, leaves them where they started.

The rule (:func:`rejected`): a candidate is rejected when its score is below
``threshold`` times the score of the step's policy mean. Relative, not absolute, because
the reachable score depends on the metric, the classes and the data (an absolute
threshold would need tuning per task), while the policy mean is what the search
currently believes in: a candidate that does much worse than it on this task carries
no information worth a proxy training. Rejected candidates are journaled (the step's
``step_screened`` event) and take, in the PPO update, the lowest full-length reward of
their step times ``score / (threshold x reference)`` (below 1):
:func:`asl.search.controller.settled_reward`, so that the policy learns to move away
from them, the more so the worse they screened.

Everything here is deterministic: a fixed seed, float32, the same label maps.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ['PRESCREEN_DEFAULTS', 'EQUIVALENCE_DEFAULTS', 'screening_labels', 'screen_score',
           'rejected', 'surrogate_gradient', 'most_similar']

#: ``search.prescreen`` entries left out take these values.
PRESCREEN_DEFAULTS = dict(images=4, steps=10, lr=0.5, threshold=0.5, seed=0)


def _seg_path(leaf: Dict, name: str) -> str:
    root = leaf.get('data_root') or ''
    prefix = (leaf.get('data_prefix') or {}).get('seg_map_path', '')
    return os.path.join(root, prefix, name + leaf.get('seg_map_suffix', '.png'))


def screening_labels(train_ds: Dict, images: int, ignore_index: int = 255,
                     max_size: int = 128) -> torch.Tensor:
    """The first ``images`` label maps of the proxy training split, as (N, S, S) int64.

    ``train_ds`` is the proxy training dataset config (the hold-out already carved out,
    see :func:`asl.data.holdout.split_dataset_config`): its ``ann_file`` lists give the
    names, in order. Maps are centre-cropped to the smallest side among them (at most
    ``max_size``); ``reduce_zero_label`` is applied as MMSeg does.
    """
    from PIL import Image

    from ..data.holdout import ann_path, dataset_leaves, read_names
    maps = []
    for leaf in dataset_leaves(dict(train_ds)):
        if not leaf.get('ann_file'):
            continue
        for name in read_names(ann_path(leaf))[:images - len(maps)]:
            with Image.open(_seg_path(leaf, name)) as im:
                lab = np.asarray(im).astype(np.int64)
            if leaf.get('reduce_zero_label'):
                lab = np.where(lab == 0, ignore_index, lab - 1)
                lab[lab == ignore_index - 1] = ignore_index
            maps.append(lab)
        if len(maps) >= images:
            break
    if not maps:
        raise ValueError('pre-screening found no label map in the proxy training split '
                         f'(dataset {train_ds.get("type")!r})')
    size = min(min(m.shape[:2]) for m in maps + [np.zeros((max_size, max_size))])
    out = []
    for m in maps:
        y, x = (m.shape[0] - size) // 2, (m.shape[1] - size) // 2
        out.append(m[y:y + size, x:x + size])
    return torch.from_numpy(np.stack(out))


def _start_logits(labels: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """The screening task's starting logits: small seeded noise, requiring a gradient."""
    gen = torch.Generator().manual_seed(int(seed))
    n, h, w = labels.shape
    return (0.1 * torch.randn(n, num_classes, h, w, generator=gen)).requires_grad_()


def screen_score(surrogate, labels: torch.Tensor, num_classes: int, metric, steps: int,
                 lr: float, seed: int = 0, ignore_index: int = 255) -> float:
    """The exact ``metric`` (a fraction) after ``steps`` Adam steps of free logits on
    ``surrogate``'s loss, from seeded noise.

    Args:
        surrogate: a :class:`asl.surrogate.Surrogate` (the candidate).
        labels: (N, H, W) label maps (:func:`screening_labels`).
        num_classes: classes of the task.
        metric: an :class:`asl.exact.ExactMetrics` of the target (reset here).
        steps, lr, seed: the optimisation.
    """
    logits = _start_logits(labels, num_classes, seed)
    opt = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        value = surrogate(logits, labels, ignore_index)
        opt.zero_grad(set_to_none=True)
        (1.0 - value).backward()
        opt.step()
    metric.reset()
    metric.update(logits.detach().argmax(1), labels)
    out = metric.compute()
    score = float(next(iter(out.values())))
    return score if np.isfinite(score) else 0.0


def rejected(scores: Sequence[float], reference: float, threshold: float,
             keep: Optional[Sequence[int]] = ()) -> List[int]:
    """Indices of the candidates whose score is below ``threshold * reference`` (the
    policy mean's score), except those in ``keep`` (the policy mean itself)."""
    return [i for i, s in enumerate(scores) if i not in set(keep) and s < threshold * reference]


#: ``search.equivalence`` entries left out take these values.
EQUIVALENCE_DEFAULTS = dict(threshold=0.999, entries=16384)


def surrogate_gradient(surrogate, labels: torch.Tensor, num_classes: int, seed: int = 0,
                       entries: int = 16384, ignore_index: int = 255) -> torch.Tensor:
    """The gradient of ``surrogate``'s loss with respect to the screening task's starting
    logits (the same seeded noise as :func:`screen_score`), on a fixed seeded subset of
    ``entries`` of its elements (all of them if there are fewer), as a unit vector: two
    candidates whose vectors have a cosine similarity near 1 push a network the same way
    on these images (AutoLoss-Zero's gradient-equivalence check)."""
    logits = _start_logits(labels, num_classes, seed)
    (1.0 - surrogate(logits, labels, ignore_index)).backward()
    g = logits.grad.reshape(-1)
    if g.numel() > entries:
        pick = torch.randperm(g.numel(), generator=torch.Generator().manual_seed(int(seed) + 1))
        g = g[pick[:entries]]
    norm = g.norm()
    return g / norm if norm > 0 else g


def most_similar(grad: torch.Tensor, known: Dict) -> Optional[tuple]:
    """``(key, cosine)`` of the entry of ``known`` (key -> unit gradient) closest to
    ``grad``; None if ``known`` is empty."""
    if not known:
        return None
    keys = list(known)
    cos = torch.stack([known[k] for k in keys]) @ grad
    j = int(cos.argmax())
    return keys[j], float(cos[j])
