#!/usr/bin/env python
"""Compare the segmentation losses on the demo data, in the shape of the paper's Table 2.

Trains the demo model (``configs/retrain/demo/``) once per loss -- cross-entropy,
Dice, Lovász, each published ``AutoSegLoss`` surrogate (mIoU, FWIoU, BIoU, BF1,
mAcc, gAcc) and the sums mIoU + BIoU and mIoU + BF1 -- with the same seed and
iteration budget. Every training is a real ``tools/train.py`` subprocess, run one
after the other (:func:`asl.search.retrain.run_training`); the single validation at
the end of each reports all six metrics (``ASLMetric``) on the demo val split, which
``ASLTrialHook`` writes to ``result.json`` in the run's work dir.

Output in ``--out`` (default ``work_dirs/compare_losses/``):

* ``results.md``: a Markdown table, rows = losses, columns = the six metrics, the
  best value of each column in bold, failed runs with their reason (rewritten after
  every run while the comparison goes on, the remaining losses marked pending);
* ``results.csv``: the same numbers, one row per loss (plus status, reason, time);
* ``results.png``: a heat-map of the table;
* ``runs/<loss>/``: each run's work dir (MMEngine log, checkpoint, ``result.json``),
  its config ``run_config.py`` (the demo config of the loss plus the hook), its console
  output ``train.log`` and ``run.json`` (config, seed, options, command, exit status,
  wall time).

A run whose ``result.json`` is complete for the same loss, seed and number of
iterations is reused, not retrained (``--no-resume`` retrains everything); an
interrupted run continues from its last checkpoint.

Examples::

    python tools/analysis/compare_losses.py                        # 11 runs x 1200 iters
    python tools/analysis/compare_losses.py --iters 100 --losses ce,dice,asl-miou
    python tools/analysis/compare_losses.py --threads 4 --out work_dirs/cmp_seed1 --seed 1

The exit status is 0 when every run produced its metrics, 1 when any run failed,
2 on a usage error (for example an unknown loss name).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import os
import os.path as osp
import platform
import re
import shutil
import signal
import sys
import time
from typing import Dict, List, Mapping, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
from asl.search import retrain  # noqa: E402
from asl.search.retrain import (RUN_LOG, RunResult, completed_run,  # noqa: E402
                                demo_retrain_config, run_training)

#: Iterations of the demo configs.
DEFAULT_ITERS = 1200
DEFAULT_SEED = 0
DEFAULT_OUT = osp.join('work_dirs', 'compare_losses')
#: Dataset the demo configs train and validate on (relative to the repository root).
DATA_DESCRIPTION = 'asl demo data (data/asl_demo, 64x64, 5 classes), val split (80 images)'

#: The six metrics of every run (:data:`asl.search.retrain.METRICS`), in the column order
#: of the paper's Table 2.
METRICS = ('mIoU', 'FWIoU', 'BIoU', 'BF1', 'mAcc', 'gAcc')
assert sorted(METRICS) == sorted(retrain.METRICS)

#: Loss key -> row label, in the row order of the paper's Table 2.
LOSSES: Dict[str, str] = {
    'ce': 'Cross-entropy',
    'dice': 'Dice',
    'lovasz': 'Lovász',
    'asl-miou': 'Auto Seg-Loss mIoU',
    'asl-fwiou': 'Auto Seg-Loss FWIoU',
    'asl-biou': 'Auto Seg-Loss BIoU',
    'asl-bf1': 'Auto Seg-Loss BF1',
    'asl-macc': 'Auto Seg-Loss mAcc',
    'asl-gacc': 'Auto Seg-Loss gAcc',
    'asl-miou+biou': 'Auto Seg-Loss mIoU + BIoU',
    'asl-miou+bf1': 'Auto Seg-Loss mIoU + BF1',
}

CSV_FIELDS = ('loss', 'label', 'status') + METRICS + ('wall_s', 'reused', 'reason')

_ITER_RE = re.compile(r'Iter\(train\)\s*\[\s*(\d+)\s*/\s*(\d+)\]')

#: The results of a comparison: loss key -> its run's outcome, in row order. A run not
#: (yet) trained is ``RunResult('pending')`` or ``RunResult('skipped', reason=...)``.
Results = Mapping[str, RunResult]


def parse_losses(text: Optional[str]) -> List[str]:
    """Parse a comma-separated list of loss keys.

    Args:
        text (str, optional): e.g. ``'ce,asl-miou'``; empty or None means all losses.

    Returns:
        list[str]: the keys in the given order, without duplicates.

    Raises:
        ValueError: on an unknown key; the message names it and lists the valid keys.
    """
    if not text or not text.strip():
        return list(LOSSES)
    keys: List[str] = []
    for raw in text.split(','):
        key = raw.strip().lower()
        if not key:
            continue
        if key not in LOSSES:
            raise ValueError(f'unknown loss {raw.strip()!r}; valid losses: '
                             + ', '.join(LOSSES))
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError('no loss given; valid losses: ' + ', '.join(LOSSES))
    return keys


def config_path(loss: str) -> str:
    """Return the absolute path of the demo config of ``loss``."""
    return demo_retrain_config(loss)


def iteration_options(iters: int) -> List[str]:
    """``--cfg-options`` entries that set the iteration budget consistently.

    The training length, the end of the poly schedule, the validation interval (one
    validation at the end) and the checkpoint interval all follow ``iters``.
    """
    return [f'train_cfg.max_iters={iters}', f'param_scheduler.0.end={iters}',
            f'train_cfg.val_interval={iters}', f'default_hooks.checkpoint.interval={iters}']


def run_dir(out_dir: str, loss: str) -> str:
    """Return the work dir of ``loss`` under ``out_dir``."""
    return osp.join(osp.abspath(out_dir), 'runs', loss)


def label(loss: str) -> str:
    """The row label of ``loss``."""
    return LOSSES.get(loss, loss)


def best_values(results: Results, digits: int = 2) -> Dict[str, float]:
    """Best (highest) value of each metric among the successful runs, rounded to ``digits``."""
    best: Dict[str, float] = {}
    for m in METRICS:
        vals = [round(r.metrics[m], digits) for r in results.values() if r.ok and m in r.metrics]
        if vals:
            best[m] = max(vals)
    return best


def _md_escape(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def format_markdown(results: Results, header: str = '', digits: int = 2) -> str:
    """Render the results as a Markdown table shaped like the paper's Table 2.

    Rows are the losses, columns the six metrics (percent, ``digits`` decimals); the
    best value of each column is bold (every tied value). A failed run shows
    ``failed: <reason>`` in its first metric cell and ``–`` in the others.

    Args:
        results (dict): loss -> RunResult, in row order.
        header (str): text placed above the table (e.g. seed, iterations, data).
        digits (int): decimals.

    Returns:
        str: the Markdown document.
    """
    best = best_values(results, digits)
    lines = []
    if header:
        lines += [header.rstrip(), '']
    lines.append('| Loss | ' + ' | '.join(METRICS) + ' |')
    lines.append('|:--|' + '--:|' * len(METRICS))
    for loss, r in results.items():
        if r.ok:
            cells = []
            for m in METRICS:
                v = round(r.metrics[m], digits)
                s = f'{v:.{digits}f}'
                cells.append(f'**{s}**' if best.get(m) == v else s)
        else:
            what = 'failed' if r.status == 'failed' else r.status
            first = f'{what}: {_md_escape(r.reason)}' if r.reason else what
            cells = [first] + ['–'] * (len(METRICS) - 1)
        lines.append(f'| {_md_escape(label(loss))} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def format_csv(results: Results, digits: int = 4) -> str:
    """Render the results as CSV (columns :data:`CSV_FIELDS`; empty metrics when failed)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator='\n')
    w.writeheader()
    for loss, r in results.items():
        row = dict(loss=loss, label=label(loss), status=r.status, reason=r.reason,
                   reused=int(r.reused),
                   wall_s='' if r.wall_s is None else f'{r.wall_s:.1f}')
        for m in METRICS:
            row[m] = f'{r.metrics[m]:.{digits}f}' if r.ok else ''
        w.writerow(row)
    return buf.getvalue()


def write_png(results: Results, path: str, title: str = '') -> None:
    """Draw the results as a heat-map (losses x metrics, values in percent) into ``path``.

    Each column is colored relative to its own range so that the best loss per metric
    stands out; failed runs are grey rows labeled ``failed``. Uses matplotlib's Agg
    backend.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    losses, results = list(results), list(results.values())
    n = len(results)
    values = np.full((n, len(METRICS)), np.nan)
    for i, r in enumerate(results):
        if r.ok:
            values[i] = [r.metrics[m] for m in METRICS]
    shade = np.full_like(values, np.nan)
    for j in range(len(METRICS)):
        col = values[:, j]
        if np.all(np.isnan(col)):
            continue
        lo, hi = np.nanmin(col), np.nanmax(col)
        shade[:, j] = (col - lo) / (hi - lo) if hi > lo else 1.0
    best = best_values(dict(zip(losses, results)))

    fig, ax = plt.subplots(figsize=(8.5, 0.45 * n + 1.6))
    cmap = matplotlib.colormaps['viridis'].with_extremes(bad='#dddddd')
    ax.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=0, vmax=1, aspect='auto')
    for i, r in enumerate(results):
        for j, m in enumerate(METRICS):
            if r.ok:
                v = values[i, j]
                is_best = best.get(m) == round(float(v), 2)
                ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=9,
                        fontweight='bold' if is_best else 'normal',
                        color='black' if shade[i, j] > 0.6 else 'white')
            elif j == 0:
                ax.text(j, i, r.status, ha='center', va='center', fontsize=9, color='#aa0000')
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_yticks(range(n), [label(loss) for loss in losses])
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    if title:
        ax.set_xlabel(title, fontsize=8)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: Results, out_dir: str, header: str = '',
                  title: str = '') -> Dict[str, str]:
    """Write ``results.md``, ``results.csv`` and ``results.png`` into ``out_dir``.

    Args:
        results (dict): loss -> RunResult, in row order.
        out_dir (str): output directory.
        header (str): text above the Markdown table (see :func:`make_header`).
        title (str): caption of the figure.

    Returns:
        dict: ``'md'``, ``'csv'``, ``'png'`` -> path.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(md=osp.join(out_dir, 'results.md'), csv=osp.join(out_dir, 'results.csv'),
                 png=osp.join(out_dir, 'results.png'))
    with open(paths['md'], 'w') as f:
        f.write(format_markdown(results, header))
    with open(paths['csv'], 'w', newline='') as f:
        f.write(format_csv(results))
    write_png(results, paths['png'], title=title)
    return paths


def make_header(iters: int, seed: int, wall_s: float, trained: int, reused: int,
                threads: int, done: Optional[tuple] = None,
                runs_s: Optional[float] = None) -> str:
    """Header line(s) of ``results.md``: seed, iterations, data, time.

    Args:
        wall_s (float): wall time of this invocation.
        runs_s (float, optional): the runs' own wall times added up (reused runs
            included).
        done (tuple, optional): ``(finished, total)`` for a partial table written
            while the comparison is still running.
    """
    when = datetime.datetime.now().strftime('%Y-%m-%d %H:%M')
    title = '# Loss comparison (Table 2 layout)'
    if done is not None:
        title += f' -- in progress, {done[0]}/{done[1]} runs finished'
    return (title + '\n\n'
            f'Seed {seed}, {iters} iterations per loss (batch 8, DeepLabV3+ R18-tiny), '
            f'{DATA_DESCRIPTION}; metrics in %, best per column in bold. '
            + (f'Training processes took {format_duration(runs_s)} in all; '
               if runs_s is not None else '')
            + f'this invocation {format_duration(wall_s)} ({trained} run(s) trained, '
            f'{reused} reused), {threads} thread(s), {platform.node() or "host"}, {when}.')


def png_title(iters: int, seed: int) -> str:
    """Caption of ``results.png``."""
    return (f'{iters} iterations per loss, seed {seed}; demo val split, %; '
            'colors relative to each column, best in bold')


def format_duration(seconds: Optional[float]) -> str:
    """Format seconds as ``1h02m03s`` / ``2m03s`` / ``4.5s``."""
    if seconds is None:
        return '?'
    if seconds < 60:
        return f'{seconds:.1f}s'
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _total_wall(results: Results) -> float:
    return sum(r.wall_s or 0.0 for r in results.values())


def _last_iter(log_file: str) -> Optional[int]:
    try:
        with open(log_file, errors='replace') as f:
            text = f.read()
    except OSError:
        return None
    found = _ITER_RE.findall(text)
    return int(found[-1][0]) if found else None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        description='Train the demo model once per loss and compare the six metrics '
                    '(Table 2 layout).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default=DEFAULT_OUT, help='output directory')
    p.add_argument('--iters', type=int, default=DEFAULT_ITERS,
                   help='training iterations per loss')
    p.add_argument('--seed', type=int, default=DEFAULT_SEED, help='random seed of every run')
    p.add_argument('--losses', default='',
                   help='comma-separated subset of: ' + ','.join(LOSSES) + ' (default: all)')
    p.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                   help='OMP_NUM_THREADS (and MKL_NUM_THREADS) of the training processes')
    p.add_argument('--resume', action=argparse.BooleanOptionalAction, default=True,
                   help='reuse a run whose result.json is complete for the same iterations '
                        'and seed')
    p.add_argument('--keep-going', action=argparse.BooleanOptionalAction, default=True,
                   help='after a failed run, go on with the others')
    p.add_argument('--python', default=sys.executable,
                   help='interpreter for tools/train.py')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the comparison; return the exit status (0 ok, 1 a run failed, 2 usage)."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        losses = parse_losses(args.losses)
    except ValueError as e:
        p.error(str(e))
    if args.iters < 1:
        p.error('--iters must be at least 1')
    if args.threads < 1:
        p.error('--threads must be at least 1')
    # SIGTERM (kill, nohup jobs) ends the running training too, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out_dir = osp.abspath(args.out)
    options = iteration_options(args.iters)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED='1')

    plan = {loss: args.resume and completed_run(config_path(loss), run_dir(out_dir, loss),
                                                args.seed, options) is not None
            for loss in losses}
    n = len(losses)
    n_train = sum(not v for v in plan.values())
    print(f'Comparing {n} loss(es), {args.iters} iterations, seed {args.seed}, '
          f'{args.threads} thread(s) -> {out_dir}'
          + (f' ({n - n_train} reused)' if n_train < n else ''), flush=True)

    def heartbeat(elapsed: float, log_file: str) -> None:
        it = _last_iter(log_file)
        print(f'    ... {format_duration(elapsed)}'
              + (f', iteration {it}/{args.iters}' if it else ''), flush=True)

    t_start = time.time()
    results: Dict[str, RunResult] = {}
    durations: List[float] = []
    trained_left = n_train
    stop = False
    for i, loss in enumerate(losses, 1):
        path = run_dir(out_dir, loss)
        tag = f'[{i}/{n}] {loss} ({LOSSES[loss]})'
        if stop:
            results[loss] = RunResult('skipped', reason='not run: an earlier run failed')
            continue
        if plan[loss]:
            print(f'{tag}: reusing the existing result in {path} '
                  f'(same iterations and seed; not retrained)', flush=True)
        else:
            if not args.resume and osp.isdir(path):  # --no-resume: start afresh
                shutil.rmtree(path)
            print(f'{tag}: training ... (log: {osp.join(path, RUN_LOG)})', flush=True)
        r = run_training(config_path(loss), path, args.seed, options, python=args.python,
                         env=env, heartbeat=heartbeat)
        if not r.reused:
            durations.append(r.wall_s or 0.0)
            trained_left -= 1
        elapsed = time.time() - t_start
        eta = (sum(durations) / len(durations) * trained_left) if durations else None
        state = (f'mIoU {r.metrics["mIoU"]:.2f}' if r.ok else f'FAILED ({r.reason})')
        took = '' if r.reused else f' in {format_duration(r.wall_s)}'
        print(f'{tag}: {state}{took} | elapsed {format_duration(elapsed)}'
              + (f', ETA {format_duration(eta)}' if eta is not None and trained_left else ''),
              flush=True)
        results[loss] = r
        if not r.ok and not args.keep_going:
            stop = True
        if i < n:  # a partial table after every run, the rest marked pending
            pending = {**results, **{k: RunResult('pending') for k in losses[i:]}}
            header = make_header(args.iters, args.seed, elapsed, len(durations),
                                 sum(x.reused for x in results.values()), args.threads,
                                 done=(i, n), runs_s=_total_wall(results))
            write_outputs(pending, out_dir, header, png_title(args.iters, args.seed))

    wall = time.time() - t_start
    header = make_header(args.iters, args.seed, wall, len(durations),
                         sum(r.reused for r in results.values()), args.threads,
                         runs_s=_total_wall(results))
    paths = write_outputs(results, out_dir, header, png_title(args.iters, args.seed))
    print()
    print(format_markdown(results))
    print('Wrote ' + ', '.join(paths.values()))
    failed = [loss for loss, r in results.items() if not r.ok]
    if failed:
        print(f'{len(failed)} run(s) failed or not run: ' + ', '.join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
