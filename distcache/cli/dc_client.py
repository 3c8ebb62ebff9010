"""``dc_client``: the local proxy, with the legacy command line.

Listens locally (default ``UNIX:/tmp/scache``) and multiplexes every local client over one
persistent connection to ``-server``. Legacy flags, defaults, messages and exit statuses (0 for a
clean stop or usage, 1 for every start-up error). Deliberate differences from the legacy program:

- nothing a peer sends can stop it: a client leaving with a request in flight, a bad protocol
  version, a server answering an unknown uid or the wrong operation are handled and logged;
- reconnects and idle checks run on precise timers, not a coarse poll;
- SIGTERM and SIGINT stop it cleanly (exit 0) and remove its UNIX socket file;
- with ``-daemon`` a relative ``-pidfile`` is taken relative to the starting directory;
- a start-up line (listener, server, limits) at INFO, the default threshold;
- a local client's request that the server would answer by closing the shared connection (an
  ADD too short for its prefix) closes only that client's connection, and a lost server link
  is re-established at once (the retry delay applies from the second failure);
- at ``-maxconns`` the longest idle local connection makes room for a new one;
- SIGTERM answers the requests already received (up to ``-grace`` seconds) before exiting;
- extensions: ``-maxinflight``, ``-maxconns``, ``-maxperpeer``, ``-maxpeerbytes``, ``-grace``,
  ``-log-level``,
  ``-workers``, ``-log``, ``-metrics``;
- extensions: a ``TLS:host:port`` server (and listen address) with ``-tls-cert``, ``-tls-key``
  and ``-tls-ca``, SIGHUP re-reading those files, ``-allow CIDR`` for a plain TCP listen address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from types import SimpleNamespace

from .. import __version__
from ..address import AddressError, parse_address
from ..allowlist import cidr_argument
from ..monitoring.logs import reopen_log_files
from ..netio import ListenError
from ..proxy import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PER_PEER,
    DEFAULT_RETRY_MS,
    MAX_IDLE_MS,
    MAX_RETRY_MS,
    Proxy,
    ProxySettings,
)
from ..proxy.run import serve_until_stopped
from ..server import bind_listeners, new_event_loop, unix_path_of
from ..server.listeners import BACKLOG, close_listeners_but, listeners_per_worker
from ..server.run import defer_stop_requests, describe_socket, stop_requested_early
from ..workers import Supervisor, WorkerSpec, stop_timeout_for
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
from .peer_flags import grace_flag, peer_bytes_flag, per_peer_flag
from .service import StartupError, apply_socket_file_settings, become_service
from .tls_options import (
    TLSSetupError,
    allow_list,
    check_used,
    client_tls,
    files_from,
    reload_on_sighup,
    server_tls,
)

log = logging.getLogger("distcache.proxy")

__all__ = ["COMMAND_LINE", "main"]


COMMAND_LINE = CommandLine(
    program="dc_client",
    summary="Local distcache proxy: many local clients share one connection to a server.",
    flags=[
        Flag(("-listen",), "listen", "where local clients connect", "address", str, DEFAULT_LISTEN),
        Flag(
            ("-server", "-connect"),
            "server",
            "the cache server to forward to (required)",
            "address",
            repeat_error="Error, too many servers",
        ),
        Flag(
            ("-retry",),
            "retry_ms",
            f"ms before reconnecting to a lost server, 1..{MAX_RETRY_MS}",
            "ms",
            decimal_in(1, MAX_RETRY_MS),
            DEFAULT_RETRY_MS,
        ),
        Flag(
            ("-idle",),
            "idle_ms",
            f"close local connections idle this many ms, 0..{MAX_IDLE_MS} (0: never)",
            "ms",
            decimal_in(0, MAX_IDLE_MS),
            0,
        ),
        *SERVICE_FLAGS,
        Flag(
            ("-maxinflight",),
            "max_in_flight",
            "extension: most requests in flight to the server; more wait",
            "num",
            decimal_in(1, 65536),
            DEFAULT_MAX_IN_FLIGHT,
        ),
        Flag(
            ("-maxconns",),
            "max_clients",
            "extension: most local connections; at the cap the longest idle one makes room",
            "num",
            decimal_in(1, 1_000_000),
            DEFAULT_MAX_CLIENTS,
        ),
        per_peer_flag(DEFAULT_MAX_PER_PEER),
        peer_bytes_flag(),
        grace_flag(),
        log_level_flag(),
        LOG_FLAG,
        METRICS_FLAG,
        *TLS_FLAGS,
        Flag(
            ("-allow",),
            "allow",
            "extension: serve a plain TCP listen address to this network only (CIDR; repeatable)",
            "cidr",
            cidr_argument,
            repeatable=True,
        ),
        workers_flag(),
    ],
    notes=(
        "Addresses: IP:<host>:<port>, UNIX:<path>, IP:[<ipv6>]:<port>, TLS:<host>:<port>.\n"
        "A TLS: server is verified against -tls-ca (else the system trust store) and its host\n"
        "name; -tls-cert/-tls-key are presented to it. SIGHUP re-reads the TLS files.\n"
        "With no server connection every request is answered with an empty reply; requests in\n"
        "flight when the server is lost are answered with the status byte 0x02 (DISCONNECTED).\n"
        "SIGTERM and SIGINT always stop the proxy cleanly (exit status 0), after answering the\n"
        "requests already received (for up to -grace seconds); a second signal stops it at once.\n"
        "With -workers N, N processes serve the listener, each with its own server connection,\n"
        "under a parent that replaces a worker that dies and forwards the stop signals."
    ),
)


def main(argv: list[str] | None = None) -> int:
    options = run_parser(COMMAND_LINE, argv)
    if isinstance(options, int):
        return options
    try:
        settings = _settings(options)
        # A stop signal from now on (the pid file may be read at once) is a clean stop.
        defer_stop_requests(options["killable"])
        start_logging("dc_client", options["log"], options["log_level"])
        sockets = _listen(options, settings)
        metrics_sockets = bind_metrics(options["metrics"])
        become_service(SimpleNamespace(**options))
        reload = with_log_reopening(reload_on_sighup([settings.tls, settings.listen_tls]))
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1
    if options["workers"] > 1:
        return _supervise(settings, sockets, options, reload, metrics_sockets)
    return _run_proxy(settings, sockets, options["killable"], reload, metrics_sockets)


def _run_proxy(
    settings: ProxySettings,
    sockets,
    killable: bool,
    reload,
    metrics_sockets=(),
    *,
    worker=False,
    metrics_slot=None,
    role="one process",
) -> int:
    def around(proxy: Proxy):
        return _metrics(proxy, metrics_sockets, metrics_slot) if metrics_sockets else None

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(
            serve_until_stopped(
                settings,
                sockets,
                killable=killable,
                reload=reload,
                around=around,
                on_started=lambda proxy: log.info(
                    "%s", _startup_line(proxy, metrics_sockets, role)
                ),
                remove_socket_file=not worker,
            )
        )


def _supervise(settings: ProxySettings, sockets, options: dict, reload, metrics_sockets) -> int:
    """Workers that each serve the inherited listener with their own server connection; the
    parent keeps the pid file and removes the UNIX socket file when all have stopped, and
    passes SIGHUP on (reopening the log file, re-reading the TLS files), which never stops it.
    The workers share the metrics listener; whichever answers a scrape reports them all."""
    killable = options["killable"]
    for sock in sockets:  # the pid file is written: clients may queue for the first worker
        sock.listen(BACKLOG)
    try:
        shares = listeners_per_worker(sockets, options["workers"])
    except ListenError as error:
        print(f"Error, bad listen address\n  ({error})", file=sys.stderr)
        return 1

    shared = None
    if metrics_sockets:
        from ..monitoring.shared import SharedMetrics  # needs prometheus_client

        shared = SharedMetrics(len(shares))

    def worker(mine, index: int) -> int:
        close_listeners_but(shares, mine)
        defer_stop_requests(killable)
        slot = shared.slot(index) if shared is not None else None
        return _run_proxy(
            settings,
            mine,
            killable,
            reload,
            metrics_sockets,
            worker=True,
            metrics_slot=slot,
            role=f"worker {index + 1} of {len(shares)}",
        )

    def remove_socket_file() -> None:
        if settings.listen.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(settings.listen.path)

    specs = [
        WorkerSpec(
            "worker",
            functools.partial(worker, share, index),
            on_exit=functools.partial(shared.retire, index) if shared is not None else None,
        )
        for index, share in enumerate(shares)
    ]
    parent_reload = reload or reopen_log_files  # a replacement worker inherits what was re-read
    supervisor = Supervisor(
        specs,
        killable=killable,
        stop_requested=stop_requested_early,
        on_exit=remove_socket_file,
        on_forward=lambda _signum: parent_reload(),
        stop_timeout=stop_timeout_for(settings.grace),
    )
    return supervisor.run()


def _settings(options: dict) -> ProxySettings:
    if options["server"] is None:
        raise StartupError("Error, no server specified!")
    try:
        listen = parse_address(options["listen"]).require_listen()
    except AddressError as error:
        raise StartupError(f"Error, bad listen address\n  ({error})") from None
    try:
        server = parse_address(options["server"]).require_connect()
    except AddressError as error:
        raise StartupError(f"Error, internal initialisation problems\n  ({error})") from None
    files = files_from(options)
    try:
        check_used(files, [listen, server])
        tls = client_tls(files, [server])
        listen_tls = server_tls(files, [listen])
        allow = allow_list(options["allow"], [listen])
    except TLSSetupError as error:
        raise StartupError(f"Error, {error}") from None
    return ProxySettings(
        listen=listen,
        server=server,
        tls=tls,
        listen_tls=listen_tls,
        allow=allow,
        retry_ms=options["retry_ms"],
        idle_ms=options["idle_ms"],
        max_in_flight=options["max_in_flight"],
        max_clients=options["max_clients"],
        max_per_peer=options["max_per_peer"],
        max_peer_bytes=options["max_peer_bytes"],
        grace=options["grace"],
    )


#: Said when the default socket is taken: it is one path for the whole host.
_SHARED_DEFAULT_HINT = (
    f"\n  (no -listen was given, and the default {DEFAULT_LISTEN} is shared by every dc_client"
    " on this host; give this one its own: -listen UNIX:/path)"
)


def _listen(options: dict, settings: ProxySettings):
    try:
        sockets = bind_listeners(
            settings.listen,
            tls=settings.listen_tls,
            allow=settings.allow,
            reuse_port=options["workers"] > 1,
        )
    except (AddressError, ListenError) as error:
        hint = _SHARED_DEFAULT_HINT if options["listen"] == DEFAULT_LISTEN else ""
        raise StartupError(f"Error, bad listen address\n  ({error}){hint}") from None
    apply_socket_file_settings(SimpleNamespace(**options), unix_path_of(sockets))
    return sockets


@contextlib.asynccontextmanager
async def _metrics(proxy: Proxy, sockets, slot=None):
    from ..monitoring.metrics import MetricsListener, ProxyCollector, metrics_registry

    own = metrics_registry(ProxyCollector(proxy))
    if slot is None:
        listener = MetricsListener(own)
    else:  # a worker: every scrape reports all of them
        listener = MetricsListener(slot.registry(own), slot.publish)
    await listener.start(list(sockets))
    try:
        yield listener
    finally:
        await listener.close()


def _startup_line(proxy: Proxy, metrics_sockets, role: str) -> str:
    settings = proxy.settings
    line = (
        f"dc_client {__version__} serving on {proxy.listen_address()}; forwarding to "
        f"{settings.server} (upstream {proxy.link.state.name.lower()}); at most "
        f"{settings.max_clients} local connections, {settings.max_in_flight} requests in flight"
    )
    if metrics_sockets:
        line += f"; metrics on {', '.join(describe_socket(sock) for sock in metrics_sockets)}"
    return f"{line}; {role}"


if __name__ == "__main__":
    sys.exit(main())
