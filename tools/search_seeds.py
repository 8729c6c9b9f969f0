#!/usr/bin/env python
"""Does the search hold? The demo search over several seeds, its results re-trained.

For each search seed:

1. runs the demo search (``tools/search.py``, 8 steps by default) in
   ``WORK/seed<S>/search`` (resumed if it exists);
2. re-trains the demo model (1200 iterations, the same seed) with the chosen loss, with
   cross-entropy and with Lovasz, and (``--retrain-reevaluated``, the default) with every
   result the search re-evaluated, each evaluated on the demo val split;
3. prints, per seed: the policy mean's own reward at every step (rolled-back steps
   marked), the chosen result, and the re-trained mIoU of the chosen loss against
   cross-entropy and Lovasz; then the targets and the rank correlation (Spearman)
   between the re-evaluated proxy rewards and the re-trained mIoU.

Every training is a real subprocess; every stage is skipped when its output exists, so
running the command again resumes. The report is written to ``WORK/results.md``.

    python tools/search_seeds.py                               # seeds 1 2 3, 8 steps
    python tools/search_seeds.py --seeds 1 --steps 3 --search-options search.num_samples=2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from demo import SEARCH_CONFIG, _retrain, _run  # noqa: E402

CE_CONFIG = 'configs/retrain/demo/deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py'
LOVASZ_CONFIG = 'configs/retrain/demo/deeplabv3plus_r18tiny-d8_lovasz_1xb8-1200_asldemo-64x64.py'
LOVASZ_REFERENCE = 52.71  # the README's loss comparison (seed 1), the best hand-designed loss


def spearman(x: List[float], y: List[float]) -> Optional[float]:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3."""
    if len(x) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx)**2 for a in rx) * sum((b - my)**2 for b in ry))**0.5
    return num / den if den else None


def loss_config(best: Dict, raw: List[float], path: str) -> str:
    """A re-training config for the raw parameters ``raw`` of a search's best.json."""
    from mmengine.config import Config

    from asl.search.report import retrain_config_text
    from asl.search.settings import parse_search_section
    from asl.surrogate import Surrogate
    cfg = Config.fromfile(best['config'])
    settings = parse_search_section(cfg.search.to_dict(), best['config'])

    class _Search:  # what retrain_config_text reads of a search
        pass

    search = _Search()
    search.settings, search.seed, search.searcher = settings, best['seed'], best['searcher']
    search.name = os.path.splitext(os.path.basename(best['config']))[0]
    sur = Surrogate(settings.target_metric, raw_theta=raw,
                    parameterization=settings.parameterization, num_pieces=settings.num_pieces,
                    tol=settings.tol, drop_bg=settings.drop_bg)
    text = retrain_config_text(search, best['retrain_base'], sur.coordinates(), sur.num_pieces,
                               dict(selection=f'raw parameters {raw}'))
    with open(path, 'w') as f:
        f.write(text)
    return path


def own_rewards(best: Dict) -> List[Optional[float]]:
    """The policy mean's reward per step (candidate 0; the step mean if it failed)."""
    out = []
    for s in best['steps']:
        r = s['rewards'][0] if s['rewards'] else None
        out.append(r if r is not None else s['mean'])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--steps', type=int, default=8)
    p.add_argument('--work-dir', default='work_dirs/search_seeds')
    p.add_argument('--searcher', choices=('ppo', 'random'), default='ppo')
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--search-options', nargs='+', default=[], metavar='KEY=VALUE')
    p.add_argument('--train-options', nargs='+', default=[], metavar='KEY=VALUE')
    p.add_argument('--no-retrain-reevaluated', dest='retrain_reevaluated',
                   action='store_false', help='re-train only the chosen result')
    args = p.parse_args(argv)
    work = os.path.abspath(args.work_dir)
    _run([sys.executable, 'tools/make_demo_data.py'])
    rows, pairs = [], []
    for seed in args.seeds:
        d = os.path.join(work, f'seed{seed}')
        search_dir = os.path.join(d, 'search')
        print(f'[seeds] seed {seed}: search ({args.steps} steps)', flush=True)
        _run([sys.executable, 'tools/search.py', SEARCH_CONFIG, '--work-dir', search_dir,
              '--seed', str(seed), '--workers', str(args.workers), '--searcher', args.searcher,
              '--cfg-options', f'search.num_steps={args.steps}', *args.search_options],
             log=os.path.join(d, 'search.log'))
        with open(os.path.join(search_dir, 'best.json')) as f:
            best = json.load(f)
        res = dict(seed=seed, best=best, own=own_rewards(best))
        res['chosen'] = _retrain('chosen loss', best['retrain_config'],
                                 os.path.join(d, 'retrain_chosen'), seed, args.train_options)
        res['ce'] = _retrain('cross-entropy', CE_CONFIG, os.path.join(d, 'retrain_ce'), seed,
                             args.train_options)
        res['lovasz'] = _retrain('Lovasz', LOVASZ_CONFIG, os.path.join(d, 'retrain_lovasz'),
                                 seed, args.train_options)
        res['reeval'] = []
        for n, sc in enumerate(best.get('reevaluation') or []):
            if not args.retrain_reevaluated or sc.get('mean') is None:
                continue
            if sc['raw'] == best['raw_theta']:
                miou = res['chosen']['mIoU']
            else:
                rd = os.path.join(d, f'retrain_reeval{n}')
                os.makedirs(rd, exist_ok=True)
                cfg = loss_config(best, sc['raw'], os.path.join(rd, 'retrain_config.py'))
                miou = _retrain(f're-evaluated result {n}', cfg, rd, seed,
                                args.train_options)['mIoU']
            res['reeval'].append(dict(source=sc['source'], proxy=sc['mean'], miou=miou))
            pairs.append((sc['mean'], miou))
        rows.append(res)
        report = render(rows, pairs, args)
        with open(os.path.join(work, 'results.md'), 'w') as f:
            f.write(report)
    print(report)
    return 0


def render(rows: List[Dict], pairs, args) -> str:
    lines = [f'# The demo search over seeds ({args.searcher}, {args.steps} steps)', '',
             '| seed | policy mean\'s reward per step (R: rolled back after it) | chosen | '
             'mIoU chosen | CE | Lovasz | chosen - CE |', '|---|---|---|---:|---:|---:|---:|']
    collapsed, below_ce = [], []
    for r in rows:
        best, own = r['best'], r['own']
        cells = []
        seen = None
        for s, o in zip(best['steps'], own):
            mark = 'R' if s.get('rollback') else ''
            cells.append('-' if o is None else f'{o:.3f}{mark}')
            if o is not None and seen is not None and o < 0.5 * seen:
                collapsed.append((r['seed'], s['step'], o, seen))
            if s['mean'] is not None:
                seen = s['mean'] if seen is None else max(seen, s['mean'])
        c, ce, lov = r['chosen']['mIoU'], r['ce']['mIoU'], r['lovasz']['mIoU']
        if c <= ce:
            below_ce.append(r['seed'])
        lines.append(f'| {r["seed"]} | {" ".join(cells)} | {best["selection"].split(":")[0]} | '
                     f'{c:.2f} | {ce:.2f} | {lov:.2f} | {c - ce:+.2f} |')
    mean = lambda key: statistics.mean(r[key]['mIoU'] for r in rows)  # noqa: E731
    lines += ['', f'Mean over seeds: chosen {mean("chosen"):.2f}, cross-entropy {mean("ce"):.2f}, '
              f'Lovasz {mean("lovasz"):.2f} mIoU.', '', '## Targets', '']
    lines.append(f'- {"PASS" if not collapsed else "FAIL"}: the policy mean\'s reward never '
                 f'falls below half of the best step mean seen so far'
                 + (f' (below: {collapsed})' if collapsed else ''))
    lines.append(f'- {"PASS" if not below_ce else "FAIL"}: every chosen loss re-trains above '
                 f'cross-entropy on mIoU' + (f' (not for seeds {below_ce})' if below_ce else ''))
    m = mean('chosen')
    lines.append(f'- {"PASS" if m > LOVASZ_REFERENCE else "FAIL"}: the mean over seeds '
                 f'({m:.2f}) is above Lovasz\'s {LOVASZ_REFERENCE} (README; here, same seeds: '
                 f'{mean("lovasz"):.2f})')
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    lines += ['', f'Rank correlation (Spearman) of the re-evaluated proxy reward with the '
              f're-trained mIoU over {len(pairs)} re-evaluated results: '
              + ('n/a' if rho is None else f'{rho:.2f}')]
    within = [(r['seed'], spearman([e['proxy'] for e in r['reeval']],
                                   [e['miou'] for e in r['reeval']])) for r in rows]
    within = [f'seed {s} {rho:.2f}' for s, rho in within if rho is not None]
    if within:  # the choice is made within a seed: what matters is the order there
        lines.append('Within each seed (the choice is made among these): ' + ', '.join(within))
    lines.append('')
    for r in rows:
        for e in r['reeval']:
            lines.append(f'- seed {r["seed"]}, {e["source"]}: proxy {e["proxy"]:.4f}, '
                         f're-trained mIoU {e["miou"]:.2f}')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    sys.exit(main())
