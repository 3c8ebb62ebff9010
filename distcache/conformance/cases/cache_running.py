"""CACHE-2 on a server that is already running: the capacity is read from behaviour, not assumed.

A running server's capacity is unknown and other clients' sessions share its cache, so the
fresh-server case (a 64-session cache filled in a known order) cannot run there. This variant
checks the same rule with what it can observe:

1. It stores long-lived sessions until the server evicts one of them: the cache is now full. It
   removes 64 of them, which makes room for 64 sessions (CACHE-6).
2. It stores 64 *probe* sessions at once, expiring sooner than everything it stored before, in
   an insertion order that differs from their expiry order (a random permutation).
3. It keeps adding long-lived sessions. Each eviction must take the sessions expiring soonest;
   other clients' sessions may go first, but among the case's own sessions the ones gone must
   always be the probes expiring first, and no long-lived session may go while a probe is left.

It runs alone, after the other cases, because filling the cache evicts their sessions too, and
it removes every session it stored when it ends, so that the cache is as roomy as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from ...protocol import add_request, have_request, interpret_response, remove_request
from ...wire import Status
from ..registry import Unsupported, add_running_variant

#: Sessions stored at most to find the cache full; a larger capacity is not measured.
MAX_FILL = 4096
PROBES = 64
#: Probe timeouts are this far apart, so their expiry order is their timeout order.
_SPACING_MS = 2000
_PROBE_BASE_MS = 20 * 60 * 1000
_FILLER_MS = 2 * 60 * 60 * 1000


async def _pipeline(t, probe, requests: list[tuple[int, bytes]]) -> list[int]:
    """Send requests in one write; the status byte of each reply, in order."""
    await probe.send(b"".join(data for _, data in requests))
    codes = []
    for uid, _ in requests:
        reply = await t.response(probe)
        if reply.request_uid != uid:
            t.fail(f"reply carries uid {reply.request_uid:#010x}, expected {uid:#010x}", "RESP-1")
        codes.append(interpret_response(reply.operation, reply.payload).code)
    return codes


async def _store(t, probe, sessions: list[tuple[bytes, int]]) -> None:
    requests = []
    for sid, timeout_ms in sessions:
        uid = t.uid()
        requests.append((uid, add_request(uid, sid, b"running-eviction", timeout_ms)))
    for code in await _pipeline(t, probe, requests):
        if code != Status.OK:
            t.fail(f"ADD of a new id answered {code!r}, expected OK (0x00)", "ADD-2")


async def _present(t, probe, ids: list[bytes]) -> list[bool]:
    requests = [(uid, have_request(uid, sid)) for sid in ids for uid in (t.uid(),)]
    return [code == Status.OK for code in await _pipeline(t, probe, requests)]


async def eviction_order_on_a_running_server(t):
    ours: list[bytes] = []
    try:
        await _check_eviction_order(t, ours)
    finally:
        await _remove_all(t, ours)  # leave the cache as roomy as it was for whoever comes next


async def _remove_all(t, ids: list[bytes]) -> None:
    with contextlib.suppress(Exception):  # best effort: the verdict is already decided
        probe = await t.connect()
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            await _pipeline(
                t, probe, [(u, remove_request(u, s)) for s in chunk for u in (t.uid(),)]
            )
        await probe.aclose()


async def _check_eviction_order(t, ours: list[bytes]) -> None:
    probe = await t.connect()
    fillers: list[bytes] = []
    step = 16
    while True:  # 1. fill until the server evicts one of ours: the cache is full
        if len(fillers) >= MAX_FILL:
            raise Unsupported(
                f"no session evicted after {MAX_FILL} ADDs: a capacity this large is not "
                "measured on a running server (give --server-cmd for the fresh-server case)"
            )
        batch = [t.new_id() for _ in range(step)]
        ours += batch
        await _store(
            t, probe, [(sid, _FILLER_MS + len(fillers) + i) for i, sid in enumerate(batch)]
        )
        fillers += batch
        here = await _present(t, probe, fillers)
        if not all(here):
            break
        step = max(16, len(fillers) // 8)
        await asyncio.sleep(0)
    # Room for every probe, so that none is evicted while they are being stored (CACHE-6).
    kept = [sid for sid, present in zip(fillers, here, strict=True) if present][:PROBES]
    removals = [(uid, remove_request(uid, sid)) for sid in kept for uid in (t.uid(),)]
    if any(code != Status.OK for code in await _pipeline(t, probe, removals)):
        t.fail("REMOVE of a stored session did not answer OK", "REM-1")
    # 2. probes expiring sooner than every filler, inserted out of expiry order
    probes = [t.new_id() for _ in range(PROBES)]
    ours += probes
    slots = random.sample(range(PROBES), PROBES)
    expiry_rank = dict(zip(probes, slots, strict=True))
    await _store(
        t, probe, [(sid, _PROBE_BASE_MS + expiry_rank[sid] * _SPACING_MS) for sid in probes]
    )
    by_expiry = sorted(probes, key=expiry_rank.__getitem__)
    if not all(await _present(t, probe, by_expiry)):
        t.fail(f"{PROBES} ADDs into the room {PROBES} REMOVEs made evicted something", "CACHE-6")
    # 3. more long-lived sessions, one at a time, until probes go
    later: list[bytes] = []
    for _ in range(2 * len(fillers) + PROBES):
        sid = t.new_id()
        ours.append(sid)
        await _store(t, probe, [(sid, _FILLER_MS + MAX_FILL + len(later))])
        later.append(sid)
        here = await _present(t, probe, by_expiry)
        gone = [n for n, present in enumerate(here) if not present]
        if any(here) and not all(await _present(t, probe, later[-8:])):
            t.fail(
                "a session expiring later was evicted while sessions expiring sooner were kept "
                f"(after {len(ours)} ADDs of the case)"
            )
        if gone:
            if gone != list(range(len(gone))):
                t.fail(
                    f"of {PROBES} sessions stored out of expiry order, the ones evicted are "
                    f"#{[n + 1 for n in gone]} in expiry order; expected the first {len(gone)}"
                )
            return
    raise Unsupported(
        "no session of the case was evicted after the cache was full again (other clients' "
        "sessions may expire sooner): eviction order cannot be judged on this server now"
    )


add_running_variant(
    "CACHE-2/eviction-order",
    eviction_order_on_a_running_server,
    unsupported_when=(
        f"on a running server whose capacity is over {MAX_FILL} sessions, or whose other "
        "clients' sessions expire sooner than the case's",
    ),
)
