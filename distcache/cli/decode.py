"""``distcache decode``: decode a raw byte stream of distcache messages."""

from __future__ import annotations

import json
import sys

from ..capture import command as capture
from ..decoding import DIRECTIONS, decode_stream, record_text
from . import UsageError, read_input


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="decode a byte stream of requests or responses",
        description="Decode a raw distcache byte stream (one direction of a connection), or the "
        "distcache connections of a pcap/pcapng capture, and print each message. Exit status: 0 "
        "all decoded, 1 corrupt or truncated input (or a capture gap), 2 usage error or a "
        "capture file that cannot be read.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "file", nargs="?", default="-", help="file holding the raw stream ('-' or none: stdin)"
    )
    source.add_argument(
        "--hex", metavar="HEX", help="the stream as hex (spaces and colons ignored)"
    )
    parser.add_argument(
        "--direction",
        choices=tuple(DIRECTIONS),
        default="auto",
        help="what the stream carries (default auto: each message's own header says)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    capture.add_arguments(parser)
    parser.set_defaults(handler=run)


def _read_input(args) -> bytes:
    if args.hex is not None:
        text = "".join(args.hex.split()).replace(":", "")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise UsageError("--hex: not a hexadecimal string") from None
    return read_input(args.file)


def run(args) -> int:
    if capture.is_capture(args):
        return capture.run(args)
    capture.reject_capture_options(args)
    data = _read_input(args)
    status = 0
    for record in decode_stream(data, DIRECTIONS[args.direction]):
        if "error" in record:
            status = 1
            if record["error"] == "bad_version" and record.get("offset") == 0:
                print(NOT_A_STREAM_HINT, file=sys.stderr)
        print(json.dumps(record) if args.format == "json" else record_text(record))
    return status


#: Said when the very first header is foreign: most often the input is not distcache at all.
NOT_A_STREAM_HINT = (
    "hint: the input does not start with a distcache frame header (00 11 xx xx) nor a pcap or "
    "pcapng magic number; give a raw stream of one direction of a connection, or a capture"
)
