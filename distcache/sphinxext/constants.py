"""Documented module constants: every UPPER_CASE assignment with its ``#:`` comment.

The comments live in the source, not in the objects, so the module is parsed with :mod:`ast`.
An assignment without a comment of its own, directly below another one (no blank line), shares
the comment of that group (``MIN_x``/``MAX_x``/``DEFAULT_x`` triples).
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Constant:
    name: str
    value: object
    definition: str  #: the source expression, e.g. ``MAX_FRAMES_NOMINAL * MAX_FRAME_DATA``
    is_literal: bool  #: True when the source is a plain number
    comment: str  #: the ``#:`` comment, joined into one line ("" when undocumented)


def _comment_above(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` block ending on the line above ``lineno`` (1-based), or None."""
    index = lineno - 2
    block = []
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        block.append(lines[index].lstrip()[2:].strip())
        index -= 1
    return " ".join(reversed(block)) if block else None


def _assigned_name(node: ast.stmt) -> tuple[str, ast.expr] | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return None
    if isinstance(target, ast.Name) and target.id.isupper():
        return target.id, value
    return None


def documented_constants(module: ModuleType) -> list[Constant]:
    """The module's UPPER_CASE constants in source order, with values and comments."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    out: list[Constant] = []
    group_comment, group_end = "", -1
    for node in ast.parse(source).body:
        assigned = _assigned_name(node)
        if assigned is None:
            group_end = -1
            continue
        name, value = assigned
        own = _comment_above(lines, node.lineno)
        if own is not None:
            group_comment = own
        elif group_end != node.lineno - 1:
            group_comment = ""
        group_end = node.end_lineno
        literal = isinstance(value, ast.Constant) or (
            isinstance(value, ast.UnaryOp) and isinstance(value.operand, ast.Constant)
        )
        definition = ast.get_source_segment(source, value) or ""
        out.append(Constant(name, getattr(module, name), definition, literal, group_comment))
    return out
