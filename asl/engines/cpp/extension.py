"""The optional C++ extension (built by setup.py): the C++ engine.

``ext`` is ``asl.engines.cpp._C_avx2`` (distributed builds, on a CPU with AVX2 and FMA) or ``asl.engines.cpp._C``,
or None when the extension is not built, or was built from another version of the
engine's opcodes (then a warning says to rebuild it).
"""
import importlib
import warnings

__all__ = ['ext', 'module_names']


def module_names(capability: str) -> list:
    """The extension modules to try, best first, on a CPU of ``capability`` (torch's
    ``torch.backends.cpu.get_cpu_capability()``: ``'DEFAULT'``, ``'AVX2'``, ``'AVX512'``)."""
    return (['_C_avx2', '_C'] if capability in ('AVX2', 'AVX512') else ['_C'])


def _load():
    try:
        import torch
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - old torch
        capability = 'DEFAULT'
    for name in module_names(capability):
        try:
            return importlib.import_module(f'{__package__}.{name}')
        except ImportError:
            continue
    return None


ext = _load()

if ext is not None:
    from ..ir import Op
    if list(getattr(ext, 'opcodes', lambda: [])()) != [int(op) for op in Op]:
        warnings.warn('asl.engines.cpp._C was built from another version of asl (its opcodes differ from '
                      'asl.engines.ir.Op); it is not used. Rebuild it: pip install '
                      '--no-build-isolation -e .')
        ext = None

