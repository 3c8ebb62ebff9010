"""The asyncio client: the DC_CTX operations as coroutines, pipelined on one connection."""

from __future__ import annotations

import asyncio
import copy
import os
from typing import Any

from ..address import Address
from ..netio import ConnectError, open_connection
from ..tls import ClientTLSSetting
from ..wire import Status
from .calls import Call
from .connection import ClientConnection, UidCounter
from .errors import (
    ConnectionFailed,
    ConnectionLost,
    DistcacheError,
    OperationTimeout,
    ProtocolViolation,
    TransportError,
)
from .modes import DEFAULT_MODE, Mode, checks_pid, connects_eagerly, keeps_connection, may_resend
from .settings import DEFAULT_TIMEOUT, Settings, SettingsView

#: Requests a client keeps in flight before further callers wait (the legacy proxy's bound).
DEFAULT_MAX_IN_FLIGHT = 512
_READ_SIZE = 65536


class _Link:
    """One open connection: its streams, its protocol state and the task reading its replies."""

    __slots__ = ("closed_here", "conn", "dead", "reader", "task", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn):
        self.reader = reader
        self.writer = writer
        self.conn: ClientConnection = conn
        self.dead: DistcacheError | None = None
        self.closed_here = False  # by close(): its requests are not resent
        self.task: asyncio.Task | None = None


class AsyncClient(SettingsView):
    """An asyncio distcache client. Concurrent operations share one connection (PERSISTENT) and
    are pipelined: each request goes out at once under its own uid, and one reader task hands each
    reply to its caller, in whatever order replies come. The legacy client could not pipeline.

    Arguments are those of :class:`~distcache.client.Client`, plus ``max_in_flight``: requests
    sent and unanswered at any time, beyond which callers wait for a slot (the wait counts towards
    their timeout). Use it as ``async with AsyncClient(address) as client: ...``, or call
    :meth:`open` (connects unless LATE or temporary; operations connect on demand anyway) and
    :meth:`close`.

    Operations return and raise exactly what the blocking :class:`~distcache.client.Client`'s do.
    When a connection fails, every request in flight on it fails with the same typed error
    (ConnectionLost, ProtocolViolation; OperationTimeout for the request that timed out and
    ConnectionLost for the others), and the next operation opens a new connection. In RETRY mode
    each request that failed with ConnectionLost on a reused connection is resent once.

    Fork: an event loop does not survive a fork. With PIDCHECK a child that runs a new loop gets a
    new connection; the inherited one is abandoned without being closed (its descriptor leaks in
    the child so that the parent's connection is not disturbed).
    """

    def __init__(
        self,
        address: Address | str,
        mode: Mode | int = DEFAULT_MODE,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        strict_timeouts: bool = True,
        allow_ambiguous: bool = False,
        legacy_get_semantics: bool = False,
        tls: ClientTLSSetting = None,
    ) -> None:
        self._settings = Settings.build(
            address, mode, timeout, strict_timeouts, allow_ambiguous, legacy_get_semantics, tls
        )
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, not {type(max_in_flight).__name__}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._uids = UidCounter()
        self._link: _Link | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connecting = asyncio.Lock()  # one connect, however many callers are waiting
        self._temporary: set[_Link] = set()

    @property
    def connected(self) -> bool:
        """Whether a persistent connection is open."""
        return self._link is not None and self._link.dead is None

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> AsyncClient:
        """Connect now if the mode asks for it (PERSISTENT without LATE). Raises ConnectionFailed
        or OperationTimeout."""
        if connects_eagerly(self.mode) and not self.connected:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._persistent_link()
            except TimeoutError:
                raise OperationTimeout(f"connecting to '{self.address}' timed out") from None
        return self

    async def close(self) -> None:
        """Close every connection; requests still in flight fail with ConnectionLost."""
        links = [self._link, *self._temporary] if self._link else list(self._temporary)
        self._link = None
        for link in links:
            link.closed_here = True
            self._kill(link, ConnectionLost("the client was closed"))
        for link in links:
            if link.task is not None and link.task is not asyncio.current_task():
                await asyncio.gather(link.task, return_exceptions=True)

    async def __aenter__(self) -> AsyncClient:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient('{self.address}', {self.mode!r}, timeout={self.timeout})"

    # -- operations -------------------------------------------------------------------------------

    async def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> bool:
        """True if stored, False if the server refused; see :meth:`Client.add`."""
        return await self.add_status(session_id, session, timeout_ms) is Status.OK

    async def add_status(self, session_id: bytes, session: bytes, timeout_ms: int) -> Status:
        """The server's status for this ADD; see :meth:`Client.add_status`."""
        return await self._run(self._settings.add(session_id, session, timeout_ms))

    async def get(self, session_id: bytes) -> bytes | None:
        """The stored session, or None on a miss; see :meth:`Client.get`."""
        return await self._run(self._settings.get(session_id))

    async def remove(self, session_id: bytes) -> bool:
        """True if a session was removed, False if there was none."""
        return await self._run(self._settings.remove(session_id))

    async def have(self, session_id: bytes) -> bool:
        """Whether a session is stored under ``session_id``."""
        return await self._run(self._settings.have(session_id))

    # -- machinery --------------------------------------------------------------------------------

    async def _run(self, call: Call) -> Any:
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await self._attempts(call)
        except TimeoutError as error:
            if isinstance(error, OperationTimeout):
                raise
            raise OperationTimeout(
                f"{call.operation.name} to '{self.address}' did not complete within {self.timeout} s"
            ) from None

    async def _attempts(self, call: Call) -> Any:
        for attempt in (0, 1):
            existing = self._link
            link = await self._acquire()
            reused = link is existing
            try:
                return await self._exchange(link, call)
            except (TransportError, ProtocolViolation) as error:
                if not link.closed_here and may_resend(
                    self.mode, error, attempt=attempt, reused=reused
                ):
                    continue
                raise
            finally:
                if not keeps_connection(self.mode):
                    self._kill(link, ConnectionLost("temporary connection closed"))
        raise AssertionError("unreachable")

    async def _acquire(self) -> _Link:
        if not keeps_connection(self.mode):
            link = await self._connect()
            self._temporary.add(link)
            return link
        return await self._persistent_link()

    async def _persistent_link(self) -> _Link:
        link = self._usable_link()
        if link is not None:
            return link
        async with self._connecting:
            link = self._usable_link()
            if link is None:
                link = self._link = await self._connect()
            return link

    def _usable_link(self) -> _Link | None:
        link = self._link
        if link is None:
            return None
        if link.dead is not None:
            self._link = None
            return None
        if checks_pid(self.mode) and link.conn.owner_pid != os.getpid():
            self._link = None  # abandoned, not closed: the parent still uses that socket
            return None
        return link

    async def _connect(self) -> _Link:
        try:
            reader, writer = await open_connection(
                self.address, timeout=None, tls=self._settings.tls
            )
        except ConnectError as error:
            raise ConnectionFailed(str(error)) from None
        link = _Link(reader, writer, ClientConnection(self._uids))
        link.task = asyncio.create_task(self._read_replies(link), name=f"distcache reader {self}")
        return link

    async def _exchange(self, link: _Link, call: Call) -> Any:
        if link.dead is not None:
            raise copy.copy(link.dead)
        future = asyncio.get_running_loop().create_future()
        link.writer.write(link.conn.send(call, future))  # the whole request in one write
        try:
            await link.writer.drain()
            return await future
        except asyncio.CancelledError:
            # A timeout (or the caller's cancellation) with the request in flight: its reply may
            # still come, out of step with the connection's next requests. Drop the connection.
            future.cancel()
            self._kill(
                link, ConnectionLost(f"dropped: a {call.operation.name} timed out or was cancelled")
            )
            raise
        except OSError as error:
            self._kill(link, ConnectionLost(f"connection to '{self.address}' failed: {error}"))
            raise copy.copy(link.dead) from None

    async def _read_replies(self, link: _Link) -> None:
        """The reader task: hand each reply to its caller until the connection ends."""
        conn, reader = link.conn, link.reader
        try:
            while link.dead is None:
                try:
                    data = await reader.read(_READ_SIZE)
                except OSError as error:
                    raise ConnectionLost(
                        f"connection to '{self.address}' failed: {error}"
                    ) from None
                for completion in conn.receive_data(data):
                    future = completion.context
                    if future.done():
                        continue
                    if completion.error is not None:
                        future.set_exception(completion.error)
                    else:
                        future.set_result(completion.result)
                if not data:
                    self._kill(link, ConnectionLost("the server closed the connection"))
        except (ConnectionLost, ProtocolViolation) as error:
            self._kill(link, error)
        except Exception as error:  # never leave callers waiting on a reader that died
            self._kill(link, ConnectionLost(f"reading replies failed: {error!r}"))

    def _kill(self, link: _Link, error: DistcacheError) -> None:
        """Mark ``link`` dead, close it, and fail its unanswered requests with ``error``."""
        if link.dead is None:
            link.dead = error
            link.writer.close()
            self._temporary.discard(link)
            if link.task is not None and link.task is not asyncio.current_task():
                link.task.cancel()
        for future in link.conn.abandon():
            if not future.done():
                future.set_exception(copy.copy(error))
