"""Cases over time: reads leave a session's expiry alone, and silences of seconds are harmless.

Each waits for seconds of real time on its own connections and ids, so the runner plays them side
by side with the other shared-target cases: the run grows by the longest wait, not by their sum.
Their margins are set so that a slow machine can only hide a fault, never invent one.
"""

from __future__ import annotations

import time

from ..registry import case

#: The session's timeout, when it is read, and when it is looked up again (ms after its ADD).
#: A read that restarted the timeout would keep the session until READ_AT + TIMEOUT (> CHECK_AT).
_TIMEOUT_MS = 2000
_READ_AT_MS = 1000
_CHECK_AT_MS = 2500
#: Silence long enough to outlast a timer of "about a second" in the target.
IDLE_SECONDS = 3.0


async def _sleep_until(t, start: float, at_ms: int) -> None:
    left = start + at_ms / 1000 - time.monotonic()
    if left > 0:
        await t.sleep(left)


async def _read_then_expire(t, read, requirement: str, name: str) -> None:
    probe = await t.connect()
    # The control is never read: if it outlives its deadline, the target ignores expiry (CACHE-3)
    # and the read session proves nothing about the read.
    sid, control = t.new_id(), t.new_id()
    start = time.monotonic()
    await t.stored(probe, sid, t.new_session(40), timeout_ms=_TIMEOUT_MS)
    await t.stored(probe, control, t.new_session(40), timeout_ms=_TIMEOUT_MS)
    await _sleep_until(t, start, _READ_AT_MS)
    # Late on a loaded machine: skipping the read can hide a fault but never invent one.
    if (time.monotonic() - start) * 1000 < _TIMEOUT_MS - 200:
        await read(probe, sid, f"{name} {_READ_AT_MS} ms into a {_TIMEOUT_MS} ms timeout")
    await _sleep_until(t, start, _CHECK_AT_MS)
    after = f"{_CHECK_AT_MS} ms after an ADD with a {_TIMEOUT_MS} ms timeout"
    await t.present(probe, control, False, f"HAVE of a session never read {after}", "CACHE-3")
    await t.present(
        probe,
        sid,
        False,
        f"HAVE {after}, read by {name} before its deadline (a read must not restart the timeout)",
        requirement,
    )


@case(
    id="GET-1/get-keeps-expiry",
    requirements=["GET-1", "CACHE-3"],
    title="a GET hit before the deadline does not move it: the session is gone after it",
    slack=_CHECK_AT_MS / 1000 + 0.5,
)
async def get_keeps_expiry(t):
    async def read(probe, sid, what):
        reply = await t.get(probe, sid)
        if len(reply.payload) < 2:
            t.fail(f"{what}: the session is already gone", "CACHE-3")

    await _read_then_expire(t, read, "GET-1", "GET")


@case(
    id="HAVE-1/have-keeps-expiry",
    requirements=["HAVE-1", "CACHE-3"],
    title="a HAVE hit before the deadline does not move it: the session is gone after it",
    slack=_CHECK_AT_MS / 1000 + 0.5,
)
async def have_keeps_expiry(t):
    async def read(probe, sid, what):
        await t.present(probe, sid, True, what, "CACHE-3")

    await _read_then_expire(t, read, "HAVE-1", "HAVE")


@case(
    id="CONN-5/idle-seconds-after-a-reply",
    requirements=["CONN-5"],
    title=f"a connection silent for {IDLE_SECONDS:g} s after a reply is still open and served",
    slack=IDLE_SECONDS + 0.5,
)
async def idle_after_reply(t):
    probe = await t.connect()
    sid = t.new_id()
    await t.stored(probe, sid, b"kept across the silence")
    await t.expect_silence(probe, IDLE_SECONDS, "a connection idle after a reply must stay open")
    await t.present(probe, sid, True, f"HAVE after {IDLE_SECONDS:g} s of silence")


@case(
    id="CONN-5/idle-seconds-before-a-request",
    requirements=["CONN-5"],
    title=f"a connection silent for {IDLE_SECONDS:g} s from its start is still open and served",
    slack=IDLE_SECONDS + 0.5,
)
async def idle_before_request(t):
    probe = await t.connect()
    await t.expect_silence(probe, IDLE_SECONDS, "a connection never used must stay open")
    await t.present(probe, t.new_id(), False, f"HAVE after {IDLE_SECONDS:g} s of silence")
