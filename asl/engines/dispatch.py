"""Which engine evaluates a surrogate: ``auto``, ``torch``, ``cpp`` or ``triton``.

* ``torch``: the plain PyTorch reference (:mod:`asl.engines.reference`), any device;
* ``cpp``: the C++ engine (:mod:`asl.engines.cpp`), CPU tensors, when ``asl.engines.cpp._C`` is built;
* ``triton``: the Triton engine (:mod:`asl.engines.triton`), CUDA tensors; on CPU tensors
  only through Triton's interpreter (``TRITON_INTERPRET=1``, how the tests run it);
* ``auto`` (the default): Triton on CUDA tensors, C++ on CPU tensors, and the PyTorch
  path where neither applies (a warning says so once: Triton not installed, the C++
  extension not built, another device).

The choice comes from the ``backend`` argument of :class:`~asl.loss.surrogate.Surrogate` /
``AutoSegLoss``; when that is ``'auto'``, the ``ASL_BACKEND`` environment variable (read
when the surrogate is built) can force one of the others. The engines evaluate the
statistics the fused program covers (:func:`asl.engines.ir.fusable`); the PyTorch path
evaluates the rest, so every formula works with every backend.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from ..curves import Curve
from ..formula.compiler import CompiledMetric
from . import reference as Fn
from .lower import fused_program

__all__ = [
    'BACKENDS', 'requested_backend', 'probe', 'engine_for', 'surrogate_stats', 'surrogate_value'
]

BACKENDS = ('auto', 'torch', 'cpp', 'triton')
ENV = 'ASL_BACKEND'


def requested_backend(backend: Optional[str] = None) -> str:
    """The backend asked for: ``backend`` unless it is None or ``'auto'``, else
    ``$ASL_BACKEND`` if set, else ``'auto'``.

    Raises:
        ValueError: an unknown name (in the argument or the environment variable).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f'backend must be one of {", ".join(BACKENDS)}, got {backend!r}')
    if backend in (None, 'auto'):
        env = os.environ.get(ENV, '').strip()
        if env and env not in BACKENDS:
            raise ValueError(f'{ENV} must be one of {", ".join(BACKENDS)}, got {env!r}')
        return env or 'auto'
    return backend


_AVAILABLE: Dict[str, bool] = {}


def probe() -> Dict[str, bool]:
    """Whether each engine can be used here (C++ extension built, Triton installed);
    looked up once (a surrogate does it when it is built, outside any compiled code)."""
    if not _AVAILABLE:
        from . import cpp
        _AVAILABLE['cpp'] = cpp.available()
        _AVAILABLE['triton'] = importlib.util.find_spec('triton') is not None
    return _AVAILABLE


def _have(engine: str) -> bool:
    return probe()[engine]


def _interpreting() -> bool:
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


_WARNED: set = set()


@torch.compiler.disable
def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def engine_for(requested: str, device: torch.device) -> str:
    """The engine (``'torch'``, ``'cpp'`` or ``'triton'``) that evaluates a surrogate of
    tensors on ``device`` when ``requested`` (see :func:`requested_backend`) was asked for.

    Raises:
        RuntimeError: the requested engine cannot run there (e.g. ``'triton'`` on CPU
            tensors without ``TRITON_INTERPRET=1``, ``'cpp'`` on CUDA tensors).
    """
    kind = device.type
    if requested == 'torch':
        return 'torch'
    if requested == 'cpp':
        if kind != 'cpu':
            raise RuntimeError(f"backend='cpp' runs on CPU tensors, got {kind} tensors; use "
                               "'triton' or 'auto' on CUDA")
        if not _have('cpp'):
            raise RuntimeError("backend='cpp' needs the C++ extension asl.engines.cpp._C, which is not "
                               'built: reinstall asl with a C++ compiler (pip install '
                               '--no-build-isolation -e .), or use backend="torch"')
        return 'cpp'
    if requested == 'triton':
        if not _have('triton'):
            raise RuntimeError("backend='triton' needs Triton, which is not installed "
                               '(pip install triton)')
        if kind == 'cpu' and not _interpreting():
            raise RuntimeError("backend='triton' on CPU tensors runs only through Triton's "
                               'interpreter: set TRITON_INTERPRET=1 in the environment before '
                               "starting Python (for tests), or use 'cpp' or 'auto' on CPU")
        if kind not in ('cpu', 'cuda'):
            raise RuntimeError(f"backend='triton' runs on CUDA tensors, got {kind} tensors")
        return 'triton'
    # auto
    if kind == 'cuda':
        if _have('triton'):
            return 'triton'
        _warn_once('triton', 'Triton is not installed: AutoSegLoss runs on the plain PyTorch '
                   'path on CUDA (slower, more memory); pip install triton')
        return 'torch'
    if kind == 'cpu':
        if _have('cpp'):
            return 'cpp'
        _warn_once('cpp', 'the C++ extension asl.engines.cpp._C is not built: AutoSegLoss runs on the '
                   'plain PyTorch path on CPU')
        return 'torch'
    return 'torch'


def _engine_module(engine: str):
    if engine == 'cpp':
        from . import cpp
        return cpp
    from . import triton as triton_engine
    return triton_engine


def _closure(node) -> List:
    """The map nodes ``node`` reads (itself included), in topological order."""
    seen, stack = {}, [node]
    while stack:
        n = stack.pop()
        if n.index not in seen:
            seen[n.index] = n
            stack.extend(n.operands())
    return [seen[i] for i in sorted(seen)]


@torch.compiler.disable
def _engine_stats(engine: str, compiled: CompiledMetric, curves: Sequence[Curve],
                  logits: torch.Tensor, label: torch.Tensor,
                  ignore_index: int) -> List[torch.Tensor]:
    """The surrogate's sums through an engine (the fused statistics) and the PyTorch path
    (the rest). Opaque to ``torch.compile``: the engines are their own kernels."""
    fp = fused_program(compiled)
    mod = _engine_module(engine)
    rest = [i for i in range(len(compiled.stats)) if i not in fp.stats]
    if label.dim() != 3 or rest:
        Fn.check_labels(label, logits.shape[1], ignore_index)  # the torch path needs it
    env = {}

    def torch_env(need_p: bool):
        if not env:
            g, m = Fn.prepare_targets(label, logits.shape[1], ignore_index)
            env.update(G=g, M=m)
        if need_p and 'P' not in env:
            env['P'] = logits.float().softmax(1)
        return env

    shared_p = engine == 'cpp' and bool(rest)  # the PyTorch path reads P: one softmax
    x_in = (torch_env(True)['P'] if shared_p else logits.float()) if engine == 'cpp' else logits
    extras = []
    for x in fp.extras:
        if x.program is not None:
            extras.append(mod.class_max(x.program, x.skip_bg, curves, label, x_in,
                                        ignore_index))
        else:
            nodes = _closure(x.node)
            values = Fn.eval_maps(compiled, torch_env(any(n.soft for n in nodes)), curves,
                                  nodes=nodes)
            extras.append(values[x.node.index])
    sums: List[Optional[torch.Tensor]] = [None] * len(compiled.stats)
    if fp.stats:
        if engine == 'cpp':
            fused = mod.stat_sums(fp, curves, x_in, label, ignore_index, extras,
                                  from_logits=not shared_p)
        else:
            fused = mod.stat_sums(fp, curves, logits, label, ignore_index, extras)
        for row, i in enumerate(fp.stats):
            sums[i] = fused[row].float()
    if rest:
        env = torch_env(True)
        ref = Fn.evaluate_stats(compiled, env['P'], env['G'], env['M'], curves, which=rest)
        for i in rest:
            sums[i] = ref[i]
    return sums


def surrogate_stats(compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                    label: torch.Tensor, ignore_index: int = 255,
                    backend: str = 'auto') -> List[torch.Tensor]:
    """The surrogate's per-class sums (one float32 (C,) tensor per ``sum(...)``),
    differentiable with respect to ``logits``, by the engine ``backend`` selects."""
    Fn.check_shapes(logits, label)
    engine = engine_for(requested_backend(backend), logits.device)
    if engine == 'torch':
        return Fn.surrogate_stats(compiled, curves, logits, label, ignore_index)
    return _engine_stats(engine, compiled, curves, logits, label, ignore_index)


def surrogate_value(compiled: CompiledMetric, curves: Sequence[Curve], logits: torch.Tensor,
                    label: torch.Tensor, ignore_index: int = 255,
                    backend: str = 'auto') -> torch.Tensor:
    """Differentiable surrogate metric of one batch (float32 scalar, higher is better).

    Args:
        compiled: the compiled formula.
        curves: one curve per slot.
        logits: (N, C, H, W), any floating dtype (computed in float32).
        label: (N, H, W) class indices or ``ignore_index``.
        ignore_index: label of ignored pixels. Default: 255.
        backend: ``'auto'``, ``'torch'``, ``'cpp'`` or ``'triton'`` (module docstring).
    """
    engine = engine_for(requested_backend(backend), logits.device)
    if engine == 'torch':
        return Fn.surrogate_value(compiled, curves, logits, label, ignore_index)
    Fn.check_shapes(logits, label)
    sums = _engine_stats(engine, compiled, curves, logits, label, ignore_index)
    return Fn.evaluate_result(compiled.result, sums, exact=False)
