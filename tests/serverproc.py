"""Real servers for the server tests: in-process (same code, real sockets, a background event
loop) for bulk wire tests, and ``dc_server`` subprocesses for the program's own behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from distcache.cache import MemoryStore
from distcache.conformance.targets import free_tcp_address
from distcache.protocol import NEED_DATA, MessageDecoder
from distcache.server import Server, bind_listeners, new_event_loop
from distcache.wire import Direction

START_TIMEOUT = 10.0


class ServerThread:
    """One background event loop (uvloop when installed) hosting any number of servers."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine, timeout: float = START_TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self, sessions: int = 512, *, max_connections: int = 1024) -> Server:
        """A fresh server with an empty cache on a free loopback port."""

        async def start() -> Server:
            server = Server(MemoryStore(sessions), max_connections=max_connections)
            await server.start(bind_listeners("IP:127.0.0.1:0"))
            return server

        return self.call(start())

    def stop(self, server: Server) -> None:
        self.call(server.close())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT)
        self.loop.close()


def address_of(server: Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"IP:{host}:{port}"


def connect_to(listen: str, timeout: float = 5.0) -> socket.socket:
    """A blocking client socket connected to ``UNIX:path`` or ``IP:host:port``."""
    kind, _, rest = listen.partition(":")
    if kind == "UNIX":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(rest)
        return sock
    host, _, port = rest.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def free_port() -> int:
    """A loopback port for a server process to listen on (drawn as the conformance suite draws
    its targets' ports: below the kernel's automatic range, never twice)."""
    return int(free_tcp_address().rsplit(":", 1)[1])


class DcServer:
    """A ``dc_server`` subprocess; its stderr is kept in a file for inspection."""

    def __init__(self, args: list[str], *, listen: str | None, wait: bool = True) -> None:
        self.listen = listen
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        argv = [sys.executable, "-m", "distcache.cli.dc_server"]
        if listen is not None:
            argv += ["-listen", listen]
        self.process = subprocess.Popen(argv + args, stderr=self._stderr, stdin=subprocess.DEVNULL)
        if wait and listen is not None:
            self.wait_accepting()

    @property
    def pid(self) -> int:
        return self.process.pid

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A blocking client socket connected to the server."""
        assert self.listen is not None
        return connect_to(self.listen, timeout)

    def wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"dc_server exited {self.process.returncode}: {self.stderr}")
            try:
                self.connect(timeout=1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"dc_server never accepted: {self.stderr}") from None
                time.sleep(0.02)

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        return self.process.wait(timeout)

    @property
    def stderr(self) -> str:
        return read_shared_file(self._stderr)

    def stop(self) -> int:
        """SIGTERM (if still running) and the exit status; stderr stays readable."""
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()


def read_shared_file(file) -> str:
    """The whole text of a file that a running program writes to as its standard error.

    The program's descriptor and ``file`` share one file offset: seeking it to read would make
    the program's next line overwrite the start of the file (a start-up line then vanishes
    from the log a test waits for). ``pread`` reads without moving it."""
    chunks, offset = [], 0
    while chunk := os.pread(file.fileno(), 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode(errors="replace")


@contextlib.contextmanager
def dc_server(*args: str, listen: str | None = "default") -> Iterator[DcServer]:
    """Run ``dc_server -listen <free loopback port> args...`` for the duration of a block."""
    if listen == "default":
        listen = f"IP:127.0.0.1:{free_port()}"
    server = DcServer(list(args), listen=listen)
    try:
        yield server
    finally:
        server.stop()
        server._stderr.close()


def run_program(name: str, *args: str, timeout: float = START_TIMEOUT):
    """Run one of the legacy-named programs (``dc_server``, ``dc_client``, ``dc_test``, ...) to
    completion and capture its output as text."""
    return subprocess.run(
        [sys.executable, "-m", f"distcache.cli.{name}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def run_dc_server(*args: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``dc_server`` to completion (for flag errors, -h) and capture its output."""
    return run_program("dc_server", *args, timeout=timeout)


def ask(sock: socket.socket, request: bytes) -> bytes:
    """Send one request and return the payload of its reply (failing if the server closes)."""
    sock.sendall(request)
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    while (event := decoder.next_event()) is NEED_DATA:
        chunk = sock.recv(65536)
        assert chunk, "closed without an answer"
        decoder.receive_data(chunk)
    return event.payload


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")
