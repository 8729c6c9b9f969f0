"""What a finished search leaves behind: ``best.json``, a re-training config and plots.

Steps are numbered from 1 wherever a person reads them (the log, the progress line,
``best.json``, the plots); the journal's ``step`` field counts from 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..utils import atomic_write_json, atomic_write_text
from .settings import SearchSettings
from .trial import extra_losses

__all__ = ['SearchInfo', 'write_outputs', 'select_best', 'retrain_config_text']


@dataclass
class SearchInfo:
    """What the outputs of a search need to know about it.

    Attributes:
        name: the search config's name (its file name without ``.py``).
        config_path: the search config.
        work_dir: the search's directory (outputs go there).
        seed: the search seed.
        searcher: ``'ppo'`` or ``'random'``.
        reward_key: the metric the rewards are (the target's name).
        settings: the parsed ``search`` section.
        retrain_base: the config the re-training config inherits.
    """
    name: str
    config_path: str
    work_dir: str
    seed: int
    searcher: str
    reward_key: str
    settings: SearchSettings
    retrain_base: str


def select_best(search: SearchInfo, state) -> Dict:
    """With a finished re-evaluation: the re-evaluated result with the best average
    reward. Else, PPO: the policy mean of the step with the highest mean reward (the
    paper's rule); random search: the single best candidate."""
    steps = []
    for k in sorted(state.steps):
        st = state.steps[k]
        rewards = st.rewards()
        ok = [r for r in rewards if r is not None]
        upd = st.update or {}
        stats = upd.get('stats', {})
        steps.append(dict(step=k + 1, mu=st.mu, rewards=rewards,
                          mean=float(np.mean(ok)) if ok else None,
                          max=float(np.max(ok)) if ok else None,
                          baseline=stats.get('baseline'), rollback=stats.get('rollback'),
                          kl=stats.get('kl'),
                          failed={str(i): t.failures for i, t in st.trials.items()
                                  if t.failures}))
        if st.screened is not None:  # pre-screening: scores, rejected (never trained)
            steps[-1].update(screen_scores=st.screened['scores'],
                             rejected=st.screened['rejected'])
        stopped = {str(i): dict(iter=t.stopped['iter'], score=t.stopped['score'])
                   for i, t in st.trials.items() if t.stopped is not None}
        if stopped:  # early stopping: where and at what score
            steps[-1]['stopped'] = stopped
        if st.decided:  # successive halving: each rung's scores and decision
            steps[-1]['rungs'] = [{k2: st.decided[k][k2] for k2 in
                                   ('iter', 'scores', 'promoted', 'stopped', 'cut')}
                                  for k in sorted(st.decided)]
    scored = [s for s in steps if s['mean'] is not None]
    if not scored:
        raise RuntimeError('no trial of the search produced a reward; see the failures in '
                           'journal.jsonl and the trials\' stdout.log')
    done = getattr(state, 'reeval_done', None)
    if done is not None and done.get('chosen') is not None:
        sc = done['scores'][done['chosen']]
        best_step = sc['step'] + 1
        if done.get('rule') == 'one_se' and done.get('se') is not None:
            top = max(x['mean'] for x in done['scores'] if x['mean'] is not None)
            how = (f'{sc["source"]}: the earliest result within one standard error '
                   f'({done["se"]:.4f}) of the best average reward ({top:.4f}) after '
                   f're-evaluation ({sc["mean"]:.4f} over {len(sc["rewards"])} proxy '
                   f'training(s))')
        else:
            how = (f'{sc["source"]}: the best average reward after re-evaluation '
                   f'({sc["mean"]:.4f} over {len(sc["rewards"])} proxy training(s))')
        return dict(best_step=best_step, raw_theta=[float(x) for x in sc['raw']], selection=how,
                    steps=steps, reevaluation=done['scores'])
    if search.searcher == 'random':
        k, i, r = max(((s['step'], i, r) for s in scored for i, r in enumerate(s['rewards'])
                       if r is not None), key=lambda x: x[2])
        raw = state.steps[k - 1].candidates[i]
        how = f'best single candidate (step {k}, candidate {i}, reward {r:.4f})'
        best_step = k
    else:
        best = max(scored, key=lambda s: s['mean'])
        best_step, raw = best['step'], best['mu']
        how = (f'policy mean of step {best_step}, the step with the highest mean reward '
               f'({best["mean"]:.4f})')
    return dict(best_step=best_step, raw_theta=[float(x) for x in raw], selection=how,
                steps=steps)


def _surrogate(search: SearchInfo, raw: List[float]):
    from ..loss.surrogate import Surrogate
    s = search.settings
    return Surrogate(s.target_metric, raw_theta=raw, parameterization=s.parameterization,
                     num_pieces=s.num_pieces, tol=s.tol, drop_bg=s.drop_bg)


def _loss_text(s, theta: List[float], num_pieces: int, weight: float) -> str:
    """A head's ``loss_decode`` (Python source): the searched loss at ``weight``, replacing
    the base config's loss; with ``search.ce_weight`` or ``search.extra_losses``, the list
    of it and those."""
    nums = ',\n            '.join(', '.join(f'{v:.8g}' for v in theta[i:i + 4])
                                  for i in range(0, len(theta), 4))
    asl = (f"dict(\n        type='AutoSegLoss',\n        target_metric={s.target_metric!r},\n"
           f"        theta=[\n            {nums}],\n"
           f"        parameterization={s.parameterization!r},\n"
           f"        num_pieces={num_pieces},\n        tol={s.tol},\n"
           f"        drop_bg={s.drop_bg},\n        loss_weight={weight}")
    extra = extra_losses(s, weight)
    if not extra:
        return asl + ',\n        _delete_=True)'
    # (a list replaces the base's loss_decode whole: no _delete_)
    return '[\n    ' + asl + ')' + ''.join(
        ',\n    dict(' + ', '.join(f'{k}={v!r}' for k, v in d.items()) + ')'
        for d in extra) + ']'


def retrain_config_text(search: SearchInfo, base: str, theta: List[float], num_pieces: int,
                        best: Dict) -> str:
    """A config inheriting ``base`` with the searched loss in the decode and auxiliary
    heads (weights 1 and ``aux_weight``; with ``search.ce_weight``, cross-entropy beside
    it, as in the proxy trainings)."""
    from mmengine.config import Config
    s = search.settings
    base_cfg = Config.fromfile(base)
    model = base_cfg.get('model', {})
    lines = [
        f'# Re-training config written by the search {search.name} (seed {search.seed}, '
        f'{search.searcher}).',
        f'# Parameters: {best["selection"]}.',
        f'# Target metric: {s.target_metric}.',
        f'_base_ = {os.path.abspath(base)!r}',
        'model = dict(',
        f'    decode_head=dict(loss_decode={_loss_text(s, theta, num_pieces, 1.0)}),',
    ]
    aux = model.get('auxiliary_head')
    if isinstance(aux, dict):
        lines.append(f'    auxiliary_head=dict(loss_decode='
                     f'{_loss_text(s, theta, num_pieces, s.aux_weight)}),')
    elif isinstance(aux, (list, tuple)) and aux:
        lines.append('    auxiliary_head=[')
        for _ in aux:
            lines.append(f'        dict(loss_decode={_loss_text(s, theta, num_pieces, s.aux_weight)}),')
        lines.append('    ],')
    lines.append(')')
    return '\n'.join(lines) + '\n'


def write_outputs(search: SearchInfo, state, logger=None) -> Dict:
    """Write ``best.json``, ``retrain_config.py`` and the PNG plots; return best.json."""
    best = select_best(search, state)
    sur = _surrogate(search, best['raw_theta'])
    theta = sur.coordinates()
    s = search.settings
    out = dict(
        target_metric=s.target_metric, reward_key=search.reward_key, searcher=search.searcher,
        seed=search.seed, config=search.config_path, best_step=best['best_step'],
        selection=best['selection'], raw_theta=best['raw_theta'], theta=theta,
        parameterization=sur.parameterization, num_pieces=sur.num_pieces, tol=s.tol,
        drop_bg=s.drop_bg, layout=sur.layout(), curves=sur.describe_curves(),
        steps=best['steps'], reevaluation=best.get('reevaluation'),
        warm_start=None if state.warm_start is None else {
            k: state.warm_start[k] for k in ('checkpoint', 'sha256', 'iters', 'reward')},
        retrain_config=os.path.join(search.work_dir, 'retrain_config.py'),
        retrain_base=os.path.abspath(search.retrain_base))
    atomic_write_json(os.path.join(search.work_dir, 'best.json'), out)
    atomic_write_text(os.path.join(search.work_dir, 'retrain_config.py'),
                      retrain_config_text(search, search.retrain_base, theta, sur.num_pieces,
                                          best))
    try:
        plot_search(search, state, best, sur)
    except Exception as e:  # plots are a convenience: never lose the results for them
        if logger is not None:
            logger.warning(f'could not draw the plots: {e}')
    return out


def _published_curves(search: SearchInfo, sur):
    """The published curves of the target metric (``theta='paper'``), when it has them and
    they are as many as the searched ones; else None."""
    from ..loss.presets import PAPER_PRESETS
    from ..loss.surrogate import Surrogate
    key = {k.lower(): k for k in PAPER_PRESETS}.get(search.settings.target_metric.lower())
    if key is None:
        return None
    paper = Surrogate(key, theta='paper').curves
    return paper if len(paper) == len(sur.curves) else None


def plot_search(search: SearchInfo, state, best: Dict, sur) -> None:
    """``rewards.png`` (mean, max, baseline per step), ``mu.png`` (policy mean per
    parameter over steps) and ``curves.png`` (searched curves next to the identity and,
    for a built-in target, the published ones). Steps are numbered from 1."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.ticker import MaxNLocator
    steps = best['steps']
    xs = [s['step'] for s in steps]
    subtitle = f'{search.name} (seed {search.seed}, {search.searcher})'

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, style in (('mean', 'o-'), ('max', 's--'), ('baseline', 'x:')):
        ys = [np.nan if s[key] is None else s[key] for s in steps]
        ax.plot(xs, ys, style, label=key)
    for s in steps:
        ok = [r for r in s['rewards'] if r is not None]
        ax.scatter([s['step']] * len(ok), ok, s=8, color='gray', alpha=0.5)
        if s.get('rollback'):
            ax.annotate('rolled back', (s['step'], s['rewards'][0] or 0), fontsize=6,
                        xytext=(3, -10), textcoords='offset points')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('step')
    ax.set_ylabel(f'reward ({search.reward_key} on the hold-out)')
    ax.set_title(f'rewards per step\n{subtitle}', fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(search.work_dir, 'rewards.png'), dpi=100)
    plt.close(fig)

    mus = [state.steps[k].mu for k in sorted(state.steps)]
    last = [st.update['mu'] for k, st in sorted(state.steps.items()) if st.update]
    if last:
        mus.append(last[-1])
    mus = np.asarray(mus)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for j in range(mus.shape[1]):
        ax.plot(range(1, len(mus) + 1), mus[:, j], label=f'theta[{j}]' if mus.shape[1] <= 12
                else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('step (the policy mean that sampled it; last: after the last update)',
                  fontsize=8)
    ax.set_ylabel('raw parameter (mu)')
    ax.set_ylim(0, 1)
    ax.set_title(f'policy mean per step\n{subtitle}', fontsize=8)
    if mus.shape[1] <= 12:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(search.work_dir, 'mu.png'), dpi=100)
    plt.close(fig)

    x = torch.linspace(0, 1, 201, dtype=torch.float64)
    n = len(sur.curves)
    published = _published_curves(search, sur)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for i, (c, ax) in enumerate(zip(sur.curves, axes[0])):
        ax.plot(x.numpy(), c.reference(x).numpy(), label='searched')
        if published is not None:
            ax.plot(x.numpy(), published[i].reference(x).numpy(), '--', label='published')
        ax.plot([0, 1], [0, 1], 'k:', label='identity')
        slot = sur.compiled.slots[i].describe() if i < len(sur.compiled.slots) else ''
        ax.set_title(slot, fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    fig.suptitle(f'searched curves (best step {best["best_step"]}) - {subtitle}', fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(search.work_dir, 'curves.png'), dpi=100)
    plt.close(fig)
