"""Real proxies for the proxy tests: in-process (the same code on a background event loop, real
sockets) for bulk wire tests, and ``dc_client`` subprocesses for the program's own behaviour.

Servers come from :mod:`serverproc` (one helper starts them all)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from serverproc import START_TIMEOUT, ServerThread, read_shared_file, run_program

from distcache.address import parse_address
from distcache.proxy import Proxy, ProxySettings


def start_proxy(thread: ServerThread, upstream: str, listen: str, **settings) -> Proxy:
    """A Proxy serving ``listen`` on the thread's loop, forwarding to ``upstream``."""

    async def start() -> Proxy:
        proxy = Proxy(
            ProxySettings(listen=parse_address(listen), server=parse_address(upstream), **settings)
        )
        await proxy.start()
        return proxy

    return thread.call(start())


def connect_unix(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


class DcClient:
    """A ``dc_client`` subprocess listening on a UNIX socket; stderr kept for inspection."""

    def __init__(self, path: str, upstream: str, *args: str, wait: bool = True) -> None:
        self.path = path
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        argv = [sys.executable, "-m", "distcache.cli.dc_client", "-listen", f"UNIX:{path}"]
        self.process = subprocess.Popen(
            [*argv, "-server", upstream, *args], stderr=self._stderr, stdin=subprocess.DEVNULL
        )
        if wait:
            self.wait_accepting()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return connect_unix(self.path, timeout)

    def wait_accepting(self) -> None:
        """Until a connection is accepted (the socket file exists from the bind on, but the
        proxy listens only once it is ready)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"dc_client exited {self.process.returncode}: {self.stderr}")
            try:
                self.connect(timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dc_client never listened: {self.stderr}") from None
                time.sleep(0.02)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def stderr(self) -> str:
        if self._stderr.closed:
            return self._final_stderr
        return read_shared_file(self._stderr)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(START_TIMEOUT)
        finally:
            self._final_stderr = self.stderr
            self._stderr.close()


@contextlib.contextmanager
def dc_client(path: str, upstream: str, *args: str) -> Iterator[DcClient]:
    proxy = DcClient(path, upstream, *args)
    try:
        yield proxy
    finally:
        proxy.stop()


def run_dc_client(*args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``dc_client`` to completion (flag errors, -h) and capture its output."""
    return run_program("dc_client", *args, timeout=timeout)
