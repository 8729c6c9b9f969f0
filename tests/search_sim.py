"""The search's test seam: an in-process executor whose "training" is a deterministic
function of the candidate, and kills at any journal point, so that the rules of the loop
(rollback, the KL limit, pre-screening, early stopping, retries, failures, the
re-evaluation, exact resume) are tested in seconds, with outcomes forced by construction
rather than by a CPU's floating-point arithmetic.

:class:`SimExecutor` sits behind the real :class:`~asl.search.executors.base.Executor`
interface. It reads each trial's config as the controller wrote it (the candidate's raw
parameters, the proxy length, early stopping's probe plan) and writes the files of the
trial protocol (``result.json``, ``failure.json``, ``probes.jsonl``, ``stopped.json``)
that a real ``tools/train.py`` would write, so the controller's own reading of outcomes
is exercised. A trial takes ``delay`` polls to end, so trials are in flight when a test
kills the search.

:func:`kill_at` makes the search's journal die at the N-th event of a kind: ``before``
(the event's work is done but it is not written), ``torn`` (half its line is written) or
``after`` (written and fsync'd). The "process" dies by :class:`Killed`, a
``BaseException`` that nothing in the loop catches; the test then resumes with a new
:class:`~asl.search.controller.Search` (and a new executor: nothing in flight survives a
killed controller), exactly as running the same command again would.
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from asl.protocol import (EXIT_NONFINITE, EXIT_STOPPED, FAILURE_FILE, PAUSED_FILE,  # noqa: E402
                          PROBES_FILE, RESULT_FILE, RUNG_CHECKPOINT, STOPPED_FILE)
from asl.search.executors.base import Completion, Executor  # noqa: E402
from asl.utils import atomic_write_json  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'search', 'demo',
                      'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64.py')
#: a small search: 3 steps x 4 candidates, no re-evaluation, no pre-screening, 16 hold-out
#: images, a 30-iteration "proxy" (only its length matters here)
SMALL = {'search.num_steps': 3, 'search.num_samples': 4, 'search.holdout.num': 16,
         'search.reevaluate': None, 'search.prescreen': None, 'search.early_stop': None,
         'search.rollback': None, 'search.retrain_config': None,
         'train_cfg.max_iters': 30, 'param_scheduler.0.end': 30}


def peak_reward(raw, center=0.7, width=0.25):
    """A smooth reward in (0.2, 0.8] that peaks where every raw parameter is ``center``."""
    x = np.asarray(raw, dtype=np.float64)
    return float(0.2 + 0.6 * np.exp(-np.mean((x - center) ** 2) / width ** 2))


def probe_score(reward, it, max_iters):
    """A trial's hold-out score after ``it`` of ``max_iters`` iterations: rises to the
    reward, higher for better candidates at every point."""
    return float(reward * (it / max_iters) ** 0.5)


class Killed(BaseException):
    """The controller "process" died (a simulated SIGKILL)."""


def kill_at(search, when, kind, n=1):
    """Make ``search`` die at the ``n``-th journal event of ``kind`` (see the module)."""
    from killable_search import dying_append

    def die(what):
        raise Killed(what)

    journal = search.journal
    wrapped = dying_append(type(journal).append, when, kind, n, die)
    journal.append = lambda event, **fields: wrapped(journal, event, **fields)
    return search


class SimExecutor(Executor):
    """Trials whose outcome is ``outcome(spec, raw)``: a reward (float), or one of
    ``'crash'``, ``'nonfinite'``, ``'timeout'``, ``'noresult'`` for a failure (see
    :func:`asl.search.trial.read_trial_outcome`). Default: :func:`peak_reward`.

    Args:
        capacity: trials at once.
        delay: polls a trial takes to end (>= 1).
        outcome: ``(spec, raw) -> float or str`` (``spec``: the trial's TrialSpec). The
            warm start's cross-entropy training (``search.warm_start``: no surrogate in its
            config) gets ``raw=None`` and, with a reward, writes its ``iter_<N>.pth`` (a
            small JSON file); default 0.3.
        rung_score: successive halving's score at a rung, ``(spec, reward, it, max_iters)``
            (default: :func:`probe_score`).
    """

    name = 'sim'

    def __init__(self, capacity=2, delay=1, outcome=None, rung_score=None):
        self._capacity = capacity
        self.delay = delay
        self.outcome = outcome or (lambda spec, raw: 0.3 if raw is None else peak_reward(raw))
        self.rung_score = rung_score or (lambda spec, reward, it, n: probe_score(reward, it, n))
        self.resumed = []  # (trial id, the iteration it resumed from)
        self._running = {}  # trial_id -> [spec, polls left]
        self.launched = []  # trial ids, in launch order

    @property
    def capacity(self):
        return self._capacity

    def launch(self, spec):
        if len(self._running) >= self._capacity:
            raise RuntimeError(f'{spec.trial_id}: launched beyond the capacity')
        self._running[spec.trial_id] = [spec, self.delay]
        self.launched.append(spec.trial_id)
        return dict(sim=spec.trial_id)

    def reattach(self, spec, info):
        return False  # a killed controller's trials died with it

    def running(self):
        return [spec for spec, _ in self._running.values()]

    def stop(self):
        self._running.clear()

    def poll(self):
        done = []
        for tid in list(self._running):
            entry = self._running[tid]
            entry[1] -= 1
            if entry[1] <= 0:
                del self._running[tid]
                done.append((entry[0], self._train(entry[0])))
        return done

    def _train(self, spec):
        """The trial's files and exit status, as a training would leave them."""
        from mmengine.config import Config
        cfg = Config.fromfile(spec.config_path)
        losses = cfg.model.decode_head.loss_decode  # (a list with search.ce_weight)
        losses = losses if isinstance(losses, (list, tuple)) else [losses]
        sur = [x for x in losses if x['type'] == 'AutoSegLoss']
        raw = list(sur[0]['raw_theta']) if sur else None  # (None: the warm start)
        max_iters = int(cfg.train_cfg.max_iters)
        hook = next(h for h in cfg.custom_hooks if h['type'] == 'ASLTrialHook')
        result = self.outcome(spec, raw)
        wd = spec.work_dir
        if result == 'crash':
            return Completion(exit_code=1, wall_s=1.0)
        if result == 'timeout':
            return Completion(exit_code=None, timed_out=True, wall_s=1.0)
        if result == 'noresult':
            return Completion(exit_code=0, wall_s=1.0)
        if result == 'nonfinite':
            atomic_write_json(os.path.join(wd, FAILURE_FILE), dict(
                reason='loss is nan at iteration 2', kind='nonfinite', iter=2,
                key='loss', value=None))
            return Completion(exit_code=EXIT_NONFINITE, wall_s=1.0)
        reward = float(result)
        if raw is None:
            atomic_write_json(os.path.join(wd, f'iter_{max_iters}.pth'),
                              dict(iter=max_iters, trial=spec.trial_id))
        start = 0
        if cfg.get('resume'):  # successive halving's next leg: resumes its rung checkpoint
            try:
                with open(cfg.load_from) as f:
                    start = json.load(f)['iter']
            except (OSError, ValueError, KeyError, TypeError):
                return Completion(exit_code=1, wall_s=1.0, reason=f'no checkpoint {cfg.load_from}')
            self.resumed.append((spec.trial_id, start))
        pause = hook.get('pause_iter')
        if pause is not None:  # a rung: score, checkpoint, pause
            if pause <= start:
                return Completion(exit_code=1, wall_s=1.0, reason=f'rung {pause} <= {start}')
            ckpt = os.path.join(wd, RUNG_CHECKPOINT)
            atomic_write_json(ckpt, dict(iter=pause, trial=spec.trial_id))
            atomic_write_json(os.path.join(wd, PAUSED_FILE), dict(
                iter=pause, score=self.rung_score(spec, reward, pause, max_iters), metrics={},
                checkpoint=ckpt, wall_s=1.0, train_iter_s=0.5, val_s=0.25))
            return Completion(exit_code=0, wall_s=1.0)
        for it, bar in zip(hook.get('probe_iters', []), hook.get('probe_thresholds', [])):
            score = probe_score(reward, it, max_iters)
            with open(os.path.join(wd, PROBES_FILE), 'a') as f:
                f.write(json.dumps(dict(iter=it, score=score, threshold=bar, metrics={})) + '\n')
            if bar is not None and score < bar:
                atomic_write_json(os.path.join(wd, STOPPED_FILE), dict(
                    iter=it, score=score, threshold=bar,
                    reason=f'stopped early at iteration {it}: {score:.4f} < {bar:.4f}'))
                return Completion(exit_code=EXIT_STOPPED, wall_s=1.0)
        key = cfg.val_evaluator.metric_names[0]
        atomic_write_json(os.path.join(wd, RESULT_FILE), dict(
            metrics={key: reward * 100.0}, iter=max_iters, max_iters=max_iters, wall_s=1.0,
            train_iter_s=0.5, val_s=0.25, overhead_s=0.5))
        return Completion(exit_code=0, wall_s=1.0)


def sim_search(work_dir, options=None, executor=None, config=CONFIG, **kwargs):
    """A :class:`~asl.search.controller.Search` of the demo config (``SMALL`` settings,
    updated by ``options``) on a :class:`SimExecutor`, polling without sleeping."""
    import logging

    from asl.search.controller import Search
    opts = dict(SMALL)
    opts.update(options or {})
    logger = logging.getLogger(f'asl.search.sim.{os.path.basename(str(work_dir))}')
    logger.setLevel(logging.WARNING)
    return Search(config, str(work_dir), cfg_options=opts,
                  executor=executor or SimExecutor(), poll_interval=0.0, logger=logger,
                  **kwargs)


def events(work_dir, kind=None):
    """The journal's events (``kind``: only those)."""
    from asl.search.journal import Journal
    evs = Journal(os.path.join(str(work_dir), 'journal.jsonl')).read()
    return [e for e in evs if kind is None or e['event'] == kind]


def decisions(work_dir):
    """What a search decided, from its journal, without times, process ids, directories
    or the order in which trials ended: per step the candidates, each trial's outcome
    (reward, failures, stopped, rejected), the screening scores and the update (policy,
    Adam state, rewards, statistics); the re-evaluation; the final choice."""
    from asl.search.state import replay
    st = replay(events(work_dir))

    def trials(rec):
        return {i: dict(reward=t.reward, failures=t.failures, final=t.final_failure,
                        rejected=t.rejected, probes=t.probes, halted=t.halted,
                        rungs={k: (p['iter'], p['score']) for k, p in t.rungs.items()},
                        stopped=None if t.stopped is None else
                        {k: t.stopped[k] for k in ('iter', 'score', 'threshold')})
                for i, t in sorted(rec.trials.items())}

    def update(ev):
        return None if ev is None else {k: ev[k] for k in ('policy', 'mu', 'rewards', 'stats',
                                                           'summary')}

    steps = {k: dict(mu=r.mu, candidates=r.candidates, trials=trials(r), update=update(r.update),
                     decided={k: {k2: d[k2] for k2 in ('scores', 'promoted', 'stopped', 'cut')}
                              for k, d in r.decided.items()},
                     screened=None if r.screened is None else
                     {k2: r.screened[k2] for k2 in ('scores', 'reference', 'rejected')})
             for k, r in sorted(st.steps.items())}
    return dict(fingerprint=st.fingerprint, rng=st.rng, steps=steps,
                reeval=None if st.reeval is None else dict(
                    candidates=st.reeval.candidates, trials=trials(st.reeval),
                    entries=st.reeval_entries),
                reeval_done=None if st.reeval_done is None else
                {k: st.reeval_done[k] for k in ('scores', 'chosen')},
                finished=None if st.finished is None else st.finished['best'])
