"""From a decoded request to the encoded reply: the ADD checks, then one storage call.

Each operation is described once (which store method, and what its result means on the wire);
the synchronous path (an engine with a sync core, such as the memory engine) and the callback
path (every other engine) share that description, so no rule is written twice. Neither creates a
coroutine per request on the engines that matter: the memory engine answers at once, and the
Valkey/Redis engine reports to a callback (``CallbackStore``); only an engine with nothing but
coroutines costs a task per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..cache import AddResult, CallbackStore, MemoryStore, SessionStore
from ..cache.engine import report_when_done
from ..cache.errors import StoreUnavailableError
from ..protocol import Request, check_add_fields, encode_status
from ..wire import Operation, Status

__all__ = ["OUTCOME_SLOTS", "UNAVAILABLE_SLOT", "RequestHandler", "outcome_slot"]

log = logging.getLogger("distcache.server")

#: Seconds between two log lines about a synchronous engine that keeps failing (the memory
#: cache shared by -workers, locked by a stopped process): its requests may fail by thousands.
UNAVAILABLE_LOG_INTERVAL = 10.0

_OK = Status.OK
_NOTOK = Status.NOTOK
_ADD = Operation.ADD
_STORED = AddResult.STORED
_DUPLICATE_SLOT = Status.ADD_MATCHING_SESSION.value


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


#: Outcomes are counted in one flat list of ints (cheapest on the hot path), at the slot
#: ``operation * OUTCOME_SLOTS + code``: the status byte of the reply (0 for a GET hit), or
#: UNAVAILABLE_SLOT when the store could not be reached.
OUTCOME_SLOTS = 128
UNAVAILABLE_SLOT = Status.DISCONNECTED.value
assert max(Status) < OUTCOME_SLOTS


def outcome_slot(operation: int, code: int) -> int:
    """Where the outcome ``code`` of ``operation`` is counted in ``RequestHandler.outcomes``."""
    return operation * OUTCOME_SLOTS + code


def _failed(result: object) -> int:
    """The code of a store method's result: 0 (OK / hit / stored) or the failure's status."""
    if result is None or result is False:
        return _NOTOK.value
    if result is AddResult.DUPLICATE:
        return Status.ADD_MATCHING_SESSION.value
    return 0


class RequestHandler:
    """Answers requests from one store.

    :attr:`sync_core` is the engine's synchronous core (the memory engine's ``MemoryCache``), used
    through :meth:`answer_now`; with None, requests go through :meth:`begin`. Both raise
    ``RemoteProtocolError`` for an ADD payload too short to check; callers close the connection.
    """

    __slots__ = (
        "_submit",
        "_sync_calls",
        "_tasks",
        "_unavailable_logged",
        "in_order",
        "min_timeout_ms",
        "outcomes",
        "store",
        "sync_core",
    )

    def __init__(self, store: SessionStore, *, min_timeout_ms: int = 0) -> None:
        self.store = store
        #: ADD timeouts below this are raised to it (``dc_server -min-timeout``; 0: off).
        self.min_timeout_ms = min_timeout_ms
        # Exactly the memory engine: a subclass may override the async methods it must go through.
        self.sync_core = store.cache if type(store) is MemoryStore else None
        # The engine's own callback core if it has one, else a task per call.
        callbacks = isinstance(store, CallbackStore)
        self._submit = store.submit if callbacks else self._submit_as_task
        #: Whether the engine executes calls in submission order (see CallbackStore.in_order).
        self.in_order = callbacks and bool(store.in_order)  # type: ignore[attr-defined]
        self._tasks: set[asyncio.Future] = set()
        self._unavailable_logged = float("-inf")  # (monotonic) when the last failure was logged
        #: Answered requests by operation and outcome (see outcome_slot); read by the metrics.
        self.outcomes = [0] * (len(_ACTIONS) * OUTCOME_SLOTS)
        # Indexed by the operation's value: cheaper per request than a dict lookup.
        self._sync_calls = (
            tuple(
                (getattr(self.sync_core, _ACTIONS[op][0]), _ACTIONS[op][1], op * OUTCOME_SLOTS)
                for op in sorted(_ACTIONS)
            )
            if self.sync_core is not None
            else None
        )

    def answer_now(self, request: Request) -> bytes:
        """The reply, computed synchronously (only when :attr:`sync_core` is set)."""
        operation = request.operation
        call, reply, counted = self._sync_calls[operation]  # type: ignore[index]
        if operation is _ADD:
            checked = check_add_fields(request.payload)
            if type(checked) is not tuple:
                self.outcomes[checked] += 1  # ADD is operation 0: its slots start at 0
                return encode_status(request.request_uid, _ADD, checked)
            timeout_ms, session_id, session = checked
            if timeout_ms < self.min_timeout_ms:
                timeout_ms = self.min_timeout_ms
            try:
                result = call(session_id, session, timeout_ms)
            except StoreUnavailableError as error:
                return self._unavailable(request, error)
            self.outcomes[0 if result is _STORED else _DUPLICATE_SLOT] += 1
            return reply(request, result)
        try:
            result = call(request.payload)
        except StoreUnavailableError as error:
            return self._unavailable(request, error)
        # GET: a session or None; REMOVE, HAVE: True or False (the slot after OK is NOTOK's).
        self.outcomes[counted + (result is None or result is False)] += 1
        return reply(request, result)

    def _unavailable(self, request: Request, error: StoreUnavailableError) -> bytes:
        """The failure answer of a synchronous engine that could not act (the shared memory
        cache whose lock a stopped process holds), logged at most every few seconds (an engine
        on a store logs its own outages)."""
        now = time.monotonic()
        if now - self._unavailable_logged >= UNAVAILABLE_LOG_INTERVAL:
            self._unavailable_logged = now
            log.error("%s: requests get the failure answer until it is free", error)
        return self._failure_answer(request)

    def _failure_answer(self, request: Request) -> bytes:
        """The answer to a request the store could not act on, counted as unavailable."""
        operation = request.operation
        self.outcomes[operation * OUTCOME_SLOTS + UNAVAILABLE_SLOT] += 1
        return request.respond_status(_UNAVAILABLE[operation])

    def begin(self, request: Request, finish: Callable[[object], None]) -> bytes | None:
        """Start answering ``request``: the reply now, or None when ``finish`` will get it.

        ``finish`` is called later, never during this call, with the reply's bytes or with the
        exception that stopped the engine (the connection then closes). A store that cannot be
        reached is not such an exception: the client gets the failure answer for its request.
        """
        operation = request.operation
        method, reply = _ACTIONS[operation]
        if operation is _ADD:
            checked = check_add_fields(request.payload)
            if type(checked) is not tuple:
                self.outcomes[checked] += 1
                return request.respond_status(checked)
            timeout_ms, session_id, session = checked
            args: tuple = (session_id, session, max(timeout_ms, self.min_timeout_ms))
        else:
            args = (request.payload,)

        outcomes = self.outcomes

        def done(outcome: object) -> None:
            if isinstance(outcome, StoreUnavailableError):  # the engine logs the outage
                finish(self._failure_answer(request))
            elif isinstance(outcome, BaseException):
                finish(outcome)
            else:
                outcomes[operation * OUTCOME_SLOTS + _failed(outcome)] += 1
                finish(reply(request, outcome))

        self._submit(method, args, done)
        return None

    def _submit_as_task(self, method: str, args: tuple, done: Callable[[object], None]) -> None:
        """``CallbackStore.submit`` for an engine that only has coroutines: one task per call."""
        report_when_done(getattr(self.store, method)(*args), done, self._tasks)

    async def cancel_calls(self) -> None:
        """Cancel the engine calls still running as tasks (server shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
