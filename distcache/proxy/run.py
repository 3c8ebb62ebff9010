"""Running a proxy until it is told to stop: stop signals, graceful stop, a second signal."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

from ..server.run import KILLABLE_SIGNALS, STOP_SIGNALS
from .proxy import Proxy, ProxySettings

__all__ = ["serve_until_stopped"]


async def serve_until_stopped(
    settings: ProxySettings,
    sockets: list[socket.socket],
    *,
    killable: bool = False,
    reload: Callable[[], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (and SIGUSR1/2 when ``killable``); return 0.

    A stop signal stops accepting and lets each local connection get the answers to the requests
    it has sent, for up to ``settings.grace`` seconds; a second stop signal drops them at once.
    SIGHUP calls ``reload`` (re-reading the TLS files) when given.
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
    try:
        await proxy.start(sockets)
        await stop.wait()
    finally:
        await proxy.close(settings.grace)
        for signum in (*STOP_SIGNALS, *KILLABLE_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0
