"""``distcache decode`` on a pcap or pcapng capture: its options and its output.

``distcache decode`` recognises a capture by its magic number and hands it over here, so one
command decodes raw streams and captures alike.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from ..address import port_argument
from ..cli import UsageError
from ..decoding import record_text
from .decoder import CaptureDecoder, CaptureProblem, capture_record
from .reader import CaptureError, capture_format, read_segments
from .summary import CaptureSummary, summary_text


def add_arguments(parser) -> None:
    """The options that apply to captures only."""
    parser.add_argument(
        "--port",
        type=port_argument,
        action="append",
        metavar="PORT",
        help="captures: decode the TCP connections with an end on PORT (repeatable; default: "
        "every connection whose first bytes are a distcache frame header)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="captures: print per-operation counts, the GET hit ratio, status counts and "
        "latency percentiles instead of the messages",
    )


def is_capture(args) -> bool:
    """Whether the input named by ``args`` starts with a pcap or pcapng magic number."""
    if args.hex is not None:
        return False
    if args.file == "-":
        return capture_format(sys.stdin.buffer.peek(4)[:4]) is not None
    try:
        with open(args.file, "rb") as stream:
            return capture_format(stream.read(4)) is not None
    except OSError:
        return False  # the stream decoder reports unreadable files


def reject_capture_options(args) -> None:
    """Raw streams have no ports and no timing: refuse the capture-only options for them."""
    if args.port or args.summary:
        raise UsageError("--port and --summary apply to pcap/pcapng captures only")


def clock(time: float) -> str:
    """A capture time as UTC date and time with microseconds."""
    return datetime.fromtimestamp(time, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def line_text(record: dict) -> str:
    """One line for a capture record: time, endpoints, the stream decoder's text, latency."""
    text = f"{clock(record['time'])} {record['src']} > {record['dst']} {record_text(record)}"
    latency = record.get("latency_ms")
    return text if latency is None else f"{text} latency={latency:.3f}ms"


def run(args) -> int:
    """Decode the capture named by ``args``; exit status 0, 1 (protocol errors or gaps) or 2."""
    if args.file == "-":
        return _run(args, sys.stdin.buffer)
    try:
        stream = open(args.file, "rb")  # noqa: SIM115 - closed below; read errors are usage errors
    except OSError as error:
        raise UsageError(f"cannot read {args.file}: {error.strerror}") from None
    with stream:
        return _run(args, stream)


def _run(args, stream) -> int:
    decoder = CaptureDecoder(args.port)
    items = decoder.decode(read_segments(stream))
    status = 0
    try:
        if args.summary:
            summary = CaptureSummary().add_all(items).as_dict(decoder.connections)
            print(json.dumps(summary) if args.format == "json" else summary_text(summary))
            return 1 if summary["errors"] else 0
        as_json = args.format == "json"
        for item in items:
            if type(item) is CaptureProblem:
                status = 1
            record = capture_record(item)
            print(json.dumps(record) if as_json else line_text(record))
    except CaptureError as error:
        sys.stdout.flush()
        raise UsageError(f"{args.file}: {error}") from None
    return status
