"""The Triton engine (asl.engines.triton) against the plain PyTorch reference.

On a machine with a GPU the kernels run compiled on CUDA tensors; elsewhere they run on
CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, which ``conftest.py``
sets before anything imports Triton). The same tests, unmodified, check both.

Tolerances (what the engine promises, see ``asl.engines.triton``): through the
interpreter, values within 1e-6, gradients within 1e-5 per element and a cosine similarity
of at least 0.99999; compiled on a GPU (fused multiply-adds, approximate ``exp``), values
within 1e-5, gradients within 1e-5 plus 1e-3 of their size per element and a cosine of at
least 0.9999. Where pools have ties the cosine only needs 0.999, since which tied position
receives a gradient is not part of the definition.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
pytest.importorskip('triton')
if not CUDA and os.environ.get('TRITON_INTERPRET') != '1':
    pytest.skip('no GPU, and TRITON_INTERPRET=1 was not set before Triton was imported',
                allow_module_level=True)

from asl import Surrogate  # noqa: E402
from asl.engines.dispatch import engine_for  # noqa: E402
from asl.engines.dispatch import surrogate_value as engine_value  # noqa: E402
from asl.engines.reference import surrogate_value as reference_value  # noqa: E402

from conftest import blob_labels  # noqa: E402

DEVICE = torch.device('cuda' if CUDA else 'cpu')
METRICS = ['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1']
USER = ('x = P ^ G; 0.5 * mean_c(sum(M * (P & G)) / sum(M * (P | ~G))) + '
        'mean_c(sum(x * dilate(x, 1) + erode(1 - G) * P) / sum(G + 1))')


def case(kind='all', c=5, n=2, h=20, w=24, seed=9):
    """Logits and labels: every class present ('all'), classes absent from an image or
    from the batch ('absent'), many ignored pixels ('ignored'), or logits with many
    exact ties ('ties')."""
    label = blob_labels(n, c, h, w, seed=seed, all_classes=(kind == 'all'),
                        ignore_frac=0.3 if kind == 'ignored' else 0.05)
    if kind == 'absent':
        label[label == 3] = 1  # class 3 absent from the batch
        label[0][label[0] == 4] = 2  # class 4 absent from the first image
    g = torch.Generator().manual_seed(seed + 1)
    logits = torch.randn(n, c, h, w, generator=g) * 3
    if kind == 'ties':
        logits = (logits * 2).round() / 2
    return logits, label


def random_surrogate(formula, seed=2, **kw):
    s0 = Surrogate(formula, **kw)
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(s0.num_params(raw=True), generator=g).tolist()
    return Surrogate(formula, raw_theta=raw, **kw)


def run(s, logits, label, dtype=torch.float32):
    """(engine value, engine gradient, reference value, reference gradient)."""
    x = logits.to(DEVICE, dtype).requires_grad_()
    lab = label.to(DEVICE)
    v = engine_value(s.compiled, s.curves, x, lab, backend='triton')
    (g, ) = torch.autograd.grad(v, x)
    xr = logits.to(dtype).float().requires_grad_()
    vr = reference_value(s.compiled, s.curves, xr, label)
    (gr, ) = torch.autograd.grad(vr, xr)
    return v.item(), g.cpu(), vr.item(), gr


#: (value, gradient per element: absolute, relative to the reference; cosine)
TOL = dict(value=1e-5, grad_abs=1e-5, grad_rel=1e-3, cos=0.9999) if CUDA else \
    dict(value=1e-6, grad_abs=1e-5, grad_rel=0.0, cos=0.99999)


def check(s, logits, label, ties=False, dtype=torch.float32):
    v, g, vr, gr = run(s, logits, label, dtype)
    assert abs(v - vr) <= TOL['value'], (v, vr)
    assert g.dtype == dtype and g.shape == gr.shape
    g = g.float()
    if gr.abs().max() == 0:  # (one class: the softmax is constant)
        assert g.abs().max() == 0
        return v
    cos = torch.nn.functional.cosine_similarity(g.flatten(), gr.flatten(), dim=0).item()
    assert cos >= (0.999 if ties else TOL['cos']), cos
    if not ties:
        # half-precision gradients are rounded to their dtype
        slack = 0.0 if dtype == torch.float32 else torch.finfo(dtype).eps * gr.abs()
        bound = TOL['grad_abs'] + TOL['grad_rel'] * gr.abs() + slack
        assert ((g - gr).abs() <= bound).all(), (g - gr).abs().max().item()
    return v


@pytest.mark.parametrize('metric', METRICS)
def test_published_parameters(metric):
    check(Surrogate(metric, theta='paper'), *case())


@pytest.mark.parametrize('kind', ['all', 'absent', 'ignored'])
@pytest.mark.parametrize('metric', METRICS + ['mIoU + BIoU', USER])
def test_random_curves(metric, kind):
    check(random_surrogate(metric), *case(kind))


@pytest.mark.parametrize('metric', ['mIoU', 'BF1', USER])
def test_ties(metric):
    check(random_surrogate(metric), *case('ties'), ties=True)


@pytest.mark.parametrize('metric', ['BF1', USER])
def test_exact_ties_go_to_the_first_position(metric):
    """Logits constant over each labelled region: the pooled maps tie exactly over whole
    windows, in both evaluations alike, and the gradient of each window goes to its first
    position in both (checked per element)."""
    _, label = case()
    g = torch.Generator().manual_seed(3)
    table = torch.randn(label.shape[0], 6, 5, generator=g) * 2  # per region (+ ignored)
    idx = torch.where(label == 255, 5, label)
    logits = torch.stack([table[i][idx[i]] for i in range(label.shape[0])])  # (N, H, W, C)
    logits = logits.permute(0, 3, 1, 2).contiguous()
    check(random_surrogate(metric), logits, label)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('metric', ['mIoU', 'BF1'])
def test_half_precision_logits(metric, dtype):
    """fp16 / bf16 logits are read as they are and computed in float32; the gradient
    comes back in their dtype."""
    check(random_surrogate(metric), *case(), dtype=dtype)


@pytest.mark.parametrize('tol', [0, 1, 5, 10])
@pytest.mark.parametrize('metric', ['BIoU', 'BF1'])
def test_tolerances(metric, tol):
    check(random_surrogate(metric, tol=tol), *case('absent'))


@pytest.mark.parametrize('parameterization', ['linear', 'bezier'])
def test_linear_and_three_piece_curves(parameterization):
    kw = dict(parameterization=parameterization, num_pieces=3)
    for metric in ('mIoU', 'BF1'):
        check(random_surrogate(metric, **kw), *case())


def test_one_class_and_everything_ignored():
    s = random_surrogate('mIoU + BF1')
    logits = torch.randn(1, 1, 9, 7)
    label = torch.zeros(1, 9, 7, dtype=torch.long)
    label[0, :3] = 255
    check(s, logits, label)
    check(s, logits, torch.full_like(label, 255))


def test_deterministic_run_to_run():
    s = random_surrogate('mIoU + BF1')
    logits, label = case()
    torch.use_deterministic_algorithms(True)
    try:
        out = [run(s, logits, label)[:2] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert out[0][0] == out[1][0]
    assert torch.equal(out[0][1], out[1][1])


def test_without_gradient_and_backward_twice():
    s = random_surrogate('BF1')
    logits, label = case()
    x, lab = logits.to(DEVICE), label.to(DEVICE)
    with torch.no_grad():
        v0 = engine_value(s.compiled, s.curves, x, lab, backend='triton')
    x = x.clone().requires_grad_()
    v = engine_value(s.compiled, s.curves, x, lab, backend='triton')
    (g1, ) = torch.autograd.grad(v, x, retain_graph=True)
    (g2, ) = torch.autograd.grad(v, x)
    assert v0.item() == v.item()
    assert torch.equal(g1, g2)


def test_invalid_labels_are_named():
    s = Surrogate('mIoU')
    logits, label = case()
    label[0, 0, :3] = torch.tensor([7, 9, -2])
    with pytest.raises(ValueError, match=r'label values \[-2, 7, 9\] are neither'):
        engine_value(s.compiled, s.curves, logits.to(DEVICE), label.to(DEVICE),
                     backend='triton')


def test_backend_choice(monkeypatch):
    monkeypatch.delenv('ASL_BACKEND', raising=False)
    assert engine_for('triton', DEVICE) == 'triton'
    if CUDA:
        assert engine_for('auto', DEVICE) == 'triton'
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match="runs only through Triton's interpreter"):
        engine_for('triton', torch.device('cpu'))
    monkeypatch.setenv('ASL_BACKEND', 'triton')
    assert Surrogate('mIoU').backend == 'triton'
    monkeypatch.setenv('ASL_BACKEND', 'gpu')
    with pytest.raises(ValueError, match="ASL_BACKEND must be one of .* got 'gpu'"):
        Surrogate('mIoU')


# ----------------------------------------------------------- memory and synchronisation
def test_partial_sums_are_a_small_fraction_of_the_logits():
    """stats_fwd's buffer (N, blocks, S, CP) float64 against the logits, for the GPU
    benchmark's shapes and ADE20K's 150 classes (it was (N, tiles, S, CP) float32: at
    16x150x512x512 BF1's alone outgrew the logits)."""
    from asl.engines.triton import _next_pow2, stats_split, tile_block
    for n, c, hw in ((8, 21, 512 * 512), (16, 150, 512 * 512), (2, 19, 1024 * 2048),
                     (1, 150, 64 * 64), (32, 21, 128 * 128)):
        cp = _next_pow2(c)
        tiles = -(-hw // tile_block(cp))
        g, per = stats_split(n, tiles, cp)
        assert 1 <= g <= tiles <= g * per and per & (per - 1) == 0
        buffer = n * g * 8 * cp * 8  # 8 statistics (more than any built-in metric has)
        assert buffer <= 0.05 * n * c * hw * 2, (n, c, hw, buffer)  # fp16 logits


@pytest.mark.parametrize('blocks', [1, 2])
def test_several_tiles_per_block(monkeypatch, blocks):
    """A program sums tiles g, g + G, ... (7 tiles of 256 pixels: one program of 8 or two
    of 4, the last one masked out)."""
    import asl.engines.triton as T
    monkeypatch.setattr(T, 'STATS_BLOCKS', blocks)
    monkeypatch.setattr(T, 'MIN_TILES', 1)
    assert T.stats_split(1, 7, 8) == ((1, 8) if blocks == 1 else (2, 4))
    check(random_surrogate('mIoU'), *case(n=1, h=28, w=64))


def test_backward_frees_the_kept_maps(monkeypatch):
    """BF1's stage maps and pool offsets live until the backward pass has run, not as long
    as the loss tensor is referenced."""
    import weakref

    import asl.engines.triton as T
    refs = []
    forward = T._forward

    def spy(*args, **kw):
        sums, kept = forward(*args, **kw)
        refs.extend(weakref.ref(t) for t in (kept or []) if t is not None)
        return sums, kept

    monkeypatch.setattr(T, '_forward', spy)
    s = random_surrogate('BF1')
    logits, label = case()
    x = logits.to(DEVICE).requires_grad_()
    v = engine_value(s.compiled, s.curves, x, label.to(DEVICE), backend='triton')
    assert refs and all(r() is not None for r in refs)  # kept for the backward pass
    v.backward()
    assert all(r() is None for r in refs), 'maps kept past the backward pass'
    assert v is not None  # (the loss tensor is still referenced)


def test_label_flags_are_read_at_once_on_cpu_and_on_the_first_calls():
    from asl.engines.triton import LABELS
    s = Surrogate('mIoU')
    logits, label = case()
    before = LABELS.reads
    engine_value(s.compiled, s.curves, logits.to(DEVICE), label.to(DEVICE), backend='triton')
    if not CUDA:
        assert LABELS.reads == before + 1


@pytest.mark.skipif(not CUDA, reason='needs a GPU')
def test_no_host_synchronisation_in_a_training_step():
    """After the first calls, a forward and backward pass of the loss neither reads from
    nor waits for the GPU (torch's sync debug mode raises on any synchronising call), and
    an invalid label is still reported, a call or two later."""
    from asl.engines.triton import LABELS
    from asl.mmseg.loss import AutoSegLoss
    for metric in ('mIoU', 'BIoU', 'BF1'):
        loss = AutoSegLoss(metric, theta='paper')
        logits, label = case()
        x, lab = logits.to(DEVICE).requires_grad_(), label.to(DEVICE)
        for _ in range(LABELS.sync_calls + 1):  # the checked first calls, and the tables
            loss(x, lab).backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            for _ in range(3):
                loss(x, lab).backward()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    bad = lab.clone()
    bad[0, 0, 0] = 99
    with pytest.raises(ValueError, match='were read by call'):
        for _ in range(4):
            loss(x, bad).backward()
            torch.cuda.synchronize()
    LABELS.flush()
