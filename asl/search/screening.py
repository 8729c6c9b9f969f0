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
:func:`asl.search.state.settled_reward`, so that the policy learns to move away
from them, the more so the worse they screened.

Everything here is deterministic: a fixed seed, float32, the same label maps.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .settings import PRESCREEN_DEFAULTS

__all__ = ['PRESCREEN_DEFAULTS', 'screening_labels', 'screen_score', 'rejected', 'Screener']



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
        surrogate: a :class:`asl.loss.surrogate.Surrogate` (the candidate).
        labels: (N, H, W) label maps (:func:`screening_labels`).
        num_classes: classes of the task.
        metric: an :class:`asl.loss.exact.ExactMetrics` of the target (reset here).
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


class Screener:
    """Pre-screens the candidates of each step of one search (the score of
    :func:`screen_score` under the rule of :func:`rejected`). The label maps are read once,
    at the first step screened.

    Args:
        settings: the search's :class:`~asl.search.settings.SearchSettings` (with
            ``prescreen``).
        train_ds (dict): the proxy training split's dataset config (screening reads its
            first label maps, never the hold-out).
        num_classes (int): the head's classes.
        mean_is_candidate_0 (bool): the policy mean is candidate 0 (PPO with
            ``baseline='mu'``): its score is the reference and it is never rejected.
    """

    def __init__(self, settings, train_ds: Dict, num_classes: int, mean_is_candidate_0: bool):
        self.settings = settings
        self.options = dict(PRESCREEN_DEFAULTS, **(settings.prescreen or {}))
        self.train_ds = train_ds
        self.num_classes = num_classes
        self.mean_first = mean_is_candidate_0
        self._labels = None

    def score(self, raw: List[float]) -> float:
        """The screening score of the raw parameter vector ``raw``."""
        from ..loss.exact import ExactMetrics
        from .trial import settings_surrogate
        s, p = self.settings, self.options
        if self._labels is None:
            self._labels = screening_labels(self.train_ds, p['images'])
        metric = ExactMetrics([s.target_metric], self.num_classes, tol=s.tol,
                              drop_bg=s.drop_bg)
        return screen_score(settings_surrogate(s, raw), self._labels, self.num_classes,
                            metric, p['steps'], p['lr'], p['seed'])

    def screen(self, mu: List[float], candidates: List[List[float]]) -> Dict:
        """The fields of a step's ``step_screened`` event: ``scores``, ``reference`` (the
        policy mean's score), ``threshold`` and ``rejected`` (candidate indices)."""
        p = self.options
        scores = [self.score(c) for c in candidates]
        reference = scores[0] if self.mean_first else self.score(mu)
        return dict(scores=scores, reference=reference, threshold=p['threshold'],
                    rejected=rejected(scores, reference, p['threshold'],
                                      keep=[0] if self.mean_first else []))
