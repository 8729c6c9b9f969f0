"""Successive halving inside a step (``search.halving``).

Every candidate of a step trains the first *leg*: from scratch to the first rung (a
fraction of the proxy training's iterations, on the proxy's full schedule). There its
hold-out score is measured, a checkpoint saved and the training stops
(``trial_paused``). Once every candidate of the step has reached the rung (or failed for
good), the rung is decided (``rung_decided``, :func:`decide`): the best ``ceil(n / eta)``
of the ``n`` scored candidates are promoted (with ``baseline='mu'`` the policy mean,
candidate 0, always among them: it takes one of the places), the others stop there. A
promoted candidate's next leg resumes its own checkpoint (MMEngine's resume: model,
optimizer, schedule, iteration, and the random state), so no iteration is trained twice,
and runs to the next rung, the last leg to the end of the proxy training.

Everything is a pure function of journaled data: the rung iterations of the proxy length
and the settings, the decision of the rung scores, the stopped candidates' rewards of
the decisions and the full-length rewards, so a resumed search decides the same.

The reward of a stopped candidate in the PPO update (:func:`halted_rewards`): working
down from the last rung, the candidates stopped at rung ``k`` take ``bar x score / cut``,
where ``cut`` is the lowest score among the candidates promoted there by their rank (the
policy mean left out; with none, the best stopped score) and ``bar`` is the lowest
full-length reward of the step for the last rung, else the lowest reward given at rung
``k + 1`` (or the bar above it when nobody stopped there). So a stopped candidate never
exceeds the step's lowest full-length reward, one stopped at an earlier rung never
exceeds one stopped later, and among those stopped at the same rung the order of the
scores is kept, on the rewards' own scale.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

__all__ = ['rung_iters', 'decide', 'halted_rewards', 'leg_candidates', 'iterations_fraction',
           'planned_counts']


def rung_iters(max_iters: int, rungs: Sequence[float]) -> List[int]:
    """The iterations of the rungs (``search.halving.rungs`` x the proxy's length), each in
    ``[1, max_iters - 1]``, increasing, duplicates merged."""
    its = sorted({min(max(int(round(f * max_iters)), 1), max_iters - 1) for f in rungs})
    return [i for i in its if 0 < i < max_iters]


def decide(scores: Sequence[Optional[float]], eta: float, mean_index: Optional[int]) -> Dict:
    """The decision at one rung.

    Args:
        scores: per candidate of the step, its score at the rung (None: it did not reach
            the rung: failed, stopped earlier, rejected).
        eta: keep ``ceil(n / eta)`` of the ``n`` scored candidates.
        mean_index: the candidate always promoted (the policy mean), or None.

    Returns:
        ``dict(promoted, stopped, cut, keep)``: sorted indices, and the lowest score
        promoted by rank (:mod:`module doc <asl.search.halving>`; None when nobody stopped).
        Ties go to the lower index.
    """
    scored = [i for i, s in enumerate(scores) if s is not None]
    keep = max(1, math.ceil(len(scored) / eta)) if scored else 0
    order = sorted(scored, key=lambda i: (-scores[i], i))
    if mean_index is not None and mean_index in scored:
        by_rank = [i for i in order if i != mean_index][:keep - 1]
        promoted = sorted(by_rank + [mean_index])
    else:
        by_rank = order[:keep]
        promoted = sorted(by_rank)
    stopped = sorted(set(scored) - set(promoted))
    cut = None
    if stopped:
        cut = (min(scores[i] for i in by_rank) if by_rank
               else max(scores[i] for i in stopped))
    return dict(promoted=promoted, stopped=stopped, cut=cut, keep=keep)


def halted_rewards(decisions: Dict[int, Dict], full: List[float]) -> Dict[int, float]:
    """The update's rewards of the candidates stopped at a rung (see the module).

    Args:
        decisions: rung -> the ``rung_decided`` event (``scores``, ``stopped``, ``cut``).
        full: the step's full-length rewards (none: an empty dict, the stopped candidates
            are then left out of the update, like failures).
    """
    if not full:
        return {}
    bar = float(min(full))
    out: Dict[int, float] = {}
    for k in sorted(decisions, reverse=True):
        d = decisions[k]
        cut = d['cut']
        given = []
        for i in d['stopped']:
            s = d['scores'][i]
            ratio = min(max(s / cut, 0.0), 1.0) if cut is not None and cut > 0 else 0.0
            out[i] = bar * ratio
            given.append(out[i])
        if given:
            bar = min(given)
    return out


def leg_candidates(rec, leg: int) -> List[int]:
    """The candidates of a step (a :class:`~asl.search.state.StepRecord`) whose leg
    ``leg`` is still to train: not settled, every earlier rung reached, promoted at the
    last one, this leg's rung not reached yet."""
    out = []
    for i in range(len(rec.candidates)):
        t = rec.trial(i)
        if t.done or len(t.rungs) != leg:
            continue
        if leg > 0 and i not in rec.decided.get(leg - 1, {}).get('promoted', ()):
            continue
        out.append(i)
    return out


def iterations_fraction(counts: Sequence[int], rungs: Sequence[float], m: int) -> float:
    """Proxy iterations with halving as a fraction of a plain step's ``m`` full trainings,
    when ``counts[k]`` candidates train leg ``k`` (``counts[0] = m`` untouched by failures;
    legs end at the rung fractions, the last at 1)."""
    ends = list(rungs) + [1.0]
    starts = [0.0] + list(rungs)
    return sum(c * (e - s) for c, s, e in zip(counts, starts, ends)) / float(m)


def planned_counts(m: int, num_rungs: int, eta: float, mean_promoted: bool = True) -> List[int]:
    """Candidates per leg of a step of ``m`` with no failure: ``m``, then ``ceil(n / eta)``
    at each rung (the policy mean takes one of the places)."""
    counts = [m]
    for _ in range(num_rungs):
        counts.append(max(1, math.ceil(counts[-1] / eta)))
    return counts
