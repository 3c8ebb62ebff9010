"""``sequence-diagram``: a message-sequence chart drawn from plain text, as inline SVG.

The source stays in the document, readable without the picture; the build draws it, offline, with
no JavaScript. One line per event::

    .. sequence-diagram::
       :caption: ADD, then GET

       participants: client, server
       client -> server: ADD uid 1, id "k1"
       server -> client: OK (uid 1)
       -- the session is stored --
       client -x server: lost

``A -> B: label`` is a message, ``A -x B: label`` one that never arrives, ``-- text --`` a note
across the chart. Every name in a message must be declared in ``participants``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

__all__ = ["SequenceError", "parse_sequence", "render_svg"]

_MESSAGE = re.compile(
    r"^(?P<src>[\w .-]+?)\s*(?P<arrow>->|-x)\s*(?P<dst>[\w .-]+?)\s*:\s*(?P<label>.*)$"
)
_NOTE = re.compile(r"^--\s*(?P<text>.*?)\s*--$")
_COLUMN = 190
_ROW = 30
_TOP = 40
_CHAR = 6.6  # average width of a 12 px sans-serif character


class SequenceError(ValueError):
    """The sequence text is malformed (the message names the line)."""


@dataclass(frozen=True)
class Step:
    kind: str  # "message", "lost" or "note"
    text: str
    src: int = 0
    dst: int = 0


def parse_sequence(text: str) -> tuple[list[str], list[Step]]:
    """The participants and steps of a sequence description."""
    participants: list[str] = []
    steps: list[Step] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("participants:"):
            participants = [p.strip() for p in line.partition(":")[2].split(",") if p.strip()]
            continue
        if note := _NOTE.match(line):
            steps.append(Step("note", note["text"]))
            continue
        message = _MESSAGE.match(line)
        if message is None:
            raise SequenceError(f"line {number}: expected 'A -> B: label' or '-- note --'")
        try:
            src, dst = participants.index(message["src"]), participants.index(message["dst"])
        except ValueError:
            raise SequenceError(f"line {number}: undeclared participant") from None
        kind = "lost" if message["arrow"] == "-x" else "message"
        steps.append(Step(kind, message["label"], src, dst))
    if len(participants) < 2:
        raise SequenceError("declare at least two participants: 'participants: a, b'")
    if not steps:
        raise SequenceError("the sequence has no steps")
    return participants, steps


def _x(index: int) -> float:
    return _COLUMN / 2 + index * _COLUMN


def render_svg(participants: list[str], steps: list[Step], title: str = "") -> str:
    """An SVG document (no external references) drawing the chart."""
    width = _COLUMN * len(participants)
    height = _TOP + _ROW * (len(steps) + 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sequence-diagram" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="12">',
        f"<title>{escape(title or ', '.join(participants))}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="currentColor"/></marker></defs>',
        '<g stroke="currentColor" fill="currentColor">',
    ]
    for index, name in enumerate(participants):
        x = _x(index)
        parts.append(
            f'<rect x="{x - 70}" y="4" width="140" height="24" rx="4" fill="none"/>'
            f'<text x="{x}" y="20" text-anchor="middle" stroke="none">{escape(name)}</text>'
            f'<line x1="{x}" y1="28" x2="{x}" y2="{height - 4}" stroke-dasharray="4 3"/>'
        )
    for row, step in enumerate(steps):
        y = _TOP + _ROW * row + 12
        if step.kind == "note":
            parts.append(
                f'<text x="{width / 2}" y="{y + 4}" text-anchor="middle" stroke="none" '
                f'font-style="italic">{escape(step.text)}</text>'
            )
            continue
        x1, x2 = _x(step.src), _x(step.dst)
        if step.kind == "lost":
            end = x1 + (x2 - x1) * 0.6
            parts.append(
                f'<line x1="{x1}" y1="{y}" x2="{end}" y2="{y}"/>'
                f'<path d="M{end - 5},{y - 5} L{end + 5},{y + 5} M{end - 5},{y + 5} '
                f'L{end + 5},{y - 5}" fill="none"/>'
            )
        else:
            parts.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" marker-end="url(#arrow)"/>')
        label = step.text
        room = int(abs(x2 - x1) / _CHAR) + 40
        if len(label) > room:
            label = label[: room - 1] + "…"
        parts.append(
            f'<text x="{(x1 + x2) / 2}" y="{y - 5}" text-anchor="middle" stroke="none">'
            f"{escape(label)}</text>"
        )
    parts.append("</g></svg>")
    return "".join(parts)


class SequenceDiagram(SphinxDirective):
    has_content = True
    option_spec: ClassVar = {"caption": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        try:
            participants, steps = parse_sequence("\n".join(self.content))
        except SequenceError as error:
            raise self.error(f"sequence-diagram: {error}") from None
        caption = self.options.get("caption", "")
        svg = render_svg(participants, steps, caption)
        figure = nodes.figure(classes=["sequence-diagram"])
        figure += nodes.raw("", svg, format="html")
        # Other builders (text, man, LaTeX) get the source, which reads well on its own.
        only = addnodes.only(expr="not html")
        only += nodes.literal_block("", "\n".join(self.content))
        figure += only
        if caption:
            figure += nodes.caption(caption, caption)
        return [figure]


def setup(app) -> None:
    app.add_directive("sequence-diagram", SequenceDiagram)
