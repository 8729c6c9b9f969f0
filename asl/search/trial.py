"""One proxy training: its config, its command line and how its outcome is read.

A trial is a real MMSeg training process (``tools/train.py``). Its work directory
holds the resolved ``config.py`` (the search config with the candidate's loss, the
proxy training split and the hold-out as validation set), MMEngine's logs,
``stdout.log``, and ``result.json`` written by :class:`asl.mmseg.hooks.ASLTrialHook`
(or ``failure.json`` on a non-finite loss).
"""
from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..protocol import (FAILURE_FILE, PAUSED_FILE, PROBES_FILE, RESULT_FILE, STDOUT_LOG,
                        STOPPED_FILE)
from .settings import SearchConfigError, SearchSettings, amp_dtype

__all__ = ['TrialSpec', 'TrialOutcome', 'check_surrogate', 'check_extra_losses', 'extra_losses',
           'make_warm_start_config', 'warm_start_iters',
           'make_trial_config', 'dump_config', 'read_trial_outcome', 'train_command',
           'trial_args']


@dataclass
class TrialSpec:
    """What an executor needs to run one trial.

    Attributes:
        trial_id: ``s<step>-c<candidate>-a<attempt>``, unique within the search.
        step, index, attempt: position in the search (attempt counts from 1).
        work_dir: the trial's directory (absolute).
        config_path: its resolved config.
        seed: training seed.
        time_limit: seconds before the trial is stopped.
        gpus: GPUs for this trial (0 on CPU).
        name: a job name naming the search and the trial.
        leg: successive halving's leg (0: from scratch; ``k``: resumed from rung ``k``).
    """

    trial_id: str
    step: int
    index: int
    attempt: int
    work_dir: str
    config_path: str
    seed: int
    time_limit: float
    gpus: int = 0
    name: str = ''
    leg: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class TrialOutcome:
    """How a trial ended.

    Attributes:
        ok: a reward was obtained.
        reward: the target metric on the hold-out, as a fraction.
        kind: failure kind: ``crash``, ``timeout``, ``nonfinite``, ``noresult``,
            ``cancelled``, or a scheduler state (``slurm:FAILED``...).
        reason: human-readable reason.
        result: the content of ``result.json`` (metrics, timings).
        wall_s: wall time as measured by the executor.
    """

    ok: bool
    reward: Optional[float] = None
    kind: str = ''
    reason: str = ''
    result: Dict[str, Any] = field(default_factory=dict)
    wall_s: Optional[float] = None


def settings_surrogate(settings: SearchSettings, raw_theta: Optional[List[float]] = None):
    """The search target's :class:`~asl.loss.surrogate.Surrogate` with raw parameters
    ``raw_theta`` (None: identity curves)."""
    from ..loss.surrogate import Surrogate
    return Surrogate(settings.target_metric, raw_theta=raw_theta,
                     parameterization=settings.parameterization,
                     num_pieces=settings.num_pieces, tol=settings.tol, drop_bg=settings.drop_bg)


def head_classes(cfg) -> int:
    """The number of classes of a config's (first) decode head."""
    head = cfg.model.decode_head
    head = head[0] if isinstance(head, (list, tuple)) else head
    return int(head['num_classes'])


def check_surrogate(settings: SearchSettings):
    """Build the identity surrogate of the search's target: validates the metric (name
    or formula) and the curve options before anything is launched.

    Returns:
        Surrogate: the surrogate with identity curves (its ``num_params(raw=True)`` is
        the search dimension and its ``name`` the reward key).

    Raises:
        SearchConfigError: unknown metric, malformed formula, bad options, wrong
            ``init_mu`` length.
    """
    from ..curves import identity_theta
    try:
        sur = settings_surrogate(settings)
    except ValueError as e:  # FormulaError is a ValueError
        raise SearchConfigError(f'search.target_metric {settings.target_metric!r}: {e}') from None
    dim = sur.num_params(raw=True)
    if dim == 0:
        raise SearchConfigError(f'search.target_metric {settings.target_metric!r} has no '
                                f'curve to search (no soft logical operation)')
    if settings.init_mu is not None and len(settings.init_mu) != dim:
        raise SearchConfigError(f'search.init_mu has {len(settings.init_mu)} numbers, expected '
                                f'{dim}:\n{sur.layout()}')
    identity = identity_theta(sur.parameterization, sur.num_pieces) * sur.compiled.num_curves
    return sur, identity


def trial_loss(settings: SearchSettings, raw_theta: List[float], weight: float) -> Dict:
    """The loss dict of a trial: the target's surrogate with the raw parameters
    ``raw_theta`` (a search config holds no loss of its own: this is its proxy loss)."""
    return dict(type='AutoSegLoss', target_metric=settings.target_metric,
                raw_theta=[float(x) for x in raw_theta],
                parameterization=settings.parameterization, num_pieces=settings.num_pieces,
                tol=settings.tol, drop_bg=settings.drop_bg, loss_weight=float(weight))


def cross_entropy_loss(weight: float) -> Dict:
    """MMSeg's softmax cross-entropy at ``weight`` (``search.ce_weight``'s term)."""
    return dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=float(weight))


def check_extra_losses(settings: SearchSettings) -> None:
    """Every ``search.extra_losses`` type is a loss MMSeg can build.

    Raises:
        SearchConfigError: naming the unknown type.
    """
    if not settings.extra_losses:
        return
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    for d in settings.extra_losses:
        if MODELS.get(d['type']) is None:
            raise SearchConfigError(f'search.extra_losses: {d["type"]!r} is not a registered '
                                    f'MMSeg loss (in {d!r})')


def extra_losses(settings: SearchSettings, weight: float) -> List[Dict]:
    """The losses trained beside the surrogate in a head of ``weight``: cross-entropy at
    ``ce_weight * weight`` (if set), then ``search.extra_losses`` with their
    ``loss_weight`` (default 1) times ``weight``."""
    out = [cross_entropy_loss(settings.ce_weight * weight)] if settings.ce_weight else []
    for d in settings.extra_losses or ():
        out.append(dict(d, loss_weight=float(d.get('loss_weight', 1.0)) * weight))
    return out


def head_losses(settings: SearchSettings, raw_theta: List[float], weight: float):
    """A head's ``loss_decode``: the surrogate at ``weight``; with ``search.ce_weight`` or
    ``search.extra_losses``, the list of it and those (:func:`extra_losses`)."""
    loss = trial_loss(settings, raw_theta, weight)
    extra = extra_losses(settings, weight)
    return [loss, *extra] if extra else loss


def _set_loss(head, loss) -> None:
    heads = head if isinstance(head, (list, tuple)) else [head]
    for h in heads:
        h['loss_decode'] = copy.deepcopy(loss)


def set_trial_loss(model, settings: SearchSettings, raw_theta: List[float]) -> None:
    """Put the trial's loss (:func:`head_losses`) in a model config: weight 1 in the
    decode head(s), ``settings.aux_weight`` in the auxiliary head(s).

    Raises:
        SearchConfigError: the model has no decode head.
    """
    if 'decode_head' not in model:
        raise SearchConfigError('the proxy model has no decode_head to put the loss in')
    _set_loss(model['decode_head'], head_losses(settings, raw_theta, 1.0))
    if model.get('auxiliary_head'):
        _set_loss(model['auxiliary_head'], head_losses(settings, raw_theta, settings.aux_weight))


def make_trial_config(cfg, settings: SearchSettings, raw_theta: List[float], train_ds: Dict,
                      holdout_ds: Dict, reward_key: str, probes: Optional[Dict] = None,
                      pause_iter: Optional[int] = None, resume_from: Optional[str] = None,
                      warm_from: Optional[str] = None):
    """The resolved config of one trial (a copy of the search config ``cfg``).

    * decode head(s): ``AutoSegLoss`` with ``raw_theta`` at weight 1 (and cross-entropy
      at ``settings.ce_weight``), auxiliary head(s) the same at ``settings.aux_weight``;
    * training on the proxy split, validation (once, at the end) on the hold-out with
      the exact target metric, no checkpoints;
    * :class:`~asl.mmseg.hooks.ASLTrialHook` to report the result;
    * with ``settings.amp``, MMEngine's ``AmpOptimWrapper`` (the surrogate stays float32);
    * ``probes`` (early stopping): ``dict(iters=[...], thresholds=[...])`` for the hook;
    * successive halving: ``pause_iter`` (the leg ends there: score, checkpoint, pause) and
      ``resume_from`` (the checkpoint of the previous rung the leg resumes);
    * ``warm_from`` (``search.warm_start``): the checkpoint whose weights a training that
      starts from scratch loads (``load_from``, not resumed).
    """
    cfg = copy.deepcopy(cfg)
    if 'search' in cfg:
        cfg.pop('search')
    set_trial_loss(cfg.model, settings, raw_theta)
    # absolute data paths: a trial may run in another working directory (a Slurm job)
    cfg.train_dataloader.dataset = _absolute_roots(copy.deepcopy(train_ds))
    cfg.val_dataloader.dataset = _absolute_roots(copy.deepcopy(holdout_ds))
    cfg.val_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    cfg.val_evaluator = dict(type='ASLMetric', metric_names=[settings.target_metric],
                             tol=settings.tol, drop_bg=settings.drop_bg)
    max_iters = int(cfg.train_cfg.get('max_iters', 0))
    if not max_iters:
        raise SearchConfigError('the proxy training must be iteration based '
                                '(train_cfg.max_iters)')
    cfg.train_cfg.val_interval = max_iters
    cfg.train_cfg.pop('val_begin', None)
    hooks = dict(cfg.get('default_hooks', {}))
    hooks['checkpoint'] = None  # a relaunched trial starts over; no checkpoint needed
    cfg.default_hooks = hooks
    custom = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'ASLTrialHook']
    hook = dict(type='ASLTrialHook', result_file=RESULT_FILE, failure_file=FAILURE_FILE)
    if probes:
        hook.update(probe_iters=list(probes['iters']),
                    probe_thresholds=list(probes['thresholds']), probe_key=reward_key)
    if pause_iter is not None:
        hook.update(pause_iter=int(pause_iter), probe_key=reward_key)
    custom.append(hook)
    if resume_from is not None:  # (else a config's own load_from, a warm start, stays)
        cfg.resume, cfg.load_from = True, resume_from
    elif warm_from is not None:
        cfg.resume, cfg.load_from = False, warm_from
    cfg.custom_hooks = custom
    cfg.pop('demo_data', None)  # the search prepared the data already
    dtype = amp_dtype(settings.amp)
    if dtype is not None:
        wrapper = dict(cfg.optim_wrapper)
        wrapper.update(type='AmpOptimWrapper', dtype=dtype)
        cfg.optim_wrapper = wrapper
    return cfg


def warm_start_iters(cfg, settings: SearchSettings) -> int:
    """The iterations of ``search.warm_start``'s training (None: the proxy's length)."""
    iters = (settings.warm_start or {}).get('iters')
    return int(iters) if iters is not None else int(cfg.train_cfg.max_iters)


def make_warm_start_config(cfg, settings: SearchSettings, train_ds: Dict, holdout_ds: Dict,
                           reward_key: str):
    """The config of ``search.warm_start``'s training: a trial's (:func:`make_trial_config`)
    with cross-entropy instead of the surrogate (weight 1 in the decode head(s),
    ``aux_weight`` in the auxiliary head(s)), :func:`warm_start_iters` iterations on the
    proxy's optimizer and schedule, validated on the hold-out at the end (its score is
    the cross-entropy proxy's) and saving ``iter_<N>.pth`` (weights only) there."""
    iters = warm_start_iters(cfg, settings)
    cfg = make_trial_config(cfg, settings, [], train_ds, holdout_ds, reward_key)
    _set_loss(cfg.model['decode_head'], cross_entropy_loss(1.0))
    if cfg.model.get('auxiliary_head'):
        _set_loss(cfg.model['auxiliary_head'], cross_entropy_loss(settings.aux_weight))
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    hooks = dict(cfg.default_hooks)
    hooks['checkpoint'] = dict(type='CheckpointHook', by_epoch=False, interval=iters,
                               max_keep_ckpts=1, save_optimizer=False,
                               save_param_scheduler=False)
    cfg.default_hooks = hooks
    return cfg


def _plain(value) -> bool:
    """Whether ``repr(value)`` is Python source that reads back as the same value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, (str, int, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def dump_config(cfg, path: str) -> None:
    """Write a trial's config to ``path`` (a ``.py`` file MMEngine reads back as the same
    config): one assignment per top-level key, the value's ``repr``. MMEngine's own
    ``Config.dump`` formats the text with yapf, about 0.7 s a config on one core, paid
    by every trial; this takes milliseconds. A config with a value that is not plain
    data (a type, a function, a non-finite float) is written by ``Config.dump``."""
    from ..utils import atomic_write_text
    data = cfg.to_dict()
    if not all(k.isidentifier() and _plain(v) for k, v in data.items()):
        cfg.dump(path)
        return
    atomic_write_text(path, '# The trial\'s resolved config, written by the search.\n'
                      + ''.join(f'{k} = {v!r}\n' for k, v in data.items()))


def _absolute_roots(ds):
    if isinstance(ds, dict):
        root = ds.get('data_root')
        if isinstance(root, str) and root and not os.path.isabs(root):
            ds['data_root'] = os.path.abspath(root)
        for v in ds.values():
            _absolute_roots(v)
    elif isinstance(ds, (list, tuple)):
        for v in ds:
            _absolute_roots(v)
    return ds


def trial_args(spec: TrialSpec, launcher: str = 'none') -> List[str]:
    """The arguments of ``tools/train.py`` for a trial (after the script)."""
    return [spec.config_path, '--work-dir', spec.work_dir, '--seed', str(spec.seed),
            '--deterministic', '--lean', '--launcher', launcher]


def train_command(spec: TrialSpec, python: Optional[str] = None, launcher: str = 'none',
                  nproc: int = 1, master_port: Optional[int] = None) -> List[str]:
    """The command line of a trial: ``tools/train.py`` (or torchrun for several GPUs)."""
    from ..utils import train_entry
    python = python or sys.executable
    entry = train_entry()
    if nproc > 1 and launcher == 'pytorch':
        port = [f'--master_port={master_port}'] if master_port else []
        return [python, '-m', 'torch.distributed.run', '--nnodes=1',
                f'--nproc_per_node={nproc}', *port, *entry, *trial_args(spec, 'pytorch')]
    return [python, *entry, *trial_args(spec, launcher)]


def read_trial_outcome(work_dir: str, reward_key: str, exit_code: Optional[int],
                       timed_out: bool = False, wall_s: Optional[float] = None,
                       scheduler_reason: str = '') -> TrialOutcome:
    """Decide a trial's outcome from its exit status and the files it wrote."""
    from ..utils import read_json_or_none

    def load(name):
        return read_json_or_none(os.path.join(work_dir, name))

    paused = load(PAUSED_FILE)
    if paused is not None and exit_code in (0, None) and not timed_out:
        return TrialOutcome(False, kind='paused', result=paused, wall_s=wall_s,
                            reason=f'reached its rung at iteration {paused.get("iter")}')
    stopped = load(STOPPED_FILE)
    if stopped is not None:
        return TrialOutcome(False, kind='stopped', reason=stopped.get('reason', 'stopped early'),
                            result=stopped, wall_s=wall_s)
    failure = load(FAILURE_FILE)
    if failure is not None:
        return TrialOutcome(False, kind='nonfinite', reason=failure.get('reason', 'non-finite'),
                            result=failure, wall_s=wall_s)
    if timed_out:
        return TrialOutcome(False, kind='timeout', wall_s=wall_s,
                            reason=scheduler_reason or 'exceeded the trial time limit')
    result = load(RESULT_FILE)
    if exit_code not in (0, None) or (exit_code is None and result is None):
        tail = _log_tail(os.path.join(work_dir, STDOUT_LOG))
        kind = 'crash'
        reason = scheduler_reason or f'exit status {exit_code}'
        if tail:
            reason += f': {tail}'
        return TrialOutcome(False, kind=kind, reason=reason, wall_s=wall_s)
    if result is None:
        return TrialOutcome(False, kind='noresult', wall_s=wall_s,
                            reason='the training ended without writing result.json')
    value = result.get('metrics', {}).get(reward_key)
    if value is None or value != value:
        return TrialOutcome(False, kind='noresult', result=result, wall_s=wall_s,
                            reason=f'result.json has no finite {reward_key!r}')
    if result.get('iter') != result.get('max_iters'):
        return TrialOutcome(False, kind='noresult', result=result, wall_s=wall_s,
                            reason=f'result.json is from iteration {result.get("iter")} of '
                                   f'{result.get("max_iters")}')
    return TrialOutcome(True, reward=float(value) / 100.0, result=result, wall_s=wall_s)


def _log_tail(path: str, limit: int = 300) -> str:
    """The last error-looking line of a log (for failure reasons)."""
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 20000, 0))
            lines = f.read().decode('utf-8', 'replace').splitlines()
    except OSError:
        return ''
    lines = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(lines):
        if 'Error' in ln or 'error' in ln or 'Exception' in ln:
            return ln[-limit:]
    return lines[-1][-limit:] if lines else ''


def read_probes(work_dir: str) -> List[Dict]:
    """The early-stopping probes a trial wrote (``iter``, ``score``, ``threshold``)."""
    import json
    out = []
    try:
        with open(os.path.join(work_dir, PROBES_FILE)) as f:
            for line in f:
                if line.endswith('\n'):
                    p = json.loads(line)
                    out.append(dict(iter=p['iter'], score=p['score'], threshold=p['threshold']))
    except (OSError, ValueError):
        pass
    return out
