"""``distcache dissector``: print the Wireshark Lua dissector generated from the schemas."""

from __future__ import annotations

from ..address import port_argument
from ..dissector import DEFAULT_PORTS, generate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "dissector",
        help="print a Wireshark dissector (Lua) generated from the protocol schemas",
        description="Print a Wireshark Lua dissector for distcache, generated from the protocol "
        "schemas. Load it with: wireshark -X lua_script:distcache.lua (or tshark).",
    )
    parser.add_argument(
        "--port",
        type=port_argument,
        action="append",
        metavar="PORT",
        help="TCP port the dissector registers on (repeatable; default "
        f"{', '.join(map(str, DEFAULT_PORTS))}); a Wireshark preference changes it later",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    print(generate(args.port or DEFAULT_PORTS), end="")
    return 0
