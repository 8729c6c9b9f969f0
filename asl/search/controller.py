"""The search loop: sample, launch, collect rewards, update, persist, top to bottom.

:class:`Search` runs a PPO2 search (or the random-search baseline) over the raw
surrogate parameters of one target metric. Every proxy training is a real
``tools/train.py`` process (or Slurm job) run by an :class:`~asl.search.executors.base.
Executor`. Every event goes to an fsync'd JSON-lines journal (``journal.jsonl``) in the
work directory *before* the search acts on it, and then changes the search's state
through :func:`asl.search.state.apply`, the function that also replays the journal when
the search is resumed (by running the same command again): finished trials are never
rerun, trials that were in flight are re-attached (Slurm) or relaunched, and the policy
(mean, Adam moments, random state) is restored exactly, so a search killed at any moment
ends with the same parameters as an uninterrupted one. The events and their fields:
:mod:`asl.search.state`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from typing import Dict, List, Optional

import numpy as np

from ..utils import sha256_file
from .early_stop import step_plan, trial_plan
from .halving import decide, leg_candidates, rung_iters
from .executors import Completion, Executor, LocalExecutor
from .journal import Journal
from .policy import PolicyState, ppo_update, sample_truncnorm
from .progress import Progress, fmt_time
from .settings import SearchConfigError, parse_search_section
from .state import (REEVAL, WARM, SearchState, StepRecord, apply, choose_reevaluated,
                    own_reward, reeval_entries, reeval_scores, replay, rollback_to,
                    update_rewards)
from .trial import (TrialOutcome, TrialSpec, check_extra_losses, check_surrogate, dump_config,
                    head_classes, make_trial_config, make_warm_start_config, read_probes,
                    read_trial_outcome, warm_start_iters)

__all__ = ['Search', 'SearchInterrupted', 'WarmStartError', 'load_search_config', 'SEARCHERS']

SEARCHERS = ('ppo', 'random')


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


class WarmStartError(RuntimeError):
    """``search.warm_start``'s training failed for good, or its journaled checkpoint is
    gone or changed: the proxies cannot start from it."""


class SearchInterrupted(RuntimeError):
    """The search was stopped by a signal; re-running the same command resumes it."""


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
            inherits (default: the search config's ``search.retrain_config``, else the
            proxy config itself).
        poll_interval (float): seconds between executor polls.
        logger (logging.Logger, optional): default: an MMEngine logger writing
            ``search.log`` in the work directory.
        loaded (tuple, optional): ``(cfg, settings)`` from :func:`load_search_config`,
            when the caller has read the config already (then ``cfg_options`` is not
            used).
    """

    def __init__(self, config_path: str, work_dir: str, seed: int = 1, searcher: str = 'ppo',
                 executor: Optional[Executor] = None, cfg_options: Optional[Dict] = None,
                 retrain_config: Optional[str] = None, poll_interval: float = 0.5,
                 logger: Optional[logging.Logger] = None, loaded=None):
        if searcher not in SEARCHERS:
            raise SearchConfigError(f'searcher must be one of {SEARCHERS}, got {searcher!r}')
        self.config_path = os.path.abspath(config_path)
        self.cfg, self.settings = loaded or load_search_config(config_path, cfg_options)
        self.surrogate, self.identity = check_surrogate(self.settings)
        check_extra_losses(self.settings)
        if self.settings.warm_start is not None and self.cfg.get('load_from'):
            raise SearchConfigError(
                f'search.warm_start and load_from={self.cfg.load_from!r} both set the weights '
                f'the proxy trainings start from; set one of them to None')
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
        self.name = os.path.splitext(os.path.basename(config_path))[0]
        os.makedirs(self.work_dir, exist_ok=True)
        self.logger = logger or self._make_logger()
        self.journal = Journal(os.path.join(self.work_dir, 'journal.jsonl'))
        self.state = SearchState()
        self._train_ds = self._holdout_ds = None
        self._screener = None
        self._plans: Dict[int, Optional[Dict]] = {}  # early stopping: step -> probe plan

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
        # settings added later leave the identity when off: an old search keeps its own
        for key in ('ce_weight', 'halving', 'extra_losses', 'warm_start'):
            if not settings[key]:
                settings.pop(key)
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
    def _log(self, event: str, **fields) -> Dict:
        """Journal an event (durably), then apply it to the state: the only way the state
        changes, as on replay."""
        rec = self.journal.append(event, **fields)
        apply(self.state, rec)
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
        self.state = state = replay(events)
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
            self._log('search_started', fingerprint=self.fingerprint(),
                      policy=policy.to_dict(), rng=rng.bit_generator.state)
        else:
            self.logger.info(f'resuming from {state.num_events} journal events: '
                             f'{len(state.steps)} step(s) started, {state.trained()} '
                             f'trial(s) finished')
        if state.finished is not None:
            self.logger.info('the search had finished; rewriting its outputs')
            return self._finish()

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
            if s.warm_start is not None:
                if state.warm_start is None:
                    self._warm_start()
                else:
                    self._check_warm_checkpoint()
            for step in range(s.num_steps):
                rec = state.steps.get(step)
                if rec is not None and rec.update is not None:
                    continue
                self._check_stop()
                if rec is None:
                    rec = self._start_step(step)
                self._run_trials(step, rec)
                self._update(step, rec)
            if s.reevaluate is not None and state.reeval_done is None:
                self._reevaluate()
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
        return self._finish()

    # ------------------------------------------------------------ the 4 steps
    def _start_step(self, step: int) -> StepRecord:
        """Sample the step's candidates and journal them (with the generator state)."""
        s, state = self.settings, self.state
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.rng
        mu = state.policy.mu
        if self.searcher == 'random':
            cands = rng.random((s.num_samples, self.dim)).tolist()
        elif s.baseline == 'mu':
            cands = [list(mu)] + sample_truncnorm(rng, mu, s.sigma, s.num_samples - 1).tolist()
        else:
            cands = sample_truncnorm(rng, mu, s.sigma, s.num_samples).tolist()
        self._log('step_started', step=step, mu=list(mu), candidates=cands,
                  rng=rng.bit_generator.state, policy=state.policy.to_dict())
        self.logger.info(f'step {step + 1}/{s.num_steps}: {len(cands)} candidates sampled')
        return state.steps[step]

    def _spec(self, step: int, index: int, attempt: int, seed: Optional[int] = None,
              leg: int = 0) -> TrialSpec:
        """A trial of a step's candidate (or, ``step == REEVAL``, of the re-evaluation,
        with its own proxy seed); ``leg``: successive halving's leg after the first."""
        if leg:
            tid = f's{step:02d}-c{index:02d}-r{leg}-a{attempt}'
            wd = os.path.join(self.work_dir, 'trials', f'step{step:02d}', f'cand{index:02d}',
                              f'rung{leg}-attempt{attempt}')
        elif step == REEVAL:
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
                         gpus=self.settings.gpus_per_trial, name=f'asl-{self.name}-{tid}',
                         leg=leg)

    @staticmethod
    def _phase(step: int) -> Dict:
        """The extra field of the re-evaluation's trial events."""
        return dict(phase='reeval') if step == REEVAL else {}

    def _write_trial_config(self, spec: TrialSpec, cand: List[float],
                            probes: Optional[Dict] = None, leg: Optional[Dict] = None) -> None:
        _fresh_dir(spec.work_dir)
        warm = self.state.warm_start
        cfg = make_trial_config(self.cfg, self.settings, cand, self._train_ds,
                                self._holdout_ds, self.reward_key, probes=probes,
                                warm_from=warm['checkpoint'] if warm else None, **(leg or {}))
        dump_config(cfg, spec.config_path)

    # ------------------------------------------------------------ warm start
    def _warm_start(self) -> None:
        """``search.warm_start``: train the proxy model once with cross-entropy (through the
        executor, like a trial; a failed attempt is retried up to ``max_retries`` times) and
        journal its checkpoint, which every proxy training then starts from."""
        s, state = self.settings, self.state
        iters = warm_start_iters(self.cfg, s)
        while True:
            attempt = len(state.warm_start_failures) + 1
            if attempt > s.max_retries + 1:
                raise WarmStartError(
                    f'the warm start\'s cross-entropy training failed {attempt - 1} times: '
                    + '; '.join(state.warm_start_failures))
            wd = os.path.join(self.work_dir, 'warm_start', f'attempt{attempt}')
            spec = TrialSpec(trial_id=f'warm-a{attempt}', step=WARM, index=0, attempt=attempt,
                             work_dir=wd, config_path=os.path.join(wd, 'config.py'),
                             seed=self.seed, time_limit=float(s.trial_time_limit),
                             gpus=s.gpus_per_trial, name=f'asl-{self.name}-warm-a{attempt}')
            self.executor.release([spec])
            _fresh_dir(wd)
            dump_config(make_warm_start_config(self.cfg, s, self._train_ds, self._holdout_ds,
                                               self.reward_key), spec.config_path)
            info = self.executor.launch_many([spec])[0]
            self.logger.info(f'warm start: training the proxy model with cross-entropy for '
                             f'{iters} iterations ({spec.trial_id}, {self.executor.name} '
                             f'{info_str(info)}); every proxy training starts from it')
            comp = None
            while comp is None:
                self._check_stop()
                comp = next((c for sp, c in self.executor.poll()
                             if sp.trial_id == spec.trial_id), None)
                if comp is None:
                    time.sleep(self.poll_interval)
            out = read_trial_outcome(wd, self.reward_key, comp.exit_code, comp.timed_out,
                                     comp.wall_s, comp.reason)
            ckpt = os.path.join(wd, f'iter_{iters}.pth')
            if out.ok and not os.path.isfile(ckpt):
                out = TrialOutcome(False, kind='noresult', reason=f'no checkpoint {ckpt}')
            if out.ok:
                self._log('warm_start_finished', attempt=attempt, checkpoint=ckpt,
                          sha256=sha256_file(ckpt), iters=iters, reward=out.reward,
                          metrics=out.result.get('metrics', {}), wall_s=comp.wall_s)
                self.logger.info(f'warm start: done in {fmt_time(comp.wall_s)}, hold-out '
                                 f'{self.reward_key} {out.reward:.4f} with cross-entropy; '
                                 f'checkpoint {ckpt}')
                return
            self._log('warm_start_failed', attempt=attempt, kind=out.kind, reason=out.reason)
            self.logger.warning(f'warm start: {spec.trial_id} failed [{out.kind}] {out.reason}')

    def _check_warm_checkpoint(self) -> None:
        """On resume: the journaled warm-start checkpoint is still the one the earlier
        proxies started from."""
        w = self.state.warm_start
        if self.state.reeval_done is not None:
            return  # no proxy training is left to start from it
        path = w['checkpoint']
        if not os.path.isfile(path):
            raise WarmStartError(f'the warm start\'s checkpoint {path} is gone; the proxies of '
                                 f'this search started from it (restore it, or search again '
                                 f'in a new work directory)')
        if sha256_file(path) != w['sha256']:
            raise WarmStartError(f'the warm start\'s checkpoint {path} changed since the '
                                 f'search journaled it (SHA-256 {w["sha256"]})')

    @property
    def _mean_is_candidate_0(self) -> bool:
        """PPO with ``baseline='mu'`` samples the policy mean itself as candidate 0."""
        return self.searcher == 'ppo' and self.settings.baseline == 'mu'

    def _screen(self, step: int, rec: StepRecord) -> None:
        """Before any trial of the step: pre-screening (``search.prescreen``), journaled
        once (``step_screened``)."""
        from .screening import Screener
        if self._screener is None:
            self._screener = Screener(self.settings, self._train_ds, head_classes(self.cfg),
                                      self._mean_is_candidate_0)
        t0 = time.time()
        fields = self._screener.screen(rec.mu, rec.candidates)
        self._log('step_screened', step=step, **fields, seconds=round(time.time() - t0, 3))
        out = fields['rejected']
        self.logger.info(
            f'step {step + 1}: screened {len(rec.candidates)} candidates in '
            f'{time.time() - t0:.1f} s (policy mean {fields["reference"]:.3f}); rejected '
            + (', '.join(f'candidate {i} ({fields["scores"][i]:.3f})' for i in out)
               if out else 'none'))

    @property
    def _rungs(self) -> List[int]:
        """Successive halving's rung iterations ([] when it is off)."""
        h = self.settings.halving
        return rung_iters(int(self.cfg.train_cfg.max_iters), h['rungs']) if h else []

    def _run_trials(self, step: int, rec: StepRecord) -> None:
        """Launch every unfinished candidate (retrying failures) until all are done; with
        successive halving, leg by leg, deciding each rung between them."""
        s = self.settings
        if step != REEVAL and rec.screened is None and s.prescreen is not None:
            self._screen(step, rec)
        if step != REEVAL:
            # from the finished trials of the earlier steps only: fixed for the whole step,
            # whenever (and however often) its trials are launched
            self._plans[step] = step_plan(self.state, step, s, int(self.cfg.train_cfg.max_iters))
        rungs = self._rungs if step != REEVAL else []
        if not rungs:
            self._run_queue(step, rec, [i for i in range(len(rec.candidates))
                                        if not rec.trial(i).done])
            return
        for leg in range(len(rungs) + 1):
            self._run_queue(step, rec, leg_candidates(rec, leg), leg)
            if leg < len(rungs) and leg not in rec.decided:
                self._decide(step, rec, leg, rungs[leg])

    def _decide(self, step: int, rec: StepRecord, rung: int, it: int) -> None:
        """Successive halving's decision at ``rung``, from the journaled rung scores."""
        scores = [t.rungs[rung]['score'] if rung in t.rungs and not t.done else None
                  for t in (rec.trial(i) for i in range(len(rec.candidates)))]
        d = decide(scores, self.settings.halving['eta'],
                   0 if self._mean_is_candidate_0 else None)
        self._log('rung_decided', step=step, rung=rung, iter=it, scores=scores, **d)
        self.logger.info(
            f'step {step + 1}: rung {rung + 1} (iteration {it}): promoted '
            f'{d["promoted"]}, stopped {d["stopped"]}'
            + (f' (cut {d["cut"]:.4f})' if d['cut'] is not None else ''))
        tied = [i for i in d['stopped'] if scores[i] == d['cut']]
        if tied:
            # the scores could not rank these against the promoted ones: the lower index won
            self.logger.warning(
                f'step {step + 1}: rung {rung + 1} (iteration {it}): {len(tied)} stopped '
                f'candidate(s) {tied} scored the same as the lowest promoted one '
                f'({d["cut"]:.4f}), so the tie rule (the lower index) decided; when this is '
                f'common the rung comes before the proxies can be told apart (a plateau): '
                f'move search.halving.rungs later')

    def _leg_files(self, rec: StepRecord, index: int, leg: int) -> Optional[Dict]:
        """Where a leg of successive halving pauses and what it resumes."""
        rungs = self._rungs if rec is not self.state.reeval else []
        if not rungs:
            return None
        t = rec.trial(index)
        return dict(pause_iter=rungs[leg] if leg < len(rungs) else None,
                    resume_from=t.rungs[leg - 1]['checkpoint'] if leg else None)

    def _run_queue(self, step: int, rec: StepRecord, indices: List[int], leg: int = 0) -> None:
        """Run the trials of candidates ``indices`` (of leg ``leg``) until each is done:
        re-attach or relaunch those in flight, retry failures."""
        queue: List[TrialSpec] = []
        for i in indices:
            t = rec.trial(i)
            seed = rec.seeds[i] if rec.seeds else None
            if t.in_flight is not None:
                spec = self._spec(step, i, t.in_flight['attempt'], seed,
                                  t.in_flight.get('leg', 0))
                if self.executor.reattach(spec, t.in_flight.get('info') or {}):
                    self.logger.info(f'{spec.trial_id}: still running, re-attached')
                    continue
                self.logger.info(f'{spec.trial_id}: was in flight, launching it again')
                queue.append(spec)
            else:
                queue.append(self._spec(step, i, t.next_attempt, seed, leg))
        self._show(step)
        while queue or self.executor.running():
            self._check_stop()
            free = self.executor.capacity - len(self.executor.running())
            if queue and free > 0:
                batch, queue = queue[:free], queue[free:]
                self.executor.release(batch)
                plans = [trial_plan(self._plans.get(step), spec.index,
                                    self._mean_is_candidate_0) for spec in batch]
                legs = [self._leg_files(rec, spec.index, spec.leg) for spec in batch]
                for spec, plan, lf in zip(batch, plans, legs):
                    self._write_trial_config(spec, rec.candidates[spec.index], plan, lf)
                infos = self.executor.launch_many(batch)
                for spec, info, plan, lf in zip(batch, infos, plans, legs):
                    extra = dict(probes=plan) if plan else {}
                    if lf is not None:
                        extra.update(leg=spec.leg, resume_from=lf['resume_from'])
                    self._log('trial_launched', step=step, index=spec.index,
                              attempt=spec.attempt, trial_id=spec.trial_id,
                              work_dir=spec.work_dir, executor=self.executor.name, info=info,
                              **extra, **self._phase(step))
                    self.logger.info(f'{spec.trial_id}: launched ({self.executor.name} '
                                     f'{info_str(info)})')
                self._show(step)
            finished = self.executor.poll()
            for spec, comp in finished:
                retry = self._record(spec, comp)
                if retry is not None:
                    queue.append(retry)
                self._show(step)
            if not finished:
                time.sleep(self.poll_interval)
                self._show(step)

    def _record(self, spec: TrialSpec, comp: Completion) -> Optional[TrialSpec]:
        """Journal a trial's outcome; return the retry to launch, if any."""
        out: TrialOutcome = read_trial_outcome(spec.work_dir, self.reward_key, comp.exit_code,
                                               comp.timed_out, comp.wall_s, comp.reason)
        if comp.kind and not out.ok and out.kind in ('crash', 'noresult'):
            out.kind = comp.kind
        planned = self._plans.get(spec.step) is not None
        probes = read_probes(spec.work_dir) if planned else None
        phase = self._phase(spec.step)
        if out.kind == 'paused' and spec.step != REEVAL and self._rungs:
            p = out.result
            self._log('trial_paused', step=spec.step, index=spec.index, attempt=spec.attempt,
                      trial_id=spec.trial_id, rung=spec.leg, iter=p.get('iter'),
                      score=p.get('score'), metrics=p.get('metrics', {}),
                      checkpoint=p.get('checkpoint'),
                      timing=dict(wall_s=p.get('wall_s'), train_iter_s=p.get('train_iter_s'),
                                  val_s=p.get('val_s'), executor_wall_s=comp.wall_s))
            self.logger.info(f'{spec.trial_id}: rung {spec.leg + 1} (iteration '
                             f'{p.get("iter")}): {self.reward_key} {p.get("score"):.4f}')
            return None
        if out.kind == 'stopped' and planned:  # by the rule: not a failure, no retry
            st = out.result
            self._log('trial_stopped', step=spec.step, index=spec.index, attempt=spec.attempt,
                      trial_id=spec.trial_id, iter=st.get('iter'), score=st.get('score'),
                      threshold=st.get('threshold'), reason=out.reason, probes=probes,
                      wall_s=comp.wall_s)
            self.logger.info(f'{spec.trial_id}: {out.reason}')
            return None
        if out.ok:
            timing = {k: out.result.get(k) for k in ('wall_s', 'train_iter_s', 'val_s',
                                                     'overhead_s')}
            timing['executor_wall_s'] = comp.wall_s
            extra = dict(probes=probes) if probes is not None else {}
            self._log('trial_finished', step=spec.step, index=spec.index, attempt=spec.attempt,
                      trial_id=spec.trial_id, reward=out.reward,
                      metrics=out.result.get('metrics', {}), timing=timing, **extra, **phase)
            if comp.wall_s:
                self.progress.durations.append(comp.wall_s)
            self.logger.info(f'{spec.trial_id}: reward {out.reward:.4f} '
                             f'({self.reward_key} {out.reward * 100:.2f}) in '
                             f'{fmt_time(comp.wall_s)}')
            return None
        final = self.state.owner(spec.step).trial(spec.index).attempts_failed + 1 > \
            self.settings.max_retries
        self._log('trial_failed', step=spec.step, index=spec.index, attempt=spec.attempt,
                  trial_id=spec.trial_id, kind=out.kind, reason=out.reason, final=final, **phase)
        self.logger.warning(f'{spec.trial_id}: failed [{out.kind}] {out.reason}'
                            + (' (no retry left: excluded from the update)' if final
                               else ' (retrying)'))
        if final:
            return None
        return self._spec(spec.step, spec.index, spec.attempt + 1, spec.seed, spec.leg)

    def _rollback(self, step: int, rec: StepRecord) -> Optional[Dict]:
        """The rollback of this step (``search.rollback``), if any (:func:`rollback_to`)."""
        s = self.settings
        if self.searcher != 'ppo' or s.rollback is None:
            return None
        earlier = [(k, own_reward(st.rewards(), s.baseline)) for k, st in
                   sorted(self.state.steps.items()) if k < step and st.policy is not None]
        return rollback_to(earlier, own_reward(rec.rewards(), s.baseline), s.rollback)

    def _update(self, step: int, rec: StepRecord) -> None:
        """The policy update (PPO2; none for random search), journaled. When the step's
        mean did far worse than the best earlier one, the policy is instead rolled back
        to the state that sampled that best mean (``search.rollback``)."""
        s, state = self.settings, self.state
        ok = [r for r in rec.rewards() if r is not None]
        rejected, stopped = rec.indices('rejected'), rec.indices('stopped')
        halted = rec.indices('halted')
        rewards = update_rewards(rec)
        back = self._rollback(step, rec)
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
                       num_failed=len(rewards) - len(ok) - len(rejected) - len(stopped)
                       - len(halted))
        if rejected:
            summary['rejected'] = rejected
        if stopped:
            summary['stopped'] = stopped
        if halted:
            summary['halted'] = halted
        self._log('policy_updated', step=step, policy=new.to_dict(), mu=new.mu,
                  rewards=rewards, stats=stats, summary=summary)
        if rec.decided:
            self._remove_rung_checkpoints(rec)
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

    def _remove_rung_checkpoints(self, rec: StepRecord) -> None:
        """Once a step is updated, nothing resumes its rungs' checkpoints: free the disk
        (best effort; a resumed search never needs them either)."""
        for t in rec.trials.values():
            for p in t.rungs.values():
                path = p.get('checkpoint')
                if path and os.path.isfile(path):
                    try:
                        os.remove(path)
                    except OSError as e:
                        self.logger.warning(f'could not remove {path}: {e}')

    # ------------------------------------------------------------ re-evaluation
    def _num_reeval_trials(self) -> int:
        r = self.settings.reevaluate
        return 0 if r is None else r['top'] * r['seeds']

    def _reevaluate(self) -> None:
        """Train the best few results again with other proxy seeds and choose by the
        average reward (``search.reevaluate``); journaled and resumable like a step."""
        state = self.state
        seeds = self.settings.reevaluate['seeds']
        if state.reeval is None:
            entries = reeval_entries(state.steps, self.searcher, self.settings.baseline,
                                     self.settings.reevaluate['top'])
            cands, trial_seeds = [], []
            for e in entries:
                for j in range(seeds):
                    cands.append(e['raw'])
                    trial_seeds.append(self.seed + 1 + j)
            self._log('reeval_started', entries=entries, candidates=cands, seeds=trial_seeds)
            self.logger.info(f're-evaluation: {len(entries)} result(s) x {seeds} proxy seed(s) '
                             f'({", ".join(e["source"] for e in entries)})')
        self._run_trials(REEVAL, state.reeval)
        scores = reeval_scores(state, seeds)
        rule = self.settings.reevaluate.get('rule', 'best')
        chosen, se = choose_reevaluated(scores, rule)
        extra = {} if rule == 'best' else dict(rule=rule, se=se)
        self._log('reeval_finished', scores=scores, chosen=chosen, **extra)
        for sc in scores:
            self.logger.info(f're-evaluation: {sc["source"]}: rewards '
                             f'{[round(r, 4) for r in sc["rewards"]]}, mean '
                             f'{sc["mean"] if sc["mean"] is None else round(sc["mean"], 4)}')
        if rule == 'one_se' and chosen is not None:
            self.logger.info(
                're-evaluation (one standard error rule): '
                + (f'standard error {se:.4f}; ' if se is not None else
                   'no estimate of the noise (one reward each): the best mean; ')
                + f'chosen {scores[chosen]["source"]} (mean {scores[chosen]["mean"]:.4f})')

    def _request_stop(self, signum, frame) -> None:
        self._stop_signal = signum

    def _check_stop(self) -> None:
        if getattr(self, '_stop_signal', None) is not None:
            raise SearchInterrupted(f'stopped by signal {self._stop_signal}')

    def _show(self, step: int) -> None:
        done = failed = 0
        best, best_at = None, ''
        state = self.state
        records = list(state.steps.items()) + ([('re', state.reeval)] if state.reeval else [])
        for k, st in records:
            for i, t in st.trials.items():
                if t.reward is not None:
                    done += 1
                    if best is None or t.reward > best:
                        best, best_at = t.reward, (f're-c{i}' if k == 're' else f's{k}-c{i}')
                elif t.final_failure is not None:
                    failed += 1
                elif t.rejected or t.stopped is not None or t.halted is not None:
                    done += 1  # settled without a full training
        self.progress.show(step, self.settings.num_steps, len(self.executor.running()), done,
                           failed, best, best_at)

    # ----------------------------------------------------------------- outputs
    def _finish(self) -> Dict:
        from .report import write_outputs
        best = write_outputs(self.info(), self.state, self.logger)
        if self.state.finished is None:
            self._log('search_finished', best=dict(
                step=None if best['best_step'] is None else best['best_step'] - 1,
                raw_theta=best['raw_theta']))
        self.logger.info(f'search finished: best {self.reward_key} parameters: '
                         f'{best["selection"]}; results in {self.work_dir} (best.json, '
                         f'retrain_config.py, plots)')
        return best


def _fresh_dir(path: str) -> None:
    """An empty directory at ``path``: a relaunch starts from a clean one."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def info_str(info: Dict) -> str:
    if 'job_id' in info:
        return f'job {info["job_id"]}'
    if 'pid' in info:
        return f'pid {info["pid"]}'
    return json.dumps(info)


