"""The cheaper search, measured at equal budget (``tools/benchmark_search.py --compare``).

Runs the demo search (``--steps`` x ``--samples`` proxy trainings, no re-evaluation, so
that only the search itself is compared) for each seed with:

* ``ppo``: plain PPO (the demo config without its pre-screening);
* ``prescreen``: with pre-screening (``search.prescreen``, its defaults);
* ``prescreen+stop``: with pre-screening and early stopping (``search.early_stop``).

and prints, per variant (means over the seeds): proxy-training iterations spent (a
finished trial counts its iterations, a stopped one the iterations it ran, a rejected one
none), the best and the mean full-length hold-out reward, the best reward reached within
the budget of the cheapest variant of the same seed (equal iterations spent), candidates
rejected and stopped, and the false-rejection rate: up to ``--false-sample`` rejected
candidates are trained anyway (the same proxy training as the search's trials) and
counted as false rejections when their reward beats the median full-length reward of
their step.

Every search is a real ``tools/search.py`` run in ``RUN/<variant>/seed<S>`` and every
stage resumes (run the same command again). Writes ``RUN/compare.md`` and
``RUN/compare.json``.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    'ppo': ['search.prescreen=None'],
    'prescreen': ['search.prescreen.threshold=0.5'],
    'prescreen+stop': ['search.prescreen.threshold=0.5', 'search.early_stop.min_trials=3'],
}


def _journal(work: str) -> List[Dict]:
    path = os.path.join(work, 'journal.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith('\n')]


def _read(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_search(config: str, work: str, seed: int, options: List[str], log) -> int:
    if os.path.exists(os.path.join(work, 'best.json')):
        print(f'[compare] {work}: done already', file=log, flush=True)
        return 0
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), config, '--work-dir', work,
           '--seed', str(seed), '--cfg-options', *options]
    print('[compare] $ ' + ' '.join(cmd), file=log, flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def analyse(work: str) -> Dict:
    """Budget and rewards of one finished search, from its journal and trial files."""
    events = _journal(work)
    spent, curve, full = 0, [], []
    rejected, stopped, reused = [], 0, 0
    for e in events:
        kind = e['event']
        if kind == 'trial_finished' and e.get('phase') != 'reeval':
            res = _read(os.path.join(work, 'trials', f'step{e["step"]:02d}',
                                     f'cand{e["index"]:02d}', f'attempt{e["attempt"]}',
                                     'result.json')) or {}
            spent += int(res.get('max_iters') or 0)
            full.append((e['step'], e['reward']))
            curve.append((spent, max(r for _, r in full)))
        elif kind == 'trial_stopped':
            spent += int(e['iter'])
            stopped += 1
            curve.append((spent, max((r for _, r in full), default=None)))
        elif kind == 'step_screened':
            rejected += [(e['step'], i) for i in e['rejected']]
            reused += len(e.get('reused') or {})
    rewards = [r for _, r in full]
    return dict(work=work, iterations=spent, best=max(rewards) if rewards else None,
                mean=statistics.mean(rewards) if rewards else None, curve=curve,
                rejected=rejected, stopped=stopped, reused=reused,
                step_medians={k: statistics.median([r for s, r in full if s == k])
                              for k in {s for s, _ in full}})


def best_within(curve, budget: int) -> Optional[float]:
    """The best full-length reward reached with at most ``budget`` iterations spent."""
    ok = [b for spent, b in curve if spent <= budget and b is not None]
    return ok[-1] if ok else None


def train_rejected(work: str, step: int, index: int, seed: int, log) -> Optional[float]:
    """Train a rejected candidate as the search would have (a trial of its step, with its
    parameters); its reward (resumes: trained once)."""
    from mmengine.config import Config
    from asl.search.settings import parse_search_section
    from asl.search.trial import set_trial_loss
    out = os.path.join(work, 'false_rejection', f'step{step:02d}-cand{index:02d}')
    res = _read(os.path.join(out, 'result.json'))
    if res is None:
        events = _journal(work)
        start = next(e for e in events if e['event'] == 'search_started')
        settings = parse_search_section(start['fingerprint']['settings'])
        cand = next(e for e in events if e['event'] == 'step_started'
                    and e['step'] == step)['candidates'][index]
        src = next(e for e in events if e['event'] == 'trial_launched' and e['step'] == step)
        cfg = Config.fromfile(os.path.join(src['work_dir'], 'config.py'))
        set_trial_loss(cfg.model, settings, cand)
        os.makedirs(out, exist_ok=True)
        cfg.dump(os.path.join(out, 'config.py'))
        cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
               os.path.join(out, 'config.py'), '--work-dir', out, '--seed', str(seed)]
        print('[compare] false-rejection check: $ ' + ' '.join(cmd), file=log, flush=True)
        with open(os.path.join(out, 'stdout.log'), 'w') as f:
            subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        res = _read(os.path.join(out, 'result.json'))
    if not res:
        return None
    key = next(iter(res['metrics']))
    return res['metrics'][key] / 100.0


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def _f(x, fmt='.4f'):
    return 'n/a' if x is None else format(x, fmt)


def render(results: Dict[str, Dict[int, Dict]], seeds: List[int], checks: List[Dict],
           steps: int, samples: int) -> str:
    """The equal-budget table (``compare.md``) from the analysed searches."""
    ppo_iters = _mean([results['ppo'][s]['iterations'] for s in seeds])
    lines = [f'Demo search, {steps} steps x {samples} candidates, seeds '
             f'{", ".join(map(str, seeds))} (means over the seeds; rewards are hold-out mIoU '
             f'as fractions).', '',
             '| variant | iterations spent | vs ppo | best reward | mean reward | best at '
             'equal iterations | rejected | stopped | reused |',
             '|---|---|---|---|---|---|---|---|---|']
    for v in VARIANTS:
        rs = [results[v][s] for s in seeds]
        it = _mean([r['iterations'] for r in rs])
        lines.append(f'| {v} | {it:.0f} | {it / ppo_iters:.2f}x | '
                     f'{_f(_mean([r["best"] for r in rs]))} | '
                     f'{_f(_mean([r["mean"] for r in rs]))} | '
                     f'{_f(_mean([r["best_within"] for r in rs]))} | '
                     f'{sum(len(r["rejected"]) for r in rs)} | {sum(r["stopped"] for r in rs)} | '
                     f'{sum(r["reused"] for r in rs)} |')
    total_rej = sum(len(results[v][s]['rejected']) for v in VARIANTS for s in seeds)
    done = [c for c in checks if c['reward'] is not None]
    lines += ['', f'False rejections: {sum(c["false"] for c in done)} of {len(done)} rejected '
                  f'candidates trained anyway beat their step\'s median ({total_rej} rejected '
                  f'in all).' if total_rej else 'False rejections: no candidate was rejected.']
    return '\n'.join(lines) + '\n'


def compare(config: str, run_dir: str, seeds: List[int], steps: int, samples: int,
            false_sample: int, iters: Optional[int] = None, log=sys.stdout) -> str:
    base = [f'search.num_steps={steps}', f'search.num_samples={samples}',
            'search.reevaluate=None']
    if iters:
        base += [f'train_cfg.max_iters={iters}', f'param_scheduler.0.end={iters}']
    results: Dict[str, Dict[int, Dict]] = {v: {} for v in VARIANTS}
    for seed in seeds:
        for name, opts in VARIANTS.items():
            work = os.path.abspath(os.path.join(run_dir, name, f'seed{seed}'))
            if run_search(config, work, seed, base + opts, log) != 0:
                raise SystemExit(f'the {name} search of seed {seed} failed; see {work}')
            results[name][seed] = analyse(work)
    for seed in seeds:  # equal budget: the cheapest variant of the seed
        budget = min(results[v][seed]['iterations'] for v in VARIANTS)
        for v in VARIANTS:
            results[v][seed]['budget'] = budget
            results[v][seed]['best_within'] = best_within(results[v][seed]['curve'], budget)
    # false rejections, over every variant that rejects
    checks = []
    for v in VARIANTS:
        for seed in seeds:
            r = results[v][seed]
            for step, index in r['rejected']:
                if len(checks) >= false_sample:
                    break
                reward = train_rejected(r['work'], step, index, seed, log)
                median = r['step_medians'].get(step)
                checks.append(dict(variant=v, seed=seed, step=step, index=index,
                                   reward=reward, step_median=median,
                                   false=reward is not None and median is not None
                                   and reward > median))
    text = render(results, seeds, checks, steps, samples)
    with open(os.path.join(run_dir, 'compare.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(run_dir, 'compare.json'), 'w') as f:
        json.dump(dict(results={v: {str(s): {k: x for k, x in r.items() if k != 'curve'}
                                    for s, r in d.items()} for v, d in results.items()},
                       false_rejection_checks=checks), f, indent=1)
    return text
