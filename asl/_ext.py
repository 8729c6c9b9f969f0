"""The optional C++ extension (``asl._C``, built by setup.py): the C++ engine.

``ext`` is None when the extension is not built, or was built from another version of
the engine's opcodes (then a warning says to rebuild it).
"""
import warnings

try:
    from asl import _C as ext
except ImportError:  # pragma: no cover - depends on the build
    ext = None

if ext is not None:
    from .engines.ir import Op
    if list(getattr(ext, 'opcodes', lambda: [])()) != [int(op) for op in Op]:
        warnings.warn('asl._C was built from another version of asl (its opcodes differ from '
                      'asl.engines.ir.Op); it is not used. Rebuild it: pip install '
                      '--no-build-isolation -e .')
        ext = None

__all__ = ['ext']
