"""The ``search`` section of a search config, parsed and checked before anything runs."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .state import REEVAL_RULES

__all__ = ['SearchSettings', 'SearchConfigError', 'parse_search_section', 'amp_dtype',
           'EARLY_STOP_DEFAULTS', 'PRESCREEN_DEFAULTS', 'HALVING_DEFAULTS',
           'WARM_START_DEFAULTS']


#: ``search.prescreen`` entries left out take these values.
PRESCREEN_DEFAULTS = dict(images=4, steps=10, lr=0.5, threshold=0.5, seed=0)
#: ``search.early_stop`` entries left out take these values.
EARLY_STOP_DEFAULTS = dict(at=[1 / 3, 2 / 3], quantile=0.5, min_trials=3)
#: ``search.halving`` entries left out take these values.
HALVING_DEFAULTS = dict(rungs=[1 / 3], eta=4)
#: ``search.warm_start`` entries left out take these values (iters None: the proxy's length).
WARM_START_DEFAULTS = dict(iters=None)


def amp_dtype(amp: Any) -> Optional[str]:
    """The autocast dtype of ``search.amp`` (None: full precision)."""
    if amp is True:
        return 'float16'
    return amp or None


class SearchConfigError(ValueError):
    """A search config is missing its ``search`` section or has a bad value in it."""


@dataclass
class SearchSettings:
    """Hyperparameters of one search (the ``search = dict(...)`` of a search config).

    Attributes:
        target_metric: built-in metric name or a formula; the reward is its exact value
            on the hold-out split (as a fraction in [0, 1]).
        parameterization: curve family of the surrogate (a registered family with
            parameters: ``'bezier'``, ``'linear'``, ...; see :mod:`asl.curves`).
        num_pieces: pieces (Bezier) or segments (linear) per curve; None = default.
        tol: boundary tolerance in pixels (boundary metrics).
        drop_bg: leave the background class out of the class mean.
        init_mu: initial policy mean (raw parameters in [0, 1]); None = identity curves.
        sigma: standard deviation of the truncated-normal policy.
        lr: Adam learning rate of the policy.
        num_samples: M, candidates (proxy trainings) per step.
        num_steps: T, policy steps.
        ppo_epochs: Adam steps on the clipped objective per policy step.
        clip_eps: PPO2 clip range epsilon.
        baseline: ``'mu'`` (reward of the policy mean, sampled as candidate 0) or
            ``'mean'`` (mean reward of the step).
        target_kl: stop an update's epochs before the exact KL divergence between the old
            and the new policy (over the whole distribution) exceeds this; None = no limit
            (the paper).
        max_mu_change: keep each coordinate of the mean within this distance of its value
            before the update; None = no limit (the paper).
        normalize_advantages: divide the advantages by the standard deviation of the step's
            rewards (False: the paper).
        rollback: when the policy mean's own reward (candidate 0 with ``baseline='mu'``,
            else the step's mean reward) falls below ``rollback`` times the best such
            reward so far, the policy goes back to the state that produced that best mean
            instead of being updated; None = never (the paper).
        reevaluate: ``dict(top=K, seeds=S)``: before the search ends, the policy means of
            the K steps with the highest mean reward (random search: the K best
            candidates) are trained again with S other proxy seeds, and the result is the
            one with the best average reward over all its trainings; None = the paper's
            choice from one proxy training each. ``rule='one_se'`` (default ``'best'``)
            chooses instead the earliest result whose average is within one standard
            error of the best (:func:`asl.search.state.choose_reevaluated`): a later
            policy mean must beat an earlier one by more than the proxies' noise.
        holdout: ``dict(num=..., seed=...)``: images carved from the training split for
            the rewards; proxy models never train on them.
        trial_time_limit: seconds a proxy training may run before it is stopped and
            recorded as failed.
        max_retries: relaunches of a failed trial before it counts as failed for good.
        gpus_per_trial: GPUs per proxy training (more than one runs torchrun).
        trials_per_gpu: proxy trainings run at once on each GPU (each its own process,
            work directory, time limit and failure), like the official
            ``num_models_per_gpu``; on CPU workers, trainings at once per worker; with
            Slurm, trainings per job. Pays when one proxy training leaves the GPU idle
            (small models, small crops); single-GPU trials only. Not part of the search's
            fingerprint: a search may be resumed with another value.
        prescreen: ``dict(images=4, steps=10, lr=0.5, threshold=0.5, seed=0)`` (entries
            left out take these values): before a step's proxy trainings, each candidate
            is scored by optimising free logits on a few proxy-training label maps with
            its surrogate (:mod:`asl.search.screening`); a candidate scoring below
            ``threshold`` times the policy mean's score is rejected without training (its
            reward in the update: see :func:`asl.search.state.settled_reward`).
            None = off.
        early_stop: ``dict(at=[1/3, 2/3], quantile=0.5, min_trials=3)`` (entries left out
            take these values): each proxy training also scores the hold-out after
            those fractions of its iterations and stops itself at a point where its
            score is below the ``quantile`` (0.5: the median) of the scores that the
            finished trials of the earlier steps had at the same point (a rule only
            once ``min_trials`` such scores exist: never in the first step; never the
            policy mean itself with ``baseline='mu'``). A stopped
            trial's reward in the update: :func:`asl.search.state.settled_reward`. The
            thresholds are fixed when the step starts, so a resumed search decides the
            same. Not for the re-evaluation. None = off.
        halving: ``dict(rungs=[1 / 3], eta=4)`` (entries left out take these values):
            synchronous successive halving inside each step (:mod:`asl.search.halving`).
            Every candidate trains to the first rung (that fraction of the proxy's
            iterations, on the full proxy schedule), is scored on the hold-out and saves a
            checkpoint; only the best ``ceil(n / eta)`` of the ``n`` scored (the policy
            mean always among them with ``baseline='mu'``) continue, each from its own
            checkpoint, to the next rung, and so on to the full length. A candidate
            stopped at a rung takes a reward below every full-length reward of its step
            (:func:`asl.search.halving.halted_rewards`). Each decision is journaled and a
            pure function of the journaled rung scores. Not for the re-evaluation; not
            with ``early_stop``. None = off (the paper).
        amp: proxy trainings with automatic mixed precision (MMEngine's
            ``AmpOptimWrapper``; ``True`` or ``'float16'``, or ``'bfloat16'``); the
            surrogate loss is computed in float32 either way. Needs CUDA GPUs.
        aux_weight: loss weight of the surrogate in the auxiliary head(s).
        ce_weight: weight of a cross-entropy term trained beside the surrogate (weight 1),
            in the proxy trainings and in the re-training config: the combination
            practitioners use, searched as it will be trained (the auxiliary head(s)
            get both at ``aux_weight`` times their weights). 0 = the surrogate alone.
        extra_losses: more MMSeg losses trained beside the surrogate, a list of loss dicts
            (``dict(type='LovaszLoss', ..., loss_weight=1.0)``), after the cross-entropy
            of ``ce_weight``, in the proxy trainings and in the re-training config (the
            auxiliary head(s) at ``aux_weight`` times their ``loss_weight``): the searched
            loss added to a hand-designed combination. An ``AutoSegLoss`` there is a
            fixed surrogate (its ``theta`` given, its own ``loss_name``), never searched.
            None = none.
        warm_start: ``dict(iters=N)``: before the first step the search trains the proxy
            model once with cross-entropy (weight 1, the auxiliary head(s) at
            ``aux_weight``) for ``N`` iterations (None: the proxy's length) on the proxy
            split, with the proxy's optimizer and schedule, and every proxy training starts
            from that checkpoint (its weights: ``load_from``) instead of from the config's
            initialization, so the reward measures the surrogate where it acts, on a model
            that already segments (the paper's proxies start from pretrained backbones).
            Run by the search's executor, journaled (``warm_start_finished``, with the
            checkpoint's SHA-256, checked on resume). The re-training config starts as its
            own config says. None = off.
        retrain_config: config that the final re-training config inherits (a relative
            path is looked up next to the search config, then from the current
            directory); None = the search config itself.
    """

    target_metric: str = 'mIoU'
    parameterization: str = 'bezier'
    num_pieces: Optional[int] = None
    tol: int = 5
    drop_bg: bool = False
    init_mu: Optional[List[float]] = None
    sigma: float = 0.2
    lr: float = 0.2
    num_samples: int = 32
    num_steps: int = 12
    ppo_epochs: int = 60
    clip_eps: float = 0.2
    baseline: str = 'mu'
    target_kl: Optional[float] = 1.0
    max_mu_change: Optional[float] = 0.1
    normalize_advantages: bool = True
    rollback: Optional[float] = 0.5
    reevaluate: Optional[Dict[str, int]] = field(default_factory=lambda: dict(top=3, seeds=2))
    holdout: Dict[str, int] = field(default_factory=lambda: dict(num=1500, seed=0))
    trial_time_limit: float = 3600.0
    max_retries: int = 2
    gpus_per_trial: int = 1
    trials_per_gpu: int = 1
    amp: Any = False
    prescreen: Optional[Dict[str, Any]] = None
    early_stop: Optional[Dict[str, Any]] = None
    halving: Optional[Dict[str, Any]] = None
    aux_weight: float = 0.4
    ce_weight: float = 0.0
    extra_losses: Optional[List[Dict[str, Any]]] = None
    warm_start: Optional[Dict[str, Any]] = None
    retrain_config: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SearchConfigError(msg)


def _options(name: str, value: Any, defaults: Dict[str, Any]) -> Dict[str, Any]:
    """A ``search.<name>`` dict of options, its missing entries taken from ``defaults``."""
    _check(isinstance(value, dict) and set(value) <= set(defaults),
           f'search.{name} must be None or a dict with keys among {sorted(defaults)}, '
           f'got {value!r}')
    return {**defaults, **value}


def _positive_int(name: str, v: Any, low: int = 1) -> None:
    _check(isinstance(v, int) and not isinstance(v, bool) and v >= low,
           f'search.{name} must be {"a positive" if low == 1 else "a non-negative"} integer, '
           f'got {v!r}')


def _number(name: str, v: Any, low: float, high: Optional[float], what: str,
            high_open: bool = False) -> None:
    """``low < v`` and ``v <= high`` (``v < high`` with ``high_open``)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    _check(ok, f'search.{name} must be {what}, got {v!r}')


def parse_search_section(section: Any, config_path: str = '<config>') -> SearchSettings:
    """Build :class:`SearchSettings` from a config's ``search`` entry, checking every value.

    The surrogate itself (metric name or formula, pieces, ``init_mu`` length) is
    checked by :func:`asl.search.trial.check_surrogate`.

    Raises:
        SearchConfigError: no section, an unknown key, or a bad value (named).
    """
    if section is None:
        raise SearchConfigError(
            f'{config_path} has no `search` section: a search config is a proxy training '
            f'config plus `search = dict(target_metric=..., num_samples=..., ...)` '
            f'(see configs/search/)')
    if not isinstance(section, dict):
        raise SearchConfigError(f'{config_path}: `search` must be a dict, got '
                                f'{type(section).__name__}')
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = sorted(set(section) - known)
    _check('equivalence' not in unknown,
           f'{config_path}: search.equivalence was removed (reusing the reward of a candidate '
           f'with an equivalent gradient was measured not to pay for continuous parameters: '
           f'no two candidates were ever that close); delete it from the config')
    _check(not unknown, f'{config_path}: unknown key(s) in `search`: {unknown}; '
                        f'known keys: {sorted(known)}')
    s = SearchSettings(**{k: (dict(v) if isinstance(v, dict) else v)
                          for k, v in section.items()})
    _check(isinstance(s.target_metric, str) and s.target_metric.strip() != '',
           f'search.target_metric must be a metric name or formula, got {s.target_metric!r}')
    from ..curves import CURVES
    searchable = [n for n, c in CURVES.items() if c.num_raw(c.default_pieces) > 0]
    _check(s.parameterization in searchable,
           f'search.parameterization must be a curve family with parameters '
           f'({", ".join(searchable)}), got {s.parameterization!r}')
    _check(s.num_pieces is None or (isinstance(s.num_pieces, int) and s.num_pieces >= 1),
           f'search.num_pieces must be a positive integer, got {s.num_pieces!r}')
    _check(isinstance(s.tol, int) and s.tol >= 0,
           f'search.tol must be a non-negative integer, got {s.tol!r}')
    for name in ('sigma', 'lr', 'clip_eps', 'trial_time_limit'):
        v = getattr(s, name)
        _check(isinstance(v, (int, float)) and v > 0,
               f'search.{name} must be a positive number, got {v!r}')
    _check(s.sigma <= 1.0, f'search.sigma must be at most 1, got {s.sigma!r}')
    for name in ('num_samples', 'num_steps', 'ppo_epochs', 'gpus_per_trial', 'trials_per_gpu'):
        v = getattr(s, name)
        _check(isinstance(v, int) and v >= 1,
               f'search.{name} must be a positive integer, got {v!r}')
    _check(s.trials_per_gpu == 1 or s.gpus_per_trial == 1,
           f'search.trials_per_gpu={s.trials_per_gpu} packs single-GPU proxy trainings; it '
           f'cannot be combined with gpus_per_trial={s.gpus_per_trial}')
    _check(isinstance(s.amp, bool) or s.amp in ('float16', 'bfloat16'),
           f"search.amp must be False, True, 'float16' or 'bfloat16', got {s.amp!r}")
    _check(isinstance(s.max_retries, int) and s.max_retries >= 0,
           f'search.max_retries must be a non-negative integer, got {s.max_retries!r}')
    _check(s.baseline in ('mu', 'mean'),
           f"search.baseline must be 'mu' or 'mean', got {s.baseline!r}")
    _check(not (s.baseline == 'mu' and s.num_samples < 2),
           f"search.baseline='mu' needs num_samples >= 2, got {s.num_samples}")
    for name in ('target_kl', 'max_mu_change', 'rollback'):
        v = getattr(s, name)
        _check(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
               f'search.{name} must be a positive number or None, got {v!r}')
    _check(s.max_mu_change is None or s.max_mu_change < 1,
           f'search.max_mu_change must be below 1, got {s.max_mu_change!r}')
    _check(s.rollback is None or s.rollback < 1,
           f'search.rollback must be a fraction below 1, got {s.rollback!r}')
    _check(isinstance(s.normalize_advantages, bool),
           f'search.normalize_advantages must be True or False, got {s.normalize_advantages!r}')
    if s.reevaluate is not None:
        r = s.reevaluate
        _check(isinstance(r, dict) and {'top', 'seeds'} <= set(r) <= {'top', 'seeds', 'rule'}
               and all(isinstance(r[k], int) and not isinstance(r[k], bool) and r[k] >= 1
                       for k in ('top', 'seeds')),
               f'search.reevaluate must be dict(top=<positive int>, seeds=<positive int>'
               f'[, rule=...]) or None, got {r!r}')
        _check(r.get('rule', 'best') in REEVAL_RULES,
               f'search.reevaluate.rule must be one of {REEVAL_RULES}, got {r.get("rule")!r}')
    if s.prescreen is not None:
        p = s.prescreen = _options('prescreen', s.prescreen, PRESCREEN_DEFAULTS)
        _positive_int('prescreen.images', p['images'])
        _positive_int('prescreen.steps', p['steps'])
        _positive_int('prescreen.seed', p['seed'], low=0)
        _number('prescreen.lr', p['lr'], 0, None, 'a positive number')
        _number('prescreen.threshold', p['threshold'], 0, 1, 'in (0, 1]')
    if s.early_stop is not None:
        e = s.early_stop = _options('early_stop', s.early_stop, EARLY_STOP_DEFAULTS)
        at = e['at']
        _check(isinstance(at, (list, tuple)) and len(at) >= 1
               and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1
                       for x in at) and list(at) == sorted(set(at)),
               f'search.early_stop.at must be increasing fractions of the training in (0, 1), '
               f'got {at!r}')
        e['at'] = [float(x) for x in at]
        _number('early_stop.quantile', e['quantile'], 0, 1, 'in (0, 1)', high_open=True)
        _positive_int('early_stop.min_trials', e['min_trials'])
    if s.halving is not None:
        h = s.halving = _options('halving', s.halving, HALVING_DEFAULTS)
        _check(s.early_stop is None,
               'search.halving and search.early_stop both stop proxy trainings early; set '
               'one of them to None')
        rungs = h['rungs']
        _check(isinstance(rungs, (list, tuple)) and len(rungs) >= 1
               and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1
                       for x in rungs) and list(rungs) == sorted(set(rungs)),
               f'search.halving.rungs must be increasing fractions of the proxy training in '
               f'(0, 1), got {rungs!r}')
        h['rungs'] = [float(x) for x in rungs]
        _number('halving.eta', h['eta'], 1, None, 'a number above 1')
    _check(isinstance(s.holdout, dict) and set(s.holdout) <= {'num', 'seed'}
           and isinstance(s.holdout.get('num'), int) and s.holdout['num'] >= 1,
           f'search.holdout must be dict(num=<positive int>, seed=<int>), got {s.holdout!r}')
    s.holdout.setdefault('seed', 0)
    if s.init_mu is not None:
        _check(isinstance(s.init_mu, (list, tuple))
               and all(isinstance(x, (int, float)) and 0.0 <= x <= 1.0 for x in s.init_mu),
               f'search.init_mu must be a list of numbers in [0, 1], got {s.init_mu!r}')
        s.init_mu = [float(x) for x in s.init_mu]
    _check(isinstance(s.aux_weight, (int, float)) and s.aux_weight >= 0,
           f'search.aux_weight must be a non-negative number, got {s.aux_weight!r}')
    _check(isinstance(s.ce_weight, (int, float)) and not isinstance(s.ce_weight, bool)
           and math.isfinite(s.ce_weight) and s.ce_weight >= 0,
           f'search.ce_weight must be a non-negative number, got {s.ce_weight!r}')
    s.ce_weight = float(s.ce_weight)
    if s.extra_losses is not None:
        x = s.extra_losses
        _check(isinstance(x, (list, tuple)) and len(x) >= 1
               and all(isinstance(d, dict) and isinstance(d.get('type'), str) and d['type']
                       for d in x),
               f'search.extra_losses must be None or a list of MMSeg loss dicts with a '
               f"'type', got {x!r}")
        for d in x:
            if d['type'] == 'AutoSegLoss':  # a fixed surrogate beside the searched one
                _check(d.get('theta') is not None or d.get('raw_theta') is not None,
                       f'search.extra_losses: an AutoSegLoss there is a fixed surrogate '
                       f'trained beside the searched one and must name its curves '
                       f"(theta=[...] or theta='paper'; the searched loss is the search's "
                       f'own), got {d!r}')
                _check(d.get('loss_name', 'loss_asl') != 'loss_asl',
                       f"search.extra_losses: a fixed AutoSegLoss needs its own loss_name "
                       f"(not 'loss_asl', the searched loss's name in the log), got {d!r}")
            w = d.get('loss_weight', 1.0)
            _check(isinstance(w, (int, float)) and not isinstance(w, bool)
                   and math.isfinite(w) and w >= 0,
                   f'search.extra_losses: loss_weight must be a non-negative number, got '
                   f'{w!r} in {d!r}')
        s.extra_losses = [dict(d) for d in x]
    if s.warm_start is not None:
        w = s.warm_start = _options('warm_start', s.warm_start, WARM_START_DEFAULTS)
        if w['iters'] is not None:
            _positive_int('warm_start.iters', w['iters'])
    _check(s.retrain_config is None or (isinstance(s.retrain_config, str) and s.retrain_config),
           f'search.retrain_config must be a config path, got {s.retrain_config!r}')
    return s
