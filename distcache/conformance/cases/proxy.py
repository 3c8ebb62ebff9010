"""Proxy cases: the runner plays the upstream server and starts the proxy under test itself."""

from __future__ import annotations

import asyncio
import contextlib

from ...protocol import (
    RemoteProtocolError,
    add_request,
    get_request,
    have_request,
    interpret_response,
)
from ...wire import MAX_SESSION_ON_WIRE, Operation, Status
from ..probe import ProbeError
from ..registry import case
from ._frames import frame

_PROXY = {"proxy"}


async def _forwarded(t, upstream):
    try:
        return await upstream.next_request(t.timeout)
    except TimeoutError:
        t.fail("the proxy did not forward the request upstream")


async def _here_or_upstream(t, upstream, probe, answer: bytes):
    """The reply to the request just sent on ``probe``, whichever way the proxy takes: answered
    by the proxy itself (its link down, or still connecting) or forwarded upstream, where it is
    answered with ``answer``. Returns (reply, forwarded).

    Both are allowed while a proxy regains its link, and either may come late on a loaded
    machine: the case waits for the first of the two rather than giving the forwarding a fixed
    short time (a slow proxy would then forward a request nobody answered)."""
    forwarded = asyncio.ensure_future(upstream.next_request(t.timeout))
    local = asyncio.ensure_future(probe.response(t.timeout))
    try:
        await asyncio.wait({forwarded, local}, return_when=asyncio.FIRST_COMPLETED)
        if forwarded.done() and forwarded.exception() is None:
            local.cancel()  # and wait for it: one reader at a time on the probe
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await local
            link, request = forwarded.result()
            link.reply(request, answer)
            return await t.response(probe), True
        forwarded.cancel()
        try:
            return await local, False
        except RemoteProtocolError as error:
            t.fail(f"malformed reply: {error}", "FRAME-1")
        except ProbeError as error:
            t.fail(f"no reply, and nothing forwarded upstream: {error}")
    finally:
        for task in (forwarded, local):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _round_trip(t, upstream, client, operation: Operation, encode, answer: bytes):
    """Send ``encode(uid)`` from ``client``, answer it upstream with ``answer``, and return the
    upstream link and the reply the client got (its uid and operation checked)."""
    uid = t.uid()
    await client.send(encode(uid))
    link, request = await _forwarded(t, upstream)
    link.reply(request, answer)
    reply = await t.response(client)
    t.check_header(reply, uid, operation)
    return link, reply


@case(
    id="PROXY-2/no-upstream-empty-reply",
    requirements=["PROXY-2"],
    target="proxy",
    needs=_PROXY,
    title="without an upstream every request gets one empty frame with its uid and operation",
)
async def no_upstream(t):
    await t.start_proxy(t.absent_upstream())
    probe = await t.connect()
    for operation, data in (
        (Operation.GET, get_request),
        (Operation.HAVE, have_request),
    ):
        uid = t.uid()
        reply = await t.exchange(probe, data(uid, t.new_id()), uid, operation)
        if reply.payload:
            t.fail(
                f"{operation.name} without upstream answered {reply.payload[:8].hex()}, not empty"
            )
    uid = t.uid()
    reply = await t.exchange(
        probe, add_request(uid, t.new_id(), t.new_session(5000), 3_600_000), uid, Operation.ADD
    )
    if reply.payload or reply.frames != 1:
        t.fail("a 3-frame ADD without upstream was not answered with one empty frame")


@case(
    id="PROXY-1/uid-rewriting",
    requirements=["PROXY-1"],
    target="proxy",
    needs=_PROXY,
    title="requests in flight get distinct upstream uids; clients get their own uid back",
)
async def uid_rewriting(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    clients = [await t.connect() for _ in range(2)]
    for probe in clients:
        await probe.send(get_request(7, t.new_id()))
    seen = [await _forwarded(t, upstream) for _ in clients]
    uids = [request.request_uid for _, request in seen]
    # Distinct on one link; a proxy with a link per process (dc_client -workers N) may carry
    # the two on two links, where each may rightly have the same uid.
    if uids[0] == uids[1] and seen[0][0] is seen[1][0]:
        t.fail(f"two requests in flight were forwarded with the same uid {uids[0]:#x}")
    for number, (link, request) in reversed(list(enumerate(seen))):
        link.reply(request, f"answer-{number}-{request.request_uid}".encode())
    answers = set()
    for probe in clients:
        reply = await t.response(probe)
        if reply.request_uid != 7:
            t.fail(f"a client got uid {reply.request_uid:#x} back instead of its own 0x7")
        t.check_header(reply, 7, Operation.GET)
        answers.add(reply.payload)
    expected = {f"answer-{n}-{r.request_uid}".encode() for n, (_, r) in enumerate(seen)}
    if answers != expected:
        t.fail("replies were not routed back to the clients that asked")


@case(
    id="PROXY-3/upstream-lost-disconnected",
    requirements=["PROXY-3"],
    target="proxy",
    needs=_PROXY,
    title="a request in flight when the upstream link drops is answered 0x02",
)
async def upstream_lost(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    probe = await t.connect()
    uid = t.uid()
    await probe.send(get_request(uid, t.new_id()))
    link, _ = await _forwarded(t, upstream)
    link.drop()
    reply = await t.response(probe)
    t.check_header(reply, uid, Operation.GET)
    if reply.payload != bytes((Status.DISCONNECTED,)):
        t.fail(f"expected DISCONNECTED (0x02), got {reply.payload[:8].hex() or 'an empty reply'}")


@case(
    id="PROXY-7/reconnect-after-retry",
    requirements=["PROXY-7", "PROXY-3"],
    target="proxy",
    needs=_PROXY,
    title="after losing its upstream the proxy reconnects after -retry and forwards again",
    slack=3.0,
)
async def reconnect(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address, retry_ms=300)
    probe = await t.connect()
    await probe.send(get_request(t.uid(), t.new_id()))
    link, _ = await _forwarded(t, upstream)
    link.drop()
    await t.response(probe)
    try:
        await upstream.next_link(3.0 + t.timeout)
    except TimeoutError:
        t.fail("no reconnection within 3 s of a 300 ms retry interval")
    for _ in range(20):
        uid = t.uid()
        await probe.send(get_request(uid, b"after"))
        reply, forwarded = await _here_or_upstream(t, upstream, probe, b"forwarded again")
        t.check_header(reply, uid, Operation.GET)
        if not forwarded:
            await t.sleep(0.05)  # answered by the proxy while its link comes up
            continue
        if reply.payload != b"forwarded again":
            t.fail("the reply after reconnection was not the upstream's")
        return
    t.fail("the proxy did not resume forwarding after reconnecting")


@case(
    id="PROXY-5/unknown-uid-from-upstream",
    requirements=["PROXY-5", "ROBUST-1"],
    target="proxy",
    needs=_PROXY,
    profile="robustness",
    title="an upstream reply with an unknown uid drops the link and answers 0x02, no crash",
)
async def unknown_uid(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    probe = await t.connect()
    uid = t.uid()
    await probe.send(get_request(uid, t.new_id()))
    link, request = await _forwarded(t, upstream)
    link.reply(request, b"\x01", uid=(request.request_uid + 12345) & 0xFFFFFFFF)
    reply = await t.response(probe)
    t.check_header(reply, uid, Operation.GET)
    if reply.payload != bytes((Status.DISCONNECTED,)):
        t.fail(
            f"expected DISCONNECTED (0x02) after a bad upstream reply, got {reply.payload.hex()}"
        )
    # The proxy is alive and answers another client: by itself while its link is down, or by
    # forwarding once it has reconnected (at once, PROXY-14) or on another link that is up (one
    # per process with dc_client -workers N).
    other = await t.connect()
    uid = t.uid()
    await other.send(have_request(uid, t.new_id()))
    reply, _ = await _here_or_upstream(t, upstream, other, bytes((Status.NOTOK,)))
    t.check_header(reply, uid, Operation.HAVE)


@case(
    id="PROXY-11/transparency-32k",
    requirements=["PROXY-11"],
    target="proxy",
    needs=_PROXY,
    title="a 32 KB ADD and its GET reply pass through the proxy unchanged",
)
async def transparency(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    probe = await t.connect()
    sid, session = b"k", t.new_session(MAX_SESSION_ON_WIRE)
    uid = t.uid()
    await probe.send(add_request(uid, sid, session, 3_600_000))
    link, request = await _forwarded(t, upstream)
    if request.payload[8 + len(sid) :] != session:
        t.fail("the ADD payload changed on its way upstream")
    link.reply(request, b"\x00")
    t.expect_status(await t.response(probe), [Status.OK], "ADD through the proxy")
    _, reply = await _round_trip(
        t, upstream, probe, Operation.GET, lambda uid: get_request(uid, sid), session
    )
    if reply.payload != session:
        t.fail("the 32 KB GET reply changed on its way through the proxy")


@case(
    id="PROXY-12/client-error-closes-only-client",
    requirements=["PROXY-12"],
    target="proxy",
    needs=_PROXY,
    title="a malformed frame closes only that client; the upstream link stays",
)
async def client_error(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    good = await t.connect()
    link, _ = await _round_trip(
        t, upstream, good, Operation.HAVE, lambda uid: have_request(uid, b"warm-up"), b"\x01"
    )
    bad = await t.connect()
    await bad.send(frame(Operation.GET, b"x", op_class=1))
    await t.expect_closed(bad, "a client sending op_class 1")
    await _round_trip(
        t, upstream, good, Operation.HAVE, lambda uid: have_request(uid, b"after"), b"\x00"
    )
    # The link must stay up; which link carries the next request is the proxy's choice (one
    # with several links may use another).
    if link.closed.is_set():
        t.fail("one client's protocol error disturbed the upstream link")


@case(
    id="PROXY-10/foreign-version-closes-only-client",
    requirements=["PROXY-10", "ROBUST-1"],
    target="proxy",
    needs=_PROXY,
    profile="robustness",
    title="a foreign protocol version from a client closes only that client",
)
async def foreign_version(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    bad = await t.connect()
    await bad.send(b"SSH-2.0-x\r\n")
    await t.expect_closed(bad, "a client sending a foreign version")
    good = await t.connect()
    await _round_trip(
        t, upstream, good, Operation.HAVE, lambda uid: have_request(uid, b"after"), b"\x00"
    )


@case(
    id="PROXY-4/client-leaves-mid-request",
    requirements=["PROXY-4", "ROBUST-1"],
    target="proxy",
    needs=_PROXY,
    profile="robustness",
    title="a client leaving with a request in flight does not disturb the proxy",
)
async def client_leaves(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    leaver = await t.connect()
    await leaver.send(get_request(t.uid(), t.new_id()))
    link, request = await _forwarded(t, upstream)
    await leaver.aclose()
    await asyncio.sleep(0.05)
    link.reply(request, b"late")
    other = await t.connect()
    _, reply = await _round_trip(
        t, upstream, other, Operation.HAVE, lambda uid: have_request(uid, b"x"), b"\x01"
    )
    if interpret_response(reply.operation, reply.payload).code != Status.NOTOK:
        t.fail("another client got a wrong answer after a client left mid-request")


@case(
    id="PROXY-6/pipelining-large-replies",
    requirements=["PROXY-6"],
    target="proxy",
    needs=_PROXY,
    title="requests pipelined behind a large reply are answered in order",
)
async def proxy_pipelining(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address)
    probe = await t.connect()
    uids = [t.uid(), t.uid()]
    big = t.new_session(8000)
    await probe.send(get_request(uids[0], b"big") + have_request(uids[1], b"small"))
    for _ in range(2):
        link, request = await _forwarded(t, upstream)
        link.reply(request, big if request.operation is Operation.GET else b"\x00")
    first = await t.response(probe)
    t.check_header(first, uids[0], Operation.GET)
    if first.payload != big:
        t.fail("the large reply changed")
    t.check_header(await t.response(probe), uids[1], Operation.HAVE)


#: The bound the PROXY-9 case gives the proxy, and how many clients ask at once beyond it.
IN_FLIGHT_BOUND = 4
BEYOND_THE_BOUND = 4


@case(
    id="PROXY-9/requests-beyond-the-bound-wait",
    requirements=["PROXY-9"],
    level="SHOULD",
    profile="strict",
    target="proxy",
    needs=_PROXY,
    title=(
        f"with {{max_in_flight}} = {IN_FLIGHT_BOUND}, no more than {IN_FLIGHT_BOUND} requests are "
        "in flight on an upstream link; the others wait and are forwarded as replies free places"
    ),
    steps=2 * (IN_FLIGHT_BOUND + BEYOND_THE_BOUND) + 4,
    unsupported_when=("without {max_in_flight} in --proxy-cmd",),
)
async def bounded_in_flight(t):
    upstream = await t.upstream()
    await t.start_proxy(upstream.address, max_in_flight=IN_FLIGHT_BOUND)
    warm = await t.connect()  # one round trip first: the upstream link is up
    await _round_trip(t, upstream, warm, Operation.HAVE, lambda u: have_request(u, b"w"), b"\x01")
    clients = []
    for number in range(IN_FLIGHT_BOUND + BEYOND_THE_BOUND):
        probe, uid, sid = await t.connect(), t.uid(), f"bound-{number}".encode()
        await probe.send(get_request(uid, sid))
        clients.append((probe, uid, sid))
    # 1. Nothing answers upstream: the proxy forwards up to its bound, then stops. A margin of
    #    one step only lets a slow proxy hide a fault; it never invents one.
    held: dict[object, list] = {}
    while True:
        try:
            link, request = await upstream.next_request(t.timeout)
        except TimeoutError:
            break
        held.setdefault(link, []).append(request)
        if len(held[link]) > IN_FLIGHT_BOUND:
            t.fail(
                f"{len(held[link])} requests in flight at once on one upstream link, told "
                f"-maxinflight {IN_FLIGHT_BOUND} through {{max_in_flight}}"
            )
    if not held:
        t.fail("no request was forwarded upstream")
    # 2. Each reply frees a place: every request that waited is forwarded in its turn.
    answered = 0
    while answered < len(clients):
        for link, requests in held.items():
            for request in requests:
                link.reply(request, b"upstream:" + request.payload)
                answered += 1
        held = {}
        if answered < len(clients):
            link, request = await _waiting_forwarded(t, upstream, answered, len(clients))
            held[link] = [request]
    for probe, uid, sid in clients:
        reply = await t.response(probe)
        t.check_header(reply, uid, Operation.GET)
        if reply.payload != b"upstream:" + sid:
            got = reply.payload[:16].hex() or "an empty reply"
            t.fail(f"a request beyond the bound was answered with {got}, not forwarded")


async def _waiting_forwarded(t, upstream, answered: int, total: int):
    try:
        return await upstream.next_request(t.timeout)
    except TimeoutError:
        t.fail(
            f"after {answered} replies upstream, {total - answered} requests that waited for "
            "a place were never forwarded"
        )
