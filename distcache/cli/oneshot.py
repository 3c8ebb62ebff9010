"""``distcache add|get|remove|have``: one operation against a cache server, from the shell.

Exit status: 0 hit / stored / removed / present, 1 miss / refused / absent, 2 error (usage,
address, connection, protocol). Messages go to stderr, one line each; ``get`` writes the raw
session to stdout (hex with ``--hex``) or to ``--output FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..address import AddressError, parse_address
from ..client import Client, DistcacheError, Mode
from ..wire import Status
from . import UsageError, read_input
from .tls_options import TLSSetupError, add_tls_arguments, check_used, files_from

#: Environment variable giving the default ``--server``.
SERVER_ENV = "DISTCACHE_SERVER"
DEFAULT_EXPIRY_MS = 60_000
DEFAULT_WAIT_S = 5.0

#: What each ADD refusal means, for the one-line message.
_REFUSALS = {
    Status.NOTOK: "refused",
    Status.ADD_CORRUPT: "refused as malformed",
    Status.ADD_MATCHING_SESSION: "already present",
    Status.ADD_TIMEOUT_RANGE: "refused: timeout out of range",
    Status.ADD_ID_RANGE: "refused: id empty or longer than 64 bytes",
    Status.ADD_DATA_RANGE: "refused: session empty or too long",
}


def register(subparsers) -> None:
    for name, summary, build in (
        ("add", "store a session", _add_arguments),
        ("get", "fetch a session", _get_arguments),
        ("remove", "remove a session", None),
        ("have", "ask whether a session is stored", None),
    ):
        parser = subparsers.add_parser(
            name,
            help=summary,
            description=f"{summary.capitalize()} on a distcache server. Exit status: 0 success or "
            "hit, 1 miss or refusal, 2 error.",
        )
        _common_arguments(parser)
        add_tls_arguments(parser)
        if build is not None:
            build(parser)
        parser.set_defaults(handler=_HANDLERS[name])


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(SERVER_ENV)
    parser.add_argument(
        "--server",
        metavar="ADDR",
        default=default,
        required=default is None,
        help=(
            "server address, e.g. IP:127.0.0.1:9001, UNIX:/path or TLS:cache.example:9001 "
            f"(default: ${SERVER_ENV})"
        ),
    )
    parser.add_argument(
        "--hex", action="store_true", help="ids and sessions are given (and printed) as hex"
    )
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_WAIT_S,
        help=f"give up after this long, connecting included (default {DEFAULT_WAIT_S:g})",
    )
    parser.add_argument("id", metavar="ID", help="the session id")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", metavar="SESSION", nargs="?", help="the session data")
    parser.add_argument(
        "--file", metavar="PATH", help="read the raw session from PATH ('-': stdin) instead"
    )
    parser.add_argument(
        "--timeout-ms",
        metavar="MS",
        type=int,
        default=DEFAULT_EXPIRY_MS,
        help=f"expiry in milliseconds (default {DEFAULT_EXPIRY_MS}; 501..604800000)",
    )
    parser.add_argument(
        "--any-timeout",
        action="store_true",
        help="send any 32-bit --timeout-ms, even one the client library would refuse",
    )


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", metavar="FILE", help="write the session to FILE instead of stdout"
    )


# -- handlers -------------------------------------------------------------------------------------


def _run_add(args) -> int:
    session = _session_of(args)
    with _client(args, strict_timeouts=not args.any_timeout) as client:
        status = client.add_status(_id_of(args), session, args.timeout_ms)
    if status is Status.OK:
        _say("stored")
        return 0
    _say(f"{_REFUSALS.get(status, 'refused')} ({int(status)})")
    return 1


def _run_get(args) -> int:
    with _client(args) as client:
        session = client.get(_id_of(args))
    if session is None:
        _say("not found")
        return 1
    data = session.hex().encode() + b"\n" if args.hex else session
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    try:
        with open(args.output, "wb") as output:
            output.write(data)
    except OSError as error:
        raise UsageError(f"cannot write {args.output}: {error.strerror}") from None
    return 0


def _run_remove(args) -> int:
    with _client(args) as client:
        removed = client.remove(_id_of(args))
    _say("removed" if removed else "not found")
    return 0 if removed else 1


def _run_have(args) -> int:
    with _client(args) as client:
        present = client.have(_id_of(args))
    _say("present" if present else "not found")
    return 0 if present else 1


def _guarded(run):
    """Turn every expected failure into a one-line message and exit status 2."""

    def handler(args) -> int:
        try:
            return run(args)
        except (AddressError, DistcacheError, ValueError) as error:
            raise UsageError(str(error)) from None

    return handler


_HANDLERS = {
    name: _guarded(run)
    for name, run in (
        ("add", _run_add),
        ("get", _run_get),
        ("remove", _run_remove),
        ("have", _run_have),
    )
}


# -- helpers --------------------------------------------------------------------------------------


def _client(args, **options) -> Client:
    files = files_from(args)
    try:
        check_used(files, [parse_address(args.server)], dash="--")
    except TLSSetupError as error:
        raise UsageError(str(error)) from None
    return Client(args.server, Mode.TEMPORARY, timeout=args.wait, tls=files or None, **options)


def _bytes_of(text: str, what: str, as_hex: bool) -> bytes:
    if not as_hex:
        return os.fsencode(text)  # the argument's own bytes, whatever the locale
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not hexadecimal") from None


def _id_of(args) -> bytes:
    return _bytes_of(args.id, "ID", args.hex)


def _session_of(args) -> bytes:
    if (args.file is None) == (args.session is None):
        raise UsageError("give the session either as SESSION or with --file, not both or neither")
    if args.file is None:
        return _bytes_of(args.session, "SESSION", args.hex)
    return read_input(args.file)


def _say(message: str) -> None:
    print(message, file=sys.stderr)
