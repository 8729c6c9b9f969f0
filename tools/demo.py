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
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEARCH_CONFIG = ('configs/search/demo/'
                 'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64.py')
CE_CONFIG = 'configs/retrain/demo/deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py'
METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')


def _run(cmd, log=None):
    print('$ ' + ' '.join(cmd), flush=True)
    t0 = time.time()
    if log is None:
        code = subprocess.call(cmd, cwd=ROOT)
    else:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, 'ab') as f:
            code = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        where = f' (log: {log})' if log else ''
        raise SystemExit(f'error: command failed with exit status {code}{where}')
    return time.time() - t0


def _retrain(name, config, work, seed, options=()):
    """Train ``config`` (skipped if its metrics exist) and evaluate the last checkpoint;
    ``options``: ``--cfg-options`` of both."""
    out = os.path.join(work, 'metrics.json')
    if os.path.isfile(out):
        print(f'[demo] {name}: already trained and evaluated ({out})')
        return json.load(open(out))
    print(f'[demo] {name}: training (log: {work}/train.log) ...', flush=True)
    opts = ['--cfg-options', *options] if options else []
    dt = _run([sys.executable, 'tools/train.py', config, '--work-dir', work, '--seed', str(seed),
               '--resume', *opts], log=os.path.join(work, 'train.log'))
    with open(os.path.join(work, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    _run([sys.executable, 'tools/test.py', config, ckpt, '--work-dir', work, '--out', out,
          *opts], log=os.path.join(work, 'test.log'))
    print(f'[demo] {name}: done in {dt / 60:.1f} min')
    return json.load(open(out))


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
    _run([sys.executable, 'tools/make_demo_data.py'])

    print('[demo] 2/4 search for the mIoU surrogate (PPO2, 3 steps x 4 proxy trainings)',
          flush=True)
    search_dir = os.path.join(work, 'search')
    _run([sys.executable, 'tools/search.py', SEARCH_CONFIG, '--work-dir', search_dir,
          '--seed', str(args.seed), '--workers', str(args.workers),
          *(['--cfg-options', *args.search_options] if args.search_options else [])])
    best = json.load(open(os.path.join(search_dir, 'best.json')))

    print('[demo] 3/4 re-training with the searched loss and with cross-entropy', flush=True)
    asl = _retrain('searched mIoU loss', best['retrain_config'],
                   os.path.join(work, 'retrain_asl-miou'), args.seed, args.train_options)
    ce = _retrain('cross-entropy', CE_CONFIG, os.path.join(work, 'retrain_ce'), args.seed,
                  args.train_options)

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
