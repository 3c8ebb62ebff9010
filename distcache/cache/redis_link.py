"""A pipelined link to one Valkey/Redis server: many commands in flight, no task per command.

The link is an asyncio protocol. Sending a command packs it and queues its callback; the
commands of one event-loop pass leave together in one write. The store answers in command
order, so each reply parsed from the socket goes to the oldest callback, inside the loop pass
that read it. A request therefore costs the server a share of one write and one read on the
store connection and nothing else: no task, no future, no extra loop pass (a task per command,
woken by a reader task, took three more passes and over half of the server's time per request).
Commands from every client connection share the link, so one connection is plenty.

hiredis, the store's own C protocol library, packs the commands and parses the replies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis

__all__ = ["Endpoint", "Link", "LinkBroken", "ReplyError"]

log = logging.getLogger("distcache.cache.redis")

#: What a command's callback receives: the reply, a :class:`ReplyError` (the store refused that
#: command) or another exception (the link failed: :class:`LinkBroken`, ``TimeoutError``,
#: ``OSError``).
Callback = Callable[[Any], None]

_MORE = object()  # hiredis' "no whole reply buffered yet"


class ReplyError(Exception):
    """The store answered a command with an error reply; the link itself is fine."""


class LinkBroken(ConnectionError):
    """The link's connection failed; every command in flight on it failed with it."""


@dataclass(frozen=True)
class Endpoint:
    """Where the store is and how to log in: a TCP host and port, or a UNIX socket path."""

    host: str = "localhost"
    port: int = 6379
    unix_path: str | None = None
    #: TLS for TCP; None means plain TCP.
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a message or a log
    database: int = 0

    def handshake(self) -> list[tuple]:
        """The commands that open a session: log in, then pick the database."""
        commands: list[tuple] = []
        if self.password is not None:
            login = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *login))
        if self.database:
            commands.append(("SELECT", self.database))
        return commands


class Link:
    """One pipelined connection to ``endpoint``, (re)connected on demand by the next command.

    Time budget: a command unanswered ``budget`` seconds after it was sent (connecting included)
    means the store is stuck, and so is every command behind it, so the connection is dropped
    and all of them fail with ``TimeoutError``. A watchdog checks the oldest command four times
    per budget, far cheaper than a timer per command; a command thus fails within 1.25 budgets.
    """

    def __init__(self, endpoint: Endpoint, budget: float) -> None:
        self._endpoint = endpoint
        self._budget = budget
        self._connection: _Connection | None = None

    def send(self, args: tuple, callback: Callback) -> None:
        """Send one command; ``callback`` gets its outcome later, never during this call."""
        connection = self._connection
        if connection is None or connection.broken:
            connection = self._connection = _Connection(self._endpoint, self._budget)
        connection.send(hiredis.pack_command(args), callback)

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (raising the error, if any)."""
        future = asyncio.get_running_loop().create_future()

        def settle(outcome: Any) -> None:
            if future.done():
                return
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.send(args, settle)
        return await future

    async def close(self) -> None:
        """Fail the commands in flight and drop the connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(LinkBroken("the link was closed"))


class _Connection(asyncio.Protocol):
    """One connection's life: connecting, pipelining, then broken for good (never reused)."""

    def __init__(self, endpoint: Endpoint, budget: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._budget = budget
        self._reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_MORE)
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []  # written at the end of the loop pass, once connected
        self._waiting: collections.deque[tuple[Callback, float]] = collections.deque()
        self.broken = False
        self._flush_pending = False
        for command in endpoint.handshake():
            self.send(hiredis.pack_command(command), self._check_handshake)
        self._opening = self._loop.create_task(self._open(endpoint))
        self._watchdog = self._loop.call_later(budget / 4, self._watch)

    def send(self, packed: bytes, callback: Callback) -> None:
        self._waiting.append((callback, self._loop.time() + self._budget))
        self._unsent.append(packed)
        if not self._flush_pending and self._transport is not None:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        # The commands of one loop pass leave in one write: a write to a loopback or LAN socket
        # costs more than all the Python work of a request, here and in the store.
        self._flush_pending = False
        if self._unsent and not self.broken:
            unsent, self._unsent = self._unsent, []
            self._transport.write(b"".join(unsent))  # type: ignore[union-attr]

    async def _open(self, endpoint: Endpoint) -> None:
        try:
            if endpoint.unix_path is not None:
                await self._loop.create_unix_connection(lambda: self, endpoint.unix_path)
            else:
                await self._loop.create_connection(
                    lambda: self, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
        except asyncio.CancelledError:
            raise
        except Exception as error:  # refused, unreachable, TLS refused, ...
            self.fail(error)

    def _check_handshake(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):  # wrong password, no such database, ...
            self.fail(LinkBroken(f"the store refused the handshake: {reply}"))

    def _watch(self) -> None:
        if self.broken:
            return
        if self._waiting and self._waiting[0][1] < self._loop.time():
            self.fail(TimeoutError())
            return
        self._watchdog = self._loop.call_later(self._budget / 4, self._watch)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.broken:  # gave up while connecting
            transport.abort()
            return
        self._transport = transport  # type: ignore[assignment]
        self._flush()  # the handshake and the commands sent while connecting

    def data_received(self, data: bytes) -> None:
        reader, waiting = self._reader, self._waiting
        reader.feed(data)
        while not self.broken:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self.fail(LinkBroken(f"unreadable reply from the store: {error}"))
                return
            if reply is _MORE:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                log.warning("the store sent a reply nobody asked for; dropping its connection")
                self.fail(LinkBroken("unexpected reply from the store"))
                return
            callback, _ = waiting.popleft()
            _deliver(callback, reply)

    def eof_received(self) -> bool:
        self.fail(LinkBroken("the store closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(LinkBroken(f"connection to the store lost: {exc}" if exc else "connection lost"))

    # -- breaking ---------------------------------------------------------------------------

    def fail(self, error: Exception) -> None:
        """Fail every command in flight with ``error`` and drop the connection (once)."""
        if self.broken:
            return
        self.broken = True
        self._watchdog.cancel()
        if not self._opening.done() and self._opening is not asyncio.current_task(self._loop):
            self._opening.cancel()  # a connect or TLS handshake still under way
        if self._transport is not None:
            self._transport.abort()
        waiting, self._waiting = self._waiting, collections.deque()
        for callback, _ in waiting:  # a callback may send again: that opens a new connection
            _deliver(callback, error)


def _deliver(callback: Callback, outcome: Any) -> None:
    # A failing callback must not stop the replies behind it from reaching their callers.
    try:
        callback(outcome)
    except Exception:
        log.exception("store reply callback failed")
