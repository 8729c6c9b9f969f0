#!/usr/bin/env python
"""The cheaper search, measured at equal budget.

    python tools/analysis/search_compare.py [--seeds 1 2 3] [--steps 3] [--samples 4]
        [--false-sample 6] [--iters N] [--run-dir work_dirs/benchmark_search/compare]

(also ``python tools/analysis/benchmark_search.py --compare ...``, which runs this).

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
candidates are trained anyway (the same proxy training as the search's trials, to its
end) and counted as false rejections when their reward beats the median full-length
reward of their step.

Every search is a real ``tools/search.py`` run in ``RUN/<variant>/seed<S>`` and every
stage resumes (run the same command again). Writes ``RUN/compare.md`` and
``RUN/compare.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from asl.search.analysis import SearchRun, load_search  # noqa: E402
from asl.search.retrain import DEMO_SEARCH_CONFIG, run_logged  # noqa: E402
from asl.utils import read_json_or_none, train_entry  # noqa: E402

DEFAULT_RUN_DIR = 'work_dirs/benchmark_search/compare'

VARIANTS = {
    'ppo': ['search.prescreen=None'],
    'prescreen': ['search.prescreen.threshold=0.5'],
    'prescreen+stop': ['search.prescreen.threshold=0.5', 'search.early_stop.min_trials=3'],
}


def run_search(config: str, work: str, seed: int, options: List[str], log) -> int:
    if os.path.exists(os.path.join(work, 'best.json')):
        print(f'[compare] {work}: done already', file=log, flush=True)
        return 0
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), config, '--work-dir', work,
           '--seed', str(seed), '--cfg-options', *options]
    print('[compare] $ ' + ' '.join(cmd), file=log, flush=True)
    return run_logged(cmd, None, cwd=ROOT)[0]


def analyse(work: str) -> Dict:
    """Budget and rewards of one search (not its re-evaluation), from its journal and
    its trials' results, in the order the trials ended."""
    run = load_search(work)
    views = {(t.step, t.index): t for t in run.trials()}
    spent, curve, full = 0, [], []
    for e in run.events:
        kind = e['event']
        if e.get('phase') == 'reeval':
            continue
        if kind == 'trial_finished':
            res = views[(e['step'], e['index'])].result() or {}
            spent += int(res.get('max_iters') or 0)
            full.append((e['step'], e['reward']))
            curve.append((spent, max(r for _, r in full)))
        elif kind == 'trial_stopped':
            spent += int(e['iter'])
            curve.append((spent, max((r for _, r in full), default=None)))
    rejected = [(k, i) for k, rec in sorted(run.state.steps.items())
                for i in rec.indices('rejected')]
    stopped = sum(len(rec.indices('stopped')) for rec in run.state.steps.values())
    rewards = [r for _, r in full]
    return dict(work=run.work_dir, iterations=spent, best=max(rewards) if rewards else None,
                mean=statistics.mean(rewards) if rewards else None, curve=curve,
                rejected=rejected, stopped=stopped,
                step_medians={k: statistics.median([r for s, r in full if s == k])
                              for k in {s for s, _ in full}})


def best_within(curve, budget: int) -> Optional[float]:
    """The best full-length reward reached with at most ``budget`` iterations spent."""
    ok = [b for spent, b in curve if spent <= budget and b is not None]
    return ok[-1] if ok else None


def train_rejected(run: SearchRun, step: int, index: int, seed: int, log) -> Optional[float]:
    """Train a rejected candidate of the search ``run`` as the search would have (its
    trials' proxy training with the candidate's parameters, to the end: no early
    stopping); its reward (resumes: trained once, in ``WORK/false_rejection``)."""
    from asl.search.trial import set_trial_loss
    out = os.path.join(run.work_dir, 'false_rejection', f'step{step:02d}-cand{index:02d}')
    res = read_json_or_none(os.path.join(out, 'result.json'))
    if res is None:
        cand = next(t for t in run.trials() if (t.step, t.index) == (step, index))
        cfg = run.trial_config()
        set_trial_loss(cfg.model, run.settings, cand.raw)
        probes = ('probe_iters', 'probe_thresholds', 'probe_key')  # no early stopping
        cfg.custom_hooks = [{k: v for k, v in dict(h).items() if k not in probes}
                            if h.get('type') == 'ASLTrialHook' else h
                            for h in cfg.get('custom_hooks', [])]
        os.makedirs(out, exist_ok=True)
        cfg.dump(os.path.join(out, 'config.py'))
        cmd = [sys.executable, *train_entry(), os.path.join(out, 'config.py'), '--work-dir',
               out, '--seed', str(seed)]
        print('[compare] false-rejection check: $ ' + ' '.join(cmd), file=log, flush=True)
        run_logged(cmd, os.path.join(out, 'stdout.log'), cwd=ROOT)
        res = read_json_or_none(os.path.join(out, 'result.json'))
    if not res or run.reward_key not in (res.get('metrics') or {}):
        return None
    return res['metrics'][run.reward_key] / 100.0


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
             'equal iterations | rejected | stopped |',
             '|---|---|---|---|---|---|---|---|']
    for v in VARIANTS:
        rs = [results[v][s] for s in seeds]
        it = _mean([r['iterations'] for r in rs])
        lines.append(f'| {v} | {it:.0f} | {it / ppo_iters:.2f}x | '
                     f'{_f(_mean([r["best"] for r in rs]))} | '
                     f'{_f(_mean([r["mean"] for r in rs]))} | '
                     f'{_f(_mean([r["best_within"] for r in rs]))} | '
                     f'{sum(len(r["rejected"]) for r in rs)} | {sum(r["stopped"] for r in rs)} |')
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
                reward = train_rejected(load_search(r['work']), step, index, seed, log)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', default=DEMO_SEARCH_CONFIG,
                   help='the search config (default: the demo\'s)')
    p.add_argument('--run-dir', default=DEFAULT_RUN_DIR,
                   help=f'where the searches run (default: {DEFAULT_RUN_DIR})')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--steps', type=int, default=3, help='search.num_steps (default: 3)')
    p.add_argument('--samples', type=int, default=4, help='search.num_samples (default: 4)')
    p.add_argument('--iters', type=int, help='proxy training iterations (default: the config\'s)')
    p.add_argument('--false-sample', type=int, default=6,
                   help='rejected candidates trained anyway to count false rejections')
    args = p.parse_args(argv)
    os.makedirs(args.run_dir, exist_ok=True)
    print(compare(args.config, args.run_dir, args.seeds, args.steps, args.samples,
                  args.false_sample, args.iters))
    return 0


if __name__ == '__main__':
    sys.exit(main())
