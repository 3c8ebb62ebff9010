"""Cases for the robustness chapter that a remote peer can observe: a proxy keeps one local
client's protocol error away from the upstream link that every other client shares."""

from __future__ import annotations

from ...protocol import encode_request, get_request
from ...wire import Operation
from ..registry import case

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
