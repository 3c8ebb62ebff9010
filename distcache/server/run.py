"""Running a server until it is told to stop: event loop choice, signals, the progress line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import __version__
from ..cache import MemoryCache, MemoryStore, SessionStore
from ..peers import DEFAULT_GRACE_SECONDS, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PEER_BYTES
from .accepting import AcceptSlot
from .handler import RequestHandler
from .listeners import describe_socket
from .progress import PROGRESS_INTERVAL, OperationTotals, ProgressReporter
from .relay import OwnerRelay
from .server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, Server

if TYPE_CHECKING:  # prometheus_client is needed only with -metrics
    from ..monitoring.shared import MetricsSlot

__all__ = [
    "RunOptions",
    "defer_stop_requests",
    "new_event_loop",
    "run_server",
    "stop_requested_early",
]

log = logging.getLogger("distcache.server")

#: Signals that always stop the server cleanly.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Signals that stop the server only when it is killable (ignored otherwise, as in the legacy).
KILLABLE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class RunOptions:
    #: Print a progress line whenever the operation count enters a new multiple of this (0: off).
    progress: int = 0
    #: Stop on SIGUSR1/SIGUSR2 as well.
    killable: bool = False
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Connections from one TCP peer address (0: no limit but max_connections).
    max_per_peer: int = DEFAULT_MAX_PER_PEER
    #: Bytes the connections of one TCP peer address may hold together (0: not counted).
    max_peer_bytes: int = DEFAULT_MAX_PEER_BYTES
    #: Seconds after which a connection with nothing read and no request in progress is closed.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Seconds a stop signal leaves for answering the requests already received.
    grace: float = DEFAULT_GRACE_SECONDS
    #: Called once the server accepts connections (tells a waiting launcher it started).
    on_ready: Callable[[], None] | None = None
    #: Bound sockets to serve Prometheus metrics on (none: no metrics listener).
    metrics_sockets: tuple[socket.socket, ...] = ()
    #: Called on SIGHUP (re-reads the TLS files); None leaves SIGHUP as it was.
    on_reload: Callable[[], None] | None = None
    #: Answers the requests instead of a handler on the store (a worker's OwnerRelay).
    handler: RequestHandler | None = None
    #: ADD timeouts below this many milliseconds are raised to it (0: off; see -min-timeout).
    min_timeout_ms: int = 0
    #: A worker's place in the metrics of the whole server (None: one process reports alone).
    metrics_slot: MetricsSlot | None = None
    #: What this process is among the server's processes, for the start-up line (-workers).
    role: str = "one process"
    #: A worker's turn at accepting among the others (None: one process accepts everything).
    accept_slot: AcceptSlot | None = None
    #: A worker's share of the whole server's operations count, which -progress reports
    #: (None: this process's own count is the server's).
    operations: OperationTotals | None = None
    #: This worker's slot in ``operations``.
    worker_index: int = 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: Stop signals that arrived before the event loop installed its handlers.
_early_stop_requests: list[int] = []


def defer_stop_requests(killable: bool) -> None:
    """Until the server's event loop takes over, remember stop requests instead of losing them.

    A supervisor (or a test) may signal the server while it is still starting; the request is
    honoured as soon as the loop starts.
    """
    # Each signal goes straight from its old handler to the new one: a stop that came between
    # an "ignore" and the new handler would be lost (a worker's supervisor forwards stops the
    # moment it has forked).
    for signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS):
        if signum in KILLABLE_SIGNALS and not killable:
            signal.signal(signum, signal.SIG_IGN)
        else:
            signal.signal(signum, lambda signum, _frame: _early_stop_requests.append(signum))


def stop_requested_early() -> bool:
    """Whether a stop signal came before a server's (or a supervisor's) handlers took over."""
    return bool(_early_stop_requests)


def run_server(sockets: list[socket.socket], store: SessionStore, options: RunOptions) -> int:
    """Serve on ``sockets`` until SIGTERM/SIGINT (or SIGUSR1/2 when killable); return 0.

    A stop signal stops accepting and lets every connection answer the requests it has received,
    for up to ``options.grace`` seconds; a second stop signal drops them at once."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_serve(sockets, store, options))


async def _serve(sockets: list[socket.socket], store: SessionStore, options: RunOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = Server(
        store,
        max_connections=options.max_connections,
        max_per_peer=options.max_per_peer,
        max_peer_bytes=options.max_peer_bytes,
        idle_timeout=options.idle_timeout,
        handler=options.handler,
        min_timeout_ms=options.min_timeout_ms,
    )

    def stop_requested() -> None:
        if stop.is_set():  # the second request: no more grace
            server.connections.abort_all()
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop_requested)
    for signum in KILLABLE_SIGNALS:
        loop.add_signal_handler(signum, stop_requested if options.killable else _ignore)
    if options.on_reload is not None:
        loop.add_signal_handler(signal.SIGHUP, options.on_reload)
    if _early_stop_requests:
        stop.set()
    # Metrics first: once the cache listens (what launchers and tests wait for), they answer too.
    metrics = await _serve_metrics(server, options)
    await server.start(sockets, options.accept_slot)
    log.info("%s", startup_line(server, options))
    if options.on_ready is not None:
        options.on_ready()
    progress = asyncio.ensure_future(_report_progress(server, options))
    try:
        await stop.wait()
    finally:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        if metrics is not None:
            await metrics.close()
        await server.close(options.grace)
        for signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


async def _serve_metrics(server: Server, options: RunOptions):
    if not options.metrics_sockets:
        return None
    # Imported only when asked for: prometheus_client is not needed to serve the cache.
    from ..monitoring.metrics import MetricsListener, ServerCollector, metrics_registry

    slot = options.metrics_slot
    clients = slot is None or slot.clients
    own = metrics_registry(ServerCollector(server, describe_engine(server), clients=clients))
    if slot is None:
        listener = MetricsListener(own)
    else:  # a worker: every scrape reports the whole server
        listener = MetricsListener(slot.registry(own), slot.publish)
    await listener.start(list(options.metrics_sockets))
    return listener


def startup_line(server: Server, options: RunOptions) -> str:
    """What an operator needs to know at start: where, which engine, how big, which process."""
    listening = ", ".join(describe_socket(sock) for sock in server.sockets)
    store = server.store
    engine = repr(store)
    if type(store) is MemoryStore:
        cache = store.cache
        shared = "" if type(cache) is MemoryCache else ", in memory shared by the workers"
        engine = f"memory: ({cache.capacity} sessions{shared})"
    line = (
        f"dc_server {__version__} serving on {listening}; engine {engine}; "
        f"at most {server.max_connections} connections"
    )
    if options.metrics_sockets:
        metrics = ", ".join(describe_socket(sock) for sock in options.metrics_sockets)
        line += f"; metrics on {metrics}"
    return f"{line}; {options.role}"


def describe_engine(server: Server) -> str:
    """The engine for the metrics, safe to show: ``memory:`` (also for a worker relaying to the
    memory engine's owner), or the store's repr, which never shows a password."""
    store = server.store
    return "memory:" if type(store) in (MemoryStore, OwnerRelay) else repr(store)


def _ignore() -> None:
    """SIGUSR1/SIGUSR2 without -killable: the server keeps running."""


async def _report_progress(server: Server, options: RunOptions) -> None:
    """Print the -progress line when due; a worker of several publishes its count for the one
    that reports (the first), which counts them all."""
    every, totals = options.progress, options.operations
    if not every and totals is None:
        return
    publish = totals.slot(options.worker_index) if totals is not None else None
    reporter = ProgressReporter(every, time.monotonic())
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        operations = server.operations
        if publish is not None:
            publish(operations)
            operations = totals.total()
        if every:
            line = await reporter.evaluate(time.monotonic(), operations, server.store.count)
            if line is not None:
                _to_stderr(line)


def _to_stderr(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
