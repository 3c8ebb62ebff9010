"""The upstream link in process: on a real event loop, over real sockets to a real server on
the same loop, driven directly or through the proxy's local clients. The proxy as a program is
in test_proxy.py."""

from __future__ import annotations

import asyncio
import logging

from serverproc import address_of

from distcache.address import parse_address
from distcache.cache import MemoryStore
from distcache.link import upstream
from distcache.link.upstream import DISCONNECTED_REPLY, EMPTY_REPLY, LinkState, UpstreamLink
from distcache.protocol import NEED_DATA, MessageDecoder, add_request, get_request, have_request
from distcache.proxy import Proxy, ProxySettings
from distcache.server import Server, bind_listeners
from distcache.wire import Direction

RETRY_MS = 200
WAIT = 5.0  # seconds an outcome may take on a loaded host


def _failing_first(monkeypatch, failures: int, before_failing=None) -> list[float]:
    """Make the first ``failures`` connect attempts raise LookupError, as resolving the host name
    did in the field (the idna codec, after a change of user); later ones dial for real. Returns
    the loop times of the attempts."""
    attempts: list[float] = []
    real_dial = upstream.dial

    async def dial(*args, **kwargs):
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) > failures:
            return await real_dial(*args, **kwargs)
        if before_failing is not None:
            await before_failing()
        raise LookupError("unknown encoding: idna")

    monkeypatch.setattr(upstream, "dial", dial)
    return attempts


async def _real_server() -> Server:
    server = Server(MemoryStore(64))
    await server.start(bind_listeners("IP:127.0.0.1:0"))
    return server


class Requester:
    """A local client's request in progress, and a future for the answer the link gives it."""

    def __init__(self, message: bytes) -> None:
        decoder = MessageDecoder(receives=Direction.REQUEST)
        decoder.receive_data(message)
        self.request = decoder.next_event()
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def answer(self, payload: bytes) -> None:
        if not self.answered.cancelled():  # (a wait that timed out cancels it)
            self.answered.set_result(payload)

    def forwarded(self) -> None:
        pass


def test_an_unexpected_error_from_an_attempt_fails_it_and_the_link_recovers(monkeypatch, caplog):
    """The field case: resolving the host name raised LookupError (the idna codec, after a change
    of user). The attempt must count as failed, not leave the link CONNECTING for good."""
    caplog.set_level(logging.DEBUG, logger="distcache.proxy")
    attempts: list[float] = []
    failed_at: list[float] = []

    async def scenario() -> None:
        nonlocal attempts
        loop = asyncio.get_running_loop()
        resolving, fail = asyncio.Event(), asyncio.Event()

        async def until_told():  # the test has a request waiting for this attempt by then
            resolving.set()
            await fail.wait()
            fail.clear()

        attempts = _failing_first(monkeypatch, 2, until_told)
        server = await _real_server()
        link = UpstreamLink(parse_address(address_of(server)), retry_ms=RETRY_MS, max_in_flight=8)
        try:
            link.start()
            for uid in (1, 2):  # each failing attempt answers the requests that waited for it
                async with asyncio.timeout(WAIT):
                    await resolving.wait()
                resolving.clear()
                assert link.state is LinkState.CONNECTING
                waiting = Requester(have_request(uid, b"s1"))
                link.submit(waiting)
                fail.set()
                async with asyncio.timeout(WAIT):
                    assert await waiting.answered == DISCONNECTED_REPLY
                failed_at.append(loop.time())
                assert link.state is LinkState.DOWN
                meanwhile = Requester(have_request(uid + 10, b"s1"))
                link.submit(meanwhile)
                assert meanwhile.answered.result() == EMPTY_REPLY
            # The third attempt, on the retry timer, connects to the server and forwards.
            async with asyncio.timeout(WAIT):
                while link.state is not LinkState.UP:
                    await asyncio.sleep(0.01)
            for message, reply in (
                (add_request(3, b"s1", b"session one", 60_000), b"\x00"),
                (get_request(4, b"s1"), b"session one"),
            ):
                forwarded = Requester(message)
                link.submit(forwarded)
                async with asyncio.timeout(WAIT):
                    assert await forwarded.answered == reply
        finally:
            await link.close()
            await server.close()

    asyncio.run(scenario())
    assert len(attempts) == 3
    # Each next attempt after the usual retry delay (less the loop clock's resolution).
    assert attempts[1] - failed_at[0] >= RETRY_MS / 1000 - 0.01
    assert attempts[2] - failed_at[1] >= RETRY_MS / 1000 - 0.01
    records = [r for r in caplog.records if r.name == "distcache.proxy"]
    errors = [r for r in records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.getMessage()) for r in errors] == [
        (
            logging.ERROR,
            "cannot connect to the server: LookupError: unknown encoding: idna"
            f" (retrying every {RETRY_MS / 1000:g} s)",
        )
    ]  # once for the outage, not on every retry, and without a traceback
    assert errors[0].exc_info is None
    tracebacks = [r for r in records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(tracebacks) == 2
    assert any(r.getMessage().startswith("connected to the server") for r in records)


def test_the_proxy_answers_its_clients_after_an_attempt_that_raised(monkeypatch, tmp_path):
    """What the field saw: after the first attempt raised, dc_client answered no local client.
    Now they get EMPTY (no upstream) until the retry connects, then their requests go through."""
    path = str(tmp_path / "px")
    _failing_first(monkeypatch, 1)

    async def scenario() -> None:
        server = await _real_server()
        proxy = Proxy(
            ProxySettings(
                listen=parse_address(f"UNIX:{path}"),
                server=parse_address(address_of(server)),
                retry_ms=RETRY_MS,
            )
        )
        await proxy.start()  # serving once the first attempt has an outcome
        reader, writer = await asyncio.open_unix_connection(path)
        decoder = MessageDecoder(receives=Direction.RESPONSE)

        async def ask(message: bytes) -> bytes:
            writer.write(message)
            async with asyncio.timeout(WAIT):
                while (event := decoder.next_event()) is NEED_DATA:
                    decoder.receive_data(await reader.read(65536))
            return event.payload

        try:
            assert await ask(have_request(1, b"s1")) == EMPTY_REPLY
            async with asyncio.timeout(WAIT):
                uid = 2
                while await ask(have_request(uid, b"s1")) == EMPTY_REPLY:
                    uid += 1
                    await asyncio.sleep(0.02)
            assert await ask(add_request(100, b"s1", b"session one", 60_000)) == b"\x00"
            assert await ask(get_request(101, b"s1")) == b"session one"
        finally:
            writer.close()
            await proxy.close()
            await server.close()

    asyncio.run(scenario())
