"""Cases on early rejection, limits before memory, and replies that must not interleave."""

from __future__ import annotations

import time

from ...protocol import RemoteProtocolError, get_request
from ...wire import MAX_FRAME_DATA, MAX_FRAMES_NOMINAL, Operation, fastcodec
from ..probe import ProbeError
from ..registry import case
from ._frames import frame, unfinished


@case(
    id="FRAME-11/reject-header-without-waiting-for-data",
    requirements=["FRAME-11", "ROBUST-3", "FRAME-5"],
    title="a header announcing 2049 data bytes closes the connection before any data is sent",
)
async def reject_before_data(t):
    probe = await t.connect()
    await probe.send(frame(Operation.GET, b"", uid=t.uid(), data_len=MAX_FRAME_DATA + 1))
    await t.expect_closed(probe, "after a header announcing 2049 data bytes (no data sent)")


@case(
    id="FRAME-11/reject-partial-header",
    requirements=["FRAME-11"],
    title="an illegal operation byte closes the connection before the rest of the header arrives",
)
async def reject_partial_header(t):
    probe = await t.connect()
    header = frame(Operation.GET, b"", uid=t.uid())
    end = fastcodec.FIELD_OFFSET["operation"]
    await probe.send(header[:end] + b"\x09")  # 11 bytes: the operation byte is the last one
    await t.expect_closed(probe, "after 11 header bytes with operation 9")


#: The two moments FRAG-3 allows for refusing a message that would grow past 32768 bytes.
_ON_HEADER = "closed on the crossing frame's header"
_ON_DATA = "closed once the crossing frame's data arrived"


@case(
    id="ROBUST-3/oversize-message-refused-on-its-header",
    requirements=["ROBUST-3", "FRAG-3"],
    title="a frame that would take a message past 32768 bytes is refused on its header or data",
    outcomes=(_ON_HEADER, _ON_DATA),
)
async def oversize_on_header(t):
    # The id predates FRAG-3's wording of both moments; it is kept so that profiles stay valid.
    probe = await t.connect()
    uid = t.uid()
    body = unfinished(uid, MAX_FRAMES_NOMINAL)
    # The 17th header announces one more byte; its data is held back for a while.
    await probe.send(body + frame(Operation.GET, b"", uid=uid, data_len=1))
    data, how = await probe.drain_for(min(0.25, t.timeout))
    if data:
        t.fail(f"a reply to a message past 32768 bytes: {data[:32].hex()}", "FRAG-3")
    if how is not None:
        t.outcome(_ON_HEADER)
        return
    # Still open: the server waits for the frame's data before it judges the total. Memory is
    # bounded by the frame limit either way; the data byte must now end the connection. Open
    # after it, the receiver holds a message past the limits, which ROBUST-3 forbids.
    await probe.send(b"x")
    await t.expect_closed(probe, "after the frame taking the message to 32769 bytes", "ROBUST-3")
    t.outcome(_ON_DATA)


@case(
    id="FRAG-6/pipelined-replies-do-not-interleave",
    requirements=["FRAG-6", "CONN-2"],
    title="multi-frame replies to pipelined requests arrive whole, one after the other",
    steps=10,
)
async def no_interleaving(t):
    probe = await t.connect()
    sessions = {}
    for size in (9000, 5000, 12000):
        session_id = t.new_id()
        sessions[session_id] = t.new_session(size)
        await t.stored(probe, session_id, sessions[session_id])
    uids = [t.uid() for _ in sessions]
    await probe.send(b"".join(get_request(u, s) for u, s in zip(uids, sessions, strict=True)))
    for uid, session in zip(uids, sessions.values(), strict=True):
        try:
            reply = await probe.response(t.timeout)
        except RemoteProtocolError as error:
            t.fail(f"replies interleaved or malformed: {error}", "FRAG-6")
        except ProbeError as error:
            t.fail(f"a pipelined reply is missing: {error}", "CONN-2")
        t.check_header(reply, uid, Operation.GET)
        if reply.payload != session:
            t.fail(f"reply to uid {uid:#010x} does not carry its session", "FRAG-6")


#: Requests pipelined in one write by the CONN-3 case, and the time they must all be answered in
#: with the default --timeout of 1 s (the window grows with --timeout, for slow targets).
_PIPELINED = 8
_BACK_TO_BACK_SECONDS = 0.25


@case(
    id="CONN-3/pipelined-answered-back-to-back",
    requirements=["CONN-3"],
    level="SHOULD",
    profile="strict",
    title=f"{_PIPELINED} pipelined requests are all answered within {_BACK_TO_BACK_SECONDS} s",
)
async def back_to_back(t):
    probe = await t.connect()
    uids = [t.uid() for _ in range(_PIPELINED)]
    started = time.monotonic()
    await probe.send(b"".join(get_request(uid, t.new_id()) for uid in uids))
    for uid in uids:
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.GET)
    elapsed = time.monotonic() - started
    window = _BACK_TO_BACK_SECONDS * max(1.0, t.timeout)
    if elapsed > window:
        t.fail(
            f"{_PIPELINED} pipelined GETs took {elapsed * 1000:.0f} ms, more than "
            f"{window * 1000:.0f} ms (a timer between them?)"
        )
