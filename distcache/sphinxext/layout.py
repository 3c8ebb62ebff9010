"""Byte-layout diagrams of wire structs, drawn from the schema (four bytes per row)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from construct import Struct

from distcache.wire.schema import fields_of

BYTES_PER_ROW = 4
#: Characters per byte: wide enough for the longest one-byte field name.
CELL = 16
_MARGIN = 5  # room for the byte offset printed left of each row


@dataclass(frozen=True)
class _Span:
    name: str
    start: int
    size: int


def size_label(field) -> str:
    """How long a variable-size field is, in words (from its construct length expression)."""
    length = getattr(field.construct, "length", None)
    if length is None:
        return "rest of the payload"
    # construct renders ``this.header.data_len`` as this['header']['data_len'].
    path = str(length).replace("this", "", 1).replace("']['", ".").strip("[]'")
    return f"{path.rsplit('.', 1)[-1]} bytes"


def _flatten(struct: Struct, base: int = 0) -> list:
    """Value fields in order; a nested fixed-size struct (a frame's header) is drawn field by
    field, at its offset inside the outer struct."""
    out = []
    for field in fields_of(struct):
        if field.rule is not None:
            continue
        if isinstance(field.construct, Struct) and field.size is not None:
            out += _flatten(field.construct, base + field.offset)
        elif field.offset is not None and base:
            out.append(replace(field, offset=base + field.offset))
        else:
            out.append(field)
    return out


def _border(row_bytes: int) -> str:
    return " " * _MARGIN + ("+" + "-" * (CELL - 1)) * row_bytes + "+"


def _row_line(offset: int, spans: list[tuple[str, int]]) -> str:
    cells = []
    for label, width_bytes in spans:
        width = width_bytes * CELL - 1
        text = label if len(label) <= width else label[: width - 1] + "…"
        cells.append(text.center(width))
    return f"{offset:>{_MARGIN - 1}} |" + "|".join(cells) + "|"


def layout_lines(struct: Struct) -> list[str]:
    """The diagram as lines of text: fixed fields in a grid, then variable-size fields."""
    fields = _flatten(struct)
    if not fields:
        return ["(no bytes: the payload is empty)"]
    fixed = [_Span(f.name, f.offset, f.size) for f in fields if f.size is not None]
    variable = [f for f in fields if f.size is None]
    fixed_end = max((s.start + s.size for s in fixed), default=0)

    ruler = " " * _MARGIN + "".join(f"{i:^{CELL}}" for i in range(BYTES_PER_ROW))
    lines = [ruler.rstrip()]
    previous_width = BYTES_PER_ROW if not fixed else min(BYTES_PER_ROW, fixed_end)
    lines.append(_border(previous_width))
    for row_start in range(0, fixed_end, BYTES_PER_ROW):
        row_end = min(row_start + BYTES_PER_ROW, fixed_end)
        spans = []
        for span in fixed:
            lo, hi = max(span.start, row_start), min(span.start + span.size, row_end)
            if lo < hi:
                spans.append((span.name, hi - lo))
        lines.append(_row_line(row_start, spans))
        lines.append(_border(max(row_end - row_start, 1)))
        previous_width = row_end - row_start
    full = BYTES_PER_ROW * CELL - 1
    for index, field in enumerate(variable):
        label = f"{field.name} ({size_label(field)})"
        offset = f"{fixed_end:>{_MARGIN - 1}}" if index == 0 else " " * (_MARGIN - 1)
        if previous_width < BYTES_PER_ROW:
            lines[-1] = _border(BYTES_PER_ROW)
        lines.append(" " * _MARGIN + "|" + " " * full + "|")
        lines.append(f"{offset} ~" + label.center(full) + "~")
        lines.append(" " * _MARGIN + "|" + " " * full + "|")
        lines.append(_border(BYTES_PER_ROW))
        previous_width = BYTES_PER_ROW
    return lines
