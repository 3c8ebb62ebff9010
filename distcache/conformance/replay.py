"""Replaying one vector against a live target over a real socket.

Steps are played exactly as the vector format prescribes: each ``send`` is one write, each
``expect`` reads one frame's bytes (in any segmentation) and compares them, ``expect_close`` is
satisfied by end-of-file or a reset, ``reconnect`` opens a new connection to the same target.
``expect_target_dies`` ends the replay: only the caller, who owns the process, can tell whether it
died, so the result only says that the replay reached that step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..address import Address
from ..netio import ConnectError
from ..tls import ClientTLSSetting
from .probe import Probe, ProbeError, WireLog
from .vectors import (
    Expect,
    ExpectClose,
    ExpectSilence,
    ExpectTargetDies,
    Reconnect,
    Send,
    Sleep,
    Vector,
)

__all__ = ["DEFAULT_STEP_TIMEOUT", "Mismatch", "ReplayResult", "replay", "replay_sync"]

#: Seconds allowed for each expectation (the vectors were recorded with 1000 ms).
DEFAULT_STEP_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first step whose expectation was not met."""

    step: int
    expected: str  # hex of the expected bytes, or a description ("close", "silence 150 ms")
    got: str  # hex of what arrived instead (may be empty)
    reason: str

    def describe(self) -> str:
        text = f"step {self.step}: {self.reason}; expected {self.expected or '(nothing)'}"
        return text + (f", got {self.got}" if self.got else "")


@dataclass
class ReplayResult:
    """Outcome of one replay. ``passed`` covers every step played; see ``reached_death``."""

    vector_id: str
    passed: bool = True
    mismatch: Mismatch | None = None
    wire: WireLog = field(default_factory=WireLog)
    #: Index of an ``expect_target_dies`` step the replay stopped at (the caller judges it).
    reached_death: int | None = None
    steps_played: int = 0

    def fail(self, step: int, expected: str, got: bytes | str, reason: str) -> None:
        got_text = got.hex() if isinstance(got, bytes | bytearray) else got
        self.passed = False
        self.mismatch = Mismatch(step, expected, got_text, reason)


async def replay(
    vector: Vector,
    address: Address | str,
    *,
    step_timeout: float = DEFAULT_STEP_TIMEOUT,
    log: WireLog | None = None,
    tls: ClientTLSSetting = None,
) -> ReplayResult:
    """Play ``vector`` against the target at ``address``; never raises for target behaviour.

    ``log``: record into this wire log (e.g. a conformance case's) instead of a new one.
    ``tls``: how a ``TLS:`` target is reached (the stream inside TLS is replayed unchanged).
    """
    result = ReplayResult(vector.id, wire=log if log is not None else WireLog())
    log = result.wire
    conn = 0
    try:
        probe = await Probe.open(address, timeout=step_timeout, log=log, conn=conn, tls=tls)
    except (ConnectError, OSError) as error:
        result.fail(0, "a connection", "", f"cannot connect: {error}")
        return result
    try:
        for index, step in enumerate(vector.steps):
            result.steps_played = index
            if isinstance(step, Send):
                await probe.send(step.data)
            elif isinstance(step, Expect):
                try:
                    got = await probe.read_exact(len(step.data), step_timeout)
                except ProbeError as error:
                    result.fail(index, step.data.hex(), error.got, str(error))
                    return result
                if got != step.data:
                    result.fail(index, step.data.hex(), got, "bytes differ")
                    return result
            elif isinstance(step, ExpectClose):
                try:
                    how = await probe.expect_close(step_timeout)
                except ProbeError as error:
                    result.fail(index, "close", error.got, str(error))
                    return result
                log.event(conn, f"close observed ({how})")
            elif isinstance(step, ExpectSilence):
                try:
                    await probe.expect_silence(step.ms / 1000)
                except ProbeError as error:
                    result.fail(index, f"silence for {step.ms} ms", error.got, str(error))
                    return result
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.ms / 1000)
            elif isinstance(step, Reconnect):
                await probe.aclose()
                conn += 1
                try:
                    probe = await Probe.open(
                        address, timeout=step_timeout, log=log, conn=conn, tls=tls
                    )
                except (ConnectError, OSError) as error:
                    result.fail(index, "a new connection", "", f"cannot reconnect: {error}")
                    return result
            elif isinstance(step, ExpectTargetDies):
                result.reached_death = index
                log.event(conn, "vector expects the target to die here")
                return result
        result.steps_played = len(vector.steps)
        return result
    finally:
        await probe.aclose()


def replay_sync(
    vector: Vector, address: Address | str, *, step_timeout: float = DEFAULT_STEP_TIMEOUT
) -> ReplayResult:
    """:func:`replay` for callers without an event loop (tests, scripts)."""
    return asyncio.run(replay(vector, address, step_timeout=step_timeout))
