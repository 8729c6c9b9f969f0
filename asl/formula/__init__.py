from .builtins import BUILTIN_FORMULAS
from .compiler import CompiledMetric, CurveSlot, FormulaError, compile_formula
from .parser import FormulaSyntaxError, parse, tokenize

__all__ = [
    'BUILTIN_FORMULAS', 'CompiledMetric', 'CurveSlot', 'FormulaError', 'FormulaSyntaxError',
    'compile_formula', 'parse', 'tokenize'
]
