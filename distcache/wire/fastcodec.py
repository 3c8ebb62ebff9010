"""The hot-path header codec, generated at import time from :data:`schema.FrameHeader`.

construct needs ~20 µs to parse a header and its ``compile()`` is not meant for untrusted input.
This module reads the schema (field formats, offsets, the :class:`~schema.Legal` test expressions
and the :class:`~schema.Rule` checks, in validation order) and generates one ``struct`` format and
one Python function that unpacks and validates a whole header in a single pass. Property tests
prove it agrees with construct on arbitrary bytes.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .limits import HEADER_SIZE, MIN_BYTES_EXAMINED
from .schema import FrameHeader, fields_of

_FIELDS = fields_of(FrameHeader)
_VALUE_FIELDS = [f for f in _FIELDS if f.rule is None]

#: Field names of the header, in wire order (the tuple order of :func:`decode_header`).
HEADER_FIELDS: tuple[str, ...] = tuple(f.name for f in _VALUE_FIELDS)
#: The header as one ``struct`` format, concatenated from the schema's field formats.
HEADER_FORMAT = ">" + "".join(f.fmtstr.lstrip("<>=!") for f in _VALUE_FIELDS)
HEADER_STRUCT = struct.Struct(HEADER_FORMAT)
assert HEADER_STRUCT.size == HEADER_SIZE, "schema and HEADER_SIZE disagree"

#: Offset of each header field inside the header.
FIELD_OFFSET: dict[str, int] = {f.name: f.offset for f in _VALUE_FIELDS}
FIELD_SIZE: dict[str, int] = {f.name: f.size for f in _VALUE_FIELDS}


@dataclass(frozen=True)
class HeaderCheck:
    """One validation step, in the order receivers apply them."""

    field: str  #: the field blamed when the check fails
    reason: str  #: stable machine-readable name of the violation
    legal: str  #: what the field may hold, in words
    offset: int  #: offset of the blamed field inside the header
    needs: int  #: bytes of the frame that must have arrived before the check can run
    test: Callable[..., bool]
    args: tuple[str, ...]  #: header fields the test reads


def _build_checks() -> tuple[HeaderCheck, ...]:
    checks = []
    for f in _FIELDS:
        if f.legal is not None:
            end = f.offset + f.size
            checks.append(
                HeaderCheck(
                    f.name,
                    f.legal.reason,
                    f.legal.legal,
                    f.offset,
                    max(end, MIN_BYTES_EXAMINED),
                    f.legal.predicate,
                    (f.name,),
                )
            )
        elif f.rule is not None:
            end = max(FIELD_OFFSET[n] + FIELD_SIZE[n] for n in f.rule.needs)
            checks.append(
                HeaderCheck(
                    f.rule.field,
                    f.rule.reason,
                    f.rule.legal,
                    FIELD_OFFSET[f.rule.field],
                    max(end, MIN_BYTES_EXAMINED),
                    f.rule.predicate,
                    f.rule.needs,
                )
            )
    return tuple(checks)


#: Every header check, in validation order.
HEADER_CHECKS: tuple[HeaderCheck, ...] = _build_checks()


def _generate_decoder() -> Callable:
    """Generate ``decode_header(buf, pos)`` -> header tuple, or None if any check fails."""
    names = ", ".join(HEADER_FIELDS)
    tests = []
    for f in _FIELDS:
        if f.legal is not None:
            tests.append("(" + re.sub(r"\bv\b", f.name, f.legal.test) + ")")
        elif f.rule is not None:
            tests.append("(" + f.rule.test + ")")
    source = (
        "def decode_header(buf, pos=0):\n"
        f"    {names}, = _unpack(buf, pos)\n"
        f"    if {' and '.join(tests)}:\n"
        f"        return {names},\n"
        "    return None\n"
    )
    namespace = {"_unpack": HEADER_STRUCT.unpack_from}
    exec(compile(source, "<distcache.wire.fastcodec>", "exec"), namespace)
    decode_header = namespace["decode_header"]
    decode_header.__doc__ = (
        "Unpack and validate the 14-byte header at ``buf[pos:]`` (which must hold 14 bytes).\n\n"
        "Returns the field values as a tuple in :data:`HEADER_FIELDS` order, or ``None`` when a\n"
        "check fails (then :func:`first_failure` names it). Generated from the schema:\n\n" + source
    )
    decode_header.source = source
    return decode_header


decode_header = _generate_decoder()


def first_failure(buf, pos: int = 0, available: int | None = None) -> HeaderCheck | None:
    """The first check (in validation order) that the bytes at ``buf[pos:pos+available]`` fail.

    Only checks whose bytes have all arrived run, so a partial header is judged on what was
    received and nothing else. Returns ``None`` when every check that could run passed.
    """
    if available is None:
        available = len(buf) - pos
    available = min(available, HEADER_SIZE)
    values: dict[str, int] = {}
    for name in HEADER_FIELDS:
        start, size = FIELD_OFFSET[name], FIELD_SIZE[name]
        if start + size <= available:
            values[name] = int.from_bytes(buf[pos + start : pos + start + size], "big")
    for check in HEADER_CHECKS:
        if check.needs > available:
            return None
        if not check.test(*(values[a] for a in check.args)):
            return check
    return None


_DATA_LEN = struct.Struct(">H")
assert FIELD_SIZE["data_len"] == _DATA_LEN.size


def frame_size_at(buf, pos: int = 0) -> int:
    """Wire size of the frame whose (at least 14-byte) header starts at ``buf[pos]``, unvalidated."""
    return HEADER_SIZE + _DATA_LEN.unpack_from(buf, pos + FIELD_OFFSET["data_len"])[0]


def encode_header(
    is_response: int,
    request_uid: int,
    operation: int,
    complete: int,
    data_len: int,
    proto_level: int,
    op_class: int = 0,
) -> bytes:
    """Pack a header (no validation: callers build headers from enums and limits)."""
    values = {
        "proto_level": proto_level,
        "is_response": is_response,
        "request_uid": request_uid,
        "op_class": op_class,
        "operation": operation,
        "complete": complete,
        "data_len": data_len,
    }
    return HEADER_STRUCT.pack(*(values[name] for name in HEADER_FIELDS))
