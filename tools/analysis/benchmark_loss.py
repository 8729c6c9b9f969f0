#!/usr/bin/env python
"""Benchmark the Auto Seg-Loss surrogates against cross-entropy, Dice and Lovasz.

Measures the forward + backward time and the peak memory of every published surrogate
(``theta='paper'`` for mIoU, FWIoU, mAcc, gAcc, BIoU and BF1) on each engine asked for
(``--engines``), next to cross-entropy, Dice and Lovasz on the same logits and labels, in
one run, and prints a Markdown table with the ratios to cross-entropy, followed by
PASS/FAIL checks against the cost targets. Engines (see ``asl.engines.dispatch``):

* ``cpp``: the C++ engine (CPU); ``triton``: the Triton engine (CUDA; on CPU only under
  ``TRITON_INTERPRET=1``, for tests); ``torch``: the plain PyTorch path;
* ``compile``: ``torch.compile`` of the plain PyTorch path (its first call, which
  compiles, is timed apart and shown in its own table).

Defaults: on CPU the C++ engine (N=2, C=21, 256x256); on CUDA the plain path, its
``torch.compile`` and the Triton engine (N=8, C=21, 512x512). Cross-entropy, Dice and
Lovasz are MMSeg's losses when MMSeg is importable; without MMSeg (a machine with only
torch and Triton) cross-entropy is ``torch.nn.functional.cross_entropy`` and the MMSeg
rows are left out with a note. The surrogates do not need MMSeg.

Targets: on CPU, region surrogates (mIoU, FWIoU, mAcc, gAcc) at most 3x cross-entropy's
time and peak memory, boundary surrogates (BIoU, BF1) at most 6x, every surrogate faster
than Lovasz. On CUDA (the Triton engine), region surrogates at most 1.0x cross-entropy's
time and peak memory, BIoU at most 1.5x, BF1 at most 2.5x, and every surrogate at least 2x
faster than ``torch.compile`` of the plain path.

It also checks the float32 evaluation of every published curve against its float64
definition (``--accuracy``, on by default; target: max abs error <= 1e-5), and, when the
plain path (``torch``) is benchmarked with a fast engine, that engine's loss and gradient
against the plain path's on the benchmark's inputs (the ``Agreement`` table).

Timing: median (``--stat min``: minimum) over ``--repeat`` runs, interleaved across
the losses, after ``--warmup`` runs, of ``loss(x, label).backward()`` on a fresh
``x = logits.detach().clone().requires_grad_()`` (the clone itself is not timed).

Peak memory: bytes allocated by torch during one forward + backward, above what was
allocated before it (the input gradient included). On CUDA:
``torch.cuda.max_memory_allocated`` minus the baseline. On CPU: the maximum of the
running sum of the allocation/free events recorded by
``torch.profiler.profile(profile_memory=True)``; ``--selfcheck`` verifies this
method on known allocations.

Memory mode (``--memory``): what the Triton engine allocates, measured without a GPU.
The engine allocates the same tensors under Triton's interpreter (``TRITON_INTERPRET=1``,
set by the script) on CPU tensors as on a GPU, so the GPU memory targets (region
surrogates at most 1.0x cross-entropy's peak, BIoU at most 1.5x, BF1 at most 2.5x) are
checked on CPU: one forward + backward of cross-entropy
(``torch.nn.functional.cross_entropy``), of each metric on the Triton engine and on the
plain PyTorch path, at the GPU benchmark's classes (C=21) with N cut to 1 and the plane
to 128x128 for the interpreter's speed (BF1 takes about 20 s per 1024 pixels there:
512x512 would take hours); every loss's bytes are proportional to N x H x W, so the
ratios to cross-entropy are those of the GPU shape (``--size 32`` gives the same to
0.01). Peak:
the most bytes torch allocated at once above the logits and labels (which exist before),
the input gradient included; kept: the bytes still allocated between the forward and
the backward (what the autograd graph saves), less the loss value. The interpreter works
on numpy views of the tensors, which torch does not count (checked on a kernel run: 0
bytes), so only the engine's own tensors count, as on a GPU.

Examples::

    python tools/analysis/benchmark_loss.py                       # CPU: N=2, C=21, 256x256
    python tools/analysis/benchmark_loss.py --device cuda         # GPU: N=8, C=21, 512x512
    python tools/analysis/benchmark_loss.py --engines torch compile cpp --only mIoU BF1
    python tools/analysis/benchmark_loss.py --selfcheck
    python tools/analysis/benchmark_loss.py --profile mIoU BF1    # top ops by self time
    python tools/analysis/benchmark_loss.py --memory              # GPU memory targets, on CPU

The exit code is 0 whether or not the targets are met; read the PASS/FAIL lines.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

# --memory runs the Triton engine on CPU tensors through Triton's interpreter, which Triton
# reads when it defines its functions: set before anything can import Triton.
if '--memory' in sys.argv[1:]:
    os.environ['TRITON_INTERPRET'] = '1'

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')
REGION_METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc')
BOUNDARY_METRICS = ('BIoU', 'BF1')
CPU_LIMITS = {'region': 3.0, 'BIoU': 6.0, 'BF1': 6.0}
GPU_LIMITS = {'region': 1.0, 'BIoU': 1.5, 'BF1': 2.5}
COMPILE_SPEEDUP = 2.0
ACCURACY_TARGET = 1e-5
IGNORE_INDEX = 255
CE = 'CrossEntropyLoss'
LOVASZ = 'LovaszLoss'
ENGINES = ('torch', 'compile', 'cpp', 'triton')


def _limit(metric: str, gpu: bool) -> float:
    limits = GPU_LIMITS if gpu else CPU_LIMITS
    return limits['region'] if metric in REGION_METRICS else limits[metric]


def mmseg_configs() -> List[Tuple[str, dict]]:
    """(row name, MMSeg config) of the MMSeg losses compared, cross-entropy first."""
    return [
        (CE, dict(type='CrossEntropyLoss')),
        ('DiceLoss', dict(type='DiceLoss')),
        # per_image=False requires reduction='none' in MMSeg 1.x (the loss is one number).
        (LOVASZ, dict(type='LovaszLoss', reduction='none', loss_type='multi_class',
                      per_image=False)),
    ]


class TorchCrossEntropy(torch.nn.Module):
    """Cross-entropy without MMSeg (mean over the non-ignored pixels)."""

    def forward(self, x, label, ignore_index=IGNORE_INDEX):
        return F.cross_entropy(x, label, ignore_index=ignore_index)


class SurrogateLoss(torch.nn.Module):
    """``1 - surrogate``: what ``AutoSegLoss`` computes, without needing MMSeg."""

    def __init__(self, metric: str, backend: str):
        super().__init__()
        from asl import Surrogate
        self.surrogate = Surrogate(metric, theta='paper', backend=backend)

    def forward(self, x, label, ignore_index=IGNORE_INDEX):
        return 1.0 - self.surrogate(x, label, ignore_index)


def row_name(metric: str, engine: str) -> str:
    return f'{metric} [{engine}]'


def build_losses(device: torch.device, engines: Sequence[str], only: Optional[Sequence[str]],
                 logits: torch.Tensor, label: torch.Tensor,
                 notes: List[str]) -> Tuple[Dict[str, torch.nn.Module], Dict[str, float]]:
    """The losses by row name (cross-entropy first) and, for ``compile`` rows, the seconds
    their first call took (it compiles)."""
    losses: Dict[str, torch.nn.Module] = {}
    if _has_mmseg():
        import warnings
        warnings.filterwarnings('ignore', message='Default ``avg_non_ignore`` is False')
        import mmseg.models  # noqa: F401  (registers MMSeg's losses)
        from mmseg.registry import MODELS
        for name, cfg in mmseg_configs():
            if name in (CE, LOVASZ) or not only or name in only:
                losses[name] = MODELS.build(cfg).to(device)
    else:
        losses[CE] = TorchCrossEntropy()
        notes.append('MMSeg is not used (not importable, or --no-mmseg): cross-entropy is '
                     'torch.nn.functional.cross_entropy; the MMSeg rows (Dice, Lovasz) are '
                     'left out')
    compile_s: Dict[str, float] = {}
    metrics = [m for m in METRICS if not only or m in only]
    for m in metrics:
        for e in engines:
            if e == 'compile':
                loss = torch.compile(SurrogateLoss(m, 'torch'))
                _sync(device)
                t0 = time.perf_counter()
                forward_backward(loss, logits.detach().clone().requires_grad_(), label)
                _sync(device)
                compile_s[row_name(m, e)] = time.perf_counter() - t0
            else:
                loss = SurrogateLoss(m, e)
            losses[row_name(m, e)] = loss
    return losses, compile_s


# ----------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------
def make_inputs(n: int, c: int, size: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random logits (N, C, S, S) and labels (N, S, S), generated on the CPU.

    Logits are standard normal noise scaled by 3. Labels are spatially coherent: the
    argmax over classes of a smooth random field (low-resolution noise upsampled
    bicubically), so regions are blobs with curved boundaries rather than every pixel
    being a boundary. As in PASCAL VOC, region borders are labelled ``ignore_index``
    (a one-pixel line), plus one random rectangle per image.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, size, size, generator=gen) * 3.0
    cells = max(2, size // 64)
    field = torch.randn(n, c, cells, cells, generator=gen)
    field = F.interpolate(field, size=(size, size), mode='bicubic', align_corners=False)
    label = field.argmax(1)
    border = torch.zeros_like(label, dtype=torch.bool)
    border[:, :-1, :] |= label[:, :-1, :] != label[:, 1:, :]
    border[:, :, :-1] |= label[:, :, :-1] != label[:, :, 1:]
    label[border] = IGNORE_INDEX
    for i in range(n):
        hh, ww = torch.randint(size // 16, size // 10 + 1, (2, ), generator=gen).tolist()
        y0, x0 = torch.randint(0, size - max(hh, ww), (2, ), generator=gen).tolist()
        label[i, y0:y0 + hh, x0:x0 + ww] = IGNORE_INDEX
    return logits, label


# ----------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------
def _profiler_memory_events(prof) -> Tuple[List[Tuple[float, int]], str]:
    """(time, bytes) of every CPU allocation (> 0) and free (< 0) the profiler saw."""
    try:
        events = prof.profiler.kineto_results.events()
        out = [(e.start_ns(), int(e.nbytes())) for e in events
               if e.name() == '[memory]' and str(e.device_type()).endswith('CPU')]
        if out:
            return out, 'kineto_results.events() nbytes'
    except (AttributeError, RuntimeError):
        pass
    out = [(e.time_range.start, int(e.cpu_memory_usage)) for e in prof.events()
           if e.name == '[memory]']
    return out, 'prof.events() cpu_memory_usage'


def cpu_peak_net_bytes(fn: Callable[[], object]) -> Tuple[int, int, str]:
    """Peak of the bytes allocated by torch on the CPU while ``fn()`` runs, above the
    amount allocated when it starts, and the net bytes still allocated when it returns
    (allocated minus freed). Returns (peak, net, method)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                 record_shapes=False) as prof:
        fn()
    events, method = _profiler_memory_events(prof)
    events.sort(key=lambda e: e[0])  # stable: ties keep the recorded order
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak, current, method


def cpu_peak_bytes(fn: Callable[[], object]) -> Tuple[int, str]:
    """Peak of the bytes allocated by torch on the CPU while ``fn()`` runs, above the
    amount allocated when it starts. Returns (bytes, method)."""
    peak, _, method = cpu_peak_net_bytes(fn)
    return peak, method


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> Tuple[int, str]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base, 'torch.cuda.max_memory_allocated'


def peak_bytes(fn: Callable[[], object], device: torch.device) -> Tuple[int, str]:
    if device.type == 'cuda':
        return cuda_peak_bytes(fn, device)
    return cpu_peak_bytes(fn)


def selfcheck(device: torch.device, quiet: bool = False) -> bool:
    """Check the peak-memory method on allocations of known size. Returns True if OK."""
    mb = 1e6
    ok = True
    say = (lambda *a, **k: None) if quiet else print
    say(f'## Peak-memory self-check ({device.type})\n')

    def one_tensor():
        x = torch.empty(1_000_000, dtype=torch.float32, device=device)
        x.fill_(1.0)
        return x

    def two_live_one_freed():
        a = torch.ones(1_000_000, dtype=torch.float32, device=device)  # 4 MB
        b = torch.ones(1_000_000, dtype=torch.float32, device=device)  # 8 MB live
        del a
        c = torch.ones(1_000_000, dtype=torch.float32, device=device)  # 8 MB live again
        return b, c

    def temporaries():
        a = torch.ones(2_000_000, dtype=torch.float32, device=device)  # 8 MB
        s = (a * 2).sum()  # +8 MB temporary -> 16 MB peak
        del a
        return s

    def backward():
        x = torch.ones(1_000_000, dtype=torch.float32, device=device, requires_grad=True)
        (x * x).sum().backward()  # input held by x (not counted), product 4 MB, grad 4 MB...
        return x

    cases = [('one float32 tensor of 1M elements', one_tensor, 4.0, 0.02),
             ('three 4 MB tensors, one freed before the third', two_live_one_freed, 8.0, 0.02),
             ('8 MB tensor and an 8 MB temporary', temporaries, 16.0, 0.02)]
    for name, fn, expect, tol in cases:
        got, method = peak_bytes(fn, device)
        good = abs(got / mb - expect) <= tol * expect
        ok &= good
        say(f'- {name}: {got / mb:.3f} MB (expected {expect:.1f} MB) '
              f'{"PASS" if good else "FAIL"}  [{method}]')
    got, method = peak_bytes(backward, device)
    # x (4 MB) is allocated inside; x * x (4 MB); grads 2 x 4 MB transient at most.
    good = 8.0 <= got / mb <= 20.0
    ok &= good
    say(f'- forward + backward of (x * x).sum() with 1M elements: {got / mb:.3f} MB '
          f'(expected 8 to 20 MB) {"PASS" if good else "FAIL"}')
    say()
    return ok


# ----------------------------------------------------------------------------------
# Memory mode: the Triton engine's allocations on CPU, under Triton's interpreter
# ----------------------------------------------------------------------------------
# N=1 and 128x128 rather than the GPU benchmark's 8 x 512x512: the interpreter takes about
# 20 s per 1024 pixels for BF1's forward + backward (BIoU 7 s, mIoU 1.2 s), so 512x512 would
# take hours; every loss's bytes are proportional to the pixels (--size 32 gives the same
# ratios to 0.01), so the ratios to cross-entropy are those of the GPU shape.
MEMORY_N, MEMORY_SIZE = 1, 128


MARK_BYTES = 987_653  # a one-off allocation marking the end of the forward pass


def memory_of(loss: torch.nn.Module, logits: torch.Tensor, label: torch.Tensor) -> dict:
    """Bytes torch allocates on the CPU for one forward + backward of ``loss`` on a fresh
    leaf copy of ``logits`` (the copy and the labels exist before and are not counted):

    * ``peak``: the most allocated at once, the input gradient included;
    * ``kept``: still allocated after the forward, before the backward, less the loss
      value itself (what the autograd graph saves for the backward pass);
    * ``fwd_peak``: the most allocated at once during the forward pass;
    * ``seconds``: how long the forward + backward took (the profiler included).

    One profiled run; the end of the forward pass is marked in the allocation events by
    an allocation of ``MARK_BYTES`` freed at once (left out of the counts).
    """
    from torch.profiler import ProfilerActivity, profile
    x = logits.detach().clone().requires_grad_()
    box = {}

    def run():
        out = loss(x, label, ignore_index=IGNORE_INDEX)
        out = out if out.numel() == 1 else out.sum()
        box['out_bytes'] = out.untyped_storage().nbytes()
        mark = torch.empty(MARK_BYTES, dtype=torch.uint8)
        del mark
        out.backward()

    # Garbage of earlier calls collected inside the window would count as frees: collect
    # it first, and none while the window is open.
    import gc
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                     record_shapes=False) as prof:
            run()
        seconds = time.perf_counter() - t0
    finally:
        gc.enable()
    events, method = _profiler_memory_events(prof)
    events.sort(key=lambda e: e[0])
    current = peak = fwd_peak = 0
    kept = None
    for _, nbytes in events:
        if abs(nbytes) == MARK_BYTES and (kept is None) == (nbytes > 0):
            if nbytes > 0:
                kept, fwd_peak = current, peak
            continue
        current += nbytes
        peak = max(peak, current)
    if kept is None:
        raise RuntimeError('the forward pass\'s end marker is not in the profiler events')
    grad_ok = x.grad is not None and bool(torch.isfinite(x.grad).all())
    return dict(peak=peak, kept=kept - box['out_bytes'], fwd_peak=fwd_peak, seconds=seconds,
                method=method, grad_ok=grad_ok)


def interpreter_allocations() -> int:
    """Bytes torch allocates while Triton's interpreter runs a kernel that reads one CPU
    tensor and writes another. 0 expected: the interpreter computes on numpy views of
    the tensors' memory, which torch's allocator never sees (as a GPU's would not see the
    kernel's registers); only the engine's own tensors are counted."""
    import triton
    import triton.language as tl

    @triton.jit
    def scale_kernel(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        v = tl.load(src + offs, mask=mask, other=0.0)
        tl.store(dst + offs, tl.exp(v) * 2.0 + v * v, mask=mask)

    src = torch.randn(1 << 16)
    dst = torch.empty_like(src)
    block = 4096
    launch = lambda: scale_kernel[(src.numel() // block, )](src, dst, src.numel(), BLOCK=block)
    launch()  # the interpreter's own first-call set-up is not a kernel's memory
    peak, _, _ = cpu_peak_net_bytes(launch)
    if not torch.allclose(dst, torch.exp(src) * 2 + src * src):
        raise RuntimeError('the interpreter check kernel computed wrong values')
    return peak


def memory_targets(rows: List[Tuple[str, dict]], engine: str = 'triton') -> List[str]:
    """PASS/FAIL lines of the GPU memory targets for ``engine``'s rows."""
    res = dict(rows)
    ce = res[CE]
    lines = []
    for m in METRICS:
        r = res.get(row_name(m, engine))
        if r is None:
            continue
        limit = _limit(m, gpu=True)
        ratio = r['peak'] / max(ce['peak'], 1)
        lines.append(f'- {"PASS" if ratio <= limit else "FAIL"} {m} [{engine}]: peak memory '
                     f'{ratio:.2f}x CE (target <= {limit:g}x)')
    return lines


def memory_table(rows: List[Tuple[str, dict]]) -> str:
    ce = dict(rows)[CE]
    lines = ['| loss | peak MB | x CE | kept MB | x CE | forward peak MB |',
             '|---|---:|---:|---:|---:|---:|']
    for name, r in rows:
        lines.append(f'| {name} | {r["peak"] / 1e6:.2f} | {r["peak"] / max(ce["peak"], 1):.2f} '
                     f'| {r["kept"] / 1e6:.2f} | {r["kept"] / max(ce["kept"], 1):.2f} | '
                     f'{r["fwd_peak"] / 1e6:.2f} |')
    return '\n'.join(lines)


def memory_mode(args, emit: Callable[[str], None]) -> int:
    """The memory table: cross-entropy, then every metric on each engine (default:
    ``triton``, then ``torch``), on CPU with the Triton engine under the interpreter."""
    if os.environ.get('TRITON_INTERPRET') != '1':  # imported as a module with --memory
        print('--memory needs TRITON_INTERPRET=1 before Triton is imported', file=sys.stderr)
        return 2
    import asl
    n, size, c = args.n or MEMORY_N, args.size or MEMORY_SIZE, args.c
    engines = args.engines or ['triton', 'torch']
    metrics = [m for m in METRICS if not args.only or m in args.only]
    device = torch.device('cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    emit('# Loss memory (CPU, the Triton engine under Triton\'s interpreter)\n')
    emit(f'- machine: {machine_description(device)}')
    emit(f'- torch {torch.__version__}, asl {asl.__version__}{_git_state()}'
         + (f', triton {__import__("triton").__version__}' if _has_triton() else ''))
    logits, label = make_inputs(n, c, size, args.seed)
    emit(f'- shape: logits ({n}, {c}, {size}, {size}) float32 '
         f'({logits.numel() * 4 / 1e6:.1f} MB, not counted), labels ({n}, {size}, {size}) '
         f'int64 (not counted); one forward + backward; engines: {", ".join(engines)}; '
         f'cross-entropy: torch.nn.functional.cross_entropy')
    ok = selfcheck(device, quiet=True)
    emit(f'- peak-memory method on known allocations: {"PASS" if ok else "FAIL"} '
         f'(--selfcheck prints the cases)')
    if 'triton' in engines:
        interp = interpreter_allocations()
        emit(f'- a Triton kernel run by the interpreter allocates {interp} bytes through torch '
             f'({"PASS" if interp == 0 else "FAIL"}: only the tensors the engine allocates '
             f'count, as on a GPU)')
    losses: Dict[str, torch.nn.Module] = {CE: TorchCrossEntropy()}
    for m in metrics:
        for e in engines:
            losses[row_name(m, e)] = SurrogateLoss(m, e)
    # One untimed call of each loss on a small input of the same classes first: what the
    # engines cache once per process (curve tables, generated kernels) is not counted.
    small = make_inputs(1, c, 32, args.seed + 1)
    for loss in losses.values():
        forward_backward(loss, small[0].clone().requires_grad_(), small[1])
    rows = []
    for name, loss in losses.items():
        r = memory_of(loss, logits, label)
        rows.append((name, r))
        print(f'  {name}: peak {r["peak"] / 1e6:.1f} MB, kept {r["kept"] / 1e6:.1f} MB, '
              f'{r["seconds"]:.1f} s', file=sys.stderr, flush=True)
    emit(f'- peak memory: {rows[0][1]["method"]} (torch.profiler memory events), above the '
         f'logits and labels, the input gradient included; kept: allocated after the forward, '
         f'before the backward, less the loss value')
    bad = [name for name, r in rows if not r['grad_ok']]
    if bad:
        emit(f'- error: no finite input gradient for {", ".join(bad)}')
    emit()
    emit(memory_table(rows))
    emit()
    emit('## Targets (the GPU goals)\n')
    for e in [e for e in engines if e != 'torch'] or engines:
        for line in memory_targets(rows, e):
            emit(line)
    emit()
    return 1 if bad else 0


# ----------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def forward_backward(loss: torch.nn.Module, x: torch.Tensor, label: torch.Tensor) -> float:
    out = loss(x, label, ignore_index=IGNORE_INDEX)
    if out.numel() != 1:
        out = out.sum()
    out.backward()
    return float(out.detach())


def _timed_run(loss: torch.nn.Module, logits: torch.Tensor, label: torch.Tensor,
               device: torch.device) -> Tuple[float, float]:
    """(seconds, loss value) of one forward + backward on a fresh copy of the logits."""
    x = logits.detach().clone().requires_grad_()
    _sync(device)
    t0 = time.perf_counter()
    out = loss(x, label, ignore_index=IGNORE_INDEX)
    if out.numel() != 1:
        out = out.sum()
    out.backward()
    _sync(device)
    return time.perf_counter() - t0, float(out.detach())


def measure_all(losses: Dict[str, torch.nn.Module], logits: torch.Tensor,
                label: torch.Tensor, device: torch.device, repeat: int, warmup: int,
                stat: str = 'median') -> List[Tuple[str, Dict[str, object]]]:
    """Time (s; median or min of the runs), peak memory (bytes) and loss value of
    every loss.

    The timed runs are interleaved (one run of each loss per round), so that a change
    of machine load during the benchmark affects every loss alike and the ratios stay
    meaningful on a shared machine.
    """
    times: Dict[str, List[float]] = {name: [] for name in losses}
    values: Dict[str, float] = {}
    for name, loss in losses.items():
        for _ in range(warmup):
            _, values[name] = _timed_run(loss, logits, label, device)
    for _ in range(repeat):
        for name, loss in losses.items():
            t, values[name] = _timed_run(loss, logits, label, device)
            times[name].append(t)
    rows = []
    for name, loss in losses.items():
        x = logits.detach().clone().requires_grad_()
        peak, method = peak_bytes(lambda: forward_backward(loss, x, label), device)
        del x
        ts = sorted(times[name])
        rows.append((name, dict(time=statistics.median(ts) if stat == 'median' else ts[0],
                                times=ts, peak=peak,
                                method=method, value=values.get(name, float('nan')))))
    return rows


# ----------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------
def machine_description(device: torch.device) -> str:
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        return (f'GPU {torch.cuda.get_device_name(device)} '
                f'({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}')
    from asl.utils import cpu_model
    return (f'CPU {cpu_model()}, {os.cpu_count()} logical core(s), '
            f'torch threads {torch.get_num_threads()}')


def markdown_table(rows: List[Tuple[str, Dict[str, object]]]) -> str:
    ce = dict(rows)[CE]
    lines = ['| loss | time ms | x CE | peak MB | x CE |', '|---|---:|---:|---:|---:|']
    for name, r in rows:
        t, m = r['time'], r['peak']
        mem_ratio = m / ce['peak'] if ce['peak'] > 0 else float('nan')
        lines.append(f'| {name} | {t * 1e3:.1f} | {t / ce["time"]:.2f} | {m / 1e6:.1f} | '
                     f'{mem_ratio:.2f} |')
    return '\n'.join(lines)


def target_checks(rows: List[Tuple[str, Dict[str, object]]], engines: Sequence[str],
                  gpu: bool) -> List[str]:
    """PASS/FAIL lines of the targets (module docstring) for the fast engine rows."""
    res = dict(rows)
    ce, lov = res[CE], res.get(LOVASZ)
    fast = [e for e in engines if e in ('cpp', 'triton')] or [e for e in engines
                                                               if e != 'compile']
    lines = []
    for m in METRICS:
        for e in fast:
            r = res.get(row_name(m, e))
            if r is None:
                continue
            limit = _limit(m, gpu)
            tr, mr = r['time'] / ce['time'], r['peak'] / max(ce['peak'], 1)
            lines.append(f'- {"PASS" if tr <= limit else "FAIL"} {m} [{e}]: time {tr:.2f}x CE '
                         f'(target <= {limit:g}x)')
            lines.append(f'- {"PASS" if mr <= limit else "FAIL"} {m} [{e}]: peak memory '
                         f'{mr:.2f}x CE (target <= {limit:g}x)')
            comp = res.get(row_name(m, 'compile'))
            if gpu and comp is not None:
                sp = comp['time'] / r['time']
                lines.append(f'- {"PASS" if sp >= COMPILE_SPEEDUP else "FAIL"} {m} [{e}]: '
                             f'{sp:.2f}x faster than torch.compile of the plain path '
                             f'(target >= {COMPILE_SPEEDUP:g}x)')
            if not gpu and lov is not None:
                lines.append(f'- {"PASS" if r["time"] < lov["time"] else "FAIL"} {m} [{e}]: '
                             f'{r["time"] * 1e3:.1f} ms vs LovaszLoss '
                             f'{lov["time"] * 1e3:.1f} ms (target: faster)')
    return lines


# ----------------------------------------------------------------------------------
# Agreement of the engines
# ----------------------------------------------------------------------------------
POOLED_P = ('BF1', )  # metrics pooling P: a tie's gradient may go to another position


def agreement_lines(losses: Dict[str, torch.nn.Module], logits: torch.Tensor,
                    label: torch.Tensor, engines: Sequence[str]) -> List[str]:
    """The fast engines' loss and gradient against the plain PyTorch path's on the
    benchmark's inputs (the tests' criteria: loss within 1e-5, gradient cosine similarity
    at least 0.99999, 0.999 where P is pooled)."""
    fast = [e for e in engines if e in ('cpp', 'triton')]
    lines = ['| metric | engine | loss | plain path loss | abs diff | grad cosine | '
             'max grad diff / max grad | agrees |', '|---|---|---:|---:|---:|---:|---:|---|']
    for m in METRICS:
        ref = losses.get(row_name(m, 'torch'))
        if ref is None:
            continue
        xr = logits.detach().clone().requires_grad_()
        vr = forward_backward(ref, xr, label)
        gr = xr.grad.double().flatten()
        del xr
        for e in fast:
            loss = losses.get(row_name(m, e))
            if loss is None:
                continue
            x = logits.detach().clone().requires_grad_()
            v = forward_backward(loss, x, label)
            g = x.grad.double().flatten()
            del x
            cos = float(torch.dot(g, gr) / (g.norm() * gr.norm()).clamp_min(1e-300))
            rel = float((g - gr).abs().max() / gr.abs().max().clamp_min(1e-300))
            need = 0.999 if m in POOLED_P else 0.99999
            ok = abs(v - vr) <= 1e-5 and cos >= need
            lines.append(f'| {m} | {e} | {v:.6f} | {vr:.6f} | {abs(v - vr):.1e} | {cos:.7f} | '
                         f'{rel:.1e} | {"yes" if ok else "NO"} (cosine >= {need:g}) |')
            del g
    return lines if len(lines) > 2 else []


# ----------------------------------------------------------------------------------
# Curve accuracy
# ----------------------------------------------------------------------------------
def accuracy_points(curve, dense: int, ref_points: int,
                    seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Float32 points dense near 0 (``u**4``), and the subset checked against the
    float64 reference: special values, both sides of every piece junction, and a
    random sample of the dense points."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(dense, generator=gen, dtype=torch.float64)
    special = [0.0, 1.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.5, 0.999999, 1 - 2**-24]
    for p in getattr(curve, 'points', torch.zeros(0, 2)).tolist():
        special.append(p[0])  # piece junctions (even points) and control x coordinates
    xs = torch.tensor(special, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).eps
    xs = torch.cat([xs, torch.nextafter(xs, xs + 1), torch.nextafter(xs, xs - 1),
                    xs * (1 + tiny)]).clamp(0, 1)
    dense_x = torch.cat([xs, (u**4).float()])
    pick = torch.randperm(dense, generator=gen)[:max(0, ref_points - xs.numel())]
    ref_x = torch.cat([xs, dense_x[xs.numel():][pick]])
    return dense_x, ref_x


def curve_accuracy(device: torch.device, dense: int, ref_points: int) -> List[str]:
    """Max abs error of every metric's published curves, float32 vs float64 definition:
    ``curve(x)`` on ``device``, the arithmetic every engine uses (the engines are tested
    against it)."""
    from asl.loss.surrogate import Surrogate
    lines = ['| metric | curves | max abs error | worst x | float32 range ok | target |',
             '|---|---:|---:|---:|---|---|']
    cache: Dict[str, Tuple[float, float, bool]] = {}
    for m in METRICS:
        curves = Surrogate(m, theta='paper').curves
        worst_err, worst_x, range_ok = 0.0, float('nan'), True
        for curve in curves:
            key = curve.describe()
            if key not in cache:
                dense_x, ref_x = accuracy_points(curve, dense, ref_points)
                with torch.no_grad():
                    y_all = curve(dense_x.to(device)).cpu()
                    y = curve(ref_x.to(device)).cpu().double()
                ok = bool(torch.isfinite(y_all).all() and (y_all >= 0).all() and
                          (y_all <= 1).all())
                err = (y - curve.reference(ref_x)).abs()
                i = int(err.argmax())
                cache[key] = (float(err[i]), float(ref_x[i]), ok)
            e, x, ok = cache[key]
            range_ok &= ok
            if e >= worst_err:
                worst_err, worst_x = e, x
        good = worst_err <= ACCURACY_TARGET and range_ok
        lines.append(f'| {m} | {len(curves)} | {worst_err:.2e} | {worst_x:.3g} | '
                     f'{"yes" if range_ok else "NO"} | '
                     f'{"PASS" if good else "FAIL"} (<= {ACCURACY_TARGET:g}) |')
    return lines


# ----------------------------------------------------------------------------------
# Profile
# ----------------------------------------------------------------------------------
def profile_losses(names: Sequence[str], losses: Dict[str, torch.nn.Module],
                   logits: torch.Tensor, label: torch.Tensor, device: torch.device,
                   top: int) -> None:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    sort = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    for name in names:
        key = name if name in losses else next(
            (k for k in losses if k.split(' [')[0] == name), name)
        if key not in losses:
            print(f'--profile: unknown loss {name!r}; choose from '
                  f'{", ".join(losses)} or a metric name\n')
            continue
        loss = losses[key]
        for _ in range(2):  # the first profiled run pays the profiler's own start-up
            x = logits.detach().clone().requires_grad_()
            forward_backward(loss, x, label)
            x = logits.detach().clone().requires_grad_()
            with profile(activities=activities, record_shapes=False) as prof:
                forward_backward(loss, x, label)
                _sync(device)
        print(f'## Profile: {key} (forward + backward, top {top} ops by self time)\n')
        print(prof.key_averages().table(sort_by=sort, row_limit=top))
        print()


# ----------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:i]'. Default: cpu")
    p.add_argument('--n', type=int, help='batch size (default: 2 on CPU, 8 on GPU)')
    p.add_argument('--c', type=int, default=21, help='number of classes (default: 21)')
    p.add_argument('--size', type=int, help='height = width (default: 256 on CPU, 512 on GPU)')
    p.add_argument('--repeat', type=int, help='timed runs per loss (default: 10 CPU, 20 GPU)')
    p.add_argument('--warmup', type=int, help='untimed runs first (default: 2 CPU, 5 GPU)')
    p.add_argument('--stat', choices=('median', 'min'), default='median',
                   help='time statistic over the runs (default: median; min is more robust '
                   'on a machine shared with other work)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0, help='input seed (default: 0)')
    p.add_argument('--out', help='also write the report (Markdown) to this file')
    p.add_argument('--only', nargs='+', metavar='NAME',
                   help='benchmark only these losses (metric names or DiceLoss; '
                   'CrossEntropyLoss and LovaszLoss are always included)')
    p.add_argument('--no-mmseg', action='store_true',
                   help="leave MMSeg's losses out even if MMSeg is importable (what a machine "
                   'without it gets: torch cross-entropy, no Dice or Lovasz rows)')
    p.add_argument('--engines', nargs='+', choices=ENGINES,
                   help='engines of the surrogate rows (default: cpp on CPU; torch, compile '
                   'and triton on CUDA)')
    p.add_argument('--accuracy', dest='accuracy', action='store_true', default=True,
                   help='check the float32 curves against their float64 definition (default)')
    p.add_argument('--no-accuracy', dest='accuracy', action='store_false',
                   help='skip the curve accuracy check')
    p.add_argument('--accuracy-points', type=int, default=20000,
                   help='float32 points per curve (default: 20000)')
    p.add_argument('--ref-points', type=int, default=2000,
                   help='of those, points checked against the slow float64 reference '
                   '(default: 2000)')
    p.add_argument('--no-bench', action='store_true', help='skip the timing/memory table')
    p.add_argument('--selfcheck', action='store_true',
                   help='verify the peak-memory method on known allocations first')
    p.add_argument('--profile', nargs='+', metavar='NAME', default=[],
                   help='also profile these losses (e.g. mIoU BF1) and print the top ops '
                   'by self time')
    p.add_argument('--top', type=int, default=15, help='rows of each --profile table')
    p.add_argument('--memory', action='store_true',
                   help='memory mode: on CPU, the peak and kept memory of the Triton engine '
                   '(under Triton\'s interpreter, set by the script), the plain PyTorch path '
                   'and cross-entropy against the GPU targets (default: N=1, C=21, 128x128; '
                   'no timing or accuracy tables)')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    global _NO_MMSEG
    _NO_MMSEG = args.no_mmseg
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('CUDA is not available', file=sys.stderr)
        return 2
    gpu = device.type == 'cuda'
    if gpu and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    n = args.n or (8 if gpu else 2)
    size = args.size or (512 if gpu else 256)
    repeat = args.repeat or (20 if gpu else 10)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 2)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: List[str] = []

    def emit(text: str = '') -> None:
        print(text, flush=True)
        report.append(text)

    if args.selfcheck:
        selfcheck(device)

    if args.memory:
        if gpu:
            print('--memory measures on CPU (the GPU benchmark measures CUDA memory itself)',
                  file=sys.stderr)
            return 2
        rc = memory_mode(args, emit)
        _write_report(args.out, report)
        return rc

    import asl
    engines = args.engines or (['torch', 'compile', 'triton'] if gpu else ['cpp'])
    shape = f'logits ({n}, {args.c}, {size}, {size}) float32, labels ({n}, {size}, {size})'
    emit('# Loss benchmark\n')
    emit(f'- machine: {machine_description(device)}')
    emit(f'- torch {torch.__version__}, asl {asl.__version__}{_git_state()}'
         + (f', mmseg {__import__("mmseg").__version__}' if _has_mmseg() else '')
         + (f', triton {__import__("triton").__version__}' if _has_triton() else ''))
    if not args.no_bench:
        emit(f'- shape: {shape}; forward + backward; {args.stat} of {repeat} '
             f'interleaved runs after {warmup} warm-up runs; engines: {", ".join(engines)}')

    if not args.no_bench or args.profile:
        logits, label = make_inputs(n, args.c, size, args.seed)
        ignored = float((label == IGNORE_INDEX).float().mean())
        emit(f'- labels: {label[label != IGNORE_INDEX].unique().numel()} classes present, '
             f'{ignored:.1%} pixels ignore_index={IGNORE_INDEX}')
        logits, label = logits.to(device), label.to(device)
        notes: List[str] = []
        losses, compile_s = build_losses(device, engines, args.only, logits, label, notes)
        for note in notes:
            emit(f'- note: {note}')

    if not args.no_bench:
        rows = measure_all(losses, logits, label, device, repeat, warmup, args.stat)
        method = rows[0][1]['method']
        for name, r in rows:
            ts = r['times']
            print(f'  {name}: median {r["time"] * 1e3:.1f} ms (min {ts[0] * 1e3:.1f}, max '
                  f'{ts[-1] * 1e3:.1f}), {r["peak"] / 1e6:.1f} MB, loss {r["value"]:.4f}',
                  file=sys.stderr, flush=True)
        emit(f'- peak memory: {method}' + ('' if gpu else ' (torch.profiler memory events)'))
        emit()
        emit(markdown_table(rows))
        emit()
        if compile_s:
            emit('torch.compile of the plain path, first call (compiles; not in the timings):\n')
            emit('| loss | first call s |')
            emit('|---|---:|')
            for name, t in compile_s.items():
                emit(f'| {name} | {t:.1f} |')
            emit()
        emit('## Targets\n')
        for line in target_checks(rows, engines, gpu):
            emit(line)
        emit()
        agree = agreement_lines(losses, logits, label, engines)
        if agree:
            emit('## Agreement with the plain PyTorch path (same inputs)\n')
            for line in agree:
                emit(line)
            emit()

    if args.accuracy:
        if args.no_bench:
            emit()
        emit(f'## Curve accuracy (float32 on {device.type} vs float64 definition; '
             f'{args.accuracy_points} points per curve dense near 0, '
             f'{args.ref_points} of them against the reference)\n')
        for line in curve_accuracy(device, args.accuracy_points, args.ref_points):
            emit(line)
        emit()

    if args.profile:
        profile_losses(args.profile, losses, logits, label, device, args.top)

    _write_report(args.out, report)
    return 0


def _write_report(path: Optional[str], report: List[str]) -> None:
    if path:
        with open(path, 'w') as f:
            f.write('\n'.join(report) + '\n')
        print(f'report written to {path}')


def _git_state() -> str:
    """' (git <commit>[, asl/ modified])' when run from a git checkout, else ''."""
    import subprocess
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--', 'asl', 'setup.py'],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ''
    if head.returncode != 0:
        return ''
    return f' (git {head.stdout.strip()}' + (', asl/ modified' if dirty.stdout.strip() else
                                             '') + ')'


_NO_MMSEG = False


def _has_mmseg() -> bool:
    import importlib.util
    return not _NO_MMSEG and importlib.util.find_spec('mmseg') is not None


def _has_triton() -> bool:
    import importlib.util
    return importlib.util.find_spec('triton') is not None


if __name__ == '__main__':
    sys.exit(main())
