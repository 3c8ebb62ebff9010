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
from ..protocol import Request, check_add_fields, encode_status
from ..wire import Operation, Status

__all__ = ["RequestHandler"]

_OK = Status.OK
_NOTOK = Status.NOTOK
_ADD = Operation.ADD


# The replies call encode_status directly: request.respond_status would add a call per request.
def _stored(request: Request, result: AddResult) -> bytes:
    status = _OK if result is AddResult.STORED else Status.ADD_MATCHING_SESSION
    return encode_status(request.request_uid, request.operation, status)


def _found(request: Request, session: bytes | None) -> bytes:
    if session is None:
        return encode_status(request.request_uid, request.operation, _NOTOK)
    return request.respond(session)


def _yes_no(request: Request, answer: bool) -> bytes:
    return encode_status(request.request_uid, request.operation, _OK if answer else _NOTOK)


# operation -> (store method name, how its result becomes the reply)
_ACTIONS: dict[Operation, tuple[str, Callable[[Request, object], bytes]]] = {
    Operation.ADD: ("add", _stored),
    Operation.GET: ("get", _found),
    Operation.REMOVE: ("remove", _yes_no),
    Operation.HAVE: ("have", _yes_no),
}
assert sorted(_ACTIONS) == list(range(len(_ACTIONS))), "operation values index _sync_calls"


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
    None when every call must be awaited. ``check_add_fields`` raises ``RemoteProtocolError`` for an
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
        # Indexed by the operation's value: cheaper per request than a dict lookup.
        self._sync_calls = (
            tuple(
                (getattr(self.sync_core, _ACTIONS[op][0]), _ACTIONS[op][1])
                for op in sorted(_ACTIONS)
            )
            if self.sync_core is not None
            else None
        )

    def answer_now(self, request: Request) -> bytes:
        """The reply, computed synchronously (only when :attr:`sync_core` is set)."""
        operation = request.operation
        call, reply = self._sync_calls[operation]  # type: ignore[index]
        if operation is _ADD:
            checked = check_add_fields(request.payload)
            if type(checked) is not tuple:
                return encode_status(request.request_uid, _ADD, checked)
            timeout_ms, session_id, session = checked
            return reply(request, call(session_id, session, timeout_ms))
        return reply(request, call(request.payload))

    async def answer(self, request: Request) -> bytes:
        """The reply, awaiting the engine."""
        call, reply = self._async_calls[request.operation]
        if request.operation is _ADD:
            checked = check_add_fields(request.payload)
            if type(checked) is not tuple:
                return request.respond_status(checked)
            timeout_ms, session_id, session = checked
            args: tuple = (session_id, session, timeout_ms)
        else:
            args = (request.payload,)
        try:
            result = await call(*args)
        except StoreUnavailableError:  # the engine logs the outage, once per burst
            return request.respond_status(_UNAVAILABLE[request.operation])
        return reply(request, result)
