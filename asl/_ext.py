"""The optional C++ CPU kernels (``asl._C``, built by setup.py).

Every kernel has a pure PyTorch twin that computes the same function; the twin is used
on other devices and when the extension is not built.
"""
try:
    from asl import _C as ext
except ImportError:  # pragma: no cover - depends on the build
    ext = None

__all__ = ['ext', 'use_cpu_kernels']


def use_cpu_kernels(x) -> bool:
    """Whether the C++ kernels take tensor ``x`` (built, on CPU, float32 or float64)."""
    import torch
    return ext is not None and x.device.type == 'cpu' and x.dtype in (torch.float32,
                                                                       torch.float64)
