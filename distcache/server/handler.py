"""From a decoded request to the encoded reply: the ADD checks, then one storage call.

Each operation is described once (which store method, with which arguments, and what its result
means on the wire); the synchronous path (an engine with a sync core, such as the memory engine)
and the asynchronous path (any ``SessionStore``) share that description, so no rule is written
twice and the memory engine's hot path creates no coroutine.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cache import AddResult, MemoryStore, SessionStore
from ..cache.errors import StoreUnavailableError
from ..protocol import AddArgs, Request, check_add
from ..wire import Operation, Status

__all__ = ["RequestHandler"]

_OK = Status.OK
_NOTOK = Status.NOTOK


def _stored(request: Request, result: AddResult) -> bytes:
    if result is AddResult.STORED:
        return request.respond_status(_OK)
    return request.respond_status(Status.ADD_MATCHING_SESSION)


def _found(request: Request, session: bytes | None) -> bytes:
    return request.respond_status(_NOTOK) if session is None else request.respond(session)


def _yes_no(request: Request, answer: bool) -> bytes:
    return request.respond_status(_OK if answer else _NOTOK)


# operation -> (store method name, how its result becomes the reply)
_ACTIONS: dict[Operation, tuple[str, Callable[[Request, object], bytes]]] = {
    Operation.ADD: ("add", _stored),
    Operation.GET: ("get", _found),
    Operation.REMOVE: ("remove", _yes_no),
    Operation.HAVE: ("have", _yes_no),
}


#: The answer when the store cannot be reached (StoreUnavailableError): the legacy's own answers
#: for "could not store" (0x65, its out-of-memory reply) and "not found", so that legacy clients
#: carry on with a full handshake and keep their connection.
_UNAVAILABLE: dict[Operation, Status] = {
    Operation.ADD: Status.ADD_MATCHING_SESSION,
    Operation.GET: _NOTOK,
    Operation.REMOVE: _NOTOK,
    Operation.HAVE: _NOTOK,
}


class RequestHandler:
    """Answers requests from one store.

    :meth:`plan` does everything that needs no storage (raising ``RemoteProtocolError`` for an
    ADD payload too short to check); :attr:`sync_core` is the engine's synchronous core, or None
    when every call must be awaited.
    """

    __slots__ = ("store", "sync_core")

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        # Exactly the memory engine: a subclass may override the async methods it must go through.
        self.sync_core = store.cache if type(store) is MemoryStore else None

    @staticmethod
    def plan(request: Request) -> bytes | tuple[str, tuple, Callable[[Request, object], bytes]]:
        """Either the finished reply (an ADD refused by its checks) or the storage call to make."""
        method, reply = _ACTIONS[request.operation]
        if request.operation is Operation.ADD:
            checked = check_add(request.payload)
            if not isinstance(checked, AddArgs):
                return request.respond_status(checked)
            return method, (checked.session_id, checked.session, checked.timeout_ms), reply
        return method, (request.payload,), reply

    def answer_now(self, request: Request) -> bytes:
        """The reply, computed synchronously (only when :attr:`sync_core` is set)."""
        planned = self.plan(request)
        if type(planned) is bytes:
            return planned
        method, args, reply = planned
        return reply(request, getattr(self.sync_core, method)(*args))

    async def answer(self, request: Request) -> bytes:
        """The reply, awaiting the engine."""
        planned = self.plan(request)
        if type(planned) is bytes:
            return planned
        method, args, reply = planned
        try:
            result = await getattr(self.store, method)(*args)
        except StoreUnavailableError:  # the engine logs the outage, once per burst
            return request.respond_status(_UNAVAILABLE[request.operation])
        return reply(request, result)
