"""Directives that render the wire format from :mod:`distcache.wire`, never from prose.

``wire-fields``/``wire-layout`` take a schema name from :mod:`distcache.wire.schema`,
``wire-enum`` an enum name from :mod:`distcache.wire.enums`; ``wire-limits``,
``wire-messages`` and ``wire-checks`` take no argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from construct import Struct
from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from distcache.wire import enums, fastcodec, limits, schema
from distcache.wire.enums import Direction

from .constants import documented_constants
from .layout import layout_lines, size_label
from .tables import Cell, build_table, code

logger = logging.getLogger(__name__)

_TYPE_NAMES = {"B": "uint8", "H": "uint16 BE", "L": "uint32 BE", "Q": "uint64 BE"}


def _schemas() -> dict[str, Struct]:
    return {name: obj for name, obj in vars(schema).items() if isinstance(obj, Struct)}


def _schema_name(struct: Struct) -> str:
    return next(name for name, obj in _schemas().items() if obj is struct)


def _enums() -> dict[str, type[enums.IntEnum]]:
    return {
        name: obj
        for name, obj in vars(enums).items()
        if inspect.isclass(obj) and issubclass(obj, enums.IntEnum) and not name.startswith("_")
    }


def _hex(value: int) -> str:
    return f"{value:#06x}" if value <= 0xFFFF else f"{value:#010x}"


class _WireDirective(SphinxDirective):
    has_content = False

    def inline(self, text: str) -> list[nodes.Node]:
        """Doc strings and comments may use inline reST (``literals``)."""
        parsed, messages = self.parse_inline(text, lineno=self.lineno)
        return [*parsed, *messages]

    def lookup(self, table: dict, kind: str):
        name = self.arguments[0].strip()
        if name not in table:
            known = ", ".join(sorted(table))
            logger.warning(
                "unknown %s %r (known: %s)", kind, name, known, location=self.get_location()
            )
            return None
        return table[name]


class WireFields(_WireDirective):
    """``.. wire-fields:: FrameHeader``: offset, size, type, name, meaning, legal values."""

    required_arguments = 1

    def _type(self, field) -> str:
        if field.fmtstr:
            return _TYPE_NAMES.get(field.fmtstr.lstrip("<>=!"), field.fmtstr)
        if isinstance(field.construct, Struct):
            return _schema_name(field.construct)
        return "bytes"

    def run(self) -> list[nodes.Node]:
        struct = self.lookup(_schemas(), "schema")
        if struct is None:
            return []
        fields = schema.fields_of(struct)
        values = [f for f in fields if f.rule is None]
        if not values:
            return [nodes.paragraph("", "", nodes.emphasis("", "The payload is empty."))]
        rows: list[Sequence[Cell]] = []
        offset_words = None  # symbolic offset once a variable-size field has passed
        for field in values:
            offset = str(field.offset) if field.offset is not None else offset_words
            size = str(field.size) if field.size is not None else size_label(field)
            legal = field.legal.legal if field.legal else "any"
            rows.append(
                (offset, size, self._type(field), code(field.name), self.inline(field.doc), legal)
            )
            if field.size is None:
                offset_words = f"after {field.name}"
        output: list[nodes.Node] = [
            build_table(
                ("Offset", "Size", "Type", "Field", "Meaning", "Legal values"),
                rows,
                (7, 9, 10, 12, 45, 22),
                caption=f"{_schema_name(struct)}: {struct.__doc__ or ''}".strip(": "),
            )
        ]
        rules = [f for f in fields if f.rule is not None]
        if rules:
            items = nodes.bullet_list()
            for field in rules:
                text = [
                    *self.inline(field.doc),
                    nodes.Text(" (violation: "),
                    code(field.rule.reason),
                    nodes.Text(")"),
                ]
                items += nodes.list_item("", nodes.paragraph("", "", *text))
            output += [nodes.paragraph("", "Rules over several fields:"), items]
        return output


class WireLayout(_WireDirective):
    """``.. wire-layout:: FrameHeader``: the byte layout as a diagram."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        struct = self.lookup(_schemas(), "schema")
        if struct is None:
            return []
        text = "\n".join(layout_lines(struct))
        block = nodes.literal_block(text, text, classes=["wire-layout"])
        block["language"] = "text"
        return [block]


class WireEnum(_WireDirective):
    """``.. wire-enum:: Status``: value, name and meaning of every member."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        enum = self.lookup(_enums(), "enum")
        if enum is None:
            return []
        rows = [(str(int(m)), f"{int(m):#04x}", code(m.name), m.doc) for m in enum]
        caption = f"{enum.__name__}: {inspect.getdoc(enum).splitlines()[0]}"
        table = build_table(("Value", "Hex", "Name", "Meaning"), rows, (7, 7, 24, 60))
        table.insert(0, nodes.title("", "", *self.inline(caption)))
        return [table]


class WireLimits(_WireDirective):
    """``.. wire-limits::``: every constant of :mod:`distcache.wire.limits` with its comment."""

    def run(self) -> list[nodes.Node]:
        rows = []
        for const in documented_constants(limits):
            if not const.comment:
                logger.warning(
                    "limit %s has no #: comment in distcache.wire.limits",
                    const.name,
                    location=self.get_location(),
                )
            hexadecimal = const.definition.startswith("0x") or "<<" in const.definition
            value = _hex(const.value) if hexadecimal else f"{const.value:,}".replace(",", "\u00a0")
            definition = "" if const.is_literal else code(const.definition)
            rows.append((code(const.name), value, definition, self.inline(const.comment)))
        return [
            build_table(
                ("Name", "Value", "Defined as", "Meaning"),
                rows,
                (22, 12, 22, 50),
                caption="Protocol limits and constants",
            )
        ]


class WireMessages(_WireDirective):
    """``.. wire-messages::``: which payload each operation and direction carries."""

    def run(self) -> list[nodes.Node]:
        rows = []
        for message in schema.MESSAGES:
            operation = (
                f"{int(message.operation)} {message.operation.name}"
                if message.operation is not None
                else "any"
            )
            direction = "request" if message.direction is Direction.REQUEST else "response"
            name = _schema_name(message.schema)
            payload = [code(name), nodes.Text(": "), *self.inline(message.schema.__doc__ or "")]
            rows.append((message.name, operation, direction, message.when, payload))
        return [
            build_table(
                ("Message", "Operation", "Direction", "When", "Payload"),
                rows,
                (20, 11, 10, 10, 50),
                caption="Message catalogue",
            )
        ]


class WireChecks(_WireDirective):
    """``.. wire-checks::``: the header checks in validation order, with the bytes each needs."""

    def run(self) -> list[nodes.Node]:
        rows = [
            (str(n), code(c.field), str(c.offset), str(c.needs), code(c.reason), c.legal)
            for n, c in enumerate(fastcodec.HEADER_CHECKS, start=1)
        ]
        return [
            build_table(
                ("Order", "Field", "Offset", "Bytes needed", "Violation", "Legal values"),
                rows,
                (6, 12, 7, 8, 22, 40),
                caption="Header checks in validation order",
            )
        ]


def setup(app) -> None:
    app.add_directive("wire-fields", WireFields)
    app.add_directive("wire-layout", WireLayout)
    app.add_directive("wire-enum", WireEnum)
    app.add_directive("wire-limits", WireLimits)
    app.add_directive("wire-messages", WireMessages)
    app.add_directive("wire-checks", WireChecks)
