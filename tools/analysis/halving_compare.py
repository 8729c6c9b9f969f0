#!/usr/bin/env python
"""Successive halving against plain PPO at the paper's shape of a step (M >= 16).

    python tools/analysis/halving_compare.py [--seeds 1 2 3] [--steps 3] [--samples 16]
        [--iters 150] [--rungs 0.3333] [--eta 4] [--workers 2] [--no-retrain]
        [--retrain-steps]
        [--search-options KEY=VALUE ...] [--run-dir work_dirs/benchmark_search/halving]
        [--name halving]

(also ``python tools/analysis/benchmark_search.py --halving ...``, which runs this).

For each seed, two real ``tools/search.py`` runs of the demo search (``--steps`` x
``--samples`` proxy trainings of ``--iters`` iterations, no re-evaluation, no
pre-screening, the same seed):

* ``ppo``: plain PPO. Its trials also score the hold-out at the rungs' iterations
  (``search.early_stop`` with a rule that never applies: the probes only observe, the
  training is the same), so the rank correlation between each rung's score and the
  full-length reward is measured where every candidate trains in full;
* ``halving``: with ``search.halving=dict(rungs=..., eta=...)``.

Then (unless ``--no-retrain``) the demo model is re-trained (1200 iterations, the seed)
with each variant's chosen loss and with cross-entropy, and evaluated on the demo's val
split. It prints and writes ``RUN/halving.md`` (and ``halving.json``): per variant the
proxy iterations spent (a leg counts the iterations it trained; a failed attempt counts
its whole leg), the best and mean full-length reward, the re-trained mIoU against
cross-entropy (means over seeds, and per seed); the rank correlations per rung; the
projection for the paper's search (M=32, T=12, 1000 iterations) from the promotion counts
measured here. With ``--retrain-steps`` every step's policy mean of both variants is
re-trained too, and the table says which step each choice rule (the search's: the step
with the highest mean full-length reward; the mean of the update's rewards; the policy
mean's own reward; the mean first-rung score; the last step) would have picked and what
it re-trained to: whether a variant's result comes from its search or from its choice.
Every stage resumes (run the same command again).
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

from asl.search.analysis import load_search, spearman, write_retrain_config  # noqa: E402
from asl.search.halving import iterations_fraction, planned_counts, rung_iters  # noqa: E402
from asl.search.retrain import DEMO_SEARCH_CONFIG, demo_retrain_config, run_logged  # noqa: E402
from asl.search.settings import HALVING_DEFAULTS  # noqa: E402
from asl.search.state import update_rewards  # noqa: E402

DEFAULT_RUN_DIR = 'work_dirs/benchmark_search/halving'
#: the paper's search: M, T, proxy iterations
PAPER = dict(m=32, t=12, iters=1000)


def run_search(work: str, seed: int, options: List[str], workers: int, log) -> None:
    if os.path.exists(os.path.join(work, 'best.json')):
        print(f'[halving] {work}: done already', file=log, flush=True)
        return
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), DEMO_SEARCH_CONFIG,
           '--work-dir', work, '--seed', str(seed), '--workers', str(workers),
           '--threads-per-trial', '1', '--cfg-options', *options]
    print('[halving] $ ' + ' '.join(cmd), file=log, flush=True)
    code = run_logged(cmd, os.path.join(os.path.dirname(work), f'seed{seed}.log'), cwd=ROOT)[0]
    if code != 0:
        raise SystemExit(f'the search in {work} failed (exit status {code}); see its '
                         f'search.log; run the same command again to resume')


def analyse(work: str, rung_its: List[int]) -> Dict:
    """Iterations spent, rewards, per-leg counts and (plain runs) rung scores of a search."""
    run = load_search(work)
    max_iters = None
    spent, failed, legs = 0, 0, {}
    starts = [0] + list(rung_its)
    for e in run.events:
        if e.get('phase') == 'reeval':
            continue
        kind = e['event']
        if kind == 'trial_launched':
            legs.setdefault(e['step'], {}).setdefault(e.get('leg', 0), set()).add(e['index'])
        elif kind == 'trial_paused':
            spent += int(e['iter']) - starts[e['rung']]
        elif kind in ('trial_finished', 'trial_failed'):
            trial = next(t for t in run.trials() if (t.step, t.index) == (e['step'], e['index']))
            if max_iters is None:
                max_iters = int(run.trial_config().train_cfg.max_iters)
            leg = (trial.launch or {}).get('leg', 0)
            spent += max_iters - (starts[leg] if leg else 0)
            failed += kind == 'trial_failed'
    full, pairs = [], {it: [] for it in rung_its}
    for t in run.trials():
        if t.reward is None:
            continue
        full.append(t.reward)
        for p in t.record.probes:
            if p['iter'] in pairs:
                pairs[p['iter']].append((p['score'], t.reward))
    counts = [[len(legs.get(k, {}).get(g, ())) for g in range(len(rung_its) + 1)]
              for k in sorted(legs)]
    steps = [step_summary(k, run.state.steps[k], rung_its[0] if rung_its else None)
             for k in sorted(run.state.steps)]
    best = run.best()
    return dict(work=run.work_dir, iterations=spent, failed_attempts=failed,
                best=max(full) if full else None,
                mean=statistics.mean(full) if full else None, full=len(full),
                leg_counts=counts, rung_pairs={str(k): v for k, v in pairs.items()},
                retrain_config=(best or {}).get('retrain_config'),
                selection=(best or {}).get('selection'),
                best_step=(best or {}).get('best_step'), steps=steps)


def step_summary(k: int, rec, first_rung: Optional[int]) -> Dict:
    """What each choice rule of :func:`rule_picks` reads of one step: its policy mean
    (``mu``, raw), the mean of its trials' own full-length rewards (the search's rule),
    the mean of the rewards its update used (a stopped candidate's from its rung score),
    the policy mean's own reward, and the mean hold-out score of every candidate at the
    first rung (halving: the rung's score; plain runs: the probe at that iteration)."""
    own = [r for r in rec.rewards() if r is not None]
    upd = [r for r in update_rewards(rec) if r is not None]
    first = []
    if first_rung is not None:
        for t in rec.trials.values():
            if 0 in t.rungs:
                first.append(t.rungs[0]['score'])
            else:
                first += [p['score'] for p in t.probes if p['iter'] == first_rung]
    return dict(step=k + 1, mu=[float(x) for x in rec.mu],
                mean_full=_mean(own), mean_update=_mean(upd),
                mu_reward=rec.trial(0).reward, first_rung_mean=_mean(first),
                first_rung_n=len(first))


#: the step-choice rules compared by ``--retrain-steps``: label -> the step's key
#: (the highest wins) or a special rule
RULES = {
    'the search\'s rule (mean full-length reward)': 'mean_full',
    'mean of the update\'s rewards': 'mean_update',
    'the policy mean\'s own reward': 'mu_reward',
    'mean first-rung score': 'first_rung_mean',
    'last step': 'last',
}


def rule_picks(steps: List[Dict]) -> Dict[str, Optional[int]]:
    """The step each rule of :data:`RULES` picks (first on ties; None: nothing to read)."""
    out = {}
    for label, key in RULES.items():
        if key == 'last':
            out[label] = steps[-1]['step'] if steps else None
            continue
        scored = [s for s in steps if s.get(key) is not None]
        out[label] = max(scored, key=lambda s: s[key])['step'] if scored else None
    return out


def retrain(config: str, work: str, seed: int, log) -> Optional[float]:
    """The demo re-training (1200 iterations) of ``config``, evaluated on val: mIoU."""
    from asl.search.retrain import run_training
    res = run_training(config, work, seed)
    if not res.ok:
        print(f'[halving] re-training in {work} failed: {res.reason}', file=log, flush=True)
        return None
    return float(res.metrics['mIoU'])


def retrain_steps(work: str, r: Dict, seed: int, log) -> None:
    """Re-train the policy mean of every step of the search in ``work`` (its chosen step
    has been: its result is reused), into ``work/stepK``; the mIoU goes to the step's
    summary as ``retrained``."""
    run = None
    for st in r['steps']:
        if st['step'] == r.get('best_step') and r.get('retrained') is not None:
            st['retrained'] = r['retrained']
            continue
        out = os.path.join(work, f'step{st["step"]}')
        os.makedirs(out, exist_ok=True)
        run = run or load_search(work)
        config = write_retrain_config(run, st['mu'], os.path.join(out, 'retrain_config.py'))
        st['retrained'] = retrain(config, os.path.join(out, 'retrain'), seed, log)


def render_steps(res: Dict, seeds: List[int], variants: List[str]) -> List[str]:
    """The per-step table and what each step-choice rule would have re-trained."""
    lines = ['', 'Every step\'s policy mean re-trained (`--retrain-steps`; mean full-length '
             'reward / mean of the update\'s rewards / the mean\'s own reward / mean '
             'first-rung score -> re-trained mIoU):', '',
             '| variant | seed | step | mean full | mean update | own | first rung | '
             're-trained |', '|---|---:|---:|---:|---:|---:|---:|---:|']
    for v in variants:
        for s in seeds:
            for st in res[v][s]['steps']:
                lines.append(f'| {v} | {s} | {st["step"]} | {_f(st["mean_full"])} | '
                             f'{_f(st["mean_update"])} | {_f(st["mu_reward"])} | '
                             f'{_f(st["first_rung_mean"])} | {_f(st.get("retrained"), ".2f")} |')
    lines += ['', 'Re-trained mIoU of the step each rule picks (mean over the seeds; per seed):',
              '', '| rule | ' + ' | '.join(variants) + ' |',
              '|---|' + '---:|' * len(variants)]
    for label in list(RULES) + ['best re-trained (hindsight)']:
        cells = []
        for v in variants:
            vals = []
            for s in seeds:
                steps = res[v][s]['steps']
                by_step = {st['step']: st.get('retrained') for st in steps}
                if label in RULES:
                    vals.append(by_step.get(rule_picks(steps)[label]))
                else:
                    got = [x for x in by_step.values() if x is not None]
                    vals.append(max(got) if got else None)
            cells.append(f'{_f(_mean(vals), ".2f")} ('
                         + ', '.join(_f(x, '.2f') for x in vals) + ')')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return lines


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def _sd(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def _f(x, fmt='.4f'):
    return 'n/a' if x is None else format(x, fmt)


def render(res: Dict, seeds: List[int], args, rung_its: List[int]) -> str:
    ppo_it = _mean([res['ppo'][s]['iterations'] for s in seeds])
    lines = [f'Demo search, {args.steps} steps x {args.samples} candidates, {args.iters}-'
             f'iteration proxies, halving rungs {args.rungs} (iterations {rung_its}), eta '
             f'{args.eta:g}; seeds {", ".join(map(str, seeds))}. Means over the seeds '
             f'(rewards: hold-out mIoU as fractions; re-trained: demo val mIoU, 1200 '
             f'iterations).', '',
             '| variant | proxy iterations | vs ppo | best reward | mean full-length reward | '
             're-trained mIoU (sd) | cross-entropy | chosen - CE |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for label, v in (('ppo', 'ppo'), (args.name, 'halving')):
        rs = [res[v][s] for s in seeds]
        it = _mean([r['iterations'] for r in rs])
        mi = [r.get('retrained') for r in rs]
        ce = [res['ce'].get(s) for s in seeds]
        diff = [a - b for a, b in zip(mi, ce) if a is not None and b is not None]
        lines.append(f'| {label} | {it:.0f} | {it / ppo_it:.2f}x | '
                     f'{_f(_mean([r["best"] for r in rs]))} | '
                     f'{_f(_mean([r["mean"] for r in rs]))} | {_f(_mean(mi), ".2f")}'
                     + (f' ({_sd(mi):.2f})' if _sd(mi) is not None else '')
                     + f' | {_f(_mean(ce), ".2f")} | {_f(_mean(diff), "+.2f")} |')
    paired = [res['halving'][s].get('retrained') - res['ppo'][s].get('retrained')
              for s in seeds if res['halving'][s].get('retrained') is not None
              and res['ppo'][s].get('retrained') is not None]
    if len(paired) > 1:
        sd = _sd(paired)
        lines += ['', f'Re-trained mIoU, {args.name} - ppo on the same seed: '
                      f'{_mean(paired):+.2f} (sd {sd:.2f}, standard error '
                      f'{sd / len(paired) ** 0.5:.2f}, {len(paired)} seeds; per seed '
                      + ', '.join(f'{d:+.2f}' for d in paired) + ').']
    lines += ['', 'Per seed (re-trained mIoU: ppo / halving / cross-entropy; proxy iterations: '
              'ppo / halving):', '']
    for s in seeds:
        p, h = res['ppo'][s], res['halving'][s]
        lines.append(f'- seed {s}: {_f(p.get("retrained"), ".2f")} / '
                     f'{_f(h.get("retrained"), ".2f")} / {_f(res["ce"].get(s), ".2f")}; '
                     f'{p["iterations"]} / {h["iterations"]}; halving legs per step '
                     f'{h["leg_counts"]}; chosen: ppo {p["selection"]}, halving '
                     f'{h["selection"]}')
    lines += ['', 'Rank correlation (Spearman) of each rung\'s hold-out score with the '
              'full-length reward, on the plain runs (every candidate trained in full):', '']
    for it in rung_its:
        per_seed = [spearman(*zip(*res['ppo'][s]['rung_pairs'][str(it)]))
                    if len(res['ppo'][s]['rung_pairs'][str(it)]) > 2 else None for s in seeds]
        lines.append(f'- iteration {it} ({it / args.iters:.0%}): '
                     + ', '.join(f'seed {s} {_f(r, ".2f")}' for s, r in zip(seeds, per_seed))
                     + f'; mean {_f(_mean(per_seed), ".2f")}')
    # projection: the paper's M with the survival rates measured here
    counts = [c for s in seeds for c in res['halving'][s]['leg_counts']]
    rates = [_mean([c[k + 1] / c[k] for c in counts if c[k]]) for k in range(len(rung_its))]
    proj = [PAPER['m']]
    for r in rates:
        proj.append(max(1, round(proj[-1] * (r or 0))))
    planned = planned_counts(PAPER['m'], len(rung_its), args.eta)
    frac_m = iterations_fraction(proj, args.rungs, PAPER['m'])
    frac_p = iterations_fraction(planned, args.rungs, PAPER['m'])
    lines += ['', f'Projection for the paper\'s search (M={PAPER["m"]}, T={PAPER["t"]}, '
              f'{PAPER["iters"]} iterations): measured survival per rung '
              f'{[round(r, 3) for r in rates if r is not None]} -> candidates per leg {proj}: '
              f'{frac_m:.1%} of the plain search\'s proxy iterations '
              f'({frac_m * PAPER["m"] * PAPER["t"] * PAPER["iters"]:.0f} of '
              f'{PAPER["m"] * PAPER["t"] * PAPER["iters"]}); by the rule alone (no failure) '
              f'{planned}: {frac_p:.1%}.']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--run-dir', default=DEFAULT_RUN_DIR)
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--samples', type=int, default=16)
    p.add_argument('--iters', type=int, default=150)
    p.add_argument('--rungs', type=float, nargs='+', default=list(HALVING_DEFAULTS['rungs']),
                   help='fractions of the proxy (default: search.halving\'s, one rung at 1/3)')
    p.add_argument('--eta', type=float, default=float(HALVING_DEFAULTS['eta']),
                   help='default: search.halving\'s (4)')
    p.add_argument('--workers', type=int, default=2, help='trials at once (1 thread each)')
    p.add_argument('--no-retrain', dest='retrain', action='store_false')
    p.add_argument('--retrain-steps', action='store_true',
                   help='also re-train every step\'s policy mean of both variants, and '
                        'compare the rules that choose a step (the choice, not the search)')
    p.add_argument('--name', default='halving',
                   help='the halving runs\' folder in RUN_DIR (another name compares other '
                        'rungs with the same plain runs, which are reused)')
    p.add_argument('--search-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='more --cfg-options for both searches (e.g. the proxy optimizer)')
    args = p.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    log = sys.stdout
    rung_its = rung_iters(args.iters, args.rungs)
    base = [f'search.num_steps={args.steps}', f'search.num_samples={args.samples}',
            'search.reevaluate=None', 'search.prescreen=None',
            f'train_cfg.max_iters={args.iters}', f'param_scheduler.0.end={args.iters}',
            *args.search_options]
    rungs = '[' + ','.join(f'{r:g}' for r in args.rungs) + ']'
    variants = {
        'ppo': [f'search.early_stop.at={rungs}', 'search.early_stop.min_trials=1000000000'],
        args.name: [f'search.halving.rungs={rungs}', f'search.halving.eta={args.eta:g}'],
    }
    res: Dict = {v: {} for v in variants}
    res['ce'] = {}
    for seed in args.seeds:
        for v, opts in variants.items():
            work = os.path.join(run_dir, v, f'seed{seed}')
            run_search(work, seed, base + opts, args.workers, log)
            res[v][seed] = analyse(work, rung_its)
    if args.retrain:
        for seed in args.seeds:
            for v in variants:
                r = res[v][seed]
                r['retrained'] = retrain(r['retrain_config'], os.path.join(
                    run_dir, v, f'seed{seed}', 'retrain'), seed, log)
            res['ce'][seed] = retrain(demo_retrain_config('ce'),
                                      os.path.join(run_dir, 'ce', f'seed{seed}'), seed, log)
        if args.retrain_steps:
            for seed in args.seeds:
                for v in variants:
                    retrain_steps(os.path.join(run_dir, v, f'seed{seed}'), res[v][seed],
                                  seed, log)
    res['halving'] = res[args.name]
    text = render(res, args.seeds, args, rung_its)
    if args.retrain and args.retrain_steps:
        text += '\n'.join(render_steps(res, args.seeds, list(variants))) + '\n'
    with open(os.path.join(run_dir, f'{args.name}.md'), 'w') as f:
        f.write(text)
    with open(os.path.join(run_dir, f'{args.name}.json'), 'w') as f:
        json.dump(dict(args=vars(args), results={k: {str(s): r for s, r in d.items()}
                                                 for k, d in res.items()
                                                 if k != 'halving' or args.name == k}),
                  f, indent=1)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
