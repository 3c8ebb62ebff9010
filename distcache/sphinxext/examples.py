"""``wire-example``: worked examples decoded at build time, so they cannot go stale.

The content is the byte stream in hex. Whitespace, colons and line breaks are ignored, and a token
``XX*N`` stands for the byte ``XX`` repeated ``N`` times (so a multi-frame example stays short)::

    .. wire-example::
       :direction: request
       :caption: ADD uid 2, timeout 1000 ms, id "k1", session "v"

       00 11 00 00 00 00 00 00 02 00 00 01 00 0b
       00 00 03 e8 00 00 00 02 6b 31 76

The directive splits the stream into frames (header and data on separate lines, long runs of one
byte elided), decodes it with :func:`distcache.decoding.decode_stream` (the code behind
``distcache decode``) and shows every message as a field table. A stream that fails to decode is
a build warning, unless ``:error:`` names the error reason the example is meant to show.

``protocol-reasons`` renders :data:`distcache.protocol.errors.REASONS`: every ``reason`` a
:class:`~distcache.protocol.RemoteProtocolError` (and so an error record) can carry.
"""

from __future__ import annotations

import re
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from distcache.decoding import DIRECTIONS, decode_stream, payload_text
from distcache.wire.fastcodec import HEADER_FIELDS, HEADER_STRUCT
from distcache.wire.limits import HEADER_SIZE

from .tables import build_table, code

logger = logging.getLogger(__name__)

_REPEAT = re.compile(r"^([0-9a-fA-F]{2})\*(\d+)$")
#: Bytes shown per line of a data dump, and the shortest run of one byte that is elided.
_PER_LINE = 16
_ELIDE_RUN = 24


class ExampleSyntaxError(ValueError):
    pass


def parse_example_hex(text: str) -> bytes:
    """The bytes of a ``wire-example`` body (hex, with ``XX*N`` repetitions)."""
    out = bytearray()
    for token in text.replace(":", " ").split():
        repeat = _REPEAT.match(token)
        if repeat:
            out += bytes.fromhex(repeat.group(1)) * int(repeat.group(2))
            continue
        try:
            out += bytes.fromhex(token)
        except ValueError:
            raise ExampleSyntaxError(f"not hex: {token!r}") from None
    return bytes(out)


def _hex_run(data: bytes) -> list[str]:
    """Lines of hex for ``data``: 16 bytes a line, a long run of one byte shown once with a count."""
    lines: list[str] = []
    row: list[str] = []
    index = 0
    while index < len(data):
        end = index
        while end < len(data) and data[end] == data[index]:
            end += 1
        if end - index >= _ELIDE_RUN:
            if row:
                lines.append(" ".join(row))
                row = []
            lines.append(f"{data[index]:02x} × {end - index}")
            index = end
            continue
        row.append(f"{data[index]:02x}")
        index += 1
        if len(row) == _PER_LINE:
            lines.append(" ".join(row))
            row = []
    if row:
        lines.append(" ".join(row))
    return lines


def frame_dump(data: bytes) -> str:
    """A hex dump cut at frame boundaries: offset, header bytes, then the data bytes."""
    lines = []
    pos = 0
    number = 0
    while pos < len(data):
        number += 1
        header = data[pos : pos + HEADER_SIZE]
        lines.append(f"{pos:05d}  header {' '.join(f'{b:02x}' for b in header)}")
        if len(header) < HEADER_SIZE:
            lines.append("       (stream ends inside the header)")
            break
        fields = dict(zip(HEADER_FIELDS, HEADER_STRUCT.unpack(header), strict=True))
        start = pos + HEADER_SIZE
        chunk = data[start : start + fields["data_len"]]
        for index, text in enumerate(_hex_run(chunk)):
            lines.append(
                f"{f'{start:05d}' if index == 0 else '':>5}  {'data' if index == 0 else '':<6} {text}"
            )
        if len(chunk) < fields["data_len"]:
            lines.append(f"       (stream ends {fields['data_len'] - len(chunk)} bytes early)")
        pos = start + fields["data_len"]
    return "\n".join(lines)


_FIELD_ORDER = ("direction", "request_uid", "op", "proto_level", "frames", "offset")


def _record_rows(record: dict) -> list[tuple]:
    rows = []
    for key in _FIELD_ORDER:
        value = record[key]
        hexadecimal = key in ("request_uid", "proto_level")
        shown = f"{value} ({value:#010x})" if hexadecimal else str(value)
        rows.append((code(key), shown))
    for key, value in record["payload"].items():
        if key in ("session_id", "session", "data"):
            size = len(value) // 2
            shown = f"{value[:64]}{'…' if size > 32 else ''} ({size} bytes)" if value else "(empty)"
        else:
            shown = str(value).lower() if value is True else str(value)
        rows.append((code(f"payload.{key}"), shown))
    return rows


class WireExample(SphinxDirective):
    has_content = True
    option_spec: ClassVar = {
        "direction": lambda text: directives.choice(text, tuple(DIRECTIONS)),
        "caption": directives.unchanged,
        "error": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        try:
            data = parse_example_hex("\n".join(self.content))
        except ExampleSyntaxError as error:
            logger.warning("wire-example: %s", error, location=self.get_location())
            return []
        direction = DIRECTIONS[self.options.get("direction", "auto")]
        records = list(decode_stream(data, direction))
        expected_error = self.options.get("error")
        container = nodes.container(classes=["wire-example"])
        caption = self.options.get("caption")
        if caption:
            parsed, messages = self.parse_inline(caption, lineno=self.lineno)
            container += nodes.paragraph("", "", nodes.strong("", "", *parsed), *messages)
        dump = frame_dump(data)
        block = nodes.literal_block(dump, dump)
        block["language"] = "text"
        container += block
        for record in records:
            if "error" in record:
                if record["error"] != expected_error:
                    logger.warning(
                        "wire-example does not decode: %s at offset %s (%s)",
                        record["error"],
                        record["offset"],
                        record["detail"],
                        location=self.get_location(),
                    )
                rows = [(code(k), str(v)) for k, v in record.items()]
                container += build_table(("Key", "Value"), rows, (20, 70), caption="Error record")
                continue
            summary = f"{record['direction']} {record['op']}: {payload_text(record['payload'])}"
            container += build_table(
                ("Key", "Value"), _record_rows(record), (20, 70), caption=summary
            )
        if expected_error and not any(r.get("error") == expected_error for r in records):
            logger.warning(
                "wire-example expected the error %r, which did not occur",
                expected_error,
                location=self.get_location(),
            )
        return [container]


class ProtocolReasons(SphinxDirective):
    has_content = False

    def run(self) -> list[nodes.Node]:
        from distcache.protocol.errors import REASONS, STREAM_REASONS

        rows = [
            (code(reason), "stream" if reason in STREAM_REASONS else "header", meaning)
            for reason, meaning in REASONS.items()
        ]
        return [
            build_table(
                ("Reason", "Found in", "Meaning"),
                rows,
                (24, 10, 66),
                caption="Protocol error reasons (header checks first, in validation order)",
            )
        ]


def setup(app) -> None:
    app.add_directive("wire-example", WireExample)
    app.add_directive("protocol-reasons", ProtocolReasons)
