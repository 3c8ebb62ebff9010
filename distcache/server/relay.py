"""A worker's way to the memory engine: its owner's process, over one pipelined link.

With ``dc_server -workers N`` and the memory engine, one process owns the cache (a plain
:class:`~distcache.server.Server` on a private UNIX socket) and the workers own the client
connections. A worker decodes and validates with the same :class:`ServerConnection` as a single
process; :class:`OwnerRelay` stands in for its request handler: an ADD the protocol refuses is
answered at once (the same ``check_add_fields`` as :class:`RequestHandler`), every other request
is forwarded unchanged over an :class:`~distcache.link.UpstreamLink` and its reply relayed under
the client's uid. The link batches: requests of all the worker's connections that are ready in
one pass of the event loop leave in one write, and the owner answers all the requests of one read
in one write.

Order: the link keeps one connection's requests in submission order and the owner executes them
in that order, so ``in_order`` holds and a connection may pipeline, as on Valkey/Redis.

When the owner cannot be reached (it died and its replacement is starting) a request gets the
answers of an unreachable store, as with Valkey/Redis: ADD "not stored" (0x65), the others NOTOK.

For the metrics, a worker counts in :attr:`OwnerRelay.outcomes` only the answers it gives itself
(a refused ADD, an unreachable owner); the owner counts all the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..address import Address
from ..link import LinkState, UpstreamLink
from ..protocol import Request, check_add_fields, encode_status
from ..wire import Operation
from .handler import _UNAVAILABLE, OUTCOME_SLOTS, UNAVAILABLE_SLOT

__all__ = ["OWNER_MAX_IN_FLIGHT", "OWNER_RETRY_MS", "OwnerRelay"]

log = logging.getLogger("distcache.server.relay")

#: Milliseconds before a worker reconnects to a lost owner (its replacement starts at once).
OWNER_RETRY_MS = 50
#: Requests a worker keeps in flight to the owner; more wait in the link, first come first served.
OWNER_MAX_IN_FLIGHT = 1024

_ADD = Operation.ADD
_UP = LinkState.UP


class OwnerRelay:
    """The request handler of a worker (for :class:`Server`), and the engine it closes.

    It has the interface :class:`ServerConnection` uses of a :class:`RequestHandler` (no
    synchronous core; calls kept in order; :meth:`begin`) and the ``close`` of a store.
    """

    __slots__ = ("_started", "capacity", "link", "outcomes")

    sync_core = None
    in_order = True

    def __init__(
        self, owner: Address, capacity: int, *, max_in_flight: int = OWNER_MAX_IN_FLIGHT
    ) -> None:
        self.link = UpstreamLink(
            owner, retry_ms=OWNER_RETRY_MS, max_in_flight=max_in_flight, logger=log
        )
        #: The owner's memory cache's -sessions, for the start-up line.
        self.capacity = capacity
        #: The answers given here, by operation and outcome (as ``RequestHandler.outcomes``).
        self.outcomes = [0] * (len(Operation) * OUTCOME_SLOTS)
        self._started = False

    def __repr__(self) -> str:
        """What the start-up line says of the engine: the owner's cache, and where it is."""
        return (
            f"memory: ({self.capacity} sessions, held by the engine owner on {self.link.address})"
        )

    def begin(self, request: Request, finish: Callable[[object], None]) -> bytes | None:
        """The reply now (a refused ADD, or no owner), or None when ``finish`` will get it."""
        if request.operation is _ADD:
            checked = check_add_fields(request.payload)
            if type(checked) is not tuple:
                self.outcomes[checked] += 1  # ADD is operation 0: its slots start at 0
                return encode_status(request.request_uid, _ADD, checked)
        link = self.link
        if not self._started:
            self._started = True
            link.start()  # here: the link needs the running loop
        elif link.state is LinkState.DOWN:
            return _unavailable(self.outcomes, request)
        link.submit(_Relayed(request, finish, link, self.outcomes))
        return None

    async def cancel_calls(self) -> None:
        """Nothing runs as a task: requests in flight are answered when the link closes."""

    async def count(self) -> int:
        return 0  # the owner reports the sessions (its -progress line)

    async def close(self) -> None:
        await self.link.close()


def _unavailable(outcomes: list[int], request: Request) -> bytes:
    """The answer of an unreachable owner, counted."""
    operation = request.operation
    outcomes[operation * OUTCOME_SLOTS + UNAVAILABLE_SLOT] += 1
    return request.respond_status(_UNAVAILABLE[operation])


class _Relayed:
    """One forwarded request, as the link's requester: the owner's reply, under its own uid."""

    __slots__ = ("_finish", "_link", "_outcomes", "request")

    def __init__(
        self,
        request: Request,
        finish: Callable[[object], None],
        link: UpstreamLink,
        outcomes: list[int],
    ):
        self.request = request
        self._finish = finish
        self._link = link
        self._outcomes = outcomes

    def answer(self, payload: bytes) -> None:
        request = self.request
        # The link answers from the owner's replies only while UP; it is DOWN when it answers a
        # request that it lost or could not forward.
        if self._link.state is _UP:
            self._finish(request.respond(payload))
        else:
            self._finish(_unavailable(self._outcomes, request))

    def forwarded(self) -> None:
        """No idle timer to move (the link calls this for the proxy's connections)."""
