"""The search loop: sample, launch, collect rewards, update, persist, top to bottom.

:class:`Search` runs a PPO2 search (or the random-search baseline) over the raw
surrogate parameters of one target metric. Every proxy training is a real
``tools/train.py`` process (or Slurm job) run by an :class:`~asl.search.executors.
Executor`. Every event goes to an fsync'd JSON-lines journal (``journal.jsonl``) in the
work directory *before* the search acts on it, and a search is resumed by running
the same command again: the journal is replayed, finished trials are never rerun,
trials that were in flight are re-attached (Slurm) or relaunched, and the policy
(mean, Adam moments, random state) is restored exactly, so a search killed at any
moment ends with the same parameters as an uninterrupted one.

Journal events and their fields:

* ``search_started``: ``fingerprint`` (settings, seed, searcher, dimension, reward
  key), ``policy``, ``rng``: the initial state.
* ``step_started``: ``step``, ``mu``, ``candidates`` (M raw vectors), ``rng`` (the
  generator state after sampling), ``policy`` (the policy that sampled them).
* ``trial_launched``: ``step``, ``index``, ``attempt``, ``trial_id``, ``work_dir``,
  ``executor``, ``info`` (pid / job id).
* ``trial_finished``: ``step``, ``index``, ``attempt``, ``reward``, ``metrics``,
  ``timing``.
* ``trial_failed``: ``step``, ``index``, ``attempt``, ``kind``, ``reason``, ``final``
  (no retry left: the candidate is excluded from the update).
* ``policy_updated``: ``step``, ``policy``, ``mu``, ``rewards``, ``stats`` (with
  ``rollback`` when the policy was rolled back instead of updated).
* ``reeval_started``: ``entries`` (the vectors re-evaluated: ``raw``, ``source``,
  ``rewards`` already known), ``candidates`` and ``seeds`` (one proxy training each).
* ``trial_*`` events of the re-evaluation carry ``phase='reeval'`` and ``step=-1``.
* ``reeval_finished``: ``scores`` (per entry: all its rewards and their mean), ``chosen``.
* ``search_finished``: ``best``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np

from .executors import Completion, Executor, LocalExecutor
from .journal import EVENT_KINDS, Journal
from .policy import PolicyState, ppo_update, sample_truncnorm
from .settings import SearchConfigError, SearchSettings, parse_search_section
from .trial import (TrialOutcome, TrialSpec, check_surrogate, head_classes, make_trial_config,
                    probe_plan, read_probes, read_trial_outcome, settings_surrogate)

__all__ = ['Search', 'SearchInterrupted', 'load_search_config', 'replay', 'SearchState',
           'SEARCHERS', 'KILL_AT_ENV', 'REEVAL', 'mean_reward', 'own_reward', 'rollback_to',
           'reeval_entries']

SEARCHERS = ('ppo', 'random')

#: The ``step`` of the re-evaluation's trials.
REEVAL = -1

#: Testing aid, off unless set: ``ASL_SEARCH_KILL_AT=WHEN:KIND[:N]`` makes the controller
#: SIGKILL itself at the N-th (default: first) journal event of kind KIND that it writes.
#: WHEN is ``before`` (the event's work is done, e.g. the policy update is computed, but
#: the event is not written), ``torn`` (half of its line is written, as by a crash in the
#: middle of the append) or ``after`` (written and fsync'd). The tests kill searches at
#: exact points with it and check that resuming gives the uninterrupted result.
KILL_AT_ENV = 'ASL_SEARCH_KILL_AT'
_KILL_WHEN = ('before', 'torn', 'after')


def load_search_config(config_path: str, cfg_options: Optional[Dict] = None):
    """The search config (with ``cfg_options`` merged) and its parsed ``search`` section:
    ``(cfg, settings)``, read once by the command line and handed to :class:`Search`.

    Raises:
        SearchConfigError: no such file, no ``search`` section, or a bad value in it.
    """
    if not os.path.isfile(config_path):
        raise SearchConfigError(f'search config not found: {config_path!r}')
    from mmengine.config import Config
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    section = cfg.get('search', None)
    settings = parse_search_section(
        section.to_dict() if hasattr(section, 'to_dict') else section, config_path)
    return cfg, settings


class SearchInterrupted(RuntimeError):
    """The search was stopped by a signal; re-running the same command resumes it."""


class _KillSwitch:
    """The ``ASL_SEARCH_KILL_AT`` testing aid (see :data:`KILL_AT_ENV`)."""

    def __init__(self, spec: str):
        parts = spec.split(':')
        n = parts[2] if len(parts) == 3 else '1'
        if len(parts) not in (2, 3) or parts[0] not in _KILL_WHEN or \
                parts[1] not in EVENT_KINDS or not n.isdigit() or int(n) < 1:
            raise SearchConfigError(
                f'{KILL_AT_ENV}={spec!r}: expected WHEN:KIND[:N] with WHEN one of '
                f'{_KILL_WHEN}, KIND one of {EVENT_KINDS} and N >= 1')
        self.when, self.kind, self.n = parts[0], parts[1], int(n)
        self.seen = 0

    def at(self, when: str, event: str, journal: Journal, fields: Dict) -> None:
        if event != self.kind:
            return
        if when == 'before':
            self.seen += 1
        if when != self.when or self.seen != self.n:
            return
        if when == 'torn':
            line = json.dumps(dict(seq=journal._seq, time=time.time(), event=event, **fields))
            fd = os.open(journal.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line[:len(line) // 2].encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


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
    reused: Optional[Dict] = None  # equivalence: the trained candidate whose reward it took
    probes: List[Dict] = field(default_factory=list)  # early-stopping scores

    @property
    def done(self) -> bool:
        return (self.reward is not None or self.final_failure is not None or self.rejected
                or self.stopped is not None)


@dataclass
class StepRecord:
    mu: List[float]
    candidates: List[List[float]]
    trials: Dict[int, TrialRecord] = field(default_factory=dict)
    update: Optional[Dict] = None
    policy: Optional[Dict] = None  # the policy that sampled the candidates
    seeds: Optional[List[int]] = None  # per candidate (re-evaluation); None: the search seed
    screened: Optional[Dict] = None  # the step_screened event (search.prescreen)
    probe_plan: Optional[Dict] = None  # early stopping: probe iterations and thresholds

    def rewards(self) -> List[Optional[float]]:
        return [self.trials[i].reward if i in self.trials else None
                for i in range(len(self.candidates))]


@dataclass
class SearchState:
    """The search as replayed from its journal."""

    fingerprint: Optional[Dict] = None
    policy: Optional[PolicyState] = None
    rng: Optional[Dict] = None
    steps: Dict[int, StepRecord] = field(default_factory=dict)
    reeval: Optional[StepRecord] = None  # the re-evaluation's trials
    reeval_entries: Optional[List[Dict]] = None
    reeval_done: Optional[Dict] = None
    finished: Optional[Dict] = None
    num_events: int = 0


def replay(events: List[Dict]) -> SearchState:
    """Rebuild the search state from journal events (in order)."""
    st = SearchState(num_events=len(events))
    for ev in events:
        kind = ev['event']
        if kind == 'search_started':
            st.fingerprint = ev['fingerprint']
            st.policy = PolicyState.from_dict(ev['policy'])
            st.rng = ev['rng']
        elif kind == 'step_started':
            st.steps[ev['step']] = StepRecord(mu=ev['mu'], candidates=ev['candidates'],
                                              policy=ev.get('policy'))
            st.rng = ev['rng']
        elif kind == 'step_screened':
            st.steps[ev['step']].screened = ev
            apply_screening(st.steps[ev['step']], ev)
        elif kind == 'reeval_started':
            st.reeval = StepRecord(mu=[], candidates=ev['candidates'], seeds=ev['seeds'])
            st.reeval_entries = ev['entries']
        elif kind == 'reeval_finished':
            st.reeval_done = ev
        elif kind in ('trial_launched', 'trial_finished', 'trial_failed', 'trial_stopped'):
            owner = st.reeval if ev.get('phase') == 'reeval' else st.steps[ev['step']]
            rec = owner.trials.setdefault(ev['index'], TrialRecord())
            if kind == 'trial_launched':
                rec.in_flight = ev
            elif kind == 'trial_finished':
                rec.reward, rec.metrics, rec.timing = ev['reward'], ev['metrics'], ev['timing']
                rec.probes = ev.get('probes') or []
                rec.in_flight = None
            elif kind == 'trial_stopped':
                rec.stopped, rec.probes, rec.in_flight = ev, ev['probes'], None
            else:
                rec.attempts_failed += 1
                rec.failures.append(f'attempt {ev["attempt"]}: [{ev["kind"]}] {ev["reason"]}')
                rec.in_flight = None
                if ev['final']:
                    rec.final_failure = ev['reason']
        elif kind == 'policy_updated':
            st.steps[ev['step']].update = ev
            st.policy = PolicyState.from_dict(ev['policy'])
        elif kind == 'search_finished':
            st.finished = ev
    return st


def apply_screening(rec: 'StepRecord', ev: Dict) -> None:
    """What a ``step_screened`` event settles: rejected candidates, and candidates that
    reuse the reward of an equivalent trained one."""
    for i in ev['rejected']:
        rec.trials.setdefault(i, TrialRecord()).rejected = True
    for i, src in (ev.get('reused') or {}).items():
        t = rec.trials.setdefault(int(i), TrialRecord())
        t.reward, t.reused = src['reward'], src


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


def settled_reward(rec: 'StepRecord', index: int, trained: List[float]) -> Optional[float]:
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


def reeval_entries(steps: Dict[int, 'StepRecord'], searcher: str, baseline: str,
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


def _fmt_time(s: Optional[float]) -> str:
    if s is None or not math.isfinite(s):
        return '?'
    s = int(round(s))
    if s >= 3600:
        return f'{s // 3600}h{s % 3600 // 60:02d}m'
    return f'{s // 60}m{s % 60:02d}s' if s >= 60 else f'{s}s'


class Progress:
    """A one-line progress display: steps, trials running/done/failed, best, ETA.

    On a terminal the line is redrawn in place; otherwise a line is printed whenever
    the counts change.
    """

    def __init__(self, total_trials: int, capacity: int, stream=None):
        self.total = total_trials
        self.capacity = max(capacity, 1)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.t0 = time.time()
        self.durations: List[float] = []
        self.last = ''

    def show(self, step: int, num_steps: int, running: int, done: int, failed: int,
             best: Optional[float], best_at: str) -> None:
        """One progress line; ``step`` is :data:`REEVAL` during the re-evaluation."""
        remaining = self.total - done - failed
        if self.durations:
            avg = sum(self.durations) / len(self.durations)
            eta = avg * math.ceil(remaining / self.capacity)
        else:
            eta = None
        best_s = f'{best:.4f} ({best_at})' if best is not None else '-'
        where = 're-evaluation' if step == REEVAL else f'step {step + 1}/{num_steps}'
        line = (f'[search] {where} | trials: {running} running, {done} done, '
                f'{failed} failed, {self.total} total | best reward {best_s} | '
                f'elapsed {_fmt_time(time.time() - self.t0)} | ETA {_fmt_time(eta)}')
        key = line.rsplit('| elapsed', 1)[0]
        if self.tty:
            self.stream.write('\r' + line.ljust(len(self.last)))
            self.stream.flush()
            self.last = line
        elif key != self.last:
            self.stream.write(line + '\n')
            self.stream.flush()
            self.last = key

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write('\n')
            self.stream.flush()


class Search:
    """One search, bound to a work directory.

    Args:
        config_path (str): the search config (a proxy training config plus ``search``).
        work_dir (str): where the journal, trials and results go.
        seed (int): search seed (sampling and every proxy training). Default: 1.
        searcher (str): ``'ppo'`` or ``'random'``. Default: ``'ppo'``.
        executor (Executor, optional): default: a :class:`LocalExecutor` with one worker.
        cfg_options (dict, optional): overrides merged into the config.
        retrain_config (str, optional): the config the final re-training config
            inherits (default: the search config's ``search`` has none: the proxy
            config itself).
        poll_interval (float): seconds between executor polls.
        logger (logging.Logger, optional): default: an MMEngine logger writing
            ``search.log`` in the work directory.
        on_event (callable, optional): called after every journaled event (tests use
            it to kill the search at chosen moments).
        loaded (tuple, optional): ``(cfg, settings)`` from :func:`load_search_config`,
            when the caller has read the config already (then ``cfg_options`` is not
            used).
    """

    def __init__(self, config_path: str, work_dir: str, seed: int = 1, searcher: str = 'ppo',
                 executor: Optional[Executor] = None, cfg_options: Optional[Dict] = None,
                 retrain_config: Optional[str] = None, poll_interval: float = 0.5,
                 logger: Optional[logging.Logger] = None,
                 on_event: Optional[Callable[[Dict], None]] = None, loaded=None):
        if searcher not in SEARCHERS:
            raise SearchConfigError(f'searcher must be one of {SEARCHERS}, got {searcher!r}')
        self.config_path = os.path.abspath(config_path)
        self.cfg, self.settings = loaded or load_search_config(config_path, cfg_options)
        self.surrogate, self.identity = check_surrogate(self.settings)
        self.dim = len(self.identity)
        self.reward_key = self.surrogate.name
        self.seed = int(seed)
        self.searcher = searcher
        self.work_dir = os.path.abspath(work_dir)
        if retrain_config is None and self.settings.retrain_config:
            retrain_config = self.settings.retrain_config
            if not os.path.isabs(retrain_config):  # relative to the config, else to the cwd
                near = os.path.join(os.path.dirname(self.config_path), retrain_config)
                retrain_config = near if os.path.isfile(near) else os.path.abspath(retrain_config)
        if retrain_config is not None and not os.path.isfile(retrain_config):
            raise SearchConfigError(f'retrain config not found: {retrain_config!r}')
        self.retrain_config = retrain_config
        self.executor = executor or LocalExecutor()
        self.poll_interval = poll_interval
        self.on_event = on_event
        self.name = os.path.splitext(os.path.basename(config_path))[0]
        os.makedirs(self.work_dir, exist_ok=True)
        self.logger = logger or self._make_logger()
        self.journal = Journal(os.path.join(self.work_dir, 'journal.jsonl'))
        self._train_ds = self._holdout_ds = None
        spec = os.environ.get(KILL_AT_ENV)
        self._kill = _KillSwitch(spec) if spec else None

    # ------------------------------------------------------------------ set-up
    def _make_logger(self) -> logging.Logger:
        from mmengine.logging import MMLogger
        name = f'asl_search_{abs(hash(self.work_dir))}'
        return MMLogger.get_instance(name, logger_name='asl.search',
                                     log_file=os.path.join(self.work_dir, 'search.log'),
                                     log_level='INFO', file_mode='a')

    def info(self):
        """What the outputs need to know about this search."""
        from .report import SearchInfo
        return SearchInfo(name=self.name, config_path=self.config_path, work_dir=self.work_dir,
                          seed=self.seed, searcher=self.searcher, reward_key=self.reward_key,
                          settings=self.settings,
                          retrain_base=self.retrain_config or self.config_path)

    def fingerprint(self) -> Dict:
        settings = self.settings.to_dict()
        settings.pop('trials_per_gpu')  # how trials are packed does not change the search
        return dict(config=self.name, settings=settings, seed=self.seed,
                    searcher=self.searcher, dim=self.dim, reward_key=self.reward_key)

    def _prepare_data(self) -> None:
        """Generate demo data if the config names it; carve the hold-out (files in
        ``work_dir/holdout``)."""
        from ..data.demo import prepare_demo_data
        from ..data.holdout import HoldoutError, split_dataset_config
        prepare_demo_data(self.cfg)
        val_ds = self.cfg.val_dataloader.dataset
        pipeline = val_ds.get('pipeline') or self.cfg.get('test_pipeline')
        if not pipeline:
            raise SearchConfigError('the search config needs a val_dataloader.dataset.pipeline '
                                    'for the hold-out')
        ho = self.settings.holdout
        try:
            self._train_ds, self._holdout_ds, held = split_dataset_config(
                self.cfg.train_dataloader.dataset, pipeline, ho['num'], ho['seed'],
                os.path.join(self.work_dir, 'holdout'))
        except HoldoutError as e:
            raise SearchConfigError(str(e)) from None
        self.logger.info(f'hold-out: {len(held)} images (seed {ho["seed"]}) carved from the '
                         f'training split; proxy trainings never see them')

    # ----------------------------------------------------------------- journal
    def _log_event(self, event: str, **fields) -> Dict:
        if self._kill is not None:
            self._kill.at('before', event, self.journal, fields)
            self._kill.at('torn', event, self.journal, fields)
        rec = self.journal.append(event, **fields)
        if self._kill is not None:
            self._kill.at('after', event, self.journal, fields)
        if self.on_event is not None:
            self.on_event(rec)
        return rec

    # -------------------------------------------------------------------- run
    def run(self) -> Dict:
        """Run (or resume) the search to its end; return the ``best.json`` content."""
        try:
            return self._run()
        finally:
            self.executor.close()

    def _run(self) -> Dict:
        events = self.journal.read()
        if self.journal.torn:
            self.logger.warning(f'journal: ignoring a torn last line ({self.journal.torn})')
        state = replay(events)
        if state.fingerprint is not None and state.fingerprint != self.fingerprint():
            diff = sorted(k for k in self.fingerprint()
                          if state.fingerprint.get(k) != self.fingerprint()[k])
            raise SearchConfigError(
                f'{self.work_dir} holds another search (differs in {diff}); use another '
                f'--work-dir or the same settings to resume it')
        if state.finished is None:
            self.executor.prepare(self.work_dir)  # e.g. warm up a trial launcher meanwhile
        self._prepare_data()
        s = self.settings
        self.logger.info(f'search {self.name}: {self.searcher}, target {self.reward_key}, '
                         f'{self.dim} parameters, {s.num_steps} steps x {s.num_samples} '
                         f'candidates, executor: {self.executor.describe()}\n'
                         + self.surrogate.layout())
        if state.fingerprint is None:
            init = s.init_mu if s.init_mu is not None else self.identity
            rng = np.random.Generator(np.random.PCG64(self.seed))
            policy = PolicyState.from_mu(init)
            self._log_event('search_started', fingerprint=self.fingerprint(),
                            policy=policy.to_dict(), rng=rng.bit_generator.state)
            state = replay(self.journal.read())
        else:
            done = sum(1 for st in state.steps.values() for t in st.trials.values()
                       if t.reward is not None)
            self.logger.info(f'resuming from {state.num_events} journal events: '
                             f'{len(state.steps)} step(s) started, {done} trial(s) finished')
        if state.finished is not None:
            self.logger.info('the search had finished; rewriting its outputs')
            return self._finish(state)

        total = s.num_steps * s.num_samples + self._num_reeval_trials()
        self.progress = Progress(total, self.executor.capacity)
        for st in state.steps.values():
            for t in st.trials.values():
                if t.timing.get('wall_s'):
                    self.progress.durations.append(t.timing['wall_s'])
        # Ctrl-C and SIGTERM only set a flag, checked between the loop's actions, so a
        # signal never tears a journal write or a trial's config in half.
        self._stop_signal = None
        handlers = {sig: signal.signal(sig, self._request_stop)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for step in range(s.num_steps):
                rec = state.steps.get(step)
                if rec is not None and rec.update is not None:
                    continue
                self._check_stop()
                if rec is None:
                    rec = self._start_step(state, step)
                self._run_trials(state, step, rec)
                self._update(state, step, rec)
            if s.reevaluate is not None and state.reeval_done is None:
                self._reevaluate(state)
        except (KeyboardInterrupt, SearchInterrupted):
            self.progress.close()
            self.logger.warning('search stopped: stopping its running trials; run the same '
                                'command again to resume')
            self.executor.stop()
            raise SearchInterrupted('search stopped by a signal') from None
        except BaseException:
            self.progress.close()
            self.executor.stop()
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        self.progress.close()
        self.executor.close()  # before the report: free the launcher's memory
        return self._finish(state)

    # ------------------------------------------------------------ the 4 steps
    def _start_step(self, state: SearchState, step: int) -> StepRecord:
        """Sample the step's candidates and journal them (with the generator state)."""
        s = self.settings
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.rng
        mu = state.policy.mu
        if self.searcher == 'random':
            cands = rng.random((s.num_samples, self.dim)).tolist()
        elif s.baseline == 'mu':
            cands = [list(mu)] + sample_truncnorm(rng, mu, s.sigma, s.num_samples - 1).tolist()
        else:
            cands = sample_truncnorm(rng, mu, s.sigma, s.num_samples).tolist()
        policy = state.policy.to_dict()
        self._log_event('step_started', step=step, mu=list(mu), candidates=cands,
                        rng=rng.bit_generator.state, policy=policy)
        state.rng = rng.bit_generator.state
        rec = StepRecord(mu=list(mu), candidates=cands, policy=policy)
        state.steps[step] = rec
        self.logger.info(f'step {step + 1}/{s.num_steps}: {len(cands)} candidates sampled')
        return rec

    def _spec(self, step: int, index: int, attempt: int,
              seed: Optional[int] = None) -> TrialSpec:
        """A trial of a step's candidate (or, ``step == REEVAL``, of the re-evaluation,
        with its own proxy seed)."""
        if step == REEVAL:
            tid = f're-c{index:02d}-a{attempt}'
            wd = os.path.join(self.work_dir, 'trials', 'reeval', f'cand{index:02d}',
                              f'attempt{attempt}')
        else:
            tid = f's{step:02d}-c{index:02d}-a{attempt}'
            wd = os.path.join(self.work_dir, 'trials', f'step{step:02d}', f'cand{index:02d}',
                              f'attempt{attempt}')
        return TrialSpec(trial_id=tid, step=step, index=index, attempt=attempt, work_dir=wd,
                         config_path=os.path.join(wd, 'config.py'),
                         seed=self.seed if seed is None else int(seed),
                         time_limit=float(self.settings.trial_time_limit),
                         gpus=self.settings.gpus_per_trial, name=f'asl-{self.name}-{tid}')

    @staticmethod
    def _phase(step: int) -> Dict:
        """The extra field of the re-evaluation's trial events."""
        return dict(phase='reeval') if step == REEVAL else {}

    def _write_trial_config(self, spec: TrialSpec, cand: List[float],
                            probes: Optional[Dict] = None) -> None:
        if os.path.isdir(spec.work_dir):  # a relaunch starts from a clean directory
            shutil.rmtree(spec.work_dir)
        os.makedirs(spec.work_dir)
        cfg = make_trial_config(self.cfg, self.settings, cand, self._train_ds,
                                self._holdout_ds, self.reward_key, probes=probes)
        cfg.dump(spec.config_path)

    @property
    def _mean_is_candidate_0(self) -> bool:
        """PPO with ``baseline='mu'`` samples the policy mean itself as candidate 0."""
        return self.searcher == 'ppo' and self.settings.baseline == 'mu'

    def _screen(self, state: SearchState, step: int, rec: StepRecord) -> None:
        """Before any trial of the step: pre-screening (``search.prescreen``) and the
        equivalence check (``search.equivalence``), journaled once (``step_screened``)."""
        from ..exact import ExactMetrics
        from .prescreen import (PRESCREEN_DEFAULTS, most_similar, rejected, screen_score,
                                screening_labels, surrogate_gradient)
        s = self.settings
        p = s.prescreen or PRESCREEN_DEFAULTS
        t0 = time.time()
        if getattr(self, '_screen_labels', None) is None:
            self._screen_labels = screening_labels(self._train_ds, p['images'])
            self._screen_classes = head_classes(self.cfg)
            self._grads = {}  # (step, index) of a trained candidate -> unit gradient

        fields = dict(scores=None, reference=None, threshold=None, rejected=[], reused={})
        mu_first = self._mean_is_candidate_0
        if s.prescreen is not None:
            metric = ExactMetrics([s.target_metric], self._screen_classes, tol=s.tol,
                                  drop_bg=s.drop_bg)

            def score(raw):
                return screen_score(settings_surrogate(s, raw), self._screen_labels,
                                    self._screen_classes, metric, p['steps'], p['lr'],
                                    p['seed'])

            scores = [score(c) for c in rec.candidates]
            reference = scores[0] if mu_first else score(rec.mu)
            fields.update(scores=scores, reference=reference, threshold=p['threshold'],
                          rejected=rejected(scores, reference, p['threshold'],
                                            keep=[0] if mu_first else []))
        if s.equivalence is not None:
            q = s.equivalence

            def grad(raw):
                return surrogate_gradient(settings_surrogate(s, raw), self._screen_labels,
                                          self._screen_classes, p['seed'], q['entries'])

            for k, st in sorted(state.steps.items()):  # trained in earlier steps
                for j, t in st.trials.items():
                    if k < step and t.reward is not None and t.reused is None and \
                            (k, j) not in self._grads:
                        self._grads[(k, j)] = grad(st.candidates[j])
            for i, cand in enumerate(rec.candidates):
                if i in fields['rejected']:
                    continue
                best = most_similar(grad(cand), self._grads)
                if best is not None and best[1] >= q['threshold']:
                    (k, j), cos = best
                    src = state.steps[k].trials[j]
                    fields['reused'][str(i)] = dict(step=k, index=j, cosine=cos,
                                                    reward=src.reward)
        rec.screened = self._log_event('step_screened', step=step, **fields,
                                       seconds=round(time.time() - t0, 3))
        apply_screening(rec, rec.screened)
        out, reused = fields['rejected'], fields['reused']
        self.logger.info(
            f'step {step + 1}: screened {len(rec.candidates)} candidates in '
            f'{time.time() - t0:.1f} s'
            + (f' (policy mean {fields["reference"]:.3f}); rejected '
               + (', '.join(f'candidate {i} ({fields["scores"][i]:.3f})' for i in out)
                  if out else 'none') if s.prescreen is not None else '')
            + ('; reused ' + ', '.join(f'candidate {i}: reward of step {r["step"] + 1} '
                                       f'candidate {r["index"]} (cosine {r["cosine"]:.5f})'
                                       for i, r in reused.items())
               if reused else ''))

    def _trial_probes(self, rec: StepRecord, spec: TrialSpec) -> Optional[Dict]:
        """A trial's early-stopping probes: the step's plan, without thresholds for the
        policy mean itself (candidate 0 with ``baseline='mu'``: the baseline of the
        update and the step's own reward must be full-length)."""
        plan = rec.probe_plan
        if plan and spec.index == 0 and self._mean_is_candidate_0:
            plan = dict(plan, thresholds=[None] * len(plan['thresholds']))
        return plan

    def _run_trials(self, state: SearchState, step: int, rec: StepRecord) -> None:
        """Launch every unfinished candidate (retrying failures) until all are done."""
        s = self.settings
        if step != REEVAL and rec.screened is None and \
                (s.prescreen is not None or s.equivalence is not None):
            self._screen(state, step, rec)
        if step != REEVAL and s.early_stop is not None:
            # from the finished trials of the earlier steps only: fixed for the whole step,
            # whenever (and however often) its trials are launched
            e = s.early_stop
            history = [t.probes for k, st in state.steps.items() if k < step
                       for t in st.trials.values() if t.reward is not None]
            rec.probe_plan = probe_plan(int(self.cfg.train_cfg.max_iters), e['at'], history,
                                        e['quantile'], e['min_trials'])
        queue: List[TrialSpec] = []
        for i in range(len(rec.candidates)):
            t = rec.trials.setdefault(i, TrialRecord())
            if t.done:
                continue
            seed = rec.seeds[i] if rec.seeds else None
            if t.in_flight is not None:
                spec = self._spec(step, i, t.in_flight['attempt'], seed)
                if self.executor.reattach(spec, t.in_flight.get('info') or {}):
                    self.logger.info(f'{spec.trial_id}: still running, re-attached')
                    continue
                self.logger.info(f'{spec.trial_id}: was in flight, launching it again')
                queue.append(spec)
            else:
                queue.append(self._spec(step, i, t.attempts_failed + 1, seed))
        self._show(state, step)
        while queue or self.executor.running():
            self._check_stop()
            free = self.executor.capacity - len(self.executor.running())
            if queue and free > 0:
                batch, queue = queue[:free], queue[free:]
                self.executor.release(batch)
                plans = [self._trial_probes(rec, spec) for spec in batch]
                for spec, plan in zip(batch, plans):
                    self._write_trial_config(spec, rec.candidates[spec.index], plan)
                infos = self.executor.launch_many(batch)
                for spec, info, plan in zip(batch, infos, plans):
                    extra = dict(probes=plan) if plan else {}
                    rec.trials[spec.index].in_flight = self._log_event(
                        'trial_launched', step=step, index=spec.index, attempt=spec.attempt,
                        trial_id=spec.trial_id, work_dir=spec.work_dir,
                        executor=self.executor.name, info=info, **extra,
                        **self._phase(step))
                    self.logger.info(f'{spec.trial_id}: launched ({self.executor.name} '
                                     f'{info_str(info)})')
                self._show(state, step)
            finished = self.executor.poll()
            for spec, comp in finished:
                retry = self._record(rec, spec, comp)
                if retry is not None:
                    queue.append(retry)
                self._show(state, step)
            if not finished:
                time.sleep(self.poll_interval)
                self._show(state, step)

    def _record(self, rec: StepRecord, spec: TrialSpec, comp: Completion) -> Optional[TrialSpec]:
        """Journal a trial's outcome; return the retry to launch, if any."""
        out: TrialOutcome = read_trial_outcome(spec.work_dir, self.reward_key, comp.exit_code,
                                               comp.timed_out, comp.wall_s, comp.reason)
        if comp.kind and not out.ok and out.kind in ('crash', 'noresult'):
            out.kind = comp.kind
        t = rec.trials[spec.index]
        t.in_flight = None
        probes = read_probes(spec.work_dir) if rec.probe_plan else None
        if out.kind == 'stopped' and rec.probe_plan:  # by the rule: not a failure, no retry
            st = out.result
            t.stopped = self._log_event(
                'trial_stopped', step=spec.step, index=spec.index, attempt=spec.attempt,
                trial_id=spec.trial_id, iter=st.get('iter'), score=st.get('score'),
                threshold=st.get('threshold'), reason=out.reason, probes=probes,
                wall_s=comp.wall_s)
            t.probes = probes
            self.logger.info(f'{spec.trial_id}: {out.reason}')
            return None
        if out.ok:
            timing = {k: out.result.get(k) for k in ('wall_s', 'train_iter_s', 'val_s',
                                                     'overhead_s')}
            timing['executor_wall_s'] = comp.wall_s
            t.reward, t.metrics, t.timing = out.reward, out.result.get('metrics', {}), timing
            extra = dict(probes=probes) if probes is not None else {}
            t.probes = probes or []
            self._log_event('trial_finished', step=spec.step, index=spec.index,
                            attempt=spec.attempt, trial_id=spec.trial_id, reward=out.reward,
                            metrics=t.metrics, timing=timing, **extra, **self._phase(spec.step))
            if comp.wall_s:
                self.progress.durations.append(comp.wall_s)
            self.logger.info(f'{spec.trial_id}: reward {out.reward:.4f} '
                             f'({self.reward_key} {out.reward * 100:.2f}) in '
                             f'{_fmt_time(comp.wall_s)}')
            return None
        t.attempts_failed += 1
        final = t.attempts_failed > self.settings.max_retries
        t.failures.append(f'attempt {spec.attempt}: [{out.kind}] {out.reason}')
        if final:
            t.final_failure = out.reason
        self._log_event('trial_failed', step=spec.step, index=spec.index, attempt=spec.attempt,
                        trial_id=spec.trial_id, kind=out.kind, reason=out.reason, final=final,
                        **self._phase(spec.step))
        self.logger.warning(f'{spec.trial_id}: failed [{out.kind}] {out.reason}'
                            + (' (no retry left: excluded from the update)' if final
                               else ' (retrying)'))
        if final:
            return None
        return self._spec(spec.step, spec.index, spec.attempt + 1, spec.seed)

    def _rollback(self, state: SearchState, step: int, rec: StepRecord) -> Optional[Dict]:
        """The rollback of this step (``search.rollback``), if any (:func:`rollback_to`)."""
        s = self.settings
        if self.searcher != 'ppo' or s.rollback is None:
            return None
        earlier = [(k, own_reward(st.rewards(), s.baseline)) for k, st in
                   sorted(state.steps.items()) if k < step and st.policy is not None]
        return rollback_to(earlier, own_reward(rec.rewards(), s.baseline), s.rollback)

    def _update(self, state: SearchState, step: int, rec: StepRecord) -> None:
        """The policy update (PPO2; none for random search), journaled. When the step's
        mean did far worse than the best earlier one, the policy is instead rolled back
        to the state that sampled that best mean (``search.rollback``)."""
        s = self.settings
        trained = rec.rewards()
        ok = [r for r in trained if r is not None]
        rejected = [i for i, t in sorted(rec.trials.items()) if t.rejected]
        stopped = [i for i, t in sorted(rec.trials.items()) if t.stopped is not None]
        rewards = [settled_reward(rec, i, ok) if i in rejected + stopped else r
                   for i, r in enumerate(trained)]
        back = self._rollback(state, step, rec)
        if self.searcher == 'random':
            new, stats = state.policy, dict(skipped=True, reason='random search')
        elif back is not None:
            new = PolicyState.from_dict(state.steps[back['to_step']].policy)
            stats = dict(skipped=True, rollback=back, reason=(
                f'rolled back to the policy of step {back["to_step"] + 1}: the mean\'s '
                f'reward {back["reward"]:.4f} < {s.rollback:g} x {back["best"]:.4f}'))
            self.logger.warning(f'step {step + 1}: {stats["reason"]}')
        else:
            new, st = ppo_update(state.policy, rec.candidates, rewards, s.sigma, s.lr,
                                 s.ppo_epochs, s.clip_eps, s.baseline,
                                 target_kl=s.target_kl, max_mu_change=s.max_mu_change,
                                 normalize=s.normalize_advantages)
            stats = st.__dict__
        summary = dict(reward_mean=float(np.mean(ok)) if ok else None,
                       reward_max=float(np.max(ok)) if ok else None,
                       num_ok=len(ok),
                       num_failed=len(trained) - len(ok) - len(rejected) - len(stopped))
        if rejected:
            summary['rejected'] = rejected
        if stopped:
            summary['stopped'] = stopped
        ev = self._log_event('policy_updated', step=step, policy=new.to_dict(), mu=new.mu,
                             rewards=rewards, stats=stats, summary=summary)
        rec.update = ev
        state.policy = new
        mean = summary['reward_mean']
        self.logger.info(
            f'step {step + 1}/{s.num_steps} done: search/reward_mean='
            f'{mean if mean is None else round(mean, 4)} search/reward_max='
            f'{summary["reward_max"] if ok else None} search/failed={summary["num_failed"]} '
            + (f'ppo/clip_fraction={stats.get("clip_fraction", 0):.3f} '
               f'ppo/kl={stats.get("kl", 0):.4f} ppo/epochs={stats.get("epochs", 0)} '
               f'ppo/baseline={stats.get("baseline")} ' if self.searcher == 'ppo' else '')
            + ('(update skipped: ' + stats.get('reason', '') + ')' if stats.get('skipped')
               else ''))

    # ------------------------------------------------------------ re-evaluation
    def _num_reeval_trials(self) -> int:
        r = self.settings.reevaluate
        return 0 if r is None else r['top'] * r['seeds']

    def _reevaluate(self, state: SearchState) -> None:
        """Train the best few results again with other proxy seeds and choose by the
        average reward (``search.reevaluate``); journaled and resumable like a step."""
        seeds = self.settings.reevaluate['seeds']
        if state.reeval is None:
            entries = reeval_entries(state.steps, self.searcher, self.settings.baseline,
                                     self.settings.reevaluate['top'])
            cands, trial_seeds = [], []
            for e in entries:
                for j in range(seeds):
                    cands.append(e['raw'])
                    trial_seeds.append(self.seed + 1 + j)
            self._log_event('reeval_started', entries=entries, candidates=cands,
                            seeds=trial_seeds)
            state.reeval = StepRecord(mu=[], candidates=cands, seeds=trial_seeds)
            state.reeval_entries = entries
            self.logger.info(f're-evaluation: {len(entries)} result(s) x {seeds} proxy seed(s) '
                             f'({", ".join(e["source"] for e in entries)})')
        self._run_trials(state, REEVAL, state.reeval)
        rewards = state.reeval.rewards()
        scores = []
        for n, e in enumerate(state.reeval_entries):
            new = [r for r in rewards[n * seeds:(n + 1) * seeds] if r is not None]
            allr = list(e['rewards']) + new
            scores.append(dict(source=e['source'], step=e['step'], raw=e['raw'], rewards=allr,
                               mean=float(np.mean(allr)) if allr else None))
        valid = [n for n, sc in enumerate(scores) if sc['mean'] is not None]
        chosen = max(valid, key=lambda n: scores[n]['mean']) if valid else None
        state.reeval_done = self._log_event('reeval_finished', scores=scores, chosen=chosen)
        for sc in scores:
            self.logger.info(f're-evaluation: {sc["source"]}: rewards '
                             f'{[round(r, 4) for r in sc["rewards"]]}, mean '
                             f'{sc["mean"] if sc["mean"] is None else round(sc["mean"], 4)}')

    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    def _check_stop(self) -> None:
        if getattr(self, '_stop_signal', None) is not None:
            raise SearchInterrupted(f'stopped by signal {self._stop_signal}')

    def _show(self, state: SearchState, step: int) -> None:
        done = failed = 0
        best, best_at = None, ''
        records = list(state.steps.items()) + ([('re', state.reeval)] if state.reeval else [])
        for k, st in records:
            for i, t in st.trials.items():
                if t.reward is not None:
                    done += 1
                    if best is None or t.reward > best:
                        best, best_at = t.reward, (f're-c{i}' if k == 're' else f's{k}-c{i}')
                elif t.final_failure is not None:
                    failed += 1
                elif t.rejected or t.stopped is not None:
                    done += 1  # settled without a full training
        self.progress.show(step, self.settings.num_steps, len(self.executor.running()), done,
                           failed, best, best_at)

    # ----------------------------------------------------------------- outputs
    def _finish(self, state: SearchState) -> Dict:
        from .report import write_outputs
        best = write_outputs(self.info(), state, self.logger)
        if state.finished is None:
            self._log_event('search_finished', best=dict(
                step=None if best['best_step'] is None else best['best_step'] - 1,
                raw_theta=best['raw_theta']))
        self.logger.info(f'search finished: best {self.reward_key} parameters: '
                         f'{best["selection"]}; results in {self.work_dir} (best.json, '
                         f'retrain_config.py, plots)')
        return best


def info_str(info: Dict) -> str:
    if 'job_id' in info:
        return f'job {info["job_id"]}'
    if 'pid' in info:
        return f'pid {info["pid"]}'
    return json.dumps(info)


