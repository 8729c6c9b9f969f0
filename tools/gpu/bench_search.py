"""The paper's proxy task on this machine's GPU: training speed, trials per GPU, search cost.

    python tools/gpu/bench_search.py [--out work_dirs/gpu_search]

1. Generates synthetic data at the paper's proxy shape (``tools/make_demo_data.py``: 128x128
   images, 21 classes) and writes a proxy config: the paper's search config
   (R50-DeepLabV3+, batch 32, no pretrained weights) on that data.
2. Training speed of that proxy, one process on one GPU, real batches of the data:
   iterations per second with cross-entropy and with ``AutoSegLoss`` mIoU and BF1, in
   float32 and with AMP (float16 autocast; the surrogate stays float32), and the peak memory.
3. A short search (one step of ``--samples`` candidates, or ``--waves`` x K, of
   ``--iters`` iterations) with K = 1, 2 and 4 trials per GPU (``--ks``): trials per hour,
   GPU utilisation and memory per trial (sampled with ``nvidia-smi``), seconds per
   training iteration.
4. The paper's search (384 proxy trainings of 1000 iterations) projected in GPU-hours:
   ``384 x (overhead + val + 1000 x s/iter(K)) / K / 3600`` with the medians measured at K
   trials per GPU (overhead: start-up and everything outside iterations and validation).

Writes ``OUT/summary.md`` (the tables) and ``OUT/bench.json`` after each part (a run
stopped from outside keeps what it measured; ``--time-limit`` stops a search in time);
prints the summary.
``--device cpu`` with small sizes is a dry run of this script on a machine without GPU.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

PAPER_TRIALS, PAPER_ITERS = 384, 1000
SEARCH_CONFIG = os.path.join(ROOT, 'configs', 'search', 'voc12aug',
                             'deeplabv3plus_r50-d8_search-miou_1xb32-1k_voc12aug-128x128.py')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.path.join('work_dirs', 'gpu_search'))
    p.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    p.add_argument('--size', type=int, default=128, help='image size (default: 128)')
    p.add_argument('--classes', type=int, default=21)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--num-train', type=int, default=512)
    p.add_argument('--holdout', type=int, default=64, help='hold-out images (the rewards)')
    p.add_argument('--speed-iters', type=int, default=20, help='timed iterations per row')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--iters', type=int, default=60, help='iterations of a search trial')
    p.add_argument('--samples', type=int, default=4, help='trials of the short search')
    p.add_argument('--waves', type=int,
                   help='trials of each short search: WAVES x K, at least 2 (K trials per GPU: '
                   'WAVES rounds of K trials at once); default: --samples for every K')
    p.add_argument('--ks', type=int, nargs='+', default=[1, 2, 4], help='trials per GPU')
    p.add_argument('--time-limit', type=float,
                   help='seconds for the whole run: a search still running then is stopped '
                   '(SIGTERM: it stops its trials) and reported with what finished; the '
                   'searches not started are left out')
    p.add_argument('--skip-speed', action='store_true')
    p.add_argument('--skip-search', action='store_true')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
def make_data(args):
    root = os.path.join(args.out, 'data')
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'make_demo_data.py'), '--out', root,
           '--size', str(args.size), '--classes', str(args.classes), '--num-train',
           str(args.num_train), '--num-val', '16', '--num-holdout', str(args.holdout)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return os.path.abspath(root)


def write_proxy_config(args, data_root):
    """The paper's search config on the generated data (same model, batch and schedule)."""
    from asl.data.demo import class_names, class_palette
    path = os.path.abspath(os.path.join(args.out, 'proxy_search.py'))
    ds = ("dict(_delete_=True, type='BaseSegDataset', data_root={root!r}, metainfo=metainfo, "
          "data_prefix=dict(img_path='img_dir/{s}', seg_map_path='ann_dir/{s}'), "
          "ann_file='splits/{s}.txt', img_suffix='.png', seg_map_suffix='.png', "
          "reduce_zero_label=False, pipeline={p})")
    text = f"""# written by tools/gpu/bench_search.py: the paper's proxy search on synthetic data
_base_ = {SEARCH_CONFIG!r}
metainfo = dict(classes={tuple(class_names(args.classes))!r},
                palette={class_palette(args.classes)!r})
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                 dict(type='PackSegInputs')]
train_dataloader = dict(batch_size={args.batch}, num_workers=4, persistent_workers=True,
                        dataset={ds.format(root=data_root, s='train', p='train_pipeline')})
val_dataloader = dict(batch_size=1, num_workers=2,
                      dataset={ds.format(root=data_root, s='val', p='test_pipeline')})
test_dataloader = val_dataloader
model = dict(pretrained=None, data_preprocessor=dict(size=({args.size}, {args.size})),
             decode_head=dict(num_classes={args.classes}),
             auxiliary_head=dict(num_classes={args.classes}))
train_cfg = dict(max_iters={args.iters}, val_interval={args.iters})
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end={args.iters},
                        by_epoch=False)]
default_hooks = dict(logger=dict(interval=max({args.iters} // 4, 1)))
search = dict(num_steps=1, num_samples={args.samples}, reevaluate=None, retrain_config=None,
              holdout=dict(num={args.holdout}, seed=0), trial_time_limit=1800, max_retries=0)
"""
    with open(path, 'w') as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------- speed
def _batch(cfg, data_root, args, device):
    import numpy as np
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from PIL import Image
    with open(os.path.join(data_root, 'splits', 'train.txt')) as f:
        names = [n.strip() for n in f if n.strip()][:args.batch]
    inputs, samples = [], []
    for n in names:
        img = np.asarray(Image.open(os.path.join(data_root, 'img_dir', 'train', n + '.png')))
        lab = np.asarray(Image.open(os.path.join(data_root, 'ann_dir', 'train', n + '.png')))
        inputs.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
        s = SegDataSample(metainfo=dict(img_shape=lab.shape, ori_shape=lab.shape,
                                        pad_shape=lab.shape))
        s.gt_sem_seg = PixelData(data=torch.from_numpy(lab.astype(np.int64))[None])
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def speed_rows(args, config, data_root):
    import torch
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    import asl.mmseg  # noqa: F401  (registers AutoSegLoss)
    register_all_modules()
    device = torch.device(args.device)
    losses = {
        'cross-entropy': dict(type='CrossEntropyLoss', use_sigmoid=False),
        'AutoSegLoss mIoU': dict(type='AutoSegLoss', target_metric='mIoU'),
        'AutoSegLoss BF1': dict(type='AutoSegLoss', target_metric='BF1', num_pieces=1),
    }
    rows = []
    for name, loss in losses.items():
        for amp in (False, True):
            if amp and device.type != 'cuda':
                continue
            cfg = Config.fromfile(config)
            cfg.model.decode_head.loss_decode = dict(loss, loss_weight=1.0)
            cfg.model.auxiliary_head.loss_decode = dict(loss, loss_weight=0.4)
            torch.manual_seed(0)
            model = MODELS.build(cfg.model).to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler('cuda', enabled=amp)
            data = model.data_preprocessor(_batch(cfg, data_root, args, device), True)
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats()

            def step():
                with torch.autocast('cuda', dtype=torch.float16, enabled=amp):
                    out = model(data['inputs'], data['data_samples'], mode='loss')
                    total = sum(v for k, v in out.items() if 'loss' in k)
                opt.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
                return total

            for _ in range(args.warmup):
                step()
            if device.type == 'cuda':
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.speed_iters):
                total = step()
            float(total.detach())
            if device.type == 'cuda':
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == 'cuda' else None
            rows.append(dict(loss=name, amp=amp, it_s=args.speed_iters / dt,
                             peak_gib=mem, final_loss=float(total.detach())))
            print(f'[speed] {name:<18} {"AMP " if amp else "fp32"} '
                  f'{args.speed_iters / dt:7.2f} it/s'
                  + (f'  peak {mem:.2f} GiB' if mem is not None else ''), flush=True)
            del model, opt
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- search
class GpuSampler(threading.Thread):
    """Samples GPU utilisation and per-process memory with nvidia-smi (none on CPU)."""

    def __init__(self, interval=0.5):
        super().__init__(daemon=True)
        self.interval, self.util, self.mem = interval, [], {}
        self.stop = threading.Event()
        self.available = shutil.which('nvidia-smi') is not None

    def _query(self, what):
        out = subprocess.run(['nvidia-smi', f'--query-{what}', '--format=csv,noheader,nounits'],
                             capture_output=True, text=True, timeout=10).stdout
        return [[x.strip() for x in line.split(',')] for line in out.splitlines() if line.strip()]

    def run(self):
        while self.available and not self.stop.is_set():
            try:
                gpu = self._query('gpu=utilization.gpu')
                apps = self._query('compute-apps=pid,used_memory')
            except (OSError, subprocess.SubprocessError):
                break
            running = [a for a in apps if len(a) == 2 and a[1].isdigit()]
            if running and gpu and gpu[0][0].isdigit():
                self.util.append(float(gpu[0][0]))
            for pid, mib in running:
                self.mem[pid] = max(self.mem.get(pid, 0), int(mib))
            self.stop.wait(self.interval)


def samples_for(args, k):
    """Trials of the search at K trials per GPU (at least 2: the policy's baseline, its
    mean, is the first candidate)."""
    return max(2, args.waves * k) if args.waves else args.samples


def _run_until(cmd, log_path, deadline):
    """Run ``cmd`` (output to ``log_path``) until it ends or ``deadline`` (time.time());
    then SIGTERM (the search stops its trials), SIGKILL 30 s later. Returns (rc, text,
    stopped)."""
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        stopped = False
        try:
            proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            stopped = True
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    with open(log_path) as f:
        return proc.returncode, f.read(), stopped


def search_row(args, config, k, deadline=None):
    work = os.path.abspath(os.path.join(args.out, f'search_k{k}'))
    shutil.rmtree(work, ignore_errors=True)
    samples = samples_for(args, k)
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), config, '--work-dir', work,
           '--trials-per-gpu', str(k), '--cfg-options', f'search.num_samples={samples}']
    if args.device == 'cpu':
        cmd += ['--workers', '1']
    sampler = GpuSampler()
    sampler.start()
    t0 = time.time()
    rc, text, stopped = _run_until(cmd, os.path.join(args.out, f'search_k{k}.log'), deadline)
    wall = time.time() - t0
    sampler.stop.set()
    sampler.join()
    events = []
    if os.path.exists(os.path.join(work, 'journal.jsonl')):
        with open(os.path.join(work, 'journal.jsonl')) as f:
            events = [json.loads(line) for line in f if line.endswith('\n')]
    launched = [e for e in events if e['event'] == 'trial_launched']
    ended = [e for e in events if e['event'] in ('trial_finished', 'trial_failed')]
    finished = [e for e in events if e['event'] == 'trial_finished']
    row = dict(k=k, rc=rc, samples=samples, trials=len(finished),
               failed=len(ended) - len(finished), search_wall_s=wall, stopped=stopped)
    if launched and ended:
        span = ended[-1]['time'] - launched[0]['time']
        row['trials_wall_s'] = span
        row['trials_per_hour'] = len(finished) / span * 3600 if span > 0 else None
    if finished:
        iters = args.iters
        t = [e['timing'] for e in finished]
        row['s_per_iter'] = statistics.median(x['train_iter_s'] / iters for x in t)
        row['overhead_s'] = statistics.median(x['overhead_s'] for x in t)
        row['val_s'] = statistics.median(x['val_s'] for x in t)
        per_trial = row['overhead_s'] + row['val_s'] + PAPER_ITERS * row['s_per_iter']
        row['paper_trial_s'] = per_trial
        row['paper_gpu_hours'] = PAPER_TRIALS * per_trial / k / 3600
    if sampler.util:
        row['gpu_util_mean'] = statistics.mean(sampler.util)
    if sampler.mem:
        row['mem_per_trial_mib'] = statistics.median(sampler.mem.values())
    if rc != 0:
        row['error'] = ('stopped at the time limit; ' if stopped else '') + text[-500:]
    print(f'[search] K={k}: ' + ', '.join(f'{a}={b:.4g}' if isinstance(b, float) else f'{a}={b}'
                                          for a, b in row.items() if a != 'error'), flush=True)
    return row


# -------------------------------------------------------------------------- summary
def _f(v, fmt):
    return 'n/a' if v is None else format(v, fmt)


def summary(args, speed, searches, machine):
    lines = [f'# The paper\'s proxy task on {machine}', '',
             f'R50-DeepLabV3+ (no pretrained weights), {args.size}x{args.size}, batch '
             f'{args.batch}, {args.classes} classes, synthetic data.', '']
    if speed:
        ce = {r['amp']: r['it_s'] for r in speed if r['loss'] == 'cross-entropy'}
        lines += ['| loss | precision | it/s | vs CE | peak memory (GiB) |',
                  '|---|---|---|---|---|']
        for r in speed:
            lines.append(f'| {r["loss"]} | {"AMP fp16" if r["amp"] else "fp32"} | '
                         f'{r["it_s"]:.2f} | {r["it_s"] / ce[r["amp"]]:.2f}x | '
                         f'{_f(r["peak_gib"], ".2f")} |')
        lines.append('')
    if searches:
        base = next((r.get('trials_per_hour') for r in searches if r['k'] == 1), None)
        trials = (f'max(2, {args.waves} x K)' if args.waves else str(args.samples))
        lines += [f'Short search: one step of {trials} trials of {args.iters} '
                  f'iterations at K trials per GPU (AutoSegLoss mIoU, fp32).', '',
                  '| trials/GPU | trials/hour | vs 1 | GPU util % | memory/trial (MiB) | '
                  's/iter | overhead s | 384 x 1000-iter search (GPU-h) |',
                  '|---|---|---|---|---|---|---|---|']
        for r in searches:
            tph = r.get('trials_per_hour')
            ratio = tph / base if tph and base else None
            lines.append(f'| {r["k"]} | {_f(tph, ".1f")} | {_f(ratio, ".2f")}x | '
                         f'{_f(r.get("gpu_util_mean"), ".0f")} | '
                         f'{_f(r.get("mem_per_trial_mib"), ".0f")} | '
                         f'{_f(r.get("s_per_iter"), ".3f")} | {_f(r.get("overhead_s"), ".1f")} | '
                         f'{_f(r.get("paper_gpu_hours"), ".2f")} |'
                         + (' stopped at the time limit' if r.get('stopped') else
                            f' failed: rc {r["rc"]}' if r['rc'] else ''))
        lines += ['', f'Projection: GPU-hours = {PAPER_TRIALS} x (overhead + validation + '
                      f'{PAPER_ITERS} x s/iter) / K / 3600, medians of the K-trial run '
                      f'(the paper: 68 V100-hours).']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA device (use --device cpu for a dry run)', file=sys.stderr)
        return 2
    machine = (torch.cuda.get_device_name(0) if args.device == 'cuda'
               else f'CPU ({os.cpu_count()} cores, dry run)')
    deadline = None if args.time_limit is None else time.time() + args.time_limit
    speed, searches = [], []

    def save():  # after every part: a run stopped from outside keeps what it measured
        text = summary(args, speed, searches, machine)
        with open(os.path.join(args.out, 'summary.md'), 'w') as f:
            f.write(text)
        with open(os.path.join(args.out, 'bench.json'), 'w') as f:
            json.dump(dict(args=vars(args), speed=speed, searches=searches, machine=machine),
                      f, indent=1)
        return text

    data_root = make_data(args)
    config = write_proxy_config(args, data_root)
    if not args.skip_speed:
        speed = speed_rows(args, config, data_root)
        save()
    if not args.skip_search:
        for k in args.ks:
            if deadline is not None and time.time() > deadline - 10:
                print(f'[search] K={k}: not started (time limit)', flush=True)
                continue
            searches.append(search_row(args, config, k, deadline))
            save()
    print(save())
    return 0 if all(r['rc'] == 0 for r in searches) else 1


if __name__ == '__main__':
    sys.exit(main())
