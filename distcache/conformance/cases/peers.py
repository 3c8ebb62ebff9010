"""Cases for the robustness chapter that a remote peer can observe: a proxy keeps one local
client's protocol error away from the upstream link that every other client shares; a server
cannot be locked out by idle connections (ROBUST-5); a stopping server answers what it has
received (ROBUST-7).

The last two need a target of their own (``fresh``): the first fills its connection table, the
second stops it. Against a server that is only an address they are UNSUPPORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket

from ...address import parse_address
from ...netio import ConnectError, open_connection, tls_connect_options
from ...protocol import add_request, encode_request, get_request
from ...wire import Operation, Status
from .. import launch
from ..context import LONG_TIMEOUT_MS
from ..probe import Probe
from ..registry import Unsupported, case

_PROXY = {"proxy"}


def _short_add_case(size: int):
    @case(
        id=f"PROXY-14/short-add-{size}-not-forwarded",
        requirements=["PROXY-14"],
        target="proxy",
        needs=_PROXY,
        title=f"an ADD of {size} payload bytes closes only its local connection",
    )
    async def run(t):
        upstream = await t.upstream()
        await t.start_proxy(upstream.address)
        bystander = await t.connect()
        offender = await t.connect()
        await offender.send(encode_request(t.uid(), Operation.ADD, b"\0" * size))
        await t.expect_closed(offender, f"after an ADD of {size} payload bytes", "PROXY-14")
        uid = t.uid()
        await bystander.send(get_request(uid, t.new_id()))
        try:
            link, request = await upstream.next_request(t.timeout)
        except TimeoutError:
            t.fail("the other client's request was not forwarded")
        if request.operation is not Operation.GET:
            t.fail(f"the proxy forwarded the short ADD upstream ({request.operation.name})")
        link.reply(request, b"kept")
        reply = await t.response(bystander)
        t.check_header(reply, uid, Operation.GET)
        if reply.payload != b"kept":
            t.fail(f"the other client got {reply.payload[:8].hex()} instead of its answer")


for _size in (0, 4, 7):
    _short_add_case(_size)


# -- ROBUST-5: no lock-out by idle connections ---------------------------------------------------

#: Idle connections the case holds: more than the reference server's default cap (1024).
IDLE_HOLD = 1100
#: Loopback addresses they come from (a TCP target on 127.0.0.1), each under the reference
#: server's default per-peer limit (512): the new client, from 127.0.0.1, is another peer.
HOLDER_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def _enough_descriptors(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < needed:
            raise Unsupported(f"needs {needed} open files (ulimit -n) to hold its connections")


async def _hold(t, address: str, source: str | None):
    options = {"local_addr": (source, 0)} if source else {}
    try:
        return await open_connection(address, timeout=t.timeout * 4, tls=t.tls, **options)
    except ConnectError:
        return None  # refused or reset: a server may refuse beyond a per-peer limit (ROBUST-6)


@case(
    id="ROBUST-5/idle-connections-do-not-lock-out",
    requirements=["ROBUST-5"],
    profile="robustness",
    needs={"fresh"},
    title=f"{IDLE_HOLD} idle connections from other peers do not lock a new client out",
    steps=40,
    slack=30.0,
)
async def idle_connections_do_not_lock_out(t):
    address = parse_address(t.address)
    loopback = address.kind == "tcp" and address.host == "127.0.0.1"
    if address.kind == "tcp" and not loopback:
        raise Unsupported("needs a target on 127.0.0.1 (its holders come from 127.0.0.2-5)")
    _enough_descriptors(2 * IDLE_HOLD + 256)  # both ends, when the target runs in-process
    held = []
    t.on_cleanup(lambda: _close_all(held))
    sources = HOLDER_ADDRESSES if loopback else (None,)
    for number in range(IDLE_HOLD):
        streams = await _hold(t, t.address, sources[number % len(sources)])
        if streams is None and number == 0 and loopback:
            raise Unsupported("cannot connect from 127.0.0.2 (not a loopback address here)")
        if streams is not None:
            held.append(streams)
    t.log.event(0, f"holding {len(held)} idle connections from other peers")
    try:
        probe = await t.connect()
    except OSError as error:
        t.fail(f"a new client cannot connect while others hold idle connections: {error}")
    sid = t.new_id()
    reply = await t.have(probe, sid)
    t.expect_status(reply, [Status.NOTOK], "a new client among idle connections", "ROBUST-5")


async def _close_all(held) -> None:
    for _, writer in held:
        writer.transport.abort()
    held.clear()
    await asyncio.sleep(0)


# -- ROBUST-7: a stop answers what was received --------------------------------------------------

#: Clients, each asking for a large session this many times without reading, then storing small
#: sessions. Some 6 MB of replies per client is twice what the target's kernel takes on a
#: connection (about 3 MB on Linux loopback): when the stop comes, replies are still to be written
#: from the target's own memory and the ADDs wait unread behind them. A client's requests (some
#: 30 KB) fit in any receive buffer, so all have reached the target's system before the stop;
#: larger ones could still sit in this side's send buffer, which ROBUST-7 does not cover.
DRAIN_CLIENTS = 2
DRAIN_GETS = 200
DRAIN_ADDS = 20
DRAIN_SESSION = 30_000
DRAIN_ADD_SESSION = 1_000
#: The probes' receive buffer: small beside what the target holds, large enough that draining
#: costs few round trips on a busy host (with 4 KB the drain outlasted the default grace).
PROBE_RECEIVE_BUFFER = 65536


async def _small_window_probe(t) -> Probe:
    """A connection with a small receive window from its first packet on: replies it does not
    read back up in the target (not in the kernels' buffers) and wait to be written."""
    address = parse_address(t.address)
    if address.kind == "unix":
        return await t.connect()
    family = socket.AF_INET6 if ":" in (address.host or "") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PROBE_RECEIVE_BUFFER)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (address.host, address.port)),
            t.timeout,
        )
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                sock=sock, limit=1 << 20, **tls_connect_options(address, t.tls, t.timeout)
            ),
            t.timeout * 2,
        )
    except BaseException:
        sock.close()
        raise
    probe = Probe(reader, writer, t.log, 1000 + len(t._probes))
    t._probes.append(probe)
    t.log.event(probe.conn, "connected (small receive window)")
    return probe


async def _stop_target(t) -> asyncio.subprocess.Process | None:
    """Ask the target to stop as its operator would: SIGTERM to a process the runner started
    (returned, to be watched), a graceful close of an in-process reference server."""
    instance = t.instance
    process = instance.process
    if process is not None:
        # Its exit is this case's doing, not a crash: the case judges it and stops what is left.
        instance.process = None
        t.on_cleanup(lambda: launch.stop(process))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        return process
    if instance.server is not None:
        stopping = asyncio.ensure_future(instance.server.close(10.0))
        t.on_cleanup(_finish(t, stopping))
        return None
    raise Unsupported("needs a target the runner started and can stop")


def _finish(t, task):
    async def finish() -> None:
        with contextlib.suppress(Exception):
            await task
        t.instance.server = None  # closed: nothing left for the runner to stop

    return finish


@case(
    id="ROBUST-7/stop-answers-what-was-received",
    requirements=["ROBUST-7"],
    needs={"fresh"},
    title="a stop request answers every request already sent, then closes",
    steps=20,
    slack=12.0,
)
async def stop_answers_what_was_received(t):
    clients = [await _small_window_probe(t) for _ in range(DRAIN_CLIENTS)]
    sid, session = t.new_id(), t.new_session(DRAIN_SESSION)
    small = t.new_session(DRAIN_ADD_SESSION)
    await t.stored(clients[0], sid, session)
    for probe in clients:  # each served once: surely accepted
        await t.present(probe, sid, True, "the session just stored")
    batches = []
    for probe in clients:
        gets = [t.uid() for _ in range(DRAIN_GETS)]
        adds = [(t.uid(), t.new_id()) for _ in range(DRAIN_ADDS)]
        await probe.send(
            b"".join(get_request(uid, sid) for uid in gets)
            + b"".join(add_request(uid, new, small, LONG_TIMEOUT_MS) for uid, new in adds)
        )
        batches.append((gets, [uid for uid, _ in adds]))
    process = await _stop_target(t)
    t.log.event(0, "stop requested")
    for probe, (gets, adds) in zip(clients, batches, strict=True):
        for uid in gets:
            reply = await t.response(probe)
            t.check_header(reply, uid, Operation.GET)
            if reply.payload != session:
                t.fail(f"a GET answered during the stop returned {len(reply.payload)} bytes")
        for uid in adds:
            reply = await t.response(probe)
            t.check_header(reply, uid, Operation.ADD)
            t.expect_status(reply, [Status.OK], "an ADD sent before the stop")
        await t.expect_closed(probe, "after every request is answered, the stopping target")
    if process is not None:
        try:
            status = await asyncio.wait_for(process.wait(), 10.0 + t.timeout)
        except TimeoutError:
            t.fail("the target did not exit within its grace period after answering everything")
        if status != 0:
            t.fail(f"the target exited with status {status} after a stop request")
