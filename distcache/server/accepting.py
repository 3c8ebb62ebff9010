"""Accepting connections ourselves, and sharing them out evenly among worker processes.

asyncio's servers accept every connection the kernel has queued as soon as the listener is
readable. That is right for one process. With ``-workers N``, every worker watches the same
listening sockets, and a burst of connections goes to whichever worker wakes first: four
persistent clients that connect together may all land on one worker while three idle, and that
worker's core then caps the throughput. (Giving each worker its own SO_REUSEPORT socket does
not fix it: the kernel hashes each connection to a socket, which evens out many short
connections but not a few long ones; four clients over four sockets meet four different
workers less than one time in ten.)

So under ``-workers`` an :class:`Acceptor` accepts for the worker and asks its
:class:`AcceptSlot` first. The workers publish how many connections each one holds in a small
table of shared memory (:class:`AcceptCounts`, made before the fork), and a worker that holds
more than the least loaded accepting worker leaves the connection queued for the others, the way
nginx's workers stop accepting while they hold more than their share. Before standing aside it
lets one turn of its event loop go by, so that connections whose clients have already left are
closed first (a client that closes and reconnects at once would otherwise still count). Standing
aside, it stops watching the listener and looks again every ``BALANCE_DELAY`` seconds, or as soon
as one of its own connections closes; a worker with the fewest connections never stands aside,
so a queued connection always has a taker. If connections stay queued for ``MAX_QUEUED_WAIT``
(the least loaded worker is stopped or stuck), it takes one anyway.

The price is a Python accept (a task per connection) instead of the event loop's compiled one:
a few tens of microseconds per connection, which clients that open a connection per operation
straight to a ``-workers`` server pay (see the performance guide).

A :class:`~distcache.server.handshakes.TLSAcceptor` is an :class:`Acceptor` too: it counts a
connection from its accept, before its handshake (ROBUST-10).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import select
import socket
from collections.abc import Callable

from ..peers import ConnectionRegistry

__all__ = [
    "ACCEPTS_PER_TURN",
    "BALANCE_DELAY",
    "AcceptCounts",
    "AcceptSlot",
    "Acceptor",
    "PlainAcceptor",
]

log = logging.getLogger("distcache.server")

#: Connections accepted in one go before the event loop serves the others.
ACCEPTS_PER_TURN = 64
#: Seconds a worker above its share leaves new connections to the less loaded workers before
#: it looks again.
BALANCE_DELAY = 0.005
#: Seconds after which a worker above its share takes a connection anyway, when connections
#: have stayed queued all that time (the less loaded workers are stopped or stuck).
MAX_QUEUED_WAIT = 0.1
#: A worker above its share that is woken for a queued connection twice within this many
#: seconds stands aside (the first time, it only lets one turn of its loop go by).
LOOK_AGAIN_WITHIN = 0.001

#: A worker that is not accepting (stopping, or gone until its replacement serves).
NOT_ACCEPTING = -1


class AcceptCounts:
    """How many connections each worker holds, in memory shared with the forked workers.

    Each worker writes only its own slot (the supervisor resets the slot of a worker that
    exits), so no lock is needed: a reader may see a count one change late, which at worst sends
    a connection to a worker that has just taken one.
    """

    def __init__(self, workers: int) -> None:
        # An anonymous mmap is MAP_SHARED: the children forked after this see each other's writes.
        # Every worker starts at 0, as one about to accept: clients that connect while the
        # workers start (proxies reconnecting after a restart) are not all left to the first
        # worker that is ready; the others take theirs once they are (or after MAX_QUEUED_WAIT).
        self._memory = mmap.mmap(-1, 8 * workers)
        self._counts = memoryview(self._memory).cast("q")

    def __getitem__(self, index: int) -> int:
        return self._counts[index]

    def slot(self, index: int) -> AcceptSlot:
        """Worker ``index``'s view of the table."""
        return AcceptSlot(self._counts, index)

    def retire(self, index: int) -> None:
        """Worker ``index`` has exited: nobody waits for it to accept."""
        self._counts[index] = NOT_ACCEPTING


class AcceptSlot:
    """One worker's place in :class:`AcceptCounts`: it publishes what it holds and asks whether
    a queued connection is its to take."""

    __slots__ = ("_counts", "_index", "_registry", "acceptors", "arriving")

    def __init__(self, counts: memoryview, index: int) -> None:
        self._counts = counts
        self._index = index
        self._registry: ConnectionRegistry | None = None
        #: Connections accepted and not yet registered (their transport is being set up).
        self.arriving = 0
        #: This worker's acceptors, told when its count falls (one standing aside may be due).
        self.acceptors: list[Acceptor] = []

    def attach(self, registry: ConnectionRegistry) -> None:
        """Count ``registry``'s connections from now on, and accept."""
        self._registry = registry
        registry.on_change = self.publish
        self.publish()

    def publish(self) -> None:
        registry = self._registry
        held = (len(registry) if registry is not None else 0) + self.arriving
        counts, me = self._counts, self._index
        fell = held < counts[me]
        counts[me] = held
        if fell:
            for acceptor in self.acceptors:
                acceptor.count_fell()

    def withdraw(self) -> None:
        """No more accepting here (the worker is stopping): do not wait for it."""
        if self._registry is not None:
            self._registry.on_change = None
        self._counts[self._index] = NOT_ACCEPTING

    def my_turn(self) -> bool:
        """Whether this worker holds no more connections than any other accepting worker (one
        with the fewest never stands aside, so a queued connection always has a taker)."""
        counts = self._counts
        mine = counts[self._index]
        return not any(0 <= count < mine for count in counts)


class Acceptor:
    """Serves one listening socket (the parts of ``asyncio.Server`` that programs use), taking
    its turn through ``balance`` when given; subclasses set up each accepted connection."""

    def __init__(self, sock: socket.socket, balance: AcceptSlot | None = None) -> None:
        self._sock = sock
        self._balance = balance
        if balance is not None:
            balance.acceptors.append(self)
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._watching = False
        self._deferred: asyncio.TimerHandle | None = None
        self._passed_at = float("-inf")  # when this worker last let a connection pass
        self._queued_since: float | None = None  # when it first left connections to others
        self._closed = asyncio.Event()
        self.sockets = [sock]

    async def start_serving(self) -> None:
        if not self._serving and not self._closed.is_set():
            self._serving = True
            self._watch()

    def is_serving(self) -> bool:
        return self._serving

    def _watch(self) -> None:
        self._watching = True
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def _readable(self) -> None:
        balance = self._balance
        if balance is None or balance.my_turn():
            self._accept_some()
            return
        now = self._loop.time()
        if now - self._passed_at > LOOK_AGAIN_WITHIN:
            # Level-triggered, the listener wakes this worker again on the loop's next turn:
            # by then the connections whose clients left before this one came are closed (a
            # client that reconnects at once looked still connected).
            self._passed_at = now
            return
        # Still above its share: leave what is queued to the others for a moment.
        if self._queued_since is None:
            self._queued_since = now
        self._stop_watching()
        self._deferred = self._loop.call_later(BALANCE_DELAY, self._resume)

    def count_fell(self) -> None:
        """This worker closed a connection: standing aside, it may now be the least loaded."""
        if self._deferred is not None and self._balance is not None and self._balance.my_turn():
            self._deferred.cancel()
            self._resume()

    def _accept_some(self) -> None:
        self._queued_since = None
        balance = self._balance
        for _ in range(ACCEPTS_PER_TURN):
            if not self._accept_one():
                return
            if balance is not None and not balance.my_turn():
                return  # the rest, if any, is for the others: they are woken too

    def _resume(self) -> None:
        self._deferred = None
        balance = self._balance
        assert balance is not None
        if not self._serving:
            return
        if not _has_queued(self._sock):
            self._queued_since = None  # a less loaded worker took it
        elif balance.my_turn():
            self._accept_some()
        elif self._loop.time() - (self._queued_since or 0.0) >= MAX_QUEUED_WAIT:
            # Connections have been waiting all this time: the less loaded workers are
            # stopped or stuck. Take one.
            self._queued_since = None
            self._accept_one()
        self._watch()

    def _stop_watching(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._sock.fileno())

    def accept_now(self) -> None:
        """Take in the connections the kernel has queued, whatever the balance (a stopping
        program's last call)."""
        for _ in range(ACCEPTS_PER_TURN):
            if not self._accept_one():
                return

    def _accept_one(self) -> bool:
        try:
            connection, address = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as error:  # out of descriptors, say: the next turn tries again
            log.warning("cannot accept a connection: %s", error.strerror or error)
            return False
        connection.setblocking(False)  # (TCP_NODELAY is set by the loop's transport)
        self._take(connection, address)
        return True

    def _take(self, connection: socket.socket, address: object) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._serving = False
        self._stop_watching()
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        if self._balance is not None:
            self._balance.withdraw()
        if not self._closed.is_set():
            self._closed.set()
            self._sock.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class PlainAcceptor(Acceptor):
    """A plain (TCP or UNIX) listener: each connection is served by ``protocol_factory``'s
    protocol, which registers it as an asyncio server's connection would."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        balance: AcceptSlot | None = None,
    ) -> None:
        super().__init__(sock, balance)
        self._factory = protocol_factory

    def _take(self, connection: socket.socket, address: object) -> None:
        balance = self._balance
        factory = self._factory
        arrival = None
        if balance is not None:
            arrival = _Arrival(factory(), balance)
            factory = lambda: arrival  # noqa: E731 - the protocol made above
        task = self._loop.create_task(self._loop.connect_accepted_socket(factory, connection))

        def done(task: asyncio.Task) -> None:
            if task.cancelled() or task.exception() is not None:
                connection.close()  # the client left before its transport was set up
                if arrival is not None:
                    arrival.arrived()

        task.add_done_callback(done)


def _has_queued(sock: socket.socket) -> bool:
    """Whether a connection waits in ``sock``'s accept queue."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class _Arrival(asyncio.Protocol):
    """Counts a connection as arriving until its own protocol registers it, then steps aside."""

    __slots__ = ("_balance", "_inner")

    def __init__(self, inner: asyncio.Protocol, balance: AcceptSlot) -> None:
        self._inner = inner
        self._balance: AcceptSlot | None = balance
        balance.arriving += 1
        balance.publish()

    def arrived(self) -> None:
        """Registered (or refused), or failed: no longer arriving (once)."""
        balance = self._balance
        if balance is not None:
            self._balance = None
            balance.arriving -= 1
            balance.publish()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._inner)
        self._inner.connection_made(transport)  # registers it, or refuses it
        self.arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)
