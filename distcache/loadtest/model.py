"""dc_test's random model (legacy §10.2) and what it expects of the server.

The legacy model assumed every session it added stays until removed, so long runs, short
timeouts or a server smaller than ``-sessions`` produced false failures. Here each session knows
when its expiry may fall and whether an eviction may have taken it; when either is possible the
expectation becomes tolerant (both outcomes accepted) and the model resyncs from the answer.
Everything else is as strict as the legacy: a session certainly present must be found, one
certainly absent must not, and a session read back must be byte-identical.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from ..wire import MIN_CACHE_SESSIONS, Operation

#: Operations are drawn uniformly from these (the legacy order).
OPERATIONS = (Operation.ADD, Operation.REMOVE, Operation.GET, Operation.HAVE)
#: Slack for clocks: the server truncates to whole milliseconds and we time from outside.
CLOCK_SLACK = 0.02
#: Legacy id lengths: 10 + floor(54 r).
ID_BASE, ID_SPREAD = 10, 54


class Presence(enum.Enum):
    ABSENT = "absent"
    PRESENT = "present"
    UNKNOWN = "unknown"  # expired or evicted or not: either answer is right


@dataclass
class SampleSession:
    session_id: bytes
    data: bytes
    present: bool = False
    #: Window in which the server's expiry instant lies (our clock, seconds), while present.
    expires_earliest: float = 0.0
    expires_latest: float = 0.0
    #: The eviction epoch when it was added (see SessionModel.note_add).
    epoch: int = 0


@dataclass(frozen=True)
class Step:
    """One random test: which session, which operation, and the ADD timeout."""

    index: int
    operation: Operation
    timeout_ms: int


class SessionModel:
    """The sample sessions and what the server should hold."""

    def __init__(self, rng: random.Random, count: int, datamin: int, datamax: int) -> None:
        self.sessions = [
            SampleSession(
                rng.randbytes(ID_BASE + int(ID_SPREAD * rng.random())),
                rng.randbytes(datamin + int((datamax - datamin) * rng.random())),
            )
            for _ in range(count)
        ]
        # Bumped by every stored ADD when the server may be smaller than the sample set (it
        # holds at least MIN_CACHE_SESSIONS; its real capacity, and what else it holds, we cannot
        # know): every session added before may then have been evicted.
        self.may_evict = count > MIN_CACHE_SESSIONS
        self.epoch = 0

    def presence(self, session: SampleSession, sent: float, answered: float) -> Presence:
        """What the server should have said about ``session`` for a request sent and answered
        at these times (our clock)."""
        if not session.present:
            return Presence.ABSENT
        if sent > session.expires_latest:
            return Presence.ABSENT  # certainly expired before the server saw the request
        if answered >= session.expires_earliest or session.epoch < self.epoch:
            return Presence.UNKNOWN
        return Presence.PRESENT

    def stored(self, session: SampleSession, timeout_ms: int, sent: float, answered: float):
        """An ADD of ``session`` was accepted: the server's expiry lies in this window."""
        self.note_add()  # (it may have evicted others, not this one)
        session.present = True
        session.expires_earliest = sent + timeout_ms / 1000 - CLOCK_SLACK
        session.expires_latest = answered + timeout_ms / 1000 + CLOCK_SLACK
        session.epoch = self.epoch

    def found(self, session: SampleSession) -> None:
        """The server showed the session is there: it survived every eviction so far."""
        session.epoch = self.epoch

    def gone(self, session: SampleSession) -> None:
        session.present = False

    def note_add(self) -> None:
        if self.may_evict:
            self.epoch += 1


def random_steps(rng: random.Random, sessions: int, ops: int, timeout: int, timevar: int):
    """The legacy draw: uniform session, uniform operation, ADD timeout in
    [1000 (T - V), 1000 (T + V)) ms (exactly 1000 T when V is 0)."""
    for _ in range(ops):
        index = rng.randrange(sessions)
        operation = OPERATIONS[rng.randrange(4)]
        timeout_ms = 1000 * timeout
        if timevar:
            timeout_ms = 1000 * (timeout - timevar) + rng.randrange(2000 * timevar)
        yield Step(index, operation, timeout_ms)
