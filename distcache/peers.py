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
- **bytes in flight per peer**: the connections of one peer address together may hold at most
  ``max_peer_bytes`` bytes (received and not yet answered, and replies not yet sent). Beyond it
  the peer's connections stop reading new requests and answer further pipelined ones only as
  the peer takes its replies, until the peer is back under three quarters of the limit: the
  server spends no more memory on that peer, and the other peers are not slowed (the memcached
  and Redis answer to pipelining clients is a per-client buffer limit; this is the same bound,
  per peer, by back-pressure instead of a disconnect). A connection in the middle of a message
  may still finish it, so that a peer's own connections can never wait for each other;
- **graceful stop**: :meth:`ConnectionRegistry.drain` asks every connection to finish: it keeps
  reading and answering until it is idle (no request in progress, no part of one received, and
  nothing waiting in the kernel's receive buffer), then closes; connections still open after a
  grace period are dropped. Connections the listeners had accepted, or the kernel had queued,
  before the stop are admitted and finish the same way;
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
import fcntl
import logging
import struct
import termios
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_PEER_BYTES",
    "MIN_PEER_BYTES",
    "PEER_RECHECK_INTERVAL",
    "SWEEP_INTERVAL",
    "ConnectionRegistry",
    "Peer",
    "PeerGroup",
    "peer_key",
    "release_freed_memory",
    "unread_bytes",
]

#: Seconds a server connection may stay idle (nothing read, no request in progress).
DEFAULT_IDLE_TIMEOUT = 3600.0
#: Seconds a stopping program keeps answering the requests it has received.
DEFAULT_GRACE_SECONDS = 10.0
#: Seconds between two idle sweeps (the idle timeout's precision).
SWEEP_INTERVAL = 1.0
#: Bytes the connections of one peer address may hold together (see the module's text): 256
#: connections' worth of the per-connection bounds, far above what a peer that reads its
#: replies ever holds.
DEFAULT_MAX_PEER_BYTES = 32 * 1024 * 1024
#: The smallest per-peer byte limit: room for a few of the largest messages and their replies.
MIN_PEER_BYTES = 256 * 1024
#: Seconds between two exact recounts of a peer held back by its byte limit (the replies it
#: takes drain the buffers without telling anyone).
PEER_RECHECK_INTERVAL = 0.05


class Peer(Protocol):
    """What the registry needs of a connection."""

    #: ``loop.time()`` of the last read from the peer (or of the accept).
    last_active: float
    #: The connection's peer group when the per-peer byte limit applies (set by ``admit``).
    peer_group: PeerGroup | None
    #: The bytes it held at its last report to its group.
    peer_held: int

    @property
    def busy(self) -> bool:
        """Whether a request of this connection is in progress (it is never reclaimed)."""

    def reclaim(self) -> None:
        """Close now: idle too long, or making room for a new connection."""

    def finish(self) -> None:
        """Stop reading, answer the requests already received, then close."""

    def abort(self) -> None:
        """Drop the connection at once."""

    def held_now(self) -> int:
        """The bytes it holds now: received and unanswered, and replies not yet sent."""

    def peer_review(self) -> None:
        """Its group went over or back under its byte limit, or was recounted: read, or answer,
        again if it may."""


def peer_key(peername: object) -> str | None:
    """The address that per-peer limits count by: the host of a TCP peer, None otherwise."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0])
    return None


def unread_bytes(transport: object) -> int:
    """Bytes the kernel has received on ``transport``'s socket that nobody has read yet."""
    sock = transport.get_extra_info("socket")  # type: ignore[attr-defined]
    if sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed, or not a socket that can tell
        return 0
    return struct.unpack("i", answer)[0]


class PeerGroup:
    """The connections of one peer address, and the bytes they hold together.

    Each connection reports what it holds after every read and every write-side event; replies
    the peer takes drain the buffers silently, so the running sum only ever overestimates, and
    is recounted exactly before it holds the peer back and every ``PEER_RECHECK_INTERVAL``
    while it does.
    """

    __slots__ = ("_loop", "_registry", "_timer", "count", "held", "key", "limit", "members", "over")

    def __init__(self, registry: ConnectionRegistry, key: str, limit: int) -> None:
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.key = key
        self.limit = limit  # 0: bytes are not counted
        self.count = 0  # connections, counted against max_per_peer
        self.members: dict[Peer, None] = {}  # only when bytes are counted
        self.held = 0
        #: Over the byte limit: the peer's connections stop reading and pipelining.
        self.over = False

    def report(self, member: Peer, held: int) -> None:
        """``member`` holds ``held`` bytes now."""
        self.held += held - member.peer_held
        member.peer_held = held
        if self.over:
            if self.held <= self.limit - (self.limit >> 2):
                self.review()  # the estimate is high: truly under too
        elif self.held > self.limit:
            self.review()

    def review(self) -> None:
        """Recount exactly, hold the peer back or let it go, and wake its connections."""
        held = 0
        for member in self.members:
            member.peer_held = now = member.held_now()
            held += now
        self.held = held
        was = self.over
        self.over = held > (self.limit - (self.limit >> 2) if was else self.limit)
        if self.over and not was:
            self._registry._log.warning(
                "peer %s: its connections hold %d bytes, over the per-peer limit of %d; "
                "reading from it paused",
                self.key,
                held,
                self.limit,
            )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.over:
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            self._timer = loop.call_later(PEER_RECHECK_INTERVAL, self.review)
        if self.over or was:
            for member in list(self.members):
                member.peer_review()

    def leave(self, member: Peer) -> None:
        if self.members.pop(member, self) is None:
            self.held -= member.peer_held
            member.peer_held = 0
        if not self.members:  # (else the next recount lets the others go, if they may)
            self.over = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class ConnectionRegistry:
    """The accepted connections of one server or proxy, and the policies above."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        max_connections: int,
        max_per_peer: int = 0,
        idle_timeout: float = 0.0,
        max_peer_bytes: int = 0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._log = log
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer  # 0: no per-peer limit
        self.idle_timeout = idle_timeout  # 0: never
        self.max_peer_bytes = max_peer_bytes  # 0: bytes are not counted per peer
        self.connections: dict[Peer, str | None] = {}
        self._groups: dict[str, PeerGroup] = {}
        self._closed_since_trim = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emptied: asyncio.Event | None = None
        #: Counters for logs and tests.
        self.refused = 0
        self.reclaimed = 0
        #: Called after each admission and each removal (a worker's place in the balance of
        #: accepts, :mod:`distcache.server.accepting`, publishes the new count).
        self.on_change: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.connections)

    # -- admission --------------------------------------------------------------------------

    def admit(self, connection: Peer, key: str | None, describe: str) -> bool:
        """Register ``connection`` (from peer ``key``), reclaiming an idle one at the cap, or
        refuse it (the caller then closes it).

        While stopping, the connections still arriving are those accepted before the listeners
        closed: they are admitted and told to finish at once."""
        per_peer = self.max_per_peer
        group = self._groups.get(key) if key is not None else None
        if per_peer and group is not None and group.count >= per_peer:
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
        connection.peer_held = 0
        connection.peer_group = None
        if key is not None:
            if group is None:
                group = self._groups[key] = PeerGroup(self, key, self.max_peer_bytes)
            group.count += 1
            if group.limit:
                group.members[connection] = None
                connection.peer_group = group
        if self._emptied is not None:  # stopping: serve what it brought, then close
            asyncio.get_running_loop().call_soon(connection.finish)
        if self.on_change is not None:
            self.on_change()
        return True

    def forget(self, connection: Peer) -> None:
        if connection not in self.connections:
            return
        key = self.connections.pop(connection)
        if key is not None:
            group = self._groups[key]
            group.count -= 1
            group.leave(connection)
            if not group.count:
                del self._groups[key]
        self._closed_since_trim += 1
        if self.on_change is not None:
            self.on_change()
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

    def stopping(self) -> None:
        """From now on every connection admitted is told to finish at once (the listeners are
        closing; what they accepted before still arrives)."""
        if self._emptied is None:
            self._emptied = asyncio.Event()

    async def drain(self, grace: float) -> int:
        """Let every connection finish (:meth:`Peer.finish`), and drop those still open after
        ``grace`` seconds; returns how many had to be dropped."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.stopping()
        assert self._emptied is not None
        for connection in list(self.connections):
            connection.finish()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                # A connection may leave and a late one arrive in one callback: wait until none.
                while self.connections:
                    self._emptied.clear()
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
