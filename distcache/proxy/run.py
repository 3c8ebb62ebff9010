"""Running a proxy until it is told to stop: stop signals, graceful stop, a second signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from ..server.run import KILLABLE_SIGNALS, STOP_SIGNALS, stop_requested_early
from .proxy import Proxy, ProxySettings

__all__ = ["serve_until_stopped"]


async def serve_until_stopped(
    settings: ProxySettings,
    sockets: list[socket.socket],
    *,
    killable: bool = False,
    reload: Callable[[], None] | None = None,
    around: Callable[[Proxy], AbstractAsyncContextManager | None] | None = None,
    on_started: Callable[[Proxy], None] | None = None,
    remove_socket_file: bool = True,
) -> int:
    """Serve until SIGTERM/SIGINT (and SIGUSR1/2 when ``killable``); return 0.

    A stop signal stops accepting and lets each local connection get the answers to the requests
    it has sent, for up to ``settings.grace`` seconds; a second stop signal drops them at once.
    SIGHUP calls ``reload`` (re-reading the TLS files) when given. ``around(proxy)`` may give
    a context (a metrics listener) entered before the proxy listens and left after it stopped;
    ``on_started(proxy)`` is called once it serves. A worker of ``dc_client -workers N`` passes
    ``remove_socket_file=False``: the socket file is its supervisor's.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    proxy = Proxy(settings)

    def stop_requested() -> None:
        if stop.is_set():
            proxy.connections.abort_all()
        stop.set()

    for signum in (*STOP_SIGNALS, *(KILLABLE_SIGNALS if killable else ())):
        loop.add_signal_handler(signum, stop_requested)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    if stop_requested_early():  # signalled while starting (see ``defer_stop_requests``)
        stop.set()
    async with contextlib.AsyncExitStack() as cleanup:
        context = around(proxy) if around is not None else None
        if context is not None:
            await cleanup.enter_async_context(context)
        try:
            await proxy.start(sockets)
            if on_started is not None:
                on_started(proxy)
            await stop.wait()
        finally:
            await proxy.close(settings.grace, remove_socket_file=remove_socket_file)
            for signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(signum)
    return 0
