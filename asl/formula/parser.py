"""Tokenizer and recursive-descent parser of the metric formula language.

A formula is a sequence of bindings followed by one expression::

    bp = boundary(P);          # a binding: computed once, its curves shared by all uses
    bg = boundary(G);
    mean_c(sum(M * (P & G)) / sum(M * (P | G)))

Grammar (operators bind like Python's)::

    program    := (NAME '=' expr ';')* expr ';'?
    expr       := compare
    compare    := or_expr (('>' | '>=' | '<' | '<=' | '==' | '!=') or_expr)?
    or_expr    := xor_expr ('|' xor_expr)*
    xor_expr   := and_expr ('^' and_expr)*
    and_expr   := arith ('&' arith)*
    arith      := term (('+' | '-') term)*
    term       := unary (('*' | '/') unary)*
    unary      := ('~' | '-' | '+') unary | atom
    atom       := NUMBER | NAME | NAME '(' [arg (',' arg)*] ')' | '(' expr ')'
    arg        := NAME '=' expr | expr

``#`` starts a comment that runs to the end of the line. Nothing here evaluates
Python: the parser only builds :mod:`asl.formula.nodes` trees.
"""
from __future__ import annotations

import re
from typing import List, Tuple

from .nodes import Binary, Call, Name, Node, Number, Program, Unary

__all__ = ['FormulaSyntaxError', 'parse', 'tokenize']


class FormulaSyntaxError(ValueError):
    """A malformed formula. The message names the position and shows the formula."""

    def __init__(self, message: str, text: str, pos: int):
        line = text.count('\n', 0, pos) + 1
        col = pos - (text.rfind('\n', 0, pos) + 1) + 1
        src = text.splitlines()[line - 1] if text.splitlines() else text
        super().__init__(f'{message} at line {line}, column {col} (position {pos}):\n'
                         f'    {src}\n    {" " * (col - 1)}^')
        self.pos = pos
        self.text = text


_TOKEN_RE = re.compile(r'''
    (?P<ws>[ \t\r\n]+|\#[^\n]*)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<op>>=|<=|==|!=|[-+*/&|^~()<>=,;])
''', re.VERBOSE)

Token = Tuple[str, str, int]  # (kind, text, position)


def tokenize(text: str) -> List[Token]:
    """Split ``text`` into tokens; raises :class:`FormulaSyntaxError` on a bad character."""
    if not isinstance(text, str):
        raise TypeError(f'a formula must be a string, got {type(text).__name__}: {text!r}')
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise FormulaSyntaxError(f'unexpected character {text[pos]!r}', text, pos)
        kind = m.lastgroup
        if kind != 'ws':
            tokens.append((kind, m.group(), pos))
        pos = m.end()
    tokens.append(('end', '', len(text)))
    return tokens


_COMPARE = ('>', '>=', '<', '<=', '==', '!=')

#: Deepest nesting a formula may have (parentheses, calls, unary operators, and chains of
#: binary operators all count): deeper formulas are refused with a FormulaSyntaxError
#: instead of exhausting Python's recursion in the parser or the compiler.
MAX_DEPTH = 50


class _Parser:

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.error(f'the formula is nested deeper than the limit of {MAX_DEPTH} levels')

    # -- helpers ---------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: Token = None):
        tok = tok or self.tok
        found = 'end of formula' if tok[0] == 'end' else repr(tok[1])
        raise FormulaSyntaxError(f'{message}, found {found}', self.text, tok[2])

    def accept(self, text: str) -> bool:
        if self.tok[0] == 'op' and self.tok[1] == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str):
        if not self.accept(text):
            self.error(f'expected {text!r}')

    # -- grammar ---------------------------------------------------------------
    def program(self) -> Program:
        if self.tok[0] == 'end':
            self.error('empty formula')
        bindings = []
        while (self.tok[0] == 'name' and self.tokens[self.i + 1][0] == 'op'
               and self.tokens[self.i + 1][1] == '='):
            name_tok = self.tok
            self.i += 2
            value = self.expr()
            self.expect(';')
            bindings.append((name_tok[1], value, name_tok[2]))
        body = self.expr()
        self.accept(';')
        if self.tok[0] != 'end':
            self.error('expected end of formula (bindings end with ";")')
        return Program(bindings=bindings, body=body, text=self.text)

    def expr(self) -> Node:
        self.nest()
        try:
            return self._expr()
        finally:
            self.depth -= 1

    def _expr(self) -> Node:
        left = self.binary_level(0)
        if self.tok[0] == 'op' and self.tok[1] in _COMPARE:
            op, pos = self.tok[1], self.tok[2]
            self.i += 1
            right = self.binary_level(0)
            left = Binary(op, left, right, pos=pos)
        return left

    _LEVELS = (('|', ), ('^', ), ('&', ), ('+', '-'), ('*', '/'))

    def binary_level(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary_level(level + 1)
        while self.tok[0] == 'op' and self.tok[1] in self._LEVELS[level]:
            op, pos = self.tok[1], self.tok[2]
            self.i += 1
            right = self.binary_level(level + 1)
            left = Binary(op, left, right, pos=pos)
        return left

    def unary(self) -> Node:
        if self.tok[0] == 'op' and self.tok[1] in ('~', '-', '+'):
            op, pos = self.tok[1], self.tok[2]
            self.i += 1
            self.nest()
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            return operand if op == '+' else Unary(op, operand, pos=pos)
        return self.atom()

    def atom(self) -> Node:
        kind, text, pos = self.tok
        if kind == 'number':
            self.i += 1
            return Number(float(text), pos=pos)
        if kind == 'name':
            self.i += 1
            if self.accept('('):
                args, kwargs = [], {}
                if not self.accept(')'):
                    while True:
                        if (self.tok[0] == 'name' and self.tokens[self.i + 1][0] == 'op'
                                and self.tokens[self.i + 1][1] == '='):
                            key_tok = self.tok
                            self.i += 2
                            if key_tok[1] in kwargs:
                                self.error(f'repeated keyword argument {key_tok[1]!r}', key_tok)
                            kwargs[key_tok[1]] = self.expr()
                        else:
                            if kwargs:
                                self.error('positional argument after keyword argument')
                            args.append(self.expr())
                        if self.accept(')'):
                            break
                        if not self.accept(','):
                            self.error("expected ',' or ')' in the arguments of " + repr(text))
                return Call(text, args, kwargs, pos=pos)
            return Name(text, pos=pos)
        if self.accept('('):
            inner = self.expr()
            self.expect(')')
            return inner
        self.error('expected a number, a name or "("')


def parse(text: str) -> Program:
    """Parse a formula into a :class:`~asl.formula.nodes.Program`.

    Raises:
        FormulaSyntaxError: the formula is malformed; the message names the position.
    """
    prog = _Parser(text).program()
    for node in [v for _, v, _ in prog.bindings] + [prog.body]:
        _check_depth(node, text)
    return prog


def _check_depth(root: Node, text: str) -> None:
    """Refuse a syntax tree deeper than :data:`MAX_DEPTH` (long chains of binary
    operators parse without recursion but make deep trees)."""
    stack = [(root, 1)]
    while stack:
        node, d = stack.pop()
        if d > MAX_DEPTH:
            raise FormulaSyntaxError(f'the formula is nested deeper than the limit of '
                                     f'{MAX_DEPTH} levels', text, node.pos)
        if isinstance(node, Binary):
            stack += [(node.left, d + 1), (node.right, d + 1)]
        elif isinstance(node, Unary):
            stack.append((node.operand, d + 1))
        elif isinstance(node, Call):
            stack += [(a, d + 1) for a in list(node.args) + list(node.kwargs.values())]
