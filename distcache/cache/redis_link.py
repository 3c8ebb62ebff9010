"""Pipelined links to one Valkey/Redis server: many commands in flight on one connection.

redis-py's pooled client spends most of a command's cost on checking a connection out of the
pool and back in, and keeps one command per connection. A link instead writes each command as
soon as it is issued and lets one reader task hand the replies, which come back in command
order, to the waiting callers. Commands from every client connection of the server are thus
pipelined to the store, and one connection is plenty.

redis-py still does all the protocol work: connecting (TCP, TLS, UNIX), AUTH, SELECT, command
packing and reply parsing (hiredis when installed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

__all__ = ["Link", "LinkBroken"]


class LinkBroken(ConnectionError):
    """The link's connection failed; every command in flight on it failed with it."""


class _Session:
    """One connection and the replies it owes, oldest first. Never reused once broken."""

    __slots__ = ("broken", "connection", "deadlines", "loop", "tasks", "waiting")

    def __init__(self, connection: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        # Kept: asyncio.get_running_loop() costs a getpid() system call on CPython 3.11.
        self.loop = loop
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.deadlines: collections.deque[float] = collections.deque()  # one per waiting future
        self.tasks: list[asyncio.Task] = []  # its reader and watchdog
        self.broken = False


class Link:
    """One pipelined connection, (re)connected on demand; ``make_connection()`` builds one.

    The connections must have no socket timeout: redis-py then writes a command before its first
    suspension, so commands reach the socket in the order their reply futures are queued.

    Time budget: a command unanswered after ``budget`` seconds means the store is stuck, and so
    is every command behind it, so the link breaks and all of them fail with ``TimeoutError``.
    One watchdog per connection checks the oldest command a few times per budget, which costs
    far less than a timer per command; a command thus fails within 1.25 budgets at most.
    Connecting, handshake included, has one budget of its own.
    """

    def __init__(self, make_connection, budget: float) -> None:
        self._make_connection = make_connection
        self._budget = budget
        self._session: _Session | None = None
        self._connecting: asyncio.Future | None = None

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (raising the store's error reply, if any)."""
        session = self._session
        while session is None or session.broken:
            session = await self._connect()
        # From here to the write nothing suspends, so the reply queue keeps the write order.
        connection = session.connection
        loop = session.loop
        reply = loop.create_future()
        session.waiting.append(reply)
        session.deadlines.append(loop.time() + self._budget)
        try:
            await connection.send_packed_command(connection.pack_command(*args), check_health=False)
        except BaseException:
            reply.cancel()  # this caller gets the send error itself
            await self._break(session, LinkBroken("could not send to the store"))
            raise
        return await reply

    async def close(self) -> None:
        """Fail the commands in flight and close the connection."""
        session = self._session
        if session is not None:
            await self._break(session, LinkBroken("the link was closed"))
            await asyncio.gather(*session.tasks, return_exceptions=True)

    # -- connecting and reading -------------------------------------------------------------

    async def _connect(self) -> _Session:
        # Concurrent first commands share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Session:
        connection = self._make_connection()
        try:
            # The handshake (AUTH, SELECT, ...) reads without a socket timeout: bound it here.
            async with asyncio.timeout(self._budget):
                await connection.connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)
            raise
        session = _Session(connection, asyncio.get_running_loop())
        session.tasks = [
            asyncio.ensure_future(self._read_replies(session)),
            asyncio.ensure_future(self._watch(session)),
        ]
        self._session = session
        return session

    async def _watch(self, session: _Session) -> None:
        deadlines = session.deadlines
        loop = asyncio.get_running_loop()
        while not session.broken:
            await asyncio.sleep(self._budget / 4)
            if deadlines and deadlines[0] < loop.time():
                await self._break(session, TimeoutError())
                return

    async def _read_replies(self, session: _Session) -> None:
        from redis.exceptions import ResponseError

        waiting, deadlines = session.waiting, session.deadlines
        while True:
            try:
                reply = await session.connection.read_response()
            except ResponseError as error:  # an error reply: that command failed, not the link
                reply = error
            except BaseException as error:
                await self._break(session, error)
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                await self._break(session, LinkBroken("unexpected reply from the store"))
                return
            future = waiting.popleft()
            deadlines.popleft()
            if future.done():
                continue  # its caller gave up
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _break(self, session: _Session, error: BaseException) -> None:
        """Fail every command in flight on ``session`` and close its connection (once)."""
        if session.broken:
            return
        session.broken = True
        if self._session is session:
            self._session = None
        failure = error if isinstance(error, Exception) else LinkBroken("the link was closed")
        while session.waiting:
            future = session.waiting.popleft()
            if not future.done():
                future.set_exception(failure)
        session.deadlines.clear()
        for task in session.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await session.connection.disconnect(nowait=True)
