#!/usr/bin/env python
"""Benchmark the search's throughput: trials per hour and per-trial overhead.

Every search trial is a real ``tools/train.py`` process. Its ``ASLTrialHook`` times the
training iterations (``train_iter_s``) and the evaluation (``val_s``) and the wall time
from the executor's launch to the end of the evaluation (``wall_s``); the controller adds
the launch-to-exit time seen by the executor (``executor_wall_s``) and journals all of
them in the ``trial_finished`` events of ``journal.jsonl``. From these measured figures
this tool reports, per finished trial:

* ``overhead`` = ``executor_wall_s - train_iter_s``: everything outside the training
  iterations (process start, imports, registry and model build, dataset build, data
  loading between iterations, evaluation, teardown), and its share of the trial's wall;
* the breakdown of that overhead into
  - ``start-up`` = ``wall_s - train_iter_s - val_s``: launch until the first iteration
    plus whatever runs outside the timed step during training (the batches are fetched
    before ``before_train_iter``, and the logger / scheduler hooks run around it). The
    part of it spent fetching batches is estimated from the ``data_time`` that the
    trial's log records (mean of the logged values x iterations) and shown apart;
  - ``eval`` = ``val_s``;
  - ``teardown`` = ``executor_wall_s - wall_s``: from the end of the evaluation until
    the executor saw the process exit (hooks after training, interpreter exit, and the
    controller's polling interval);

and, for the whole search, trials per hour = finished trials / (last finish - first
launch), from the journal's event times, plus the time during which no trial ran
(controller work between trials: policy updates, config writing, polling). With forked
trials (``--launch fork``, the default on CPU), the first launch waits for the trial
launcher's warm-up; that wait is shown apart and counted in the search's span (so in
trials per hour), not in any trial's overhead.

Target: at most 20% overhead per trial on the demo proxy (``--target``).

Two modes::

    # analyse an existing search (no new run); writes DIR/benchmark.json
    python tools/analysis/benchmark_search.py --work-dir work_dirs/search/<name>

    # run the demo search (3 steps x 4 candidates x 300 iterations) into
    # work_dirs/benchmark_search/ through tools/search.py, then analyse it
    python tools/analysis/benchmark_search.py [--steps 3] [--samples 4] [--iters 300] [--overwrite]

    # the cheaper search at equal budget (runs tools/analysis/search_compare.py): plain
    # PPO, with pre-screening, with pre-screening and early stopping, for several seeds
    python tools/analysis/benchmark_search.py --compare [--seeds 1 2 3] [--false-sample 6]

    # successive halving against plain PPO at M=16 (runs tools/analysis/halving_compare.py;
    # 150-iteration proxies, 3 steps, one rung at 1/3, eta 4, re-trainings included)
    python tools/analysis/benchmark_search.py --halving [--seeds 1 2 3] [--samples 16]

Interrupting a run (Ctrl-C, SIGTERM) stops the search and still analyses the trials
finished so far. The exit code is 0 whether or not the target is met (read the PASS/FAIL line); it is
non-zero when the search run fails or the journal has no finished trial.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEMO_CONFIG = 'configs/search/demo/deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64.py'
DEFAULT_RUN_DIR = 'work_dirs/benchmark_search'
TARGET_PCT = 20.0

sys.path.insert(0, ROOT)
from asl.search.analysis import JOURNAL, SearchRun, load_search  # noqa: E402
from asl.utils import atomic_write_json, cpu_model  # noqa: E402

#: the journal events that end a trial's attempt
OUTCOMES = ('trial_finished', 'trial_failed', 'trial_stopped')


# ----------------------------------------------------------------------------- reading


def logged_data_time(trial_dir: Optional[str]) -> Optional[float]:
    """Mean ``data_time`` of the training log lines the trial's MMEngine log wrote.

    (The logged value is a running mean over the log processor's window, so the
    result is an estimate of the time to fetch one batch.)
    """
    if not trial_dir or not os.path.isdir(trial_dir):
        return None
    values = []
    for name in sorted(os.listdir(trial_dir)):
        path = os.path.join(trial_dir, name, 'vis_data', 'scalars.json')
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if 'lr' in rec and 'data_time' in rec:  # a training line (not validation)
                    values.append(float(rec['data_time']))
    return statistics.mean(values) if values else None


# ----------------------------------------------------------------------------- analysis


def _num(x) -> Optional[float]:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def analyse(run: SearchRun, target_pct: float = TARGET_PCT) -> Dict:
    """Per-trial timings and search-level figures of a search (finished or not)."""
    launches: Dict[str, Dict] = {}
    intervals = []  # (launch, outcome) event times of every attempt
    finished: Dict[str, Dict] = {}
    for ev in run.events:
        kind, tid = ev['event'], ev.get('trial_id')
        if kind == 'trial_launched':
            launches[tid] = ev
        elif kind in OUTCOMES and tid in launches:
            intervals.append((_num(launches[tid].get('time')), _num(ev.get('time'))))
            if kind == 'trial_finished':
                finished[tid] = ev
    failed = [dict(trial_id=e.get('trial_id'), kind=e.get('kind'), reason=e.get('reason'))
              for e in run.of_kind('trial_failed')]
    trials: List[Dict] = []
    for t in run.trials(reeval=True):
        ev = finished.get(t.trial_id)
        if t.reward is None or ev is None:
            continue
        timing = t.record.timing or {}
        wall = _num(timing.get('wall_s'))
        train = _num(timing.get('train_iter_s'))
        val = _num(timing.get('val_s')) or 0.0
        ex = _num(timing.get('executor_wall_s'))
        total = ex if ex is not None else wall  # the launch-to-exit wall time
        row = dict(trial_id=t.trial_id, step=t.step, index=t.index, attempt=ev.get('attempt'),
                   work_dir=t.work_dir, launch_time=_num(t.launch.get('time')),
                   finish_time=_num(ev.get('time')), executor_wall_s=ex, wall_s=wall,
                   train_iter_s=train, val_s=val)
        if total is None or train is None or wall is None:
            row['incomplete'] = True
            trials.append(row)
            continue
        result = t.result()
        iters = int(result['iter']) if result and result.get('iter') else None
        dt = logged_data_time(t.work_dir)
        row.update(
            iters=iters,
            overhead_s=total - train,
            overhead_pct=100.0 * (total - train) / total if total > 0 else None,
            startup_s=wall - train - val,
            teardown_s=(ex - wall) if ex is not None else None,
            train_s_per_iter=train / iters if iters else None,
            data_fetch_s_est=dt * iters if dt is not None and iters else None)
        trials.append(row)
    ok = [t for t in trials if not t.get('incomplete')]
    out = dict(trials=trials, failed_attempts=failed, target_overhead_pct=target_pct)
    if not ok:
        return out

    def tot(key):
        vals = [t[key] for t in ok if t.get(key) is not None]
        return sum(vals) if vals else None

    def mean(key):
        vals = [t[key] for t in ok if t.get(key) is not None]
        return statistics.mean(vals) if vals else None

    pcts = [t['overhead_pct'] for t in ok if t['overhead_pct'] is not None]
    totals = dict(executor_wall_s=tot('executor_wall_s'), wall_s=tot('wall_s'),
                  train_iter_s=tot('train_iter_s'), val_s=tot('val_s'),
                  overhead_s=tot('overhead_s'), startup_s=tot('startup_s'),
                  teardown_s=tot('teardown_s'), data_fetch_s_est=tot('data_fetch_s_est'))
    wall_total = totals['executor_wall_s'] or totals['wall_s']
    totals['overhead_pct'] = 100.0 * totals['overhead_s'] / wall_total if wall_total else None

    # Search-level: span from the first launch to the last outcome, from the journal.
    launch_times = [_num(e.get('time')) for e in run.of_kind('trial_launched')]
    end_times = [_num(e.get('time')) for e in run.events if e['event'] in OUTCOMES]
    first, last = min(launch_times), max(end_times)
    # a launch that waited for the trial launcher's warm-up is journalled after the wait
    waited = sum(_num((e.get('info') or {}).get('waited_for_launcher_s')) or 0.0
                 for e in run.of_kind('trial_launched'))
    first -= waited
    span = last - first
    # time covered by at least one running trial (launch -> outcome event)
    busy, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        busy += cur_e - cur_s

    n = len(ok)
    per_trial = dict(
        startup_s=mean('startup_s'), val_s=mean('val_s'), teardown_s=mean('teardown_s'),
        data_fetch_s_est=mean('data_fetch_s_est'), overhead_s=mean('overhead_s'),
        executor_wall_s=mean('executor_wall_s'), train_iter_s=mean('train_iter_s'))
    share = {}
    for k in ('startup_s', 'val_s', 'teardown_s'):
        if per_trial[k] is not None and per_trial['overhead_s']:
            share[k] = 100.0 * per_trial[k] / per_trial['overhead_s']
    worst = max(pcts)
    out.update(
        finished=n, failed=len(failed), totals=totals, launcher_wait_s=waited,
        span_s=span, first_launch=first, last_finish=last,
        idle_s=max(span - busy, 0.0),
        trials_per_hour=3600.0 * n / span if span > 0 else None,
        overhead_pct_mean=statistics.mean(pcts), overhead_pct_median=statistics.median(pcts),
        overhead_pct_max=worst,
        breakdown_mean_s=per_trial, breakdown_share_pct=share,
        meets_target=worst <= target_pct)
    return out


# ----------------------------------------------------------------------------- output


def _f(x, fmt='.1f') -> str:
    return '-' if x is None else format(x, fmt)


def render(a: Dict) -> str:
    lines = ['| trial | iters | executor wall s | train-iter s | eval s | start-up s | '
             'teardown s | overhead s | overhead % |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for t in a['trials']:
        if t.get('incomplete'):
            lines.append(f"| {t['trial_id']} | (incomplete timing) |||||||| ")
            continue
        lines.append(
            f"| {t['trial_id']} | {t['iters'] or '-'} | {_f(t['executor_wall_s'])} | "
            f"{_f(t['train_iter_s'])} | {_f(t['val_s'], '.2f')} | {_f(t['startup_s'])} | "
            f"{_f(t['teardown_s'], '.2f')} | {_f(t['overhead_s'])} | {_f(t['overhead_pct'])} |")
    if 'totals' not in a:
        lines.append('\nno finished trial with timings in the journal')
        return '\n'.join(lines)
    T = a['totals']
    lines.append(f"| **total** ({a['finished']}) | | {_f(T['executor_wall_s'])} | "
                 f"{_f(T['train_iter_s'])} | {_f(T['val_s'], '.2f')} | {_f(T['startup_s'])} | "
                 f"{_f(T['teardown_s'], '.2f')} | {_f(T['overhead_s'])} | "
                 f"{_f(T['overhead_pct'])} |")
    B, S = a['breakdown_mean_s'], a['breakdown_share_pct']
    lines += [
        '',
        '| search | value |', '|---|---:|',
        f"| finished trials / failed attempts | {a['finished']} / {a['failed']} |",
        f"| first launch -> last finish | {_f(a['span_s'])} s |",
        f"| **trials per hour** | **{_f(a['trials_per_hour'])}** |",
        f"| time with no trial running (controller) | {_f(a['idle_s'])} s |",
        f"| waiting for the trial launcher's warm-up (before a launch, not in the "
        f"trials' figures) | {_f(a.get('launcher_wait_s'), '.2f')} s |",
        f"| overhead % per trial: mean / median / max | {_f(a['overhead_pct_mean'])} / "
        f"{_f(a['overhead_pct_median'])} / {_f(a['overhead_pct_max'])} |",
        '',
        '| overhead per trial (mean) | s | % of overhead |', '|---|---:|---:|',
        f"| start-up until 1st iteration + gaps between iterations | {_f(B['startup_s'], '.2f')} "
        f"| {_f(S.get('startup_s'))} |",
        f"| (of which: fetching batches, est. from the logged data_time) | "
        f"{_f(B['data_fetch_s_est'], '.2f')} | |",
        f"| evaluation | {_f(B['val_s'], '.2f')} | {_f(S.get('val_s'))} |",
        f"| teardown (exit seen by the executor - end of evaluation) | "
        f"{_f(B['teardown_s'], '.2f')} | {_f(S.get('teardown_s'))} |",
        f"| **total overhead** (of {_f(B['executor_wall_s'])} s wall, "
        f"{_f(B['train_iter_s'])} s in iterations) | {_f(B['overhead_s'], '.2f')} | 100 |",
        '',
        f"{'PASS' if a['meets_target'] else 'FAIL'}: max overhead per trial "
        f"{_f(a['overhead_pct_max'])}% (target <= {a['target_overhead_pct']:g}%)",
    ]
    return '\n'.join(lines)


def machine_info() -> Dict:
    info = dict(host=platform.node(), cpu=cpu_model(), cores=os.cpu_count(),
                python=platform.python_version(), platform=platform.platform())
    try:
        info['loadavg'] = list(os.getloadavg())
    except OSError:
        pass
    return info


def _fmt_machine(m: Dict) -> str:
    load = m.get('loadavg')
    load = ' / '.join(f'{x:.2f}' for x in load) if load else '?'
    return f"{m['cpu']}, {m['cores']} cores ({m['host']}); load average 1/5/15 min: {load}"


# ----------------------------------------------------------------------------- main


def search_command(args, run_dir: str, launch: Optional[str] = None) -> List[str]:
    n = args.iters
    opts = []
    if args.steps is not None:
        opts.append(f'search.num_steps={args.steps}')
    if args.samples is not None:
        opts.append(f'search.num_samples={args.samples}')
    if args.time_limit is not None:
        opts.append(f'search.trial_time_limit={args.time_limit:g}')
    if n is not None:
        opts += [f'train_cfg.max_iters={n}', f'train_cfg.val_interval={n}',
                 f'param_scheduler.0.end={n}']
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), args.config,
           '--work-dir', run_dir]
    if args.workers is not None:
        cmd += ['--workers', str(args.workers)]
    if launch:
        cmd += ['--launch', launch]
    if opts:
        cmd += ['--cfg-options', *opts]
    return cmd


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def _run_search(cmd: List[str]):
    """Run the search; on Ctrl-C or SIGTERM, let it stop its trials and return, so that
    the trials finished so far are still analysed. Returns (exit code, interrupted)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait(), False
    except (KeyboardInterrupt, _Terminated) as e:
        if isinstance(e, _Terminated):  # Ctrl-C reaches the search itself
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60), True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', help='analyse this existing search (no new run)')
    p.add_argument('--config', default=DEMO_CONFIG, help='search config to run (default: demo)')
    p.add_argument('--run-dir', default=DEFAULT_RUN_DIR,
                   help=f'where to run the search (default: {DEFAULT_RUN_DIR})')
    p.add_argument('--steps', type=int, help='search.num_steps (default: the config\'s)')
    p.add_argument('--samples', type=int, help='search.num_samples (default: the config\'s)')
    p.add_argument('--iters', type=int, help='proxy training iterations (default: the config\'s)')
    p.add_argument('--time-limit', type=float,
                   help='search.trial_time_limit in s (default: the config\'s; raise it on a '
                        'loaded machine, where a timed-out trial yields no timings)')
    p.add_argument('--workers', type=int, help='tools/search.py --workers')
    p.add_argument('--overwrite', action='store_true',
                   help='delete an earlier run in --run-dir first (else it is refused, since '
                        'tools/search.py would resume it)')
    p.add_argument('--target', type=float, default=TARGET_PCT,
                   help=f'overhead target in %% per trial (default: {TARGET_PCT:g})')
    p.add_argument('--launch', choices=('auto', 'fork', 'spawn', 'both'), default='auto',
                   help="tools/search.py --launch; 'both' runs the search twice, trials "
                        "spawned then forked (in RUN_DIR/spawn and RUN_DIR/fork), and prints "
                        "the two side by side")
    g = p.add_argument_group('equal-budget comparison (--compare: runs '
                             'tools/analysis/search_compare.py)')
    g.add_argument('--compare', action='store_true',
                   help='run the demo search with plain PPO, with pre-screening and with '
                        'pre-screening plus early stopping for every --seeds, then print '
                        'iterations spent, rewards, rewards at equal iterations, rejected and '
                        'stopped candidates and the false-rejection rate (resumable; in '
                        'RUN_DIR/compare)')
    g.add_argument('--halving', action='store_true',
                   help='run plain PPO and PPO with successive halving (search.halving) at '
                        '--samples (default 16) candidates per step for every --seeds, '
                        're-train each chosen loss and cross-entropy, print iterations spent, '
                        'rewards, re-trained mIoU, rank correlations per rung and the '
                        'projection for the paper\'s search (resumable; in RUN_DIR/halving)')
    g.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    g.add_argument('--false-sample', type=int, default=6,
                   help='rejected candidates trained anyway to count false rejections')
    args = p.parse_args(argv)

    if args.compare:  # tools/analysis/search_compare.py does it
        cmd = [sys.executable, os.path.join(HERE, 'search_compare.py'), '--config', args.config,
               '--run-dir', os.path.join(args.run_dir, 'compare'), '--seeds',
               *map(str, args.seeds), '--steps', str(args.steps or 3), '--samples',
               str(args.samples or 4), '--false-sample', str(args.false_sample)]
        if args.iters:
            cmd += ['--iters', str(args.iters)]
        print(f'machine: {_fmt_machine(machine_info())}', flush=True)
        return subprocess.run(cmd, cwd=ROOT).returncode
    if args.halving:  # tools/analysis/halving_compare.py does it
        cmd = [sys.executable, os.path.join(HERE, 'halving_compare.py'), '--run-dir',
               os.path.join(args.run_dir, 'halving'), '--seeds', *map(str, args.seeds),
               '--steps', str(args.steps or 3), '--samples', str(args.samples or 16),
               '--iters', str(args.iters or 150)]
        if args.workers:
            cmd += ['--workers', str(args.workers)]
        print(f'machine: {_fmt_machine(machine_info())}', flush=True)
        return subprocess.run(cmd, cwd=ROOT).returncode
    if args.work_dir:
        print(f'machine (analysing): {_fmt_machine(machine_info())}')
        a, _ = analyse_dir(args.work_dir, None, args.target)
        return 0 if a is not None and 'totals' in a else 1
    os.chdir(ROOT)
    modes = ['spawn', 'fork'] if args.launch == 'both' else [args.launch]
    dirs = [os.path.join(args.run_dir, m) for m in modes] if len(modes) > 1 else [args.run_dir]
    for d in dirs:
        if os.path.exists(os.path.join(d, JOURNAL)):
            if not args.overwrite:
                print(f'error: {d} holds an earlier search (tools/search.py would '
                      f'resume it); pass --overwrite to start afresh', file=sys.stderr)
                return 2
            shutil.rmtree(d)
    results = []
    for mode, d in zip(modes, dirs):
        cmd = search_command(args, d, None if mode == 'auto' else mode)
        before = machine_info()
        print(f'machine: {_fmt_machine(before)}')
        print(f'command: {shlex.join(cmd)}', flush=True)
        t0 = time.time()
        rc, interrupted = _run_search(cmd)
        after = machine_info()
        run = dict(command=cmd, exit_code=rc, interrupted=interrupted, wall_s=time.time() - t0,
                   launch=mode, loadavg_before=before.get('loadavg'),
                   loadavg_after=after.get('loadavg'))
        print(f'\nsearch exited {rc}{" (interrupted)" if interrupted else ""} after '
              f'{run["wall_s"]:.0f} s; load average after: '
              f'{" / ".join(f"{x:.2f}" for x in after.get("loadavg", []))}')
        a, run = analyse_dir(d, run, args.target)
        results.append((mode, a, run))
        if a is None or rc != 0 or interrupted:
            return rc or (130 if interrupted else 1)
    if len(results) > 1:
        print('\n' + render_comparison(results))
    return 0 if all('totals' in a for _, a, _ in results) else 1


def analyse_dir(work_dir: str, run: Optional[Dict], target: float):
    """Analyse the search in ``work_dir``, print it and write ``benchmark.json`` (``run``:
    how this tool ran it, if it did)."""
    try:
        search = load_search(work_dir)
    except (OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return None, run
    a = analyse(search, target)
    print(f'\nsearch: {search.work_dir}\n')
    print(render(a))
    report = dict(work_dir=search.work_dir, machine=machine_info(), run=run, **a)
    out = os.path.join(work_dir, 'benchmark.json')
    atomic_write_json(out, report)
    print(f'\nwritten: {out}')
    return a, run


def render_comparison(results) -> str:
    """The spawned and forked searches side by side (same trials, same seed)."""
    rows = [('trials', lambda a: str(a.get('finished', 0))),
            ('mean trial wall s', lambda a: _f(a['breakdown_mean_s']['executor_wall_s'])),
            ('mean train-iter s', lambda a: _f(a['breakdown_mean_s']['train_iter_s'])),
            ('mean overhead s', lambda a: _f(a['breakdown_mean_s']['overhead_s'], '.2f')),
            ('overhead % mean / max', lambda a: f"{_f(a['overhead_pct_mean'])} / "
                                                f"{_f(a['overhead_pct_max'])}"),
            ('trials per hour', lambda a: _f(a['trials_per_hour']))]
    names = [m for m, _, _ in results]
    lines = ['| launch | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
    for label, fn in rows:
        lines.append(f'| {label} | ' + ' | '.join(fn(a) if 'totals' in a else '-'
                                                   for _, a, _ in results) + ' |')
    a0, a1 = results[0][1], results[-1][1]
    if 'totals' in a0 and 'totals' in a1:
        lines.append(f"\n{names[-1]} / {names[0]}: trials per hour x"
                     f"{a1['trials_per_hour'] / a0['trials_per_hour']:.2f}, overhead per trial x"
                     f"{a1['breakdown_mean_s']['overhead_s'] / a0['breakdown_mean_s']['overhead_s']:.2f}")
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
