"""Early stopping (``search.early_stop``): a proxy training scores the hold-out at a few
points of its schedule and stops itself where its score is below a quantile of what the
finished trials of the earlier steps scored at the same point.

The plan of a step (its probe iterations and thresholds, :func:`step_plan`) is a pure
function of the journaled state before the step, fixed when the step's trials are first
launched, so a resumed search decides the same. The policy mean itself (candidate 0 with
``baseline='mu'``) is never stopped: the update's baseline and the step's own reward are
full-length. A stopped trial's reward in the update: :func:`asl.search.state.settled_reward`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

__all__ = ['probe_plan', 'step_plan', 'trial_plan']


def probe_plan(max_iters: int, at: List[float], history: List[List[Dict]], quantile: float,
               min_trials: int) -> Dict:
    """The probe iterations of a step's trials and their thresholds.

    Args:
        max_iters: the proxy training's length.
        at: fractions of it (``search.early_stop.at``).
        history: the probes of the finished trials of the earlier steps.
        quantile, min_trials: the rule (``search.early_stop``).

    Returns:
        ``dict(iters, thresholds)``: a threshold is the ``quantile`` of the earlier scores
        at that iteration, None with fewer than ``min_trials`` of them.
    """
    iters = sorted({min(max(int(round(f * max_iters)), 1), max_iters - 1) for f in at})
    iters = [i for i in iters if 0 < i < max_iters]
    thresholds = []
    for it in iters:
        scores = [p['score'] for probes in history for p in probes if p['iter'] == it]
        thresholds.append(float(np.quantile(scores, quantile)) if len(scores) >= min_trials
                          else None)
    return dict(iters=iters, thresholds=thresholds)


def step_plan(state, step: int, settings, max_iters: int) -> Optional[Dict]:
    """The probe plan of ``step`` (None when early stopping is off): thresholds from the
    probes of the trials of the earlier steps that trained to the end."""
    e = settings.early_stop
    if e is None:
        return None
    history = [t.probes for k, st in state.steps.items() if k < step
               for t in st.trials.values() if t.reward is not None]
    return probe_plan(max_iters, e['at'], history, e['quantile'], e['min_trials'])


def trial_plan(plan: Optional[Dict], index: int, mean_is_candidate_0: bool) -> Optional[Dict]:
    """A trial's probes: the step's plan, without thresholds for the policy mean itself."""
    if plan and index == 0 and mean_is_candidate_0:
        return dict(plan, thresholds=[None] * len(plan['thresholds']))
    return plan
