"""Robustness cases: input that crashed the legacy server. Run last: they may kill the target."""

from __future__ import annotations

import secrets

from ...wire import Operation
from ..registry import case
from ._frames import frame, unfinished

FOREIGN_STARTS = {
    "old-version-0x0010": bytes.fromhex("0010000000"),
    "version-zero": bytes.fromhex("0000000000"),
    "http-request": b"GET / HTTP/1.0\r\n\r\n",
    "ssh-banner": b"SSH-2.0-OpenSSH_9.2\r\n",
}


def _foreign_case(name: str, data: bytes):
    @case(
        id=f"FRAME-4/foreign-version-{name}",
        requirements=["FRAME-4", "ROBUST-1", "CONN-1"],
        profile="robustness",
        title=f"{name.replace('-', ' ')} closes only that connection",
    )
    async def run(t):
        bystander = await t.connect()
        sid = t.new_id()
        await t.stored(bystander, sid, b"still here")
        probe = await t.connect()
        await probe.send(data)
        await t.expect_closed(probe, "after a foreign protocol version", "FRAME-4")
        await t.present(
            bystander, sid, True, "another connection after a foreign version", "FRAME-4"
        )
        await t.still_served("a new connection after a foreign version", "FRAME-4")


for _name, _data in FOREIGN_STARTS.items():
    _foreign_case(_name, _data)


@case(
    id="FRAME-4/foreign-version-in-second-frame",
    requirements=["FRAME-4", "ROBUST-1"],
    profile="robustness",
    title="a foreign version in a continuation frame closes only that connection",
)
async def foreign_version_second_frame(t):
    probe = await t.connect()
    uid = t.uid()
    first = unfinished(uid)
    second = frame(Operation.GET, b"x", uid=uid, proto_level=0x00120000)
    await probe.send(first + second)
    await t.expect_closed(probe, "after a foreign version in frame 2", "FRAME-4")
    await t.still_served("a new connection afterwards", "FRAME-4")


@case(
    id="FRAME-10/four-bytes-wait",
    requirements=["FRAME-10", "FRAME-4"],
    profile="robustness",
    title="four bytes of a foreign version are not judged; the fifth closes the connection",
)
async def four_bytes_wait(t):
    probe = await t.connect()
    await probe.send(bytes.fromhex("00120000"))
    await t.expect_silence(probe, min(0.15, t.timeout), "with only 4 bytes in", "FRAME-10")
    await probe.send(b"\x00")
    await t.expect_closed(probe, "after the fifth byte of a foreign version", "FRAME-4")
    await t.still_served("a new connection afterwards", "FRAME-4")


@case(
    id="ROBUST-1/random-garbage",
    requirements=["ROBUST-1", "CONN-1"],
    profile="robustness",
    title="random bytes on several connections never stop the server",
    steps=20,
)
async def random_garbage(t):
    for _ in range(8):
        probe = await t.connect()
        await probe.send(b"\x00\x11\x00\x00" + secrets.token_bytes(64))
        await probe.drain_for(0.02)
        await probe.aclose()
        probe = await t.connect()
        await probe.send(secrets.token_bytes(200))
        await probe.drain_for(0.02)
        await probe.aclose()
    await t.still_served("a new connection after the garbage", "ROBUST-1")
