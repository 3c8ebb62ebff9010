"""Running dc_test's random tests over the asyncio client, one or more clients at once.

Clients share one model and one stream of random steps (so a seeded run draws the same tests
whatever the interleaving); a lock per sample session keeps the model exact, because requests on
one session are then never in flight together. The first failure stops every client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..client import AsyncClient, DistcacheError, Mode
from ..tls import ClientTLSSetting
from ..wire import Operation, Status
from .model import Presence, SampleSession, SessionModel, Step

__all__ = ["LoadTest", "TestFailure", "Timings"]


class TestFailure(Exception):
    """A check failed; ``line`` is the legacy error line, ``detail`` says more."""

    __test__ = False  # not a pytest test class

    def __init__(self, line: str, detail: str = "") -> None:
        super().__init__(line)
        self.line = line
        self.detail = detail


@dataclass
class Timings:
    """Latency of every completed operation, in seconds, by operation."""

    by_operation: dict[Operation, list[float]] = field(
        default_factory=lambda: {operation: [] for operation in Operation}
    )
    started: float = 0.0
    finished: float = 0.0

    @property
    def count(self) -> int:
        return sum(len(samples) for samples in self.by_operation.values())


@dataclass
class LoadTest:
    address: str
    model: SessionModel
    steps: Iterator[Step]
    clients: int = 1
    persistent: bool = False
    #: Called after each successful test with the number done so far.
    on_progress: Callable[[int], None] = lambda done: None
    timings: Timings = field(default_factory=Timings)
    succeeded: int = 0
    #: How a ``TLS:`` address is verified (see :class:`~distcache.client.AsyncClient`).
    tls: ClientTLSSetting = None

    async def run(self) -> None:
        """Run every step; raises TestFailure at the first failed check."""
        self._locks = [asyncio.Lock() for _ in self.model.sessions]
        mode = Mode.PERSISTENT if self.persistent else Mode.TEMPORARY
        connections = [AsyncClient(self.address, mode, tls=self.tls) for _ in range(self.clients)]
        self.timings.started = time.perf_counter()
        # The failure is raised after the except* blocks, never from inside one: before 3.11.4,
        # an exception raised there came out wrapped in an ExceptionGroup (CPython gh-103590).
        failure: TestFailure | None = None
        try:
            async with asyncio.TaskGroup() as group:
                for client in connections:
                    group.create_task(self._client(client))
        except* TestFailure as failures:
            failure = failures.exceptions[0]
        except* DistcacheError as errors:
            failure = failure or TestFailure(
                "Error, transaction failure", str(errors.exceptions[0])
            )
        finally:
            self.timings.finished = time.perf_counter()
            for client in connections:
                await client.close()
        if failure is not None:
            raise failure

    async def _client(self, client: AsyncClient) -> None:
        await client.open()
        for step in self.steps:
            session = self.model.sessions[step.index]
            async with self._locks[step.index]:
                await self._test(client, step, session)
            self.succeeded += 1
            self.on_progress(self.succeeded)

    async def _test(self, client: AsyncClient, step: Step, session: SampleSession) -> None:
        operation = step.operation
        sent = time.perf_counter()
        try:
            if operation is Operation.ADD:
                answer = await client.add_status(session.session_id, session.data, step.timeout_ms)
            elif operation is Operation.REMOVE:
                answer = await client.remove(session.session_id)
            elif operation is Operation.GET:
                answer = await client.get(session.session_id)
            else:
                answer = await client.have(session.session_id)
        except DistcacheError as error:
            raise TestFailure("Error, transaction failure", f"{operation.name}: {error}") from None
        answered = time.perf_counter()
        self.timings.by_operation[operation].append(answered - sent)
        expected = self.model.presence(session, sent, answered)
        if expected is Presence.ABSENT:
            self.model.gone(session)  # (it may have expired for certain)
        CHECKS[operation](self.model, session, expected, answer, step, sent, answered)


def _check_add(model, session, expected, status, step, sent, answered) -> None:
    if status is Status.OK:
        if expected is Presence.PRESENT:
            raise TestFailure("Error, add succeeded and shouldn't have!")
        model.stored(session, step.timeout_ms, sent, answered)
    elif status is Status.ADD_MATCHING_SESSION and expected is not Presence.ABSENT:
        model.found(session)
    else:
        raise TestFailure("Error, add failed!", f"the server answered {status.name}")


def _check_remove(model, session, expected, removed, step, sent, answered) -> None:
    if removed and expected is Presence.ABSENT:
        raise TestFailure("Error, remove succeeded and shouldn't have!")
    if not removed and expected is Presence.PRESENT:
        raise TestFailure("Error, remove failed!")
    model.gone(session)


def _check_get(model, session, expected, data, step, sent, answered) -> None:
    if data is None:
        if expected is Presence.PRESENT:
            raise TestFailure("Error, get failed!")
        model.gone(session)
        return
    if expected is Presence.ABSENT:
        raise TestFailure("Error, get succeeded and shouldn't have!")
    if data != session.data:
        raise TestFailure(
            "Error, received mismatched session",
            f"expected {len(session.data)} bytes, got {len(data)} bytes",
        )
    model.found(session)


def _check_have(model, session, expected, present, step, sent, answered) -> None:
    if present and expected is Presence.ABSENT:
        raise TestFailure("Error, have succeeded and shouldn't have!")
    if not present and expected is Presence.PRESENT:
        raise TestFailure("Error, have failed!")
    (model.found if present else model.gone)(session)


CHECKS = {
    Operation.ADD: _check_add,
    Operation.REMOVE: _check_remove,
    Operation.GET: _check_get,
    Operation.HAVE: _check_have,
}


def new_rng(seed: int | None) -> random.Random:
    """The run's random source: seeded for reproducible runs, else from the OS."""
    return random.Random(seed) if seed is not None else random.Random()
