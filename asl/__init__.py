"""asl: Auto Seg-Loss for MMSegmentation 1.x.

The package imports lazily: ``import asl`` (or ``import asl.protocol``) loads nothing
heavy, and ``asl.Surrogate``, ``asl.ExactMetrics``... are imported when first used.
MMSeg's modules (``AutoSegLoss``, ``ASLMetric``, ``JaccardMetricLoss``,
``CamVidDataset``) are registered by importing :mod:`asl.mmseg`: in a config,
``custom_imports = dict(imports=['asl.mmseg'], allow_failed_imports=False)``.

Layers, lowest first: :mod:`asl.formula` (metric formulas), :mod:`asl.curves`,
:mod:`asl.engines` (the fused evaluation: reference, C++, Triton), :mod:`asl.loss`
(surrogate, exact metrics, published parameters, Jaccard metric loss), :mod:`asl.data`,
:mod:`asl.mmseg` (MMSeg's surface), :mod:`asl.search` (the search and its executors).
"""
import importlib

from .version import __version__

# public name -> module that defines it
_LAZY = {
    'BezierCurve': 'asl.curves', 'LinearCurve': 'asl.curves', 'IdentityCurve': 'asl.curves',
    'build_curves': 'asl.curves',
    'ExactMetrics': 'asl.loss.exact',
    'FormulaError': 'asl.formula', 'compile_formula': 'asl.formula', 'parse': 'asl.formula',
    'BUILTIN_FORMULAS': 'asl.formula.builtins',
    'PAPER_PRESETS': 'asl.loss.presets',
    'Surrogate': 'asl.loss.surrogate',
    'AutoSegLoss': 'asl.mmseg', 'ASLMetric': 'asl.mmseg',
}

__all__ = ['__version__', *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        try:  # a subpackage: asl.curves, asl.search...
            return importlib.import_module(f'{__name__}.{name}')
        except ModuleNotFoundError as e:
            if e.name != f'{__name__}.{name}':
                raise
            raise AttributeError(f'module {__name__!r} has no attribute {name!r}') from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
