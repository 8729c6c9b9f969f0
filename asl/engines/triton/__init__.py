"""The Triton engine: a :class:`~asl.engines.ir.FusedProgram` on CUDA tensors.

How it evaluates the surrogate's sums and their gradient (all in float32, whatever the
logits' dtype: float32, float16 or bfloat16; the gradient is returned in the logits'
dtype):

* **without pools** (mIoU, FWIoU, mAcc, gAcc, and BIoU once its band is computed): one
  kernel reads each tile of logits once, computes the softmax, runs the final program
  (``G = 0``) on every class and the correction program on each pixel's labelled class
  only (so mIoU evaluates one curve per element, not two), and sums its tiles per class
  (each block — a Triton "program", one kernel instance — sums several tiles in float64,
  so the partial sums are a small (N, blocks, statistics, classes) buffer, :func:`stats_split`); the backward pass is one kernel that recomputes the softmax from the
  logits, runs the reverse sweeps and the softmax backward, and writes the logits'
  gradient. Nothing of size (N, C, H, W) is kept between the two;
* **with pools** (BF1, formulas with ``erode``/``dilate``): each stage's input map is
  computed by a generated kernel (binary maps that do not depend on ``P`` are stored as
  bytes) and pooled in two separable passes (along H, then W; an erosion of ``G`` reads
  the labels directly). A pool of a ``P``-dependent map also stores, per pass, the offset
  of each window's winner (int8), which is all its backward pass needs. The forward pass
  keeps only the stage maps the reverse sweeps read and those offsets; the backward pass
  writes ``dL/dP`` and the stage maps' adjoints, routes each pool's adjoint to its winners
  by gathering (each position sums the adjoints of the windows it won, in a fixed order),
  runs the stage programs backwards, and ends with the softmax backward;
* the class maxima of ``P``-independent maps (BIoU's band) run in map mode first.

Determinism: no kernel uses atomics; each block sums its tiles in a fixed order and the
blocks' partial sums are reduced by torch in float64 in an order fixed by the shapes, so
the loss and the gradient are bit-identical from run to run on the same device and
inputs, with or without ``torch.use_deterministic_algorithms(True)``. Ties in a pool go
to the first position of the window (as in the PyTorch reference).

No host synchronisation in a training step: the curve table is sent to a device once per
curve list, constants are fills, and labels are checked by the forward kernel, whose flag
is read at once only on the first calls (:class:`LabelFlags`): later, a value that is
neither a class index nor ``ignore_index`` raises a ``ValueError`` a call or two after
the one that read it.

Compiled arithmetic (what the engine promises on a GPU): the kernels are compiled with
Triton's defaults (fused multiply-adds, the hardware's approximate ``exp``), except
where a rounding error would be amplified: the curves' square roots and divisions, and
the softmax's normalisation, are correctly rounded (``sqrt_rn``, ``div_rn``). Each
probability then carries a relative error of a few 1e-7 (about 2 ulp of ``exp``), so on
a GPU the surrogate is within 1e-5 of the PyTorch path's and the gradient has a cosine
similarity of at least 0.9999 with it, per element within 1e-5 plus 1e-3 of its size
(``tests/test_engine_triton.py``'s CUDA tolerances); through the interpreter (numpy's
float32, no fusion) the tests hold it to 1e-6 and 0.99999. Bit-identical run to run in
both.

The kernels are generated per fused program and curve piece counts
(:mod:`asl.engines.triton.codegen`), written to a cache folder (``$ASL_TRITON_CACHE``,
default ``<tmp>/asl_triton_<user>``) and imported from there, which Triton needs to read
their source. On CPU tensors the engine runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how the tests check it.
"""
from __future__ import annotations

import getpass
import hashlib
import importlib.util
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...curves import MIN_SLOPE_DENOMINATOR, Curve
from ...utils import atomic_write_text
from .. import ir
from ..ir import Op
from ..lower import curve_table
from ..reference import check_labels

__all__ = ['available', 'stat_sums', 'class_max', 'record_launches', 'LabelFlags', 'LABELS']


def available() -> bool:
    """Whether Triton is installed."""
    return importlib.util.find_spec('triton') is not None


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def tile_block(cp: int) -> int:
    """Pixels per tile for ``cp`` padded classes: about 2048 elements per tile (a power
    of two between 16 and 256)."""
    return max(16, min(256, 2048 // cp))


POOL_BLOCK = 512

#: ``stats_fwd`` runs about this many blocks in all, each summing at least
#: ``max(MIN_TILES, CP / 2)`` tiles: enough blocks to fill a large GPU, while its buffer
#: of float64 partial sums (``8 * CP`` bytes per statistic and program) stays a few
#: percent of the logits it sums (a tile holds about 2048 of them), whatever the image
#: size and the number of classes.
STATS_BLOCKS = 2048
MIN_TILES = 4


def stats_split(n: int, tiles: int, cp: int) -> Tuple[int, int]:
    """``(blocks per image, tiles per block)`` of ``stats_fwd`` for ``n`` images of
    ``tiles`` tiles each with ``cp`` padded classes; tiles per block is a power of two
    (a compile-time loop count: few variants) and their product covers the tiles."""
    least = max(MIN_TILES, cp // 2)
    blocks = max(1, min(-(-tiles // least), -(-STATS_BLOCKS // max(n, 1))))
    per = _next_pow2(-(-tiles // blocks))
    return -(-tiles // per), per


_RECORDER: Optional[list] = None


class record_launches:
    """Context manager recording every kernel launch as ``(module file, kernel name,
    argument types, constexprs)`` (to compile them ahead of time for a GPU,
    ``tools/gpu/compile_kernels.py``)."""

    def __enter__(self):
        global _RECORDER
        self.launches: list = []
        _RECORDER = self.launches
        return self.launches

    def __exit__(self, *exc):
        global _RECORDER
        _RECORDER = None
        return False


_TYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16',
          torch.float64: 'fp64', torch.uint8: 'u8', torch.int8: 'i8', torch.int16: 'i16',
          torch.int32: 'i32', torch.int64: 'i64', torch.bool: 'i1'}


class LabelFlags:
    """The forward kernel's counts of invalid labels, checked without stalling a GPU.

    The first ``sync_calls`` calls on each device are checked at once (a device-to-host
    read: a wrong label in the data fails the first iteration, with the values named by
    :func:`asl.engines.reference.check_labels`). After them a call on a CUDA device only queues
    its flag: a device-side ``any``, copied into a pinned host slot behind a CUDA event.
    Each later call looks (without waiting) at the flags whose events have completed
    and raises the same ``ValueError`` for the oldest bad one, so a bad label is reported
    a call or two after the one that read it (naming the call), and the CPU never waits
    for the GPU inside the loss. :meth:`flush` waits for and checks everything queued.
    CPU tensors (the interpreter) are always checked at once.

    ``reads`` counts the blocking reads (tests).
    """

    def __init__(self, sync_calls: int = 2):
        self.sync_calls = sync_calls
        self.calls: Dict[torch.device, int] = {}
        self.pending: list = []  # (call number, event, pinned flag, C, ignore_index)
        self.free: list = []  # pinned slots to reuse
        self.reads = 0

    def check(self, bad: torch.Tensor, label: torch.Tensor, num_classes: int,
              ignore_index: int) -> None:
        dev = bad.device
        k = self.calls.get(dev, 0) + 1
        self.calls[dev] = k
        if dev.type != 'cuda' or k <= self.sync_calls:
            self.reads += 1
            if bool(bad.any()):
                _raise_labels(label, num_classes, ignore_index)
            return
        self.poll()
        slot = self.free.pop() if self.free else torch.empty((), dtype=torch.bool,
                                                                pin_memory=True)
        slot.copy_(bad.any(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((k, event, slot, num_classes, ignore_index))

    def poll(self, wait: bool = False) -> None:
        """Check the queued flags whose copies have completed (all of them with
        ``wait``); raise for the first bad one."""
        while self.pending and (wait or self.pending[0][1].query()):
            k, event, slot, num_classes, ignore_index = self.pending.pop(0)
            event.synchronize()
            if bool(slot):
                self.pending.clear()
                raise ValueError(f'label values outside [0, {num_classes}) that are not '
                                 f'ignore_index={ignore_index} were read by call {k} of '
                                 'the Triton engine on this device (found after it ran; '
                                 'the first calls are checked at once and name the values)')
            self.free.append(slot)

    def flush(self) -> None:
        """Wait for every queued flag and raise if one is bad."""
        self.poll(wait=True)


def _raise_labels(label: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    check_labels(label, num_classes, ignore_index)  # raises the ValueError naming them
    raise ValueError('invalid label values')  # pragma: no cover


#: The engine's label checks (one per process).
LABELS = LabelFlags()


def _launch(kernel, grid, *args, **meta):
    if _RECORDER is not None:
        fn = getattr(kernel, 'fn', kernel)
        types = [f'*{_TYPES[a.dtype]}' if isinstance(a, torch.Tensor) else
                 ('i64' if abs(int(a)) >= 2**31 else 'i32') for a in args]
        _RECORDER.append((fn.__code__.co_filename, fn.__name__, types, dict(meta)))
    kernel[grid](*args, **meta)


# ----------------------------------------------------------------------------------
# Generated kernels
# ----------------------------------------------------------------------------------
def cache_dir() -> str:
    """Where the generated kernel modules are written."""
    d = os.environ.get('ASL_TRITON_CACHE')
    if not d:
        try:
            user = getpass.getuser()
        except Exception:  # pragma: no cover - no user name
            user = str(os.getuid())
        d = os.path.join(tempfile.gettempdir(), f'asl_triton_{user}')
    os.makedirs(d, exist_ok=True)
    return d


_MODULES: Dict[str, object] = {}


def _import_source(source: str):
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    mod = _MODULES.get(key)
    if mod is not None:
        return mod
    name = f'asl_fused_{key}'
    path = os.path.join(cache_dir(), name + '.py')
    if not os.path.exists(path) or open(path).read() != source:
        atomic_write_text(path, source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    _MODULES[key] = mod
    return mod


class Kernels:
    """The generated kernels of one fused program and curve piece counts, and what the
    engine derives from the program: which stages pool the labels directly, and which
    maps the backward pass reads."""

    def __init__(self, fp: ir.FusedProgram, pieces: Tuple[int, ...]):
        from . import codegen
        self.fp = fp
        source, first = codegen.generate(fp, pieces, MIN_SLOPE_DENOMINATOR)
        self.module = _import_source(source)
        self.first_writes = set(first)
        self.from_labels = [
            not st.direct_p and len(st.input.instrs) == 1 and st.input.instrs[0].op is Op.G
            and st.input.outputs[0].reg == 0 for st in fp.stages]
        # the stage maps a reverse sweep reads
        self.keep_in = [False] * len(fp.stages)
        self.keep_out = [False] * len(fp.stages)
        progs = [fp.final, fp.correction] + [st.input for st in fp.stages
                                             if st.active and not st.direct_p]
        for prog in progs:
            if prog is None:
                continue
            for ins in prog.instrs:
                if ins.needed and ins.op is Op.STAGE_IN:
                    self.keep_in[ins.a] = True
                if ins.needed and ins.op is Op.POOL:
                    self.keep_out[ins.a] = True


_KERNELS: Dict[tuple, Kernels] = {}


def kernels_for(fp: ir.FusedProgram, pieces: Tuple[int, ...]) -> Kernels:
    key = (id(fp), pieces)
    k = _KERNELS.get(key)
    if k is None or k.fp is not fp:
        k = Kernels(fp, pieces)
        _KERNELS[key] = k
    return k


class _Tables:
    """The curve table of the last curve list, per device."""

    def __init__(self):
        self.curves = None
        self.by_device: Dict[torch.device, torch.Tensor] = {}
        self.pieces: Tuple[int, ...] = ()

    def get(self, fp: ir.FusedProgram, curves: Sequence[Curve], device) -> torch.Tensor:
        if self.curves != tuple(curves):
            table, ks = curve_table(curves, fp.num_curves)
            self.cpu = table.float().contiguous()
            self.pieces = tuple(int(k) for k in ks.tolist())
            self.by_device = {}
            self.curves = tuple(curves)
        t = self.by_device.get(device)
        if t is None:
            t = self.by_device[device] = self.cpu.to(device)
        return t


_TABLES: Dict[int, Tuple[ir.FusedProgram, _Tables]] = {}


def _tables(fp: ir.FusedProgram) -> _Tables:
    entry = _TABLES.get(id(fp))
    if entry is None or entry[0] is not fp:
        entry = (fp, _Tables())
        _TABLES[id(fp)] = entry
    return entry[1]


# ----------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------
class _Call:
    """The shapes and launch settings of one call."""

    def __init__(self, fp: ir.FusedProgram, kernels: Kernels, x: torch.Tensor,
                 label: torch.Tensor, table: torch.Tensor, extras: Sequence[torch.Tensor],
                 ignore_index: int, num_classes: int):
        self.fp, self.k = fp, kernels
        self.N, self.H, self.W = label.shape
        self.C = num_classes
        self.HW = self.H * self.W
        self.CP = _next_pow2(self.C)
        self.BLOCK = tile_block(self.CP)
        self.T = -(-self.HW // self.BLOCK)
        self.device = label.device
        self.x, self.label, self.table = x, label, table
        self.extras = list(extras)
        self.ignore_index = int(ignore_index)
        self.dummy = torch.zeros(1, dtype=torch.float32, device=self.device)

    def args(self, dst=None, w=None, bad=None, dp=None, maps_in=(), maps_out=(), ain=(),
             aout=(), c_lo=0) -> list:
        d = self.dummy
        out = [self.x if self.x is not None else d, self.label, self.table,
               d if w is None else w, d if dst is None else dst, d if bad is None else bad,
               d if dp is None else dp]
        out += self.extras
        J = len(self.fp.stages)
        for j in range(J):
            for lst in (maps_in, maps_out, ain, aout):
                t = lst[j] if j < len(lst) else None
                out.append(d if t is None else t)
        return out + [self.C, self.HW, self.ignore_index, c_lo, self.T]

    def launch(self, name: str, blocks: Optional[int] = None, meta=None, **kw) -> None:
        """Launch a generated kernel on (``blocks`` or one per tile) x images."""
        kernel = getattr(self.k.module, name)
        _launch(kernel, (blocks or self.T, self.N), *self.args(**kw), CP=self.CP,
                BLOCK=self.BLOCK, **(meta or {}))

    def new(self, dtype) -> torch.Tensor:
        return torch.empty((self.N, self.C, self.H, self.W), dtype=dtype, device=self.device)

    def pool(self, j: int, src: Optional[torch.Tensor], dtype, offsets: bool):
        """Stage j's pool of ``src`` (or of the labels' one-hot map): the pooled map and,
        with ``offsets``, the winners' offsets of the two passes."""
        st = self.fp.stages[j]
        from_labels = src is None
        odt = torch.int8 if st.radius <= 127 else torch.int16
        off_h = self.new(odt) if offsets else None
        off_w = self.new(odt) if offsets else None
        tmp, out = self.new(dtype), self.new(dtype)
        grid = (-(-self.HW // POOL_BLOCK), self.N * self.C)
        from . import kernels as K
        d = self.dummy
        for src_t, dst, off, along_w, lab in ((src, tmp, off_h, False, from_labels),
                                              (tmp, out, off_w, True, False)):
            _launch(K.pool_pass, grid, d if src_t is None else src_t, self.label, dst,
                    d if off is None else off, self.C, self.H, self.W, R=st.radius,
                    ALONG_W=along_w, IS_MIN=st.pool is ir.Pool.MIN, FROM_LABELS=lab,
                    WRITE_OFF=offsets, BLOCK=POOL_BLOCK)
        return out, (off_h, off_w)

    def stages_forward(self, need_grad: bool):
        """Every stage's input and pooled maps (None where not materialized) and the
        offsets of the pools of P-dependent maps."""
        J = len(self.fp.stages)
        maps_in: List[Optional[torch.Tensor]] = [None] * J
        maps_out: List[Optional[torch.Tensor]] = [None] * J
        offsets: List[tuple] = [(None, None)] * J
        for j, st in enumerate(self.fp.stages):
            dtype = torch.uint8 if st.binary and not st.active else torch.float32
            src = None
            if not self.k.from_labels[j]:
                src = self.new(dtype)
                self.launch(f'stage_fwd_{j}', dst=src, maps_in=maps_in, maps_out=maps_out)
                maps_in[j] = src
            keep_off = need_grad and st.active
            maps_out[j], offsets[j] = self.pool(j, src, dtype, keep_off)
        return maps_in, maps_out, offsets


def _forward(fp: ir.FusedProgram, kern: Kernels, x: torch.Tensor, label: torch.Tensor,
             table: torch.Tensor, extras, ignore_index: int, need_grad: bool):
    """The (S, C) sums, and what the backward pass reads (None without a gradient): the
    kept stage maps and pool offsets, as a flat list of tensors or None
    (:func:`_unflatten`)."""
    call = _Call(fp, kern, x, label, table, extras, ignore_index, x.shape[1])
    maps_in, maps_out, offsets = call.stages_forward(need_grad)
    S = len(fp.final.outputs)
    G, tiles = stats_split(call.N, call.T, call.CP)
    part = torch.empty((call.N, G, S, call.CP), dtype=torch.float64, device=call.device)
    bad = torch.empty((call.N, G), dtype=torch.int32, device=call.device)
    call.launch('stats_fwd', blocks=G, meta=dict(TILES=tiles), dst=part, bad=bad,
                maps_in=maps_in, maps_out=maps_out)
    LABELS.check(bad, label, call.C, ignore_index)
    sums = part.sum((0, 1))[:, :call.C].to(torch.float32)
    del part
    if not need_grad:
        return sums, None
    kept: List[Optional[torch.Tensor]] = []
    for j in range(len(fp.stages)):
        kept += [maps_in[j] if kern.keep_in[j] else None,
                 maps_out[j] if kern.keep_out[j] else None, *offsets[j]]
    return sums, kept


def _unflatten(kept: Sequence[Optional[torch.Tensor]]):
    """``(maps_in, maps_out, offsets)`` of the flat list :func:`_forward` returns."""
    J = len(kept) // 4
    return ([kept[4 * j] for j in range(J)], [kept[4 * j + 1] for j in range(J)],
            [(kept[4 * j + 2], kept[4 * j + 3]) for j in range(J)])


def _backward(fp: ir.FusedProgram, kern: Kernels, x: torch.Tensor, label: torch.Tensor,
              table: torch.Tensor, extras, ignore_index: int, kept, grad: torch.Tensor):
    call = _Call(fp, kern, x, label, table, extras, ignore_index, x.shape[1])
    maps_in, maps_out, offsets = _unflatten(kept)
    del kept
    S, C = grad.shape
    w = torch.zeros((S, call.CP), dtype=torch.float32, device=call.device)
    w[:, :C] = grad.float()
    dx = torch.empty_like(x)
    J = len(fp.stages)
    if J == 0:
        call.launch('stats_bwd', dst=dx, w=w)
        return dx
    dp = call.new(torch.float32)
    ain: List[Optional[torch.Tensor]] = [None] * J
    aout: List[Optional[torch.Tensor]] = [None] * J
    for j, st in enumerate(fp.stages):
        if not st.active:
            continue
        first = kern.first_writes
        aout[j] = call.new(torch.float32) if (Op.POOL, j) in first else torch.zeros(
            (call.N, C, call.H, call.W), device=call.device)
        if not st.direct_p:
            ain[j] = call.new(torch.float32) if (Op.STAGE_IN, j) in first else torch.zeros(
                (call.N, C, call.H, call.W), device=call.device)
    call.launch('stats_bwd', w=w, dp=dp, maps_in=maps_in, maps_out=maps_out, ain=ain,
                aout=aout)
    from . import kernels as K
    grid = (-(-call.HW // POOL_BLOCK), call.N * C)
    for j in reversed(range(J)):
        st = fp.stages[j]
        if not st.active:
            continue
        off_h, off_w = offsets[j]
        tmp = call.new(torch.float32)
        _launch(K.pool_grad_pass, grid, aout[j], off_w, tmp, call.H, call.W, R=st.radius,
                ALONG_W=True, ACCUMULATE=False, BLOCK=POOL_BLOCK)
        target = dp if st.direct_p else ain[j]
        _launch(K.pool_grad_pass, grid, tmp, off_h, target, call.H, call.W, R=st.radius,
                ALONG_W=False, ACCUMULATE=True, BLOCK=POOL_BLOCK)
        del tmp
        aout[j] = None
        if not st.direct_p:
            call.launch(f'stage_bwd_{j}', dp=dp, maps_in=maps_in, maps_out=maps_out, ain=ain,
                        aout=aout)
            ain[j] = None
    _launch(K.softmax_backward, (call.T, call.N), x, dp, dx, C, call.HW, CP=call.CP,
            BLOCK=call.BLOCK)
    return dx


def _device_guard(device: torch.device):
    if device.type == 'cuda':
        return torch.cuda.device(device)
    import contextlib
    return contextlib.nullcontext()


class _TritonStats(torch.autograd.Function):
    """The program's (S, C) sums of ``softmax(x, 1)``; the gradient is the logits'.

    Everything the backward pass reads (the logits, labels, curve table, extras, the kept
    stage maps and pool offsets) goes through ``save_for_backward``: autograd frees it
    when the backward pass has run (or with the graph), never later, so nothing of a
    finished iteration is alive during the next one."""

    @staticmethod
    def forward(ctx, x, label, fp, kern, table, ignore_index, num_extras, *extras):
        need = ctx.needs_input_grad[0]
        with _device_guard(x.device):
            sums, kept = _forward(fp, kern, x, label, table, extras, ignore_index, need)
        if need:
            ctx.save_for_backward(x, label, table, *extras, *kept)
            ctx.fp, ctx.kern, ctx.ignore_index = fp, kern, ignore_index
            ctx.num_extras = num_extras
        return sums

    @staticmethod
    def backward(ctx, grad):
        x, label, table, *rest = ctx.saved_tensors
        extras, kept = rest[:ctx.num_extras], rest[ctx.num_extras:]
        del rest
        with _device_guard(x.device):
            dx = _backward(ctx.fp, ctx.kern, x, label, table, extras, ctx.ignore_index,
                           kept, grad.contiguous())
        return (dx, None, None, None, None, None, None) + (None, ) * len(extras)


def _check(x: torch.Tensor) -> None:
    if x.device.type == 'cpu' and os.environ.get('TRITON_INTERPRET', '0') != '1':
        raise RuntimeError('the Triton engine runs on CPU tensors only under Triton\'s '
                           'interpreter (TRITON_INTERPRET=1)')


def stat_sums(fp: ir.FusedProgram, curves: Sequence[Curve], x: torch.Tensor,
              label: torch.Tensor, ignore_index: int,
              extras: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S, C) float32 sums of the program's statistics of ``P = softmax(x, 1)``,
    differentiable with respect to the logits ``x`` (float32, float16 or bfloat16)."""
    _check(x)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f'logits must be a floating tensor, got {x.dtype}')
    tabs = _tables(fp)
    table = tabs.get(fp, curves, x.device)
    kern = kernels_for(fp, tabs.pieces)
    xs = [e.to(device=x.device, dtype=torch.float32).contiguous() for e in extras]
    return _TritonStats.apply(x.contiguous(), label.contiguous(), fp, kern, table,
                              int(ignore_index), len(xs), *xs)


def class_max(fp: ir.FusedProgram, skip_bg: bool, curves: Sequence[Curve], label: torch.Tensor,
              x: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """The (N, 1, H, W) float32 class maximum of a map-mode program (``P``-independent);
    ``x`` (N, C, H, W), the logits, gives the number of classes (its values are not
    read)."""
    n, h, w = label.shape
    num_classes, dtype = x.shape[1], torch.float32
    c_lo = 1 if skip_bg else 0
    if num_classes - c_lo <= 0:
        return torch.zeros((n, 1, h, w), dtype=dtype, device=label.device)
    tabs = _tables(fp)
    table = tabs.get(fp, curves, label.device)
    kern = kernels_for(fp, tabs.pieces)
    label = label.contiguous()
    with torch.no_grad(), _device_guard(label.device):
        call = _Call(fp, kern, None, label, table, [], ignore_index, num_classes)
        maps_in, maps_out, _ = call.stages_forward(False)
        out = torch.empty((n, 1, h, w), dtype=torch.float32, device=label.device)
        call.launch('map_fwd', dst=out, maps_in=maps_in, maps_out=maps_out, c_lo=c_lo)
    return out.to(dtype)
