"""``dc_server``: the distcache cache server, with the legacy command line.

Flags are single-dash words processed left to right, as in distcache 1.5.1; the legacy error
messages are kept word for word (including the doubled dash of the missing-argument and
invalid-argument messages). Deliberate differences from the legacy program:

- exit status 0 on a clean shutdown and 1 on every start-up error (the legacy inverted both);
- SIGTERM and SIGINT shut down cleanly (the legacy was simply killed);
- ``-sessions`` 1..63 is refused at once with status 1 (the legacy failed later, with status 0),
  and numbers must be plain decimal (the legacy's ``atoi`` read ``100abc`` as 100);
- a relative ``-pidfile`` is taken relative to the starting directory, also with ``-daemon``;
- ``-user`` also switches to the user's groups, not only its uid;
- a UNIX listener refuses to replace anything but a stale socket file;
- a start-up line (listeners, engine, capacity) at INFO, the default threshold;
- at ``-maxconns`` the longest idle connection makes room for a new client (the legacy had no cap);
- extensions: ``-maxconns``, ``-maxperpeer``, ``-maxpeerbytes``, ``-idle-timeout``, ``-grace``, ``-min-timeout``,
  ``-log-level``, ``-engine``, ``-workers``, ``-log``, ``-metrics``;
- extensions: several ``-listen`` at once, ``TLS:host:port`` listeners with ``-tls-cert``,
  ``-tls-key`` and ``-tls-ca`` (mutual TLS), SIGHUP re-reading those files, and ``-allow CIDR``
  for plain TCP listeners.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from ..address import AddressError, parse_address
from ..allowlist import AllowList, cidr_argument
from ..netio import ListenError
from ..server import (
    DEFAULT_ENGINE_URL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_PEER,
    EngineError,
    RunOptions,
    bind_listeners,
    close_listeners,
    open_engine,
    run_server,
    unix_path_of,
)
from ..server.run import defer_stop_requests
from ..server.workers import run_workers
from ..tls import ServerTLS
from ..wire import (
    DEFAULT_CACHE_SESSIONS,
    MAX_CACHE_SESSIONS,
    MAX_TIMEOUT_MS,
    MIN_CACHE_SESSIONS,
)
from .legacy_flags import (
    SERVICE_FLAGS,
    TLS_FLAGS,
    CommandLine,
    Flag,
    decimal_in,
    log_level_flag,
    run_parser,
    workers_flag,
)
from .monitoring import (
    LOG_FLAG,
    METRICS_FLAG,
    bind_metrics,
    start_logging,
    with_log_reopening,
)
from .peer_flags import grace_flag, idle_timeout_flag, peer_bytes_flag, per_peer_flag
from .service import StartupError, apply_socket_file_settings, become_service
from .tls_options import (
    TLSSetupError,
    allow_list,
    check_used,
    files_from,
    reload_on_sighup,
    server_tls,
)

__all__ = ["COMMAND_LINE", "main"]

#: Largest ``-progress`` value the legacy accepted.
MAX_PROGRESS = 1_000_000


COMMAND_LINE = CommandLine(
    program="dc_server",
    summary="distcache session cache server.",
    doubled_dash=True,  # the legacy dc_server's error lines read "Error, --sessions ..."
    flags=[
        Flag(
            ("-listen",),
            "listen",
            "where to accept clients (required; extension: give it several times)",
            "address",
            repeatable=True,
        ),
        Flag(
            ("-sessions",),
            "sessions",
            f"cache capacity in sessions, {MIN_CACHE_SESSIONS}..{MAX_CACHE_SESSIONS}",
            "num",
            decimal_in(MIN_CACHE_SESSIONS, MAX_CACHE_SESSIONS),
            DEFAULT_CACHE_SESSIONS,
        ),
        Flag(
            ("-progress",),
            "progress",
            "also report progress each time this many more operations are done",
            "num",
            decimal_in(0, MAX_PROGRESS),
            0,
        ),
        *SERVICE_FLAGS,
        Flag(
            ("-maxconns",),
            "maxconns",
            "extension: most clients at once; at the cap the longest idle one makes room",
            "num",
            decimal_in(1, 1_000_000),
            DEFAULT_MAX_CONNECTIONS,
        ),
        per_peer_flag(DEFAULT_MAX_PER_PEER),
        peer_bytes_flag(),
        idle_timeout_flag(),
        grace_flag(),
        Flag(
            ("-min-timeout",),
            "min_timeout",
            "extension: raise shorter ADD timeouts to this many milliseconds (0: off)",
            "ms",
            decimal_in(0, MAX_TIMEOUT_MS),
            0,
        ),
        log_level_flag(),
        Flag(
            ("-engine",),
            "engine",
            "extension: storage engine URL",
            "url",
            str,
            DEFAULT_ENGINE_URL,
        ),
        LOG_FLAG,
        METRICS_FLAG,
        *TLS_FLAGS,
        Flag(
            ("-allow",),
            "allow",
            "extension: serve plain TCP clients from this network only (CIDR; repeatable)",
            "cidr",
            cidr_argument,
            repeatable=True,
        ),
        workers_flag(),
    ],
    notes=(
        "Addresses: IP:<port>, IP:<host>:<port>, UNIX:<path>, IP:[<ipv6>]:<port>,\n"
        "TLS:<host>:<port> (needs -tls-cert and -tls-key; -tls-ca requires client certificates).\n"
        "SIGTERM and SIGINT always stop the server cleanly (exit status 0): it stops accepting,\n"
        "answers the requests already received (for up to -grace seconds), then exits; a\n"
        "second signal stops it at once. Start-up errors exit with status 1. SIGHUP re-reads\n"
        "the TLS files (connections stay open).\n"
        "With -workers N, N processes serve the clients under a parent that replaces a worker\n"
        "that dies; with the memory engine one more process owns the cache."
    ),
)


def main(argv: list[str] | None = None) -> int:
    values = run_parser(COMMAND_LINE, argv)
    if isinstance(values, int):
        return values
    options = SimpleNamespace(**values)
    if not options.listen:
        print("Error, must provide -listen", file=sys.stderr)
        return 1
    defer_stop_requests(options.killable)
    try:
        start_logging("dc_server", options.log, options.log_level)
        return _start(options)
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1


def _start(options: SimpleNamespace) -> int:
    try:
        store = open_engine(options.engine, options.sessions)
    except EngineError as error:
        raise StartupError(f"Error, {error}") from None
    tls, allow = _transport_settings(options)
    sockets = []
    for text in options.listen:
        try:
            sockets += bind_listeners(parse_address(text), tls=tls, allow=allow)
        except (AddressError, ListenError) as error:
            close_listeners(sockets)
            raise StartupError(f"Error, can't listen on '{text}'\nError, {error}") from None
    metrics_sockets = bind_metrics(options.metrics)
    apply_socket_file_settings(options, unix_path_of(sockets))
    # The launcher exits once the daemon serves: scripts may read the pid file at once.
    ready = become_service(options, wait_until_ready=True)
    run_options = RunOptions(
        progress=options.progress,
        killable=options.killable,
        max_connections=options.maxconns,
        max_per_peer=options.max_per_peer,
        max_peer_bytes=options.max_peer_bytes,
        idle_timeout=options.idle_timeout,
        grace=options.grace,
        min_timeout_ms=options.min_timeout,
        on_ready=ready,
        metrics_sockets=tuple(metrics_sockets),
        on_reload=with_log_reopening(reload_on_sighup([tls])),
    )
    if options.workers > 1:
        try:
            return run_workers(
                sockets,
                store,
                engine_url=options.engine,
                sessions=options.sessions,
                workers=options.workers,
                options=run_options,
            )
        except ListenError as error:
            listen = " ".join(options.listen)
            raise StartupError(f"Error, can't listen on '{listen}'\nError, {error}") from None
    return run_server(sockets, store, run_options)


def _transport_settings(options: SimpleNamespace) -> tuple[ServerTLS | None, AllowList | None]:
    """The TLS and allow-list of the -listen addresses, checked before anything is bound."""
    listen = []
    for text in options.listen:
        try:
            listen.append(parse_address(text).require_listen())
        except AddressError as error:
            raise StartupError(f"Error, can't listen on '{text}'\nError, {error}") from None
    files = files_from(options)
    try:
        check_used(files, listen)
        return server_tls(files, listen), allow_list(options.allow, listen)
    except TLSSetupError as error:
        raise StartupError(f"Error, {error}") from None


if __name__ == "__main__":
    sys.exit(main())
