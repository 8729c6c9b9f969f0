"""asl: Auto Seg-Loss for MMSegmentation 1.x.

``import asl`` (or ``custom_imports=dict(imports=['asl'])`` in a config) registers
``AutoSegLoss`` in ``mmseg.registry.MODELS`` and ``ASLMetric`` in
``mmseg.registry.METRICS`` when MMSeg is installed; the maths (formula compiler,
curves, surrogate, exact metrics) works without it.
"""
import importlib.util

from .curves import BezierCurve, IdentityCurve, LinearCurve, build_curves
from .exact import ExactMetrics
from .formula import FormulaError, compile_formula, parse
from .formula.builtins import BUILTIN_FORMULAS
from .presets import PAPER_PRESETS
from .surrogate import Surrogate
from .version import __version__

__all__ = [
    '__version__', 'BezierCurve', 'LinearCurve', 'IdentityCurve', 'build_curves',
    'ExactMetrics', 'FormulaError', 'compile_formula', 'parse', 'BUILTIN_FORMULAS',
    'PAPER_PRESETS', 'Surrogate'
]

if importlib.util.find_spec('mmseg') is not None:
    from .mmseg import ASLMetric, AutoSegLoss  # noqa: F401  (registers the modules)
    __all__ += ['AutoSegLoss', 'ASLMetric']
