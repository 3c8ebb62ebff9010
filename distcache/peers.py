"""Policies that keep one peer from hurting the others, shared by the server and the proxy.

A :class:`ConnectionRegistry` holds the accepted connections of one program and decides:

- **admission**: at most ``max_per_peer`` connections from one peer address (TCP peers only: a
  UNIX listener's peers have no address, its file permissions are the access control), and at
  most ``max_connections`` in all. At the global cap a new connection is served anyway when an
  older one can be reclaimed: the connection that has been idle longest (nothing read from it
  and no request at the storage engine) is closed to make room. Only when every connection is
  busy is the new one refused;
- **idle timeout**: connections from which nothing has been read for ``idle_timeout`` seconds,
  and which have no request in progress, are closed by a sweep that runs once a second (one
  timer for all connections: nothing is armed per request);
- **graceful stop**: :meth:`ConnectionRegistry.drain` asks every connection to stop reading,
  answer the requests it has received and close, and waits up to a grace period before
  dropping what is left;
- **memory release**: after connections have closed, the sweep hands freed heap pages back to
  the operating system (``malloc_trim`` where the C library has it), so the memory of a burst
  of connections does not stay with the process.

Refusals and reclaims are logged at WARNING with a fixed message template (the logging set-up
bounds how often a template is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from typing import Protocol

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_IDLE_TIMEOUT",
    "SWEEP_INTERVAL",
    "ConnectionRegistry",
    "Peer",
    "peer_key",
    "release_freed_memory",
]

#: Seconds a server connection may stay idle (nothing read, no request in progress).
DEFAULT_IDLE_TIMEOUT = 3600.0
#: Seconds a stopping program keeps answering the requests it has received.
DEFAULT_GRACE_SECONDS = 10.0
#: Seconds between two idle sweeps (the idle timeout's precision).
SWEEP_INTERVAL = 1.0


class Peer(Protocol):
    """What the registry needs of a connection."""

    #: ``loop.time()`` of the last read from the peer (or of the accept).
    last_active: float

    @property
    def busy(self) -> bool:
        """Whether a request of this connection is in progress (it is never reclaimed)."""

    def reclaim(self) -> None:
        """Close now: idle too long, or making room for a new connection."""

    def finish(self) -> None:
        """Stop reading, answer the requests already received, then close."""

    def abort(self) -> None:
        """Drop the connection at once."""


def peer_key(peername: object) -> str | None:
    """The address that per-peer limits count by: the host of a TCP peer, None otherwise."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0])
    return None


class ConnectionRegistry:
    """The accepted connections of one server or proxy, and the policies above."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        max_connections: int,
        max_per_peer: int = 0,
        idle_timeout: float = 0.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._log = log
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer  # 0: no per-peer limit
        self.idle_timeout = idle_timeout  # 0: never
        self.connections: dict[Peer, str | None] = {}
        self._per_peer: dict[str, int] = {}
        self._closed_since_trim = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emptied: asyncio.Event | None = None
        #: Counters for logs and tests.
        self.refused = 0
        self.reclaimed = 0

    def __len__(self) -> int:
        return len(self.connections)

    # -- admission --------------------------------------------------------------------------

    def admit(self, connection: Peer, key: str | None, describe: str) -> bool:
        """Register ``connection`` (from peer ``key``), reclaiming an idle one at the cap, or
        refuse it (the caller then closes it)."""
        if self._emptied is not None:  # stopping: the listeners are closing
            return False
        per_peer = self.max_per_peer
        if per_peer and key is not None and self._per_peer.get(key, 0) >= per_peer:
            self.refused += 1
            self._log.warning(
                "%s: refused, the peer already has %d connections (the per-peer maximum)",
                describe,
                per_peer,
            )
            return False
        if len(self.connections) >= self.max_connections and not self._reclaim_idlest(describe):
            self.refused += 1
            self._log.warning(
                "%s: refused, all %d connections are busy (the maximum)",
                describe,
                self.max_connections,
            )
            return False
        self.connections[connection] = key
        if key is not None:
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
        return True

    def forget(self, connection: Peer) -> None:
        if connection not in self.connections:
            return
        key = self.connections.pop(connection)
        if key is not None:
            left = self._per_peer[key] - 1
            if left:
                self._per_peer[key] = left
            else:
                del self._per_peer[key]
        self._closed_since_trim += 1
        if self._emptied is not None and not self.connections:
            self._emptied.set()

    def _reclaim_idlest(self, describe: str) -> bool:
        idlest = None
        for connection in self.connections:
            if not connection.busy and (
                idlest is None or connection.last_active < idlest.last_active
            ):
                idlest = connection
        if idlest is None:
            return False
        self.reclaimed += 1
        self._log.warning(
            "%s: at the maximum of %d connections, closing the longest idle one to serve it",
            describe,
            self.max_connections,
        )
        self.forget(idlest)  # its place is taken now, whenever its transport reports the close
        idlest.reclaim()
        return True

    # -- idle sweep and memory release ------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin the periodic sweep (idle timeout, memory release)."""
        self._loop = loop
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        if self.idle_timeout > 0:
            deadline = loop.time() - self.idle_timeout
            idle = [c for c in self.connections if c.last_active < deadline and not c.busy]
            for connection in idle:
                self.forget(connection)
                connection.reclaim()
        if self._closed_since_trim:
            self._closed_since_trim = 0
            release_freed_memory()
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    # -- stopping ---------------------------------------------------------------------------

    async def drain(self, grace: float) -> int:
        """Refuse new connections, let every connection finish, and drop those still open after
        ``grace`` seconds; returns how many had to be dropped."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._emptied = asyncio.Event()
        for connection in list(self.connections):
            connection.finish()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._emptied.wait()
        left = list(self.connections)
        for connection in left:
            connection.abort()
        return len(left)

    def abort_all(self) -> None:
        """Drop every connection now (a second stop signal)."""
        if self._emptied is None:
            self._emptied = asyncio.Event()
        for connection in list(self.connections):
            connection.abort()


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not the GNU C library
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> None:
    """Give heap pages freed by closed connections back to the operating system (glibc keeps
    freed memory below its top chunk otherwise, so RSS would stay at its peak)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
