"""Support code for the client tests (no tests here): a counting TCP relay, and scripted servers that
answer requests with whatever bytes a test dictates, to play broken servers and proxies."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable

from distcache.protocol import NEED_DATA, Closed, MessageDecoder, Request
from distcache.wire import Direction, Operation, Status


def _listener(backlog: int = 64) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


class _Acceptor:
    """Accepts connections on a thread and serves each on its own thread until closed."""

    def __init__(self) -> None:
        self.listener = _listener()
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.listener.getsockname()
        return f"IP:{host}:{port}"

    def _accept_loop(self) -> None:
        while not self._stopping:
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready or self._stopping:
                continue
            conn, _ = self.listener.accept()
            with self._lock:
                index = self.connections
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve_safely, args=(conn, index), daemon=True).start()

    def _serve_safely(self, conn: socket.socket, index: int) -> None:
        try:
            with contextlib.suppress(OSError):
                self.serve(conn, index)
        finally:
            conn.close()

    def serve(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def drop_all(self) -> None:
        """Close every accepted connection (the listener stays)."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        self.listener.close()
        self.drop_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Relay(_Acceptor):
    """Relays each accepted connection to ``upstream`` (host, port), counting connections: lets a
    test see how many connections a client really opened."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("IP:").rpartition(":")
        self.upstream = (host, int(port))
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        with socket.create_connection(self.upstream, timeout=5) as up:
            up.settimeout(None)
            with self._lock:
                self._open.append(up)
            while True:
                ready, _, _ = select.select([conn, up], [], [], 0.1)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    target = up if source is conn else conn
                    target.sendall(data)
                if self._stopping:
                    return


#: respond(connection_index, request) -> the bytes to send back (b"" or None: send nothing)
Respond = Callable[[int, Request], bytes | None]


class ScriptedServer(_Acceptor):
    """Decodes requests and answers each with ``respond(connection_index, request)``.

    ``batch``: answer only once this many requests are waiting (all of them, in reverse order):
    a client that does not pipeline never gets an answer. ``close_after``: close a connection,
    unanswered, once it has received this many requests. ``hang_up``: close a connection right
    after sending its first reply. Every request is kept in ``requests``.
    """

    def __init__(
        self,
        respond: Respond,
        *,
        batch: int = 1,
        close_after: int | None = None,
        hang_up: bool = False,
    ):
        self.respond = respond
        self.batch = batch
        self.close_after = close_after
        self.hang_up = hang_up
        self.requests: list[tuple[int, Request]] = []
        self.received = threading.Condition()
        super().__init__()

    def serve(self, conn: socket.socket, index: int) -> None:
        decoder = MessageDecoder(receives=Direction.REQUEST)
        waiting: list[Request] = []
        count = 0
        while True:
            data = conn.recv(65536)
            decoder.receive_data(data)
            while (event := decoder.next_event()) is not NEED_DATA:
                if type(event) is Closed:
                    return
                count += 1
                with self.received:
                    self.requests.append((index, event))
                    self.received.notify_all()
                if self.close_after is not None and count >= self.close_after:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                waiting.append(event)
                if len(waiting) >= self.batch:
                    for request in reversed(waiting):
                        reply = self.respond(index, request)
                        if reply:
                            conn.sendall(reply)
                    waiting.clear()
                    if self.hang_up:
                        conn.shutdown(socket.SHUT_RDWR)
                        return
            if not data:
                return

    def wait_for_requests(self, count: int, timeout: float = 10) -> None:
        with self.received:
            assert self.received.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"only {len(self.requests)} of {count} requests arrived"
            )


class SilentListener:
    """A listening socket that never accepts: the kernel completes connects, nobody answers.
    With ``backlog_full`` its queue is filled first, so further connects hang."""

    def __init__(self, *, backlog_full: bool = False) -> None:
        self.listener = _listener(backlog=0 if backlog_full else 8)
        self._fillers: list[socket.socket] = []
        if backlog_full:
            for _ in range(4):  # the kernel queues backlog + 1; fill it, then some
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(self.listener.getsockname())
                self._fillers.append(filler)

    @property
    def address(self) -> str:
        host, port = self.listener.getsockname()
        return f"IP:{host}:{port}"

    def close(self) -> None:
        for sock in [*self._fillers, self.listener]:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def correct(index: int, request: Request) -> bytes:
    """What an empty cache answers: a miss or 'absent' for everything, 'stored' for ADD."""
    status = Status.OK if request.operation is Operation.ADD else Status.NOTOK
    return request.respond_status(status)
