"""From a decoded request to the encoded reply: the ADD checks, then one storage call.

Each operation is described once (which store method, and what its result means on the wire);
the synchronous path (an engine with a sync core, such as the memory engine)
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
_ADD = Operation.ADD


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

    :attr:`sync_core` is the engine's synchronous core (the memory engine's ``MemoryCache``), or
    None when every call must be awaited. ``check_add`` raises ``RemoteProtocolError`` for an
    ADD payload too short to check; callers close the connection.
    """

    __slots__ = ("_async_calls", "_sync_calls", "store", "sync_core")

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        # Exactly the memory engine: a subclass may override the async methods it must go through.
        self.sync_core = store.cache if type(store) is MemoryStore else None
        self._async_calls = {
            op: (getattr(store, name), reply) for op, (name, reply) in _ACTIONS.items()
        }
        self._sync_calls = (
            {op: (getattr(self.sync_core, name), reply) for op, (name, reply) in _ACTIONS.items()}
            if self.sync_core is not None
            else None
        )

    def answer_now(self, request: Request) -> bytes:
        """The reply, computed synchronously (only when :attr:`sync_core` is set)."""
        call, reply = self._sync_calls[request.operation]  # type: ignore[index]
        if request.operation is _ADD:
            checked = check_add(request.payload)
            if type(checked) is not AddArgs:
                return request.respond_status(checked)
            return reply(request, call(checked.session_id, checked.session, checked.timeout_ms))
        return reply(request, call(request.payload))

    async def answer(self, request: Request) -> bytes:
        """The reply, awaiting the engine."""
        call, reply = self._async_calls[request.operation]
        if request.operation is _ADD:
            checked = check_add(request.payload)
            if type(checked) is not AddArgs:
                return request.respond_status(checked)
            args: tuple = (checked.session_id, checked.session, checked.timeout_ms)
        else:
            args = (request.payload,)
        try:
            result = await call(*args)
        except StoreUnavailableError:  # the engine logs the outage, once per burst
            return request.respond_status(_UNAVAILABLE[request.operation])
        return reply(request, result)
