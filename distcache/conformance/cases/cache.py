"""Cache cases on a fresh 64-session target: eviction order, duplicates, removal."""

from __future__ import annotations

from ...cache import eviction_batch
from ...wire import MIN_CACHE_SESSIONS, Status
from ..registry import case

CAPACITY = MIN_CACHE_SESSIONS
_NEEDS = {f"sessions:{CAPACITY}"}
# Timeouts grow by this much per ADD, so expiry order is insertion order whatever the pace.
_STEP_MS = 1000
_BASE_MS = 600_000


async def _fill(t, probe, count: int) -> list[bytes]:
    ids = [t.new_id(16) + index.to_bytes(2, "big") for index in range(count)]
    for index, sid in enumerate(ids):
        await t.stored(probe, sid, t.new_session(32), timeout_ms=_BASE_MS + index * _STEP_MS)
    return ids


async def _presence(t, probe, ids) -> list[bool]:
    from ...protocol import interpret_response

    present = []
    for sid in ids:
        reply = await t.have(probe, sid)
        present.append(interpret_response(reply.operation, reply.payload).code == Status.OK)
    return present


def _gone(ids, present) -> list[int]:
    return [index + 1 for index, here in enumerate(present) if not here]


@case(
    id="CACHE-2/eviction-order",
    requirements=["CACHE-2"],
    title=f"{CAPACITY + 6} ADDs into a {CAPACITY}-session cache evict the six expiring soonest",
    needs=_NEEDS,
    steps=40,
)
async def eviction_order(t):
    probe = await t.connect()
    ids = await _fill(t, probe, CAPACITY + 6)
    present = await _presence(t, probe, ids)
    gone = _gone(ids, present)
    batch = eviction_batch(CAPACITY)
    expected = list(range(1, 7))
    if gone != expected:
        t.fail(
            f"after {len(ids)} ADDs (batch {batch}) the sessions gone are #{gone}, expected #{expected}"
        )


@case(
    id="CACHE-5/duplicate-evicts-nothing",
    requirements=["CACHE-5", "ADD-4"],
    title="a duplicate ADD into a full cache answers 0x65 and evicts nothing",
    needs=_NEEDS,
    steps=40,
)
async def duplicate_evicts_nothing(t):
    probe = await t.connect()
    ids = await _fill(t, probe, CAPACITY)
    reply = await t.add(probe, ids[10], b"again")
    t.expect_status(
        reply, [Status.ADD_MATCHING_SESSION], "duplicate ADD into a full cache", "ADD-4"
    )
    gone = _gone(ids, await _presence(t, probe, ids))
    if gone:
        t.fail(f"a duplicate ADD into a full cache evicted #{gone}")


@case(
    id="CACHE-6/remove-makes-room",
    requirements=["CACHE-6", "CACHE-2"],
    title="REMOVE in a full cache makes room for one ADD without eviction; the next evicts",
    needs=_NEEDS,
    steps=40,
)
async def remove_makes_room(t):
    probe = await t.connect()
    ids = await _fill(t, probe, CAPACITY)
    t.expect_status(await t.remove(probe, ids[10]), [Status.OK], "REMOVE in a full cache")
    extra = t.new_id()
    await t.stored(probe, extra, b"x", timeout_ms=_BASE_MS + CAPACITY * _STEP_MS)
    expected_gone = [11]
    gone = _gone(ids, await _presence(t, probe, ids))
    if gone != expected_gone:
        t.fail(f"after REMOVE then ADD in a full cache, gone: #{gone}, expected #{expected_gone}")
    await t.stored(probe, t.new_id(), b"y", timeout_ms=_BASE_MS + (CAPACITY + 1) * _STEP_MS)
    batch = eviction_batch(CAPACITY)
    gone = _gone(ids, await _presence(t, probe, ids))
    expected_gone = sorted({*range(1, batch + 1), 11})
    if gone != expected_gone:
        t.fail(
            f"the next ADD into the full cache left #{gone} gone, expected #{expected_gone}",
            "CACHE-2",
        )
