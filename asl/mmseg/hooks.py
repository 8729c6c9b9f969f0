"""``ASLTrialHook``: what a search trial (a proxy training) reports back to the search."""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..utils import atomic_write_json

__all__ = ['ASLTrialHook', 'NonFiniteLossError', 'TrialStoppedEarly']

#: Set by the search's executors to the wall-clock time (``time.time()``) at which the
#: trial process was launched, so that process start-up counts as overhead.
from ..protocol import (FAILURE_FILE, LAUNCH_TIME_ENV, PAUSED_FILE, PROBES_FILE, RESULT_FILE,
                        RUNG_CHECKPOINT, STOPPED_FILE)

_IMPORT_TIME = time.time()


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the training is stopped at that iteration."""


class TrialStoppedEarly(RuntimeError):
    """An intermediate hold-out score fell below the early-stopping rule."""


def _as_float(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@HOOKS.register_module()
class ASLTrialHook(Hook):
    """Stop on a non-finite loss and write the hold-out result of a proxy training.

    * After every training iteration, every logged value whose key contains ``loss`` is
      checked; a NaN or infinite value writes ``failure_file`` (reason, iteration, key,
      value) and raises :class:`NonFiniteLossError`, so the process exits non-zero at
      once instead of training out its budget.
    * After every validation epoch, ``result_file`` is (re)written atomically with all
      metrics, the iteration and timings: ``wall_s`` since launch, ``train_iter_s``
      (time inside training iterations), ``val_s`` and ``overhead_s`` (everything else:
      process start, imports, model build, data loading warm-up, evaluation).
    * Early stopping (``probe_iters``): after each of these iterations the validation
      (the hold-out) runs once more; the score (``probe_key``, as a fraction) is appended
      to ``probe_file``, and when it is below that point's threshold ``stopped_file`` is
      written and :class:`TrialStoppedEarly` raised: the process exits at once with
      ``EXIT_STOPPED``. The thresholds are fixed before the trial starts, so the decision
      depends on nothing but the trial itself (a relaunched trial decides the same).
    * Successive halving (``pause_iter``): after that iteration the hold-out is validated
      (as a probe: the training's random state is left as it was), a checkpoint
      ``checkpoint_file`` is saved with the optimizer, the schedule and the random state
      of torch, then ``paused_file`` (score, metrics, checkpoint path) is written and the
      training loop ends there (exit status 0). A training resumed from that checkpoint
      (``resume=True``, ``load_from=``) restores torch's random state before its first
      iteration; with the data loader's skip of the trained batches (MMEngine), it
      continues as the uninterrupted training would (single-process trainings).

    Relative file names are resolved in the runner's ``work_dir``. Only rank 0 writes,
    unless ``result_file`` contains ``{rank}``: then every rank writes its own view of
    the metrics (which lets tests check that the ranks agree).

    Args:
        result_file (str): JSON file of the last validation. Default: ``result.json``.
        failure_file (str): JSON file written on a non-finite loss. Default:
            ``failure.json``.
        check_finite (bool): check the losses. Default: True.
        probe_iters (list): iterations after which to probe the hold-out score.
        probe_thresholds (list): per probe, the score below which the trial stops
            (None: never at that probe).
        probe_key (str): the metric of the probes (the search's reward key).
        probe_file, stopped_file (str): see above.
        pause_iter (int, optional): successive halving's rung (see above).
        paused_file, checkpoint_file (str): see above.
    """

    priority = 'VERY_LOW'

    def __init__(self, result_file: str = RESULT_FILE, failure_file: str = FAILURE_FILE,
                 check_finite: bool = True, probe_iters=(), probe_thresholds=(),
                 probe_key: Optional[str] = None, probe_file: str = PROBES_FILE,
                 stopped_file: str = STOPPED_FILE, pause_iter: Optional[int] = None,
                 paused_file: str = PAUSED_FILE, checkpoint_file: str = RUNG_CHECKPOINT):
        self.result_file = result_file
        self.failure_file = failure_file
        self.check_finite = check_finite
        self.probe_iters = [int(i) for i in probe_iters]
        self.probe_thresholds = list(probe_thresholds) or [None] * len(self.probe_iters)
        if len(self.probe_thresholds) != len(self.probe_iters):
            raise ValueError(f'{len(self.probe_thresholds)} probe thresholds for '
                             f'{len(self.probe_iters)} probe iterations')
        if self.probe_iters and not probe_key:
            raise ValueError('probe_iters needs probe_key (the metric to probe)')
        self.probe_key = probe_key
        self.probe_file = probe_file
        self.stopped_file = stopped_file
        self.pause_iter = None if pause_iter is None else int(pause_iter)
        if self.pause_iter is not None and not probe_key:
            raise ValueError('pause_iter needs probe_key (the metric to score the rung by)')
        self.paused_file = paused_file
        self.checkpoint_file = checkpoint_file
        self._resumed_rng = None
        self._probe_metrics = None
        self._probing = False
        launch = os.environ.get(LAUNCH_TIME_ENV)
        self.launch_time = _as_float(launch) if launch else None
        if self.launch_time is None:
            self.launch_time = _IMPORT_TIME
        self.train_iter_s = 0.0
        self.val_s = 0.0
        self._t_iter = None
        self._t_val = None

    def _path(self, runner, name: str) -> str:
        return name if os.path.isabs(name) else os.path.join(runner.work_dir, name)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._resumed_rng is not None:  # the first iteration after a rung's checkpoint
            import torch
            torch.set_rng_state(self._resumed_rng['torch'])
            if self._resumed_rng.get('cuda') is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._resumed_rng['cuda'])
            self._resumed_rng = None
        self._t_iter = time.perf_counter()

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        import torch
        checkpoint.setdefault('meta', {})['asl_rng'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        # only a resumed training continues the saved random state (not a fine-tuning
        # that merely loads the weights)
        if getattr(runner, '_resume', False):
            self._resumed_rng = (checkpoint.get('meta') or {}).get('asl_rng')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[Dict] = None) -> None:
        if self._t_iter is not None:
            self.train_iter_s += time.perf_counter() - self._t_iter
            self._t_iter = None
        if not self.check_finite or not outputs:
            return
        for key, value in outputs.items():
            if 'loss' not in key:
                continue
            v = _as_float(value)
            if v is not None and not math.isfinite(v):
                reason = f'non-finite loss: {key}={v} at iteration {runner.iter + 1}'
                self._write_failure(runner, dict(reason=reason, kind='nonfinite',
                                                 iter=runner.iter + 1, key=key, value=str(v)))
                raise NonFiniteLossError(reason)
        it = runner.iter + 1
        if it in self.probe_iters and it < runner.max_iters:
            self._probe(runner, it, self.probe_thresholds[self.probe_iters.index(it)])
        if it == self.pause_iter and it < runner.max_iters:
            self._pause(runner, it)

    def _pause(self, runner, it: int) -> None:
        """Successive halving's rung: score, checkpoint, ``paused_file``, end the loop."""
        metrics = self._validate_now(runner)
        value = _as_float(metrics.get(self.probe_key))
        score = value / 100.0 if value is not None and math.isfinite(value) else 0.0
        runner.save_checkpoint(runner.work_dir, self.checkpoint_file, by_epoch=False,
                               save_optimizer=True,
                               save_param_scheduler=True)
        wall = time.time() - self.launch_time
        self._write_paused(runner, dict(
            iter=it, score=score, metrics={k: _as_float(v) for k, v in metrics.items()},
            checkpoint=os.path.abspath(self._path(runner, self.checkpoint_file)),
            wall_s=wall, train_iter_s=self.train_iter_s, val_s=self.val_s))
        runner.logger.info(f'paused at iteration {it} (successive halving\'s rung): '
                           f'{self.probe_key} {score:.4f}')
        runner.train_loop.stop_training = True

    @master_only
    def _write_paused(self, runner, info: dict) -> None:
        atomic_write_json(self._path(runner, self.paused_file), info)

    def _probe(self, runner, it: int, threshold: Optional[float]) -> None:
        """Validate now (the hold-out), record the score, stop below ``threshold``."""
        metrics = self._validate_now(runner)
        value = _as_float(metrics.get(self.probe_key))
        score = value / 100.0 if value is not None and math.isfinite(value) else 0.0
        stop = threshold is not None and score < threshold
        self._append_probe(runner, dict(iter=it, score=score, threshold=threshold,
                                        metrics={k: _as_float(v) for k, v in metrics.items()}))
        if stop:
            reason = (f'stopped early at iteration {it}: {self.probe_key} {score:.4f} < '
                      f'{threshold:.4f}, the rule\'s threshold at that point')
            self._write_stopped(runner, dict(iter=it, score=score, threshold=threshold,
                                             reason=reason))
            raise TrialStoppedEarly(reason)

    def _validate_now(self, runner) -> Dict:
        """Run the validation (the hold-out) now; its metrics. Only observes: the random
        state the training continues with is the one it would have had without it."""
        import random

        import numpy as np
        import torch
        # the probe only observes: the random state the training continues with is the one
        # it would have had without it (a validation loader draws a seed from torch's)
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                  torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
        self._probing, self._probe_metrics = True, None
        try:
            runner.val_loop.run()
        finally:
            self._probing = False
            runner.model.train()
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
            if states[3] is not None:
                torch.cuda.set_rng_state_all(states[3])
        return dict(self._probe_metrics or {})

    @master_only
    def _append_probe(self, runner, line: dict) -> None:
        import json
        with open(self._path(runner, self.probe_file), 'a') as f:
            f.write(json.dumps(line) + '\n')
            f.flush()
            os.fsync(f.fileno())

    @master_only
    def _write_stopped(self, runner, info: dict) -> None:
        atomic_write_json(self._path(runner, self.stopped_file), info)

    @master_only
    def _write_failure(self, runner, info: dict) -> None:
        atomic_write_json(self._path(runner, self.failure_file), info)

    def before_val_epoch(self, runner) -> None:
        self._t_val = time.perf_counter()

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        if self._t_val is not None:
            self.val_s += time.perf_counter() - self._t_val
            self._t_val = None
        if self._probing:  # an early-stopping probe, not the trial's result
            self._probe_metrics = dict(metrics or {})
            return
        self._write_result(runner, metrics or {})

    def _write_result(self, runner, metrics: Dict[str, float]) -> None:
        name = self.result_file
        if '{rank}' in name:
            name = name.replace('{rank}', str(runner.rank))
        elif runner.rank != 0:
            return
        wall = time.time() - self.launch_time
        atomic_write_json(self._path(runner, name), dict(
            metrics={k: _as_float(v) for k, v in metrics.items() if _as_float(v) is not None},
            iter=runner.iter,
            max_iters=runner.max_iters,
            wall_s=wall,
            train_iter_s=self.train_iter_s,
            val_s=self.val_s,
            overhead_s=max(wall - self.train_iter_s, 0.0),
        ))
