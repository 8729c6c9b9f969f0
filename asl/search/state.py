"""The search's state and the one function that changes it.

A search is the sequence of events in its journal (:mod:`asl.search.journal`). Its state
(:class:`SearchState`: the policy, the random generator, every step's candidates and
trials, the re-evaluation) is what :func:`apply` makes of those events, one at a time, in
order. The running search journals an event and then applies that same event to its
state; a resumed search applies the journal's events to a fresh state (:func:`replay`).
Both go through :func:`apply` only, so the state a resumed search continues from is the
state the interrupted one had, by construction.

Journal events and their fields:

* ``search_started``: ``fingerprint`` (settings, seed, searcher, dimension, reward
  key), ``policy``, ``rng``: the initial state.
* ``warm_start_failed``: ``attempt``, ``kind``, ``reason`` (``search.warm_start``'s
  cross-entropy training failed; retried up to ``max_retries`` times).
* ``warm_start_finished``: ``attempt``, ``checkpoint`` (absolute path), ``sha256``,
  ``iters``, ``reward`` and ``metrics`` (the hold-out score of that training),
  ``wall_s``: every proxy training starts from that checkpoint's weights.
* ``step_started``: ``step``, ``mu``, ``candidates`` (M raw vectors), ``rng`` (the
  generator state after sampling), ``policy`` (the policy that sampled them).
* ``step_screened``: ``step``, ``scores``, ``reference``, ``threshold``, ``rejected``
  (pre-screening, :mod:`asl.search.screening`), ``seconds``.
* ``trial_launched``: ``step``, ``index``, ``attempt``, ``trial_id``, ``work_dir``,
  ``executor``, ``info`` (pid / job id), ``probes`` (early stopping's plan, if any),
  ``leg`` and ``resume_from`` (successive halving: the leg, from 0, and the checkpoint
  it resumes).
* ``trial_paused`` (successive halving, :mod:`asl.search.halving`): ``step``, ``index``,
  ``attempt``, ``rung``, ``iter``, ``score``, ``metrics``, ``checkpoint``: the candidate
  reached a rung.
* ``rung_decided``: ``step``, ``rung``, ``iter``, ``scores`` (per candidate, None if it
  did not reach the rung), ``promoted``, ``stopped``, ``cut``, ``keep``.
* ``trial_finished``: ``step``, ``index``, ``attempt``, ``reward``, ``metrics``,
  ``timing``, ``probes``.
* ``trial_stopped``: ``step``, ``index``, ``attempt``, ``iter``, ``score``, ``threshold``,
  ``probes`` (stopped by early stopping, :mod:`asl.search.early_stop`).
* ``trial_failed``: ``step``, ``index``, ``attempt``, ``kind``, ``reason``, ``final``
  (no retry left: the candidate is excluded from the update).
* ``policy_updated``: ``step``, ``policy``, ``mu``, ``rewards``, ``stats`` (with
  ``rollback`` when the policy was rolled back instead of updated), ``summary``.
* ``reeval_started``: ``entries`` (the vectors re-evaluated: ``raw``, ``source``,
  ``rewards`` already known), ``candidates`` and ``seeds`` (one proxy training each).
* ``trial_*`` events of the re-evaluation carry ``phase='reeval'`` and ``step=-1``.
* ``reeval_finished``: ``scores`` (per entry: all its rewards and their mean), ``chosen``,
  and with ``search.reevaluate.rule='one_se'`` the ``rule`` and its ``se`` (the standard
  error it allowed below the best mean).
* ``search_finished``: ``best``.

The reward rules of the update (:func:`own_reward`, :func:`settled_reward`,
:func:`rollback_to`, :func:`reeval_entries`, :func:`choose_reevaluated`) are pure functions
of this state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from .policy import PolicyState

__all__ = ['TrialRecord', 'StepRecord', 'SearchState', 'apply', 'replay', 'REEVAL', 'WARM',
           'mean_reward', 'own_reward', 'settled_reward', 'rollback_to', 'reeval_entries',
           'reeval_scores', 'choose_reevaluated', 'REEVAL_RULES']

#: The ``step`` of the re-evaluation's trials.
REEVAL = -1
#: The ``step`` of ``search.warm_start``'s training (never journaled as a trial).
WARM = -2


@dataclass
class TrialRecord:
    """What the journal says about one candidate of one step."""

    attempts_failed: int = 0
    reward: Optional[float] = None
    metrics: Dict = field(default_factory=dict)
    timing: Dict = field(default_factory=dict)
    final_failure: Optional[str] = None
    failures: List[str] = field(default_factory=list)
    in_flight: Optional[Dict] = None  # the last trial_launched without an outcome
    rejected: bool = False  # by pre-screening: never trained
    stopped: Optional[Dict] = None  # the trial_stopped event (early stopping)
    probes: List[Dict] = field(default_factory=list)  # early-stopping scores
    rungs: Dict[int, Dict] = field(default_factory=dict)  # rung -> trial_paused (halving)
    halted: Optional[int] = None  # the rung at which successive halving stopped it

    @property
    def done(self) -> bool:
        return (self.reward is not None or self.final_failure is not None or self.rejected
                or self.stopped is not None or self.halted is not None)

    @property
    def next_attempt(self) -> int:
        return self.attempts_failed + 1


@dataclass
class StepRecord:
    """One step's candidates and trials (or the re-evaluation's)."""

    mu: List[float]
    candidates: List[List[float]]
    trials: Dict[int, TrialRecord] = field(default_factory=dict)
    update: Optional[Dict] = None
    policy: Optional[Dict] = None  # the policy that sampled the candidates
    seeds: Optional[List[int]] = None  # per candidate (re-evaluation); None: the search seed
    screened: Optional[Dict] = None  # the step_screened event (search.prescreen)
    decided: Dict[int, Dict] = field(default_factory=dict)  # rung -> rung_decided (halving)

    def trial(self, index: int) -> TrialRecord:
        """The record of candidate ``index`` (a fresh one if the journal has nothing on it)."""
        return self.trials.get(index) or TrialRecord()

    def rewards(self) -> List[Optional[float]]:
        return [self.trials[i].reward if i in self.trials else None
                for i in range(len(self.candidates))]

    def indices(self, what: str) -> List[int]:
        """The candidates ``'rejected'`` by pre-screening, ``'stopped'`` early or
        ``'halted'`` at a rung (successive halving)."""
        if what == 'rejected':
            return [i for i, t in sorted(self.trials.items()) if t.rejected]
        if what == 'halted':
            return [i for i, t in sorted(self.trials.items()) if t.halted is not None]
        return [i for i, t in sorted(self.trials.items()) if t.stopped is not None]


@dataclass
class SearchState:
    """The search as its journal's events made it."""

    fingerprint: Optional[Dict] = None
    policy: Optional[PolicyState] = None
    rng: Optional[Dict] = None
    steps: Dict[int, StepRecord] = field(default_factory=dict)
    reeval: Optional[StepRecord] = None  # the re-evaluation's trials
    reeval_entries: Optional[List[Dict]] = None
    reeval_done: Optional[Dict] = None
    finished: Optional[Dict] = None
    warm_start: Optional[Dict] = None  # search.warm_start's training, once it finished
    warm_start_failures: List[str] = field(default_factory=list)
    num_events: int = 0

    def owner(self, step: int) -> StepRecord:
        """The step record of ``step`` (the re-evaluation's for :data:`REEVAL`)."""
        return self.reeval if step == REEVAL else self.steps[step]

    def trained(self) -> int:
        """How many trials ended with a reward."""
        return sum(1 for st in self.steps.values() for t in st.trials.values()
                   if t.reward is not None)


def _trial(state: SearchState, ev: Dict) -> TrialRecord:
    owner = state.reeval if ev.get('phase') == 'reeval' else state.steps[ev['step']]
    return owner.trials.setdefault(ev['index'], TrialRecord())


def apply(state: SearchState, ev: Dict) -> SearchState:
    """Apply one journal event to ``state`` (in place; returned for convenience)."""
    kind = ev['event']
    state.num_events += 1
    if kind == 'search_started':
        state.fingerprint = ev['fingerprint']
        state.policy = PolicyState.from_dict(ev['policy'])
        state.rng = ev['rng']
    elif kind == 'step_started':
        state.steps[ev['step']] = StepRecord(mu=list(ev['mu']), candidates=ev['candidates'],
                                             policy=ev.get('policy'))
        state.rng = ev['rng']
    elif kind == 'step_screened':
        rec = state.steps[ev['step']]
        rec.screened = ev
        for i in ev['rejected']:
            rec.trials.setdefault(i, TrialRecord()).rejected = True
    elif kind == 'trial_launched':
        _trial(state, ev).in_flight = ev
    elif kind == 'trial_finished':
        t = _trial(state, ev)
        t.reward, t.metrics, t.timing = ev['reward'], ev['metrics'], ev['timing']
        t.probes = ev.get('probes') or []
        t.in_flight = None
    elif kind == 'trial_stopped':
        t = _trial(state, ev)
        t.stopped, t.probes, t.in_flight = ev, ev['probes'] or [], None
    elif kind == 'trial_paused':
        t = _trial(state, ev)
        t.rungs[ev['rung']] = ev
        t.in_flight = None
    elif kind == 'rung_decided':
        rec = state.steps[ev['step']]
        rec.decided[ev['rung']] = ev
        for i in ev['stopped']:
            rec.trials.setdefault(i, TrialRecord()).halted = ev['rung']
    elif kind == 'trial_failed':
        t = _trial(state, ev)
        t.attempts_failed += 1
        t.failures.append(f'attempt {ev["attempt"]}: [{ev["kind"]}] {ev["reason"]}')
        t.in_flight = None
        if ev['final']:
            t.final_failure = ev['reason']
    elif kind == 'policy_updated':
        state.steps[ev['step']].update = ev
        state.policy = PolicyState.from_dict(ev['policy'])
    elif kind == 'reeval_started':
        state.reeval = StepRecord(mu=[], candidates=ev['candidates'], seeds=ev['seeds'])
        state.reeval_entries = ev['entries']
    elif kind == 'reeval_finished':
        state.reeval_done = ev
    elif kind == 'search_finished':
        state.finished = ev
    elif kind == 'warm_start_finished':
        state.warm_start = ev
    elif kind == 'warm_start_failed':
        state.warm_start_failures.append(f'attempt {ev["attempt"]}: [{ev["kind"]}] '
                                         f'{ev["reason"]}')
    else:
        raise ValueError(f'unknown journal event {kind!r}')
    return state


def replay(events: Iterable[Dict]) -> SearchState:
    """The state that ``events`` (a journal's, in order) make of a new search."""
    state = SearchState()
    for ev in events:
        apply(state, ev)
    return state


# ------------------------------------------------------------------------ reward rules
def mean_reward(rewards: List[Optional[float]]) -> Optional[float]:
    """The mean of the successful rewards (None if there is none)."""
    ok = [r for r in rewards if r is not None]
    return float(np.mean(ok)) if ok else None


def own_reward(rewards: List[Optional[float]], baseline: str) -> Optional[float]:
    """The reward of a step's policy mean: candidate 0's with ``baseline='mu'`` (if it did
    not fail), else the step's mean reward."""
    if baseline == 'mu' and rewards and rewards[0] is not None:
        return float(rewards[0])
    return mean_reward(rewards)


def settled_reward(rec: StepRecord, index: int, trained: List[float]) -> Optional[float]:
    """The reward in the PPO update of a candidate settled without a full training: the
    step's lowest full-length reward times how far the candidate fell below its rule,
    ``score / threshold`` (< 1): pre-screening's score against ``threshold x`` the policy
    mean's, or early stopping's probe score against that point's threshold. Always below
    every full-length reward of the step, lower the further below the rule (the order
    among such candidates is kept), and on the rewards' own scale. None when no trial of
    the step was trained to the end (the candidate is then left out, like a failure)."""
    if not trained:
        return None
    t = rec.trials[index]
    if t.stopped is not None:
        score, bar = t.stopped['score'], t.stopped['threshold']
    else:
        scr = rec.screened
        score, bar = scr['scores'][index], scr['threshold'] * scr['reference']
    ratio = min(max(score / bar, 0.0), 1.0) if bar and bar > 0 else 0.0
    return float(min(trained)) * ratio


def update_rewards(rec: StepRecord) -> List[Optional[float]]:
    """The rewards a step's update uses: trained candidates' own, settled ones' by
    :func:`settled_reward` (stopped at a rung of successive halving: by
    :func:`asl.search.halving.halted_rewards`), None for failures."""
    from .halving import halted_rewards
    trained = rec.rewards()
    ok = [r for r in trained if r is not None]
    settled = set(rec.indices('rejected') + rec.indices('stopped'))
    halted = halted_rewards(rec.decided, ok) if rec.decided else {}
    return [settled_reward(rec, i, ok) if i in settled else halted.get(i, r)
            for i, r in enumerate(trained)]


def rollback_to(earlier: List[tuple], own: Optional[float], ratio: float) -> Optional[Dict]:
    """Whether a step's policy mean did so much worse than the best earlier one that the
    policy goes back to the state that sampled that one.

    Args:
        earlier: ``(step, own reward or None)`` of the earlier steps.
        own: the own reward of this step's mean (None: it failed; no rollback).
        ratio: roll back when ``own < ratio * best`` (``search.rollback``).

    Returns:
        ``dict(to_step, reward, best)`` (the first best step on ties), or None.
    """
    scored = [(k, r) for k, r in earlier if r is not None]
    if own is None or not scored:
        return None
    k_best, r_best = max(scored, key=lambda x: x[1])
    if own >= ratio * r_best:
        return None
    return dict(to_step=k_best, reward=own, best=r_best)


def reeval_entries(steps: Dict[int, StepRecord], searcher: str, baseline: str,
                   top: int) -> List[Dict]:
    """What the re-evaluation trains again: PPO, the policy means of the ``top`` steps with
    the highest mean reward (the paper's ranking); random search, the ``top`` best
    candidates. Equal vectors are one entry, their known rewards pooled (ties: the earlier
    step first). Each entry: ``raw``, ``rewards`` (already known), ``step``, ``source``."""
    ranked = []
    if searcher == 'random':
        for k, st in sorted(steps.items()):
            for i, r in enumerate(st.rewards()):
                if r is not None:
                    ranked.append((r, dict(raw=st.candidates[i], rewards=[r], step=k,
                                           source=f'step {k + 1} candidate {i}')))
    else:
        for k, st in sorted(steps.items()):
            m = mean_reward(st.rewards())
            if m is None:
                continue
            known = st.rewards()[:1] if baseline == 'mu' else []
            ranked.append((m, dict(raw=st.mu, rewards=[r for r in known if r is not None],
                                   step=k, source=f'policy mean of step {k + 1}')))
    ranked.sort(key=lambda x: -x[0])  # stable: earlier first on ties
    entries: List[Dict] = []
    for _, e in ranked:
        same = next((x for x in entries if x['raw'] == e['raw']), None)
        if same is not None:
            same['rewards'] += e['rewards']
            same['source'] += ', ' + e['source']
        elif len(entries) < top:
            entries.append(dict(e, rewards=list(e['rewards'])))
    return entries


def reeval_scores(state: SearchState, seeds: int) -> List[Dict]:
    """Per re-evaluated entry: its source, step, vector, every reward (known ones first,
    then its ``seeds`` new trainings') and their mean."""
    rewards = state.reeval.rewards()
    scores = []
    for n, e in enumerate(state.reeval_entries):
        new = [r for r in rewards[n * seeds:(n + 1) * seeds] if r is not None]
        allr = list(e['rewards']) + new
        scores.append(dict(source=e['source'], step=e['step'], raw=e['raw'], rewards=allr,
                           mean=float(np.mean(allr)) if allr else None))
    return scores


#: The re-evaluation's choices: ``best``, the highest mean reward; ``one_se``, the earliest
#: result whose mean is within one standard error of the highest (the "one standard error
#: rule" of model selection).
REEVAL_RULES = ('best', 'one_se')


def choose_reevaluated(scores: List[Dict], rule: str = 'best'):
    """The re-evaluated entry the search returns: ``(index or None, se or None)``.

    ``best``: the highest mean reward (ties: the first entry). ``one_se``: among the entries
    whose mean is at least the highest mean minus one standard error, the one of the
    earliest step (the fewest policy updates from the start; ties: the higher mean). The
    standard error is that of the best entry's mean, ``s / sqrt(n)``, with ``s`` the
    standard deviation of the rewards about their own entry's mean pooled over every entry
    (each entry's proxy trainings differ only in their seed, so they share one noise), ``n``
    the best entry's number of rewards. Without two rewards for any entry there is no
    estimate of the noise: ``one_se`` chooses as ``best``."""
    if rule not in REEVAL_RULES:
        raise ValueError(f're-evaluation rule must be one of {REEVAL_RULES}, got {rule!r}')
    valid = [n for n, sc in enumerate(scores) if sc['mean'] is not None]
    if not valid:
        return None, None
    best = max(valid, key=lambda n: scores[n]['mean'])
    if rule == 'best':
        return best, None
    sq = sum(float(np.sum((np.asarray(scores[n]['rewards'], dtype=float) -
                           scores[n]['mean']) ** 2)) for n in valid)
    dof = sum(len(scores[n]['rewards']) - 1 for n in valid)
    if dof < 1:
        return best, None
    se = float(np.sqrt(sq / dof) / np.sqrt(len(scores[best]['rewards'])))
    near = [n for n in valid if scores[n]['mean'] >= scores[best]['mean'] - se]
    chosen = min(near, key=lambda n: (scores[n]['step'], -scores[n]['mean'], n))
    return chosen, se
