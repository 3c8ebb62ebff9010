"""Eviction beyond the plain case: expiry order unlike insertion order, ties, other capacities.

Each case fills a fresh cache of its own capacity, adds one more session and checks exactly which
sessions are gone: the floor(capacity / 30) (at least one) expiring soonest, ties broken oldest
first (CACHE-2).
"""

from __future__ import annotations

from ...cache import eviction_batch
from ...protocol import add_request, interpret_response
from ...wire import Operation, Status
from ..registry import case

_BASE_MS = 600_000
#: Timeouts this far apart keep their order whatever the pace of the ADDs.
_STEP_MS = 1000


def _ids(t, count: int) -> list[bytes]:
    return [t.new_id(16) + index.to_bytes(2, "big") for index in range(count)]


async def _gone(t, probe, ids) -> list[int]:
    """1-based positions of the ids the target no longer has."""
    gone = []
    for index, sid in enumerate(ids):
        reply = await t.have(probe, sid)
        if interpret_response(reply.operation, reply.payload).code != Status.OK:
            gone.append(index + 1)
    return gone


async def _fill_and_overflow(t, timeouts: list[int]) -> tuple[list[bytes], list[int]]:
    """ADD one session per timeout (in order), then one that outlives them all: what is gone."""
    probe = await t.connect()
    ids = _ids(t, len(timeouts))
    for sid, timeout_ms in zip(ids, timeouts, strict=True):
        await t.stored(probe, sid, t.new_session(24), timeout_ms=timeout_ms)
    await t.stored(probe, t.new_id(), b"newest", timeout_ms=_BASE_MS + 200 * _STEP_MS)
    return ids, await _gone(t, probe, ids)


def _soonest(timeouts: list[int], count: int) -> list[int]:
    """1-based positions of the ``count`` sessions expiring soonest (all timeouts distinct)."""
    order = sorted(range(len(timeouts)), key=lambda index: timeouts[index])
    return sorted(index + 1 for index in order[:count])


def _interleaved(capacity: int) -> list[int]:
    """Distinct timeouts whose order is neither the insertion order nor its reverse: the even
    positions get the long ones in rising order, the odd positions the short ones falling."""
    half = capacity // 2
    timeouts = []
    for index in range(capacity):
        if index % 2 == 0:
            timeouts.append(_BASE_MS + (half + index) * _STEP_MS)
        else:
            timeouts.append(_BASE_MS + (capacity - index) * _STEP_MS)
    return timeouts


@case(
    id="CACHE-2/eviction-follows-expiry-not-insertion",
    requirements=["CACHE-2"],
    title="a full 64-session cache whose expiry order differs from its insertion order evicts "
    "the sessions expiring soonest",
    needs={"sessions:64"},
    steps=40,
)
async def expiry_not_insertion(t):
    timeouts = _interleaved(t.sessions)
    _, gone = await _fill_and_overflow(t, timeouts)
    expected = _soonest(timeouts, eviction_batch(t.sessions))
    if gone != expected:
        t.fail(f"one ADD past a full cache left #{gone} gone, expected #{expected}")


#: Overflows the ties case makes: each evicts the next ``eviction_batch`` sessions of the group
#: with equal timeouts, so a target that breaks ties wrongly has as many chances to show it.
_TIE_ROUNDS = 6


@case(
    id="CACHE-2/eviction-ties-oldest-first",
    requirements=["CACHE-2"],
    title="sessions with equal timeouts sent in one write are evicted oldest first, overflow "
    "after overflow",
    needs={"sessions:64"},
    steps=60,
)
async def ties_oldest_first(t):
    capacity = t.sessions
    batch = eviction_batch(capacity)
    probe = await t.connect()
    ids = _ids(t, capacity)
    # The first sessions share one timeout and go in one write: a target stores many of them
    # within one millisecond, so their expiry times tie and only the tie rule orders them. The
    # others outlive them. Whatever the pace, the oldest of the group expire first or tie with
    # the newer: evicting oldest first is right every time, and a busy target that spreads the
    # group over several milliseconds only gives a wrong rule fewer ties to show on.
    group = batch * _TIE_ROUNDS
    timeouts = [_BASE_MS] * group + [_BASE_MS + 100 * _STEP_MS] * (capacity - group)
    uids = [t.uid() for _ in ids]
    await probe.send(
        b"".join(
            add_request(uid, sid, t.new_session(24), timeout_ms)
            for uid, sid, timeout_ms in zip(uids, ids, timeouts, strict=True)
        )
    )
    for uid in uids:
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.ADD)
        t.expect_status(reply, [Status.OK], "ADD of a new id")
    for round_ in range(_TIE_ROUNDS):
        # One ADD into the full cache evicts a batch; the others refill it for the next round.
        for _ in range(batch):
            await t.stored(probe, t.new_id(), b"newer", timeout_ms=_BASE_MS + 200 * _STEP_MS)
        gone = await _gone(t, probe, ids[:group])
        expected = list(range(1, batch * (round_ + 1) + 1))
        if gone != expected:
            t.fail(
                f"with equal timeouts, overflow {round_ + 1} left #{gone} of the group gone, "
                f"expected the oldest #{expected}"
            )
    if await _gone(t, probe, ids[group:]):
        t.fail("an overflow evicted a session that outlives the group")


def _capacity_case(capacity: int) -> None:
    batch = eviction_batch(capacity)

    @case(
        id=f"CACHE-2/eviction-batch-capacity-{capacity}",
        requirements=["CACHE-2"],
        title=f"one ADD past a full {capacity}-session cache evicts floor({capacity}/30) = "
        f"{batch} sessions, the ones expiring soonest",
        needs={f"sessions:{capacity}"},
        steps=capacity // 2 + 10,
    )
    async def run(t):
        # Falling timeouts: the soonest to expire are the newest, unlike insertion order.
        timeouts = [_BASE_MS + (capacity - index) * _STEP_MS for index in range(capacity)]
        _, gone = await _fill_and_overflow(t, timeouts)
        expected = _soonest(timeouts, batch)
        if gone != expected:
            t.fail(
                f"one ADD past a full {capacity}-session cache left #{gone} gone, expected #{expected}"
            )


for _capacity in (90, 150, 300):
    _capacity_case(_capacity)
