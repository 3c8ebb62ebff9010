"""Connection cases: pipelining, half-close, idle connections, concurrency and isolation."""

from __future__ import annotations

import asyncio

from ...protocol import get_request, have_request, remove_request
from ...wire import Operation, Status
from ..probe import ProbeError
from ..registry import Unsupported, case
from ._frames import frame


@case(
    id="CONN-2/pipelined-large-replies",
    requirements=["CONN-2", "RESP-2"],
    title="a 30 KB GET reply with requests pipelined behind it: all answered in order",
    steps=10,
)
async def pipelined_large_replies(t):
    probe = await t.connect()
    sid, session = t.new_id(), t.new_session(30000)
    await t.stored(probe, sid, session)
    uids = [t.uid() for _ in range(5)]
    plan = [
        (Operation.GET, get_request(uids[0], sid), session),
        (Operation.HAVE, have_request(uids[1], sid), bytes((Status.OK,))),
        (Operation.GET, get_request(uids[2], sid), session),
        (Operation.REMOVE, remove_request(uids[3], sid), bytes((Status.OK,))),
        (Operation.HAVE, have_request(uids[4], sid), bytes((Status.NOTOK,))),
    ]
    await probe.send(b"".join(data for _, data, _ in plan))
    for index, ((operation, _, expected), uid) in enumerate(zip(plan, uids, strict=True)):
        reply = await t.response(probe)
        t.check_header(reply, uid, operation)
        if reply.payload != expected:
            t.fail(f"pipelined reply {index + 1} ({operation.name}) is wrong", "CONN-2")


@case(
    id="CONN-4/half-close-delivers-replies",
    requirements=["CONN-4"],
    level="SHOULD",
    profile="strict",
    title="requests complete before a half-close are answered, then the connection closes",
    unsupported_when=("over TLS (a TLS connection cannot half-close)",),
)
async def half_close(t):
    probe = await t.connect()
    if not probe.can_half_close:
        raise Unsupported("a TLS connection cannot shut down only its sending side")
    sid = t.new_id()
    await t.stored(probe, sid, b"kept")
    uid_get, uid_have = t.uid(), t.uid()
    await probe.send(get_request(uid_get, sid) + have_request(uid_have, t.new_id()))
    probe.half_close()
    try:
        first = await probe.response(t.timeout)
        second = await probe.response(t.timeout)
    except (ProbeError, Exception) as error:
        t.fail(f"replies lost after the client half-closed: {error}")
    t.check_header(first, uid_get, Operation.GET)
    t.check_header(second, uid_have, Operation.HAVE)
    await t.expect_closed(probe, "after the replies to a half-closed client")


@case(
    id="CONN-5/idle-connection-kept",
    requirements=["CONN-5"],
    title="a connection idle for a while is still open and served",
    slack=1.0,
)
async def idle_connection(t):
    probe = await t.connect()
    await t.expect_silence(probe, 0.8, "an idle connection must stay open")
    await t.present(probe, t.new_id(), False, "HAVE after being idle")


@case(
    id="CONN-1/concurrent-clients",
    requirements=["CONN-1", "RESP-2"],
    title="16 clients working at once each get their own answers",
    steps=12,
)
async def concurrent_clients(t):
    async def client(number):
        probe = await t.connect()
        sid, session = t.new_id(), t.new_session(100 + 300 * number)
        for _ in range(3):
            await t.stored(probe, sid, session)
            if (await t.get(probe, sid)).payload != session:
                t.fail(f"client {number} got another client's data")
            t.expect_status(await t.remove(probe, sid), [Status.OK], f"client {number} REMOVE")

    await asyncio.gather(*(client(n) for n in range(16)))


@case(
    id="CONN-1/garbage-does-not-disturb-others",
    requirements=["CONN-1", "FRAME-5"],
    title="one client's garbage closes only its connection; others and the cache are intact",
)
async def garbage_isolated(t):
    good = await t.connect()
    sid, session = t.new_id(), t.new_session()
    await t.stored(good, sid, session)
    bad = await t.connect()
    await bad.send(bytes.fromhex("00110000") + b"\x07garbage-after-a-valid-version" * 4)
    await t.expect_closed(bad, "the client that sent garbage", "FRAME-5")
    if (await t.get(good, sid)).payload != session:
        t.fail("another client's session changed after one client sent garbage")
    await t.still_served("a new connection after the garbage")


@case(
    id="CONN-7/nothing-after-a-protocol-error",
    requirements=["CONN-7", "FRAME-5"],
    title="bytes after a malformed frame are not processed; the connection closes",
    outcomes=("replied to the earlier request, then closed", "closed without a reply"),
)
async def nothing_after_error(t):
    probe = await t.connect()
    first, after = t.new_id(), t.new_id()
    uid = t.uid()
    from ...protocol import add_request

    stream = (
        add_request(uid, first, b"before", 3_600_000)
        + frame(Operation.GET, b"x", uid=t.uid(), op_class=1)
        + add_request(t.uid(), after, b"after", 3_600_000)
    )
    await probe.send(stream)
    data, how = await probe.drain_for(t.timeout)
    if how is None:
        t.fail("connection still open after a malformed frame", "FRAME-5")
    # Acceptable: the first request's reply then the close, or the close alone.
    expected_reply = bytes.fromhex("00110000") + b"\x01" + uid.to_bytes(4, "big")
    if data and not data.startswith(expected_reply):
        t.fail(f"unexpected bytes before the close: {data[:32].hex()}")
    t.outcome(t.case.outcomes[0] if data else t.case.outcomes[1])
    checker = await t.connect()
    await t.present(checker, after, False, "the ADD after the malformed frame must not run")


@case(
    id="ROBUST-2/partial-frame-does-not-block-others",
    requirements=["ROBUST-2", "CONN-1"],
    level="SHOULD",
    title="a client holding half a frame does not delay other clients",
)
async def partial_frame_isolated(t):
    slow = await t.connect()
    await slow.send(get_request(t.uid(), t.new_id())[:9])
    other = await t.connect()
    await t.present(other, t.new_id(), False, "HAVE while another client holds half a frame")
