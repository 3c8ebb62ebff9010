"""ROBUST-4: a client that sends requests and never reads the replies cannot make the target
buffer without limit.

The case asks for far more reply bytes than any sane bound (64 MiB) and then keeps writing
padding requests. A bounded target stops reading (its socket buffers fill and our writes stall)
or closes the connection; an unbounded one reads everything while the replies pile up in its
memory. The padding is what tells them apart: it is larger than any kernel's socket buffers on
loopback, yet costs the target almost nothing to answer.
"""

from __future__ import annotations

import asyncio
import socket

from ...protocol import get_request
from ...wire import MAX_FRAME_DATA
from ..registry import case

#: A session whose GET reply is about 32 KB, asked for often enough to owe 64 MiB of replies.
_SESSION_BYTES = 32_000
_HITS = 2048
#: GET misses with ids filling one whole frame: 2 KB of request for a 15-byte reply each.
_PADDING_ID_BYTES = MAX_FRAME_DATA - 14
_PADDING_REQUESTS = 4096
_CHUNK_REQUESTS = 64


@case(
    id="ROBUST-4/unread-replies-stop-reading",
    requirements=["ROBUST-4", "ROBUST-1"],
    # An unbounded target may bog down or die here: run it with the hostile cases, alone.
    profile="robustness",
    title="a client owed 64 MiB of unread replies cannot make the target read 8 MiB more of "
    "requests: it stops reading or closes",
    steps=12,
    slack=4.0,
)
async def unread_replies(t):
    probe = await t.connect()
    sid = t.new_id()
    await t.stored(probe, sid, t.new_session(_SESSION_BYTES))
    writer = probe.writer
    sock = writer.transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        # Keep our side's buffering small so the target's backlog shows at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    stall = max(2 * t.timeout, 1.0)
    hits = b"".join(get_request(t.uid(), sid) for _ in range(_HITS))
    padding_id = t.new_id(_PADDING_ID_BYTES)
    chunk = b"".join(get_request(t.uid(), padding_id) for _ in range(_CHUNK_REQUESTS))
    t.log.event(probe.conn, f"sending {_HITS} GETs of a {_SESSION_BYTES}-byte session, unread")
    sent = 0
    try:
        writer.write(hits)
        for _ in range(_PADDING_REQUESTS // _CHUNK_REQUESTS):
            await asyncio.wait_for(writer.drain(), stall)
            writer.write(chunk)
            sent += len(chunk)
        await asyncio.wait_for(writer.drain(), stall)
    except TimeoutError:
        t.log.event(
            probe.conn, f"writes stalled after {sent} padding bytes: target stopped reading"
        )
    except (ConnectionError, OSError) as error:
        t.log.event(probe.conn, f"connection ended after {sent} padding bytes: {error!r}")
    else:
        t.fail(
            f"the target read {_HITS} requests for {_HITS * _SESSION_BYTES >> 20} MiB of replies "
            f"that were never read, then {sent >> 20} MiB more of requests: it buffers replies "
            "without limit"
        )
    finally:
        writer.transport.abort()
    await t.still_served("a new connection after a client that never read", "ROBUST-1")
