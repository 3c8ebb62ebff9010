"""Running a server until it is told to stop: event loop choice, signals, the progress line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..cache import SessionStore
from ..peers import DEFAULT_GRACE_SECONDS, DEFAULT_IDLE_TIMEOUT
from .progress import PROGRESS_INTERVAL, ProgressReporter
from .server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, Server

__all__ = [
    "RunOptions",
    "defer_stop_requests",
    "ignore_stop_requests",
    "new_event_loop",
    "run_server",
]

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
    #: Seconds after which a connection with nothing read and no request in progress is closed.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Seconds a stop signal leaves for answering the requests already received.
    grace: float = DEFAULT_GRACE_SECONDS
    #: Called once the server accepts connections (tells a waiting launcher it started).
    on_ready: Callable[[], None] | None = None
    #: Called on SIGHUP (re-reads the TLS files); None leaves SIGHUP as it was.
    on_reload: Callable[[], None] | None = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def ignore_stop_requests() -> None:
    """Ignore SIGUSR1/SIGUSR2 (their default action kills) until the server installs handlers."""
    for signum in KILLABLE_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


#: Stop signals that arrived before the event loop installed its handlers.
_early_stop_requests: list[int] = []


def defer_stop_requests(killable: bool) -> None:
    """Until the server's event loop takes over, remember stop requests instead of losing them.

    A supervisor (or a test) may signal the server while it is still starting; the request is
    honoured as soon as the loop starts.
    """
    ignore_stop_requests()
    for signum in (*STOP_SIGNALS, *(KILLABLE_SIGNALS if killable else ())):
        signal.signal(signum, lambda signum, _frame: _early_stop_requests.append(signum))


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
        idle_timeout=options.idle_timeout,
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
    await server.start(sockets)
    if options.on_ready is not None:
        options.on_ready()
    progress = asyncio.ensure_future(_report_progress(server, options.progress))
    try:
        await stop.wait()
    finally:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        await server.close(options.grace)
        for signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


def _ignore() -> None:
    """SIGUSR1/SIGUSR2 without -killable: the server keeps running."""


async def _report_progress(server: Server, every: int) -> None:
    reporter = ProgressReporter(every, time.monotonic())
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        line = await reporter.evaluate(time.monotonic(), server.operations, server.store.count)
        if line is not None:
            _to_stderr(line)


def _to_stderr(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
