"""Syntax tree of the metric formula language (plain data, no evaluation)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

__all__ = ['Node', 'Number', 'Name', 'Unary', 'Binary', 'Call', 'Program']


@dataclass
class Node:
    pos: int = field(default=0, kw_only=True)


@dataclass
class Number(Node):
    value: float


@dataclass
class Name(Node):
    name: str


@dataclass
class Unary(Node):
    op: str  # '~' (NOT) or '-' (negation)
    operand: Node


@dataclass
class Binary(Node):
    op: str  # & | ^ + - * / and comparisons
    left: Node
    right: Node


@dataclass
class Call(Node):
    func: str
    args: List[Node]
    kwargs: Dict[str, Node]


@dataclass
class Program:
    bindings: List[Tuple[str, Node, int]]  # (name, value, position)
    body: Node
    text: str
