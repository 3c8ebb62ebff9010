"""``dc_test``: random operations against a distcache server or proxy, checked against a model.

The legacy flags, defaults, output lines (all on stderr) and exit statuses (0 all tests passed,
1 a failure or a bad command line). Differences from the legacy program:

- no false failures: 4-byte sessions are read back (the client library reads them), and the model
  allows for expiry and for eviction by a server smaller than ``-sessions`` (tolerant where the
  outcome cannot be known, resynchronised from the answer);
- a network failure is always a failure (the legacy counted a failed REMOVE or GET as a pass when
  it expected a miss);
- extensions: ``-clients N`` concurrent connections, ``-seed N`` reproducible runs, a live progress
  bar when stderr is a terminal, and a latency report on stdout at the end (redis-benchmark
  conventions; ``-csv`` or ``-json`` for machines);
- extension: a ``TLS:host:port`` address, verified with ``-tls-ca`` (else the system trust
  store), presenting ``-tls-cert``/``-tls-key``.
"""

from __future__ import annotations

import asyncio
import sys

from ..address import AddressError, parse_address
from ..client import AsyncClient, DistcacheError, Mode
from ..loadtest import (
    LoadTest,
    Progress,
    SessionModel,
    TestFailure,
    as_csv,
    as_json,
    as_text,
    new_rng,
    random_steps,
)
from ..tls import ClientTLS
from .legacy_flags import TLS_FLAGS, CommandLine, Flag, FlagExit, decimal_in, run_parser
from .tls_options import TLSSetupError, check_used, client_tls, files_from

__all__ = ["COMMAND_LINE", "main"]

MAX_SESSIONS = 512
MAX_OPS = 1_000_000
MIN_DATA = 4
MAX_DATA = 4096
MAX_SECONDS = 3600
MAX_PROGRESS = 1_000_000
MAX_CLIENTS = 1024


def _at_least(low: int, message: str):
    def convert(text: str) -> int:
        value = decimal_in(0, 1 << 31)(text)
        if value < low:
            raise FlagExit(1, [message])
        return value

    return convert


def _at_most(high: int, message: str):
    def convert(text: str) -> int:
        value = decimal_in(0, 1 << 31)(text)
        if value > high:
            raise FlagExit(1, [message])
        return value

    return convert


def _no_openssl(text: str) -> None:
    raise FlagExit(1, ["Error, no OpenSSL support compiled in, -with-cert not available."])


COMMAND_LINE = CommandLine(
    program="dc_test",
    summary="Random operations against a distcache server or proxy, checked against a model.",
    doubled_dash=True,
    flags=[
        Flag(("-connect",), "connect", "the server or proxy to test (required)", "address"),
        Flag(
            ("-sessions",),
            "sessions",
            f"sample sessions, 1..{MAX_SESSIONS}",
            "num",
            decimal_in(1, MAX_SESSIONS),
            10,
        ),
        Flag(
            ("-ops",),
            "ops",
            f"random tests, 0..{MAX_OPS} (default 10 x sessions^2)",
            "num",
            decimal_in(0, MAX_OPS),
        ),
        Flag(
            ("-datamin",),
            "datamin",
            f"shortest session, at least {MIN_DATA} bytes",
            "num",
            _at_least(MIN_DATA, f"Error, -datamin should be at least {MIN_DATA}"),
            50,
        ),
        Flag(
            ("-datamax",),
            "datamax",
            f"session length bound, at most {MAX_DATA} bytes",
            "num",
            _at_most(MAX_DATA, f"Error, -datamax should be at most {MAX_DATA}"),
            2100,
        ),
        Flag(
            ("-timeout",),
            "timeout",
            f"mean session timeout in seconds, ..{MAX_SECONDS}",
            "secs",
            decimal_in(0, MAX_SECONDS),
            60,
        ),
        Flag(
            ("-timevar",),
            "timevar",
            "timeout variation in seconds (< -timeout)",
            "secs",
            decimal_in(0, MAX_SECONDS),
            5,
        ),
        Flag(
            ("-progress",),
            "progress",
            "print a line every <num> tests",
            "num",
            decimal_in(0, MAX_PROGRESS),
            0,
        ),
        Flag(("-persistent",), "persistent", "one connection per client (else one per request)"),
        Flag(("-withcert",), "withcert", "not available (no OpenSSL support)", "num", _no_openssl),
        Flag(
            ("-clients",),
            "clients",
            f"extension: concurrent clients, 1..{MAX_CLIENTS}",
            "num",
            decimal_in(1, MAX_CLIENTS),
            1,
        ),
        Flag(
            ("-seed",),
            "seed",
            "extension: random seed, for a reproducible run",
            "num",
            decimal_in(0, (1 << 64) - 1),
        ),
        Flag(("-csv",), "csv", "extension: latency report as CSV"),
        Flag(("-json",), "json", "extension: latency report as JSON"),
        *TLS_FLAGS,
    ],
    notes="Progress and results go to stderr; the latency report goes to stdout.",
)


def main(argv: list[str] | None = None) -> int:
    options = run_parser(COMMAND_LINE, argv)
    if isinstance(options, int):
        return options
    try:
        return asyncio.run(_run(options))
    except KeyboardInterrupt:
        return 130


def _info(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run(options: dict) -> int:
    if options["connect"] is None:
        _info("Error, must provide -connect")
        return 1
    if options["timevar"] >= options["timeout"]:
        _info("Error, -timevar must be strictly smaller than -timeout")
        return 1
    tls = _tls(options)
    if tls is False or not await _can_create_context(
        options["connect"], options["persistent"], tls
    ):
        return 1
    sessions = options["sessions"]
    ops = options["ops"] if options["ops"] is not None else 10 * sessions * sessions
    rng = new_rng(options["seed"])
    model = SessionModel(rng, sessions, options["datamin"], options["datamax"])
    _info(f"Info, {sessions} sessions generated, will run {ops} random tests")
    progress = Progress(ops, options["progress"])
    test = LoadTest(
        options["connect"],
        model,
        random_steps(rng, sessions, ops, options["timeout"], options["timevar"]),
        clients=options["clients"],
        persistent=options["persistent"],
        on_progress=progress,
        tls=tls,
    )
    try:
        await test.run()
    except TestFailure as failure:
        progress.finish()
        _info(failure.line)
        if failure.detail:
            _info(f"  ({failure.detail})")
        _info(f"Info, {test.succeeded} tests succeeded before the first failure")
        return 1
    progress.finish()
    _info("Info, all tests complete")
    if options["csv"]:
        print(as_csv(test.timings))
    elif options["json"]:
        print(as_json(test.timings))
    else:
        print(as_text(test.timings, options["clients"], options["persistent"]))
    return 0


def _tls(options: dict) -> ClientTLS | bool | None:
    """The TLS of a TLS: -connect address; False (after a one-line error) if it cannot be used."""
    try:
        address = [parse_address(options["connect"])]
    except AddressError:
        return None  # reported as the legacy did, by the context check
    files = files_from(options)
    try:
        check_used(files, address)
        return client_tls(files, address)
    except TLSSetupError as error:
        _info(f"Error, {error}")
        return False


async def _can_create_context(address: str, persistent: bool, tls: ClientTLS | None) -> bool:
    """The legacy DC_CTX constructor's checks: a connectable address, and for a persistent
    context a connection that opens."""
    try:
        parse_address(address).require_connect()
        if persistent:
            client = AsyncClient(address, Mode.PERSISTENT, tls=tls)
            await client.open()
            await client.close()
    except (AddressError, DistcacheError) as error:
        _info("Error, 'DC_CTX' creation failed")
        _info(f"  ({error})")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
