"""The whole Auto Seg-Loss workflow on the embedded demo data, in one command.

    python tools/demo.py [--work-dir work_dirs/demo] [--seed 1] [--workers 1]
                         [--search-options K=V ...] [--train-options K=V ...]

1. generate the demo dataset (if missing);
2. search the mIoU surrogate's parameters (PPO2, 3 steps x 4 proxy trainings);
3. re-train the demo model with the searched loss and with cross-entropy;
4. print the six metrics of both side by side.

Every stage is a real subprocess (``tools/search.py``, ``tools/train.py``,
``tools/test.py``) and is resumable: running the command again skips what is done.
``--search-options`` and ``--train-options`` pass ``--cfg-options`` to the search and
to both re-trainings (a smaller budget, e.g. ``search.num_steps=1 train_cfg.max_iters=20
param_scheduler.0.end=20``).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asl.search.retrain import (DEMO_SEARCH_CONFIG, METRICS, demo_retrain_config,  # noqa: E402
                                retrain_and_test, run_or_exit)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--workers', type=int, default=1,
                   help='proxy trainings at once (default: 1; 2 cores run one well)')
    p.add_argument('--search-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='--cfg-options for the search (e.g. search.num_steps=1)')
    p.add_argument('--train-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='--cfg-options for both re-trainings (e.g. train_cfg.max_iters=20)')
    args = p.parse_args(argv)
    work = os.path.abspath(os.path.join(ROOT, args.work_dir) if not os.path.isabs(args.work_dir)
                           else args.work_dir)
    t0 = time.time()

    print('[demo] 1/4 demo dataset', flush=True)
    run_or_exit([sys.executable, os.path.join(ROOT, 'tools', 'make_demo_data.py')])

    print('[demo] 2/4 search for the mIoU surrogate (PPO2, 3 steps x 4 proxy trainings)',
          flush=True)
    search_dir = os.path.join(work, 'search')
    run_or_exit([sys.executable, os.path.join(ROOT, 'tools', 'search.py'), DEMO_SEARCH_CONFIG,
                 '--work-dir', search_dir, '--seed', str(args.seed), '--workers',
                 str(args.workers),
                 *(['--cfg-options', *args.search_options] if args.search_options else [])])
    best = json.load(open(os.path.join(search_dir, 'best.json')))

    print('[demo] 3/4 re-training with the searched loss and with cross-entropy', flush=True)
    asl = retrain_and_test('searched mIoU loss', best['retrain_config'],
                           os.path.join(work, 'retrain_asl-miou'), args.seed, args.train_options)
    ce = retrain_and_test('cross-entropy', demo_retrain_config('ce'),
                          os.path.join(work, 'retrain_ce'), args.seed, args.train_options)

    print('[demo] 4/4 results on the demo val split (80 images), percent')
    lines = ['| metric | cross-entropy | searched mIoU loss | difference |',
             '|---|---:|---:|---:|']
    for m in METRICS:
        lines.append(f'| {m} | {ce[m]:.2f} | {asl[m]:.2f} | {asl[m] - ce[m]:+.2f} |')
    table = '\n'.join(lines)
    print(table)
    rewards = [s['mean'] for s in best['steps']]
    summary = (f'\nsearch: {best["selection"]}; mean hold-out reward per step: '
               + ', '.join('-' if r is None else f'{r:.4f}' for r in rewards)
               + f'\nsearched parameters: {search_dir}/best.json; plots: {search_dir}/*.png'
               + f'\ntotal time {(time.time() - t0) / 60:.1f} min')
    print(summary)
    with open(os.path.join(work, 'results.md'), 'w') as f:
        f.write(table + '\n' + summary + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
