"""RESP-4: the status byte of every ADD, REMOVE and HAVE reply is one the operation may send.

The other cases check that each answer is the right one; this one checks the code space alone, so
that a server inventing a status (or sending DISCONNECTED, which only a proxy may) is blamed for
that, whatever else it gets wrong.
"""

from __future__ import annotations

from ...protocol import add_request, have_request, interpret_response, remove_request
from ...wire import MAX_SESSION_ID, MAX_TIMEOUT_MS, Operation, Status
from ..registry import case

_ADD_STATUSES = {
    Status.OK,
    Status.ADD_CORRUPT,
    Status.ADD_MATCHING_SESSION,
    Status.ADD_TIMEOUT_RANGE,
    Status.ADD_ID_RANGE,
    Status.ADD_DATA_RANGE,
}
_ALLOWED = {
    Operation.ADD: _ADD_STATUSES,
    Operation.REMOVE: {Status.OK, Status.NOTOK},
    Operation.HAVE: {Status.OK, Status.NOTOK},
}


@case(
    id="RESP-4/status-values-by-operation",
    requirements=["RESP-4"],
    title="ADD answers only 0x00 or 0x64-0x68, REMOVE and HAVE only 0x00 or 0x01, "
    "hits, misses and refusals alike",
    steps=14,
)
async def status_values(t):
    probe = await t.connect()
    sid, unknown = t.new_id(), t.new_id()
    plan = [
        (Operation.ADD, add_request, (sid, b"session", 60_000)),
        (Operation.ADD, add_request, (sid, b"again", 60_000)),
        (Operation.ADD, add_request, (t.new_id(), b"x", MAX_TIMEOUT_MS + 1)),
        (Operation.ADD, add_request, (b"i" * (MAX_SESSION_ID + 1), b"x", 60_000)),
        (Operation.HAVE, have_request, (sid,)),
        (Operation.HAVE, have_request, (unknown,)),
        (Operation.REMOVE, remove_request, (sid,)),
        (Operation.REMOVE, remove_request, (unknown,)),
    ]
    for operation, build, args in plan:
        uid = t.uid()
        reply = await t.exchange(probe, build(uid, *args), uid, operation)
        code = interpret_response(reply.operation, reply.payload).code
        if code not in _ALLOWED[operation]:
            got = (
                f"{len(reply.payload)} bytes {reply.payload[:8].hex()}"
                if code is None
                else f"{code:#04x}"
            )
            t.fail(f"{operation.name} answered {got}, outside what {operation.name} may send")
