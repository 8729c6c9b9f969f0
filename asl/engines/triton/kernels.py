"""The Triton engine's fixed kernels and device functions.

The per-program kernels are generated (:mod:`asl.engines.triton.codegen`) and call the
device functions here; the pools and the softmax backward are the same for every program.
Every kernel works on tiles of ``BLOCK`` pixels of one image (all classes at once, ``CP``
= the number of classes rounded up to a power of two, for the softmax) or of one
(image, class) plane (the pools), with masks on every load and store.
"""
import triton
import triton.language as tl

__all__ = ['bezier', 'softmax_tile', 'pool_pass', 'pool_grad_pass', 'softmax_backward',
           'zero_fill']


@triton.jit
def bezier(x, tab, K: tl.constexpr, MIN_SLOPE: tl.constexpr):
    """A monotone piecewise quadratic Bezier curve and its derivative at ``x`` (float32).

    ``tab`` points at the curve's (K, 8) coefficient rows (``asl.curves.PIECE_COLUMNS``);
    the same arithmetic as the reference (:meth:`asl.curves.BezierCurve._evaluate`): the
    last piece whose start is <= x, ``t = 2d / (b + sqrt(b^2 + 4ad))`` (rounded
    divisions and square roots), the derivative capped at ``1 / MIN_SLOPE``.
    """
    x0 = tl.load(tab + 0)
    bb = tl.load(tab + 1)
    a4 = tl.load(tab + 2)
    b = tl.load(tab + 3)
    y0 = tl.load(tab + 4)
    by = tl.load(tab + 5)
    ay = tl.load(tab + 6)
    ay2 = tl.load(tab + 7)
    zero = x * 0.0
    x0 = x0 + zero
    bb = bb + zero
    a4 = a4 + zero
    b = b + zero
    y0 = y0 + zero
    by = by + zero
    ay = ay + zero
    ay2 = ay2 + zero
    for q in tl.static_range(1, K):
        s = x >= tl.load(tab + q * 8)
        x0 = tl.where(s, tl.load(tab + q * 8 + 0), x0)
        bb = tl.where(s, tl.load(tab + q * 8 + 1), bb)
        a4 = tl.where(s, tl.load(tab + q * 8 + 2), a4)
        b = tl.where(s, tl.load(tab + q * 8 + 3), b)
        y0 = tl.where(s, tl.load(tab + q * 8 + 4), y0)
        by = tl.where(s, tl.load(tab + q * 8 + 5), by)
        ay = tl.where(s, tl.load(tab + q * 8 + 6), ay)
        ay2 = tl.where(s, tl.load(tab + q * 8 + 7), ay2)
    d = x - x0
    sq = tl.sqrt_rn(tl.maximum(a4 * d + bb, 0.0))
    den = sq + b
    pos = den > 0.0
    t = tl.where(pos, tl.div_rn(d + d, tl.where(pos, den, 1.0)), 0.0)
    t = tl.minimum(tl.maximum(t, 0.0), 1.0)
    y = tl.minimum(tl.maximum((t * ay + by) * t + y0, 0.0), 1.0)
    y = tl.where(x >= 1.0, 1.0, tl.where(x <= 0.0, 0.0, y))
    dy = tl.maximum(t * ay2 + by, 0.0)
    dydx = tl.div_rn(dy, tl.maximum(sq, MIN_SLOPE))
    return y, dydx


@triton.jit
def softmax_tile(x_ptr, base, HW, offs, cls, pm, cm):
    """The softmax over classes of a (CP, BLOCK) tile of logits (any float dtype, computed
    in float32); padded classes are 0, padded pixels arbitrary."""
    m2 = cm[:, None] & pm[None, :]
    x = tl.load(x_ptr + base + cls[:, None] * HW + offs[None, :], mask=m2, other=0.0)
    x = tl.where(cm[:, None], x.to(tl.float32), float('-inf'))
    mx = tl.max(x, 0)
    e = tl.exp(x - mx[None, :])
    s = tl.sum(e, 0)
    return tl.div_rn(e, s[None, :] + tl.zeros_like(e))


@triton.jit
def plane_tile(H, W, BLOCK: tl.constexpr):
    """The (image, class) plane of this program (grid axis 1), its tile of pixels (axis
    0), their mask and their rows and columns."""
    plane = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    return plane, offs, pm, offs // W, offs % W


@triton.jit
def window_position(offs, pm, h, w, H, W, d, ALONG_W: tl.constexpr):
    """The flat position ``d`` pixels along W (or H) from ``offs``, and whether it lies
    in the image."""
    if ALONG_W:
        return offs + d, pm & (w + d >= 0) & (w + d < W)
    return offs + d * W, pm & (h + d >= 0) & (h + d < H)


@triton.jit
def pool_pass(src_ptr, lab_ptr, dst_ptr, off_ptr, C, H, W,
              R: tl.constexpr, ALONG_W: tl.constexpr, IS_MIN: tl.constexpr,
              FROM_LABELS: tl.constexpr, WRITE_OFF: tl.constexpr, BLOCK: tl.constexpr):
    """One pass of a separable square pool of (N, C, H, W) planes: the first maximum (or
    minimum) of the window ``[i - R, i + R]`` along H or W, windows clipped to the image.

    Grid: (pixel blocks, N * C). ``FROM_LABELS``: the source is the one-hot ground truth
    (label == class) read from the (N, H, W) labels. ``WRITE_OFF``: also store the
    winning position's offset (in [-R, R]) for the backward pass.
    """
    plane, offs, pm, h, w = plane_tile(H, W, BLOCK)
    HW = H * W
    if IS_MIN:
        best = tl.full([BLOCK], float('inf'), tl.float32)
    else:
        best = tl.full([BLOCK], float('-inf'), tl.float32)
    arg = tl.zeros([BLOCK], tl.int32)
    n = plane // C
    c = plane % C
    for d in tl.static_range(-R, R + 1):
        j, ok = window_position(offs, pm, h, w, H, W, d, ALONG_W)
        if FROM_LABELS:
            lab = tl.load(lab_ptr + n * HW + j, mask=ok, other=-1)
            v = (lab == c).to(tl.float32)
        else:
            v = tl.load(src_ptr + plane * HW + j, mask=ok, other=0).to(tl.float32)
        if IS_MIN:
            better = ok & (v < best)
        else:
            better = ok & (v > best)
        best = tl.where(better, v, best)
        arg = tl.where(better, d, arg)
    tl.store(dst_ptr + plane * HW + offs, tl.where(pm, best, 0.0), mask=pm)
    if WRITE_OFF:
        tl.store(off_ptr + plane * HW + offs, arg, mask=pm)


@triton.jit
def pool_grad_pass(adj_ptr, off_ptr, out_ptr, H, W, R: tl.constexpr, ALONG_W: tl.constexpr,
                   ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr):
    """The gradient of one :func:`pool_pass`: each position gathers the adjoints of the
    outputs whose window's winner it is (``off`` at the output == its offset from it),
    in a fixed order (no atomics: the result is the same on every run). Writes or
    (``ACCUMULATE``) adds to ``out``."""
    plane, offs, pm, h, w = plane_tile(H, W, BLOCK)
    HW = H * W
    acc = tl.zeros([BLOCK], tl.float32)
    for d in tl.static_range(-R, R + 1):
        j, ok = window_position(offs, pm, h, w, H, W, d, ALONG_W)
        k = tl.load(off_ptr + plane * HW + j, mask=ok, other=0).to(tl.int32)
        a = tl.load(adj_ptr + plane * HW + j, mask=ok, other=0.0)
        acc += tl.where(ok & (k == -d), a, 0.0)
    if ACCUMULATE:
        acc += tl.load(out_ptr + plane * HW + offs, mask=pm, other=0.0)
    tl.store(out_ptr + plane * HW + offs, acc, mask=pm)


@triton.jit
def softmax_backward(x_ptr, dp_ptr, dx_ptr, C, HW, CP: tl.constexpr, BLOCK: tl.constexpr):
    """``dx = P * (dP - sum_c P * dP)`` with ``P = softmax(x)`` recomputed from the logits;
    ``dx`` is stored in the logits' dtype. Grid: (pixel blocks, N)."""
    n = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cls = tl.arange(0, CP)
    pm = offs < HW
    cm = cls < C
    base = n * C * HW
    p = softmax_tile(x_ptr, base, HW, offs, cls, pm, cm)
    m2 = cm[:, None] & pm[None, :]
    ptrs = base + cls[:, None] * HW + offs[None, :]
    dp = tl.load(dp_ptr + ptrs, mask=m2, other=0.0)
    dx = p * (dp - tl.sum(p * dp, 0)[None, :])
    tl.store(dx_ptr + ptrs, dx, mask=m2)


@triton.jit
def zero_fill(ptr, n, BLOCK: tl.constexpr):
    """``ptr[0:n] = 0`` (any dtype)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ptr + offs, tl.zeros([BLOCK], tl.float32), mask=offs < n)
