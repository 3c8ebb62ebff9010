"""Build docutils tables and small inline nodes without the ceremony of raw node trees."""

from __future__ import annotations

from collections.abc import Sequence

from docutils import nodes

#: A cell is plain text, a single node, or a list of inline nodes.
Cell = str | nodes.Node | Sequence[nodes.Node]


def _cell_paragraph(cell: Cell) -> nodes.paragraph:
    if isinstance(cell, str):
        return nodes.paragraph(cell, cell)
    if isinstance(cell, nodes.Node):
        return nodes.paragraph("", "", cell)
    return nodes.paragraph("", "", *cell)


def _row(cells: Sequence[Cell]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        row += nodes.entry("", _cell_paragraph(cell))
    return row


def build_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    widths: Sequence[int],
    *,
    caption: str | None = None,
    classes: Sequence[str] = (),
) -> nodes.table:
    """A table with one header row; ``widths`` are relative column widths."""
    assert len(headers) == len(widths), "one width per column"
    table = nodes.table(classes=["distcache-table", *classes])
    if caption:
        table += nodes.title(caption, caption)
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += _row(headers)
    group += head
    body = nodes.tbody()
    for cells in rows:
        assert len(cells) == len(headers), "one cell per column"
        body += _row(cells)
    group += body
    return table


def code(text: str) -> nodes.literal:
    """Inline literal text."""
    return nodes.literal(text, text)
