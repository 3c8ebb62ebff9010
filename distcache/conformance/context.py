"""What a case gets to work with: its target, fresh connections, unique ids and checks.

Cases use random session ids and uids so that they cannot disturb each other on a shared target,
and every connection they open is logged into the case's wire log.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable

from ..protocol import (
    RemoteProtocolError,
    Response,
    add_request,
    get_request,
    have_request,
    interpret_response,
    remove_request,
)
from ..wire import PROTOCOL_LEVEL, Operation, Status
from .fresh_ids import SHORT_ID, IdReservations, with_fresh_ids
from .probe import Probe, ProbeError, WireLog
from .registry import Case, CaseFailure, Unsupported
from .targets import InProcessSetup, Instance, RefusingAddress, TargetUnavailable
from .vectors import Vector

__all__ = ["CaseContext"]

#: Timeout for sessions that must outlive a case (one hour).
LONG_TIMEOUT_MS = 3_600_000


class CaseContext:
    """Handed to every case function."""

    def __init__(
        self,
        case: Case,
        instance: Instance | None,
        *,
        timeout: float,
        log: WireLog,
        proxy_setup=None,
        upstream_factory=None,
        shared_ids: bool = False,
        reservations: IdReservations | None = None,
    ):
        self.case = case
        self.instance = instance
        self.timeout = timeout
        self.log = log
        self._connections = 0
        self._probes: list[Probe] = []
        self.proxy_setup = proxy_setup
        self._upstream_factory = upstream_factory
        self._cleanup: list = []
        #: Which of the case's acceptable outcomes the target showed (see :meth:`outcome`).
        self.seen_outcome: str | None = None
        #: Set when a case that wants its ids unused runs on a shared server it cannot reset.
        self.shared_ids = shared_ids
        #: Short ids held by the cases running now (the runner's, shared by all its cases).
        self.reservations = reservations or IdReservations()

    # -- target -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.instance is None:
            raise Unsupported("no target instance for this case")
        return self.instance.address

    @property
    def sessions(self) -> int:
        """The capacity the case asked for (``sessions:N``)."""
        if self.case.sessions is None:
            raise RuntimeError(f"{self.case.id} did not declare sessions:N")
        return self.case.sessions

    def target_exited(self) -> bool:
        return self.instance is not None and self.instance.exit_status() is not None

    @property
    def tls(self):
        """How the target is reached over TLS (client files), None for a plain target."""
        return None if self.instance is None else self.instance.tls

    async def connect(self, address: str | None = None, *, tls=None) -> Probe:
        """A new connection to the target (or to ``address``), logged as connection #n.

        The target is reached with its own TLS files; ``tls`` replaces them (a case presenting
        another certificate)."""
        conn = self._connections
        self._connections += 1
        if tls is None and address is None:
            tls = self.tls
        probe = await Probe.open(
            address or self.address, timeout=self.timeout, log=self.log, conn=conn, tls=tls
        )
        self._probes.append(probe)
        return probe

    async def close_all(self) -> None:
        for probe in self._probes:
            await probe.aclose()
        for cleanup in reversed(self._cleanup):
            await cleanup()

    def on_cleanup(self, coroutine_function) -> None:
        self._cleanup.append(coroutine_function)

    async def with_fresh_ids(self, vector: Vector, *, always: bool = False) -> Vector:
        """``vector`` with fresh session ids, when the case runs on a shared server (or
        ``always``: a second replay on a server the first one changed).

        Short ids (which chance alone cannot keep unique) are reserved for the case and removed
        from the server first, so the vector finds every id it names absent, as recorded.
        """
        if not (self.shared_ids or always):
            return vector
        fresh, mapping = with_fresh_ids(vector, self.reservations.draw)
        short = [new for new in mapping.values() if len(new) < SHORT_ID]
        self.on_cleanup(_release(self.reservations, short))
        self.log.event(0, f"shared server: {len(mapping)} session ids replaced by fresh ones")
        if short:
            probe = await self.connect()
            uids = [self.uid() for _ in short]
            await probe.send(
                b"".join(remove_request(u, i) for u, i in zip(uids, short, strict=True))
            )
            for uid in uids:
                reply = await self.response(probe)
                self.check_header(reply, uid, Operation.REMOVE)
            await probe.aclose()
        return fresh

    # -- proxies ----------------------------------------------------------------------------

    def absent_upstream(self) -> str:
        """An upstream address where nothing listens, for the whole case."""
        refusing = RefusingAddress()
        self.on_cleanup(refusing.close)
        return refusing.address

    async def upstream(self):
        """A scripted upstream server the runner plays, listening on a fresh address."""
        if self._upstream_factory is None:
            raise Unsupported("proxy cases need --proxy-cmd")
        fake = await self._upstream_factory().start()
        self.on_cleanup(fake.close)
        return fake

    async def reference_upstream(self, sessions: int | None = None) -> str:
        """Start a reference server (in-process) for a proxy to use; returns its address."""
        try:
            instance = await InProcessSetup().start_instance(sessions)
        except TargetUnavailable as error:
            raise Unsupported(str(error)) from None
        self.on_cleanup(instance.stop)
        return instance.address

    async def start_proxy(
        self,
        upstream: str,
        *,
        retry_ms: int = 5000,
        idle_ms: int = 0,
        max_in_flight: int | None = None,
    ) -> str:
        """Start the proxy under test in front of ``upstream``; returns its address."""
        if self.proxy_setup is None:
            raise Unsupported("proxy cases need --proxy-cmd")
        instance = await self.proxy_setup.start(
            upstream, retry_ms=retry_ms, idle_ms=idle_ms, max_in_flight=max_in_flight
        )
        self.instance = instance
        self.on_cleanup(instance.stop)
        return instance.address

    # -- data -------------------------------------------------------------------------------

    @staticmethod
    def new_id(size: int = 24) -> bytes:
        """A session id no other case uses."""
        return b"cf-" + secrets.token_bytes(size - 3)

    @staticmethod
    def new_session(size: int = 48) -> bytes:
        return secrets.token_bytes(size)

    @staticmethod
    def uid() -> int:
        return secrets.randbits(32)

    def outcome(self, name: str) -> None:
        """Record which of the case's declared acceptable outcomes was seen."""
        if name not in self.case.outcomes:
            raise RuntimeError(f"{self.case.id}: outcome {name!r} is not declared")
        self.seen_outcome = name

    def fail(self, detail: str, requirement: str | None = None):
        raise CaseFailure(detail, requirement)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # -- requests ---------------------------------------------------------------------------

    async def response(
        self, probe: Probe, *, timeout: float | None = None, malformed: str = "FRAME-1"
    ) -> Response:
        """The next response; a malformed one fails ``malformed``, a missing one the case."""
        try:
            return await probe.response(self.timeout if timeout is None else timeout)
        except RemoteProtocolError as error:
            self.fail(f"malformed reply: {error}", malformed)
        except ProbeError as error:
            self.fail(f"no reply: {error}")

    async def exchange(
        self,
        probe: Probe,
        request: bytes,
        uid: int,
        operation: Operation,
        *,
        malformed: str = "FRAME-1",
    ) -> Response:
        """Send one request and check its reply's header (RESP-1, FRAME-2)."""
        await probe.send(request)
        reply = await self.response(probe, malformed=malformed)
        earlier = probe.answered_uids
        if reply.request_uid != uid and reply.request_uid in earlier:
            # Either an extra reply to an earlier request (the real one follows) or a wrong uid.
            try:
                following = await probe.response(min(0.2, self.timeout))
            except (ProbeError, RemoteProtocolError):
                following = None
            if following is not None and following.request_uid == uid:
                self.fail(
                    f"an extra reply to an earlier request (uid {reply.request_uid:#010x}) came "
                    f"before the reply to uid {uid:#010x}",
                    "RESP-2",
                )
        self.check_header(reply, uid, operation)
        earlier.add(uid)
        return reply

    def check_header(self, reply: Response, uid: int, operation: Operation) -> None:
        if reply.request_uid != uid:
            self.fail(
                f"reply carries uid {reply.request_uid:#010x}, the request had {uid:#010x}",
                "RESP-1",
            )
        if reply.operation is not operation:
            self.fail(
                f"{operation.name} request answered with operation {reply.operation.name}",
                "RESP-1",
            )
        if reply.proto_level != PROTOCOL_LEVEL:
            self.fail(f"reply proto_level is {reply.proto_level:#010x}", "FRAME-2")

    def expect_status(
        self,
        reply: Response,
        allowed: Iterable[int],
        what: str,
        requirement: str | None = None,
    ) -> int:
        """The reply must be one status byte among ``allowed``; returns it."""
        allowed = {int(a) for a in allowed}
        outcome = interpret_response(reply.operation, reply.payload)
        if outcome.code is None or outcome.code not in allowed:
            names = " or ".join(_status_name(a) for a in sorted(allowed))
            got = (
                _status_name(outcome.code)
                if outcome.code is not None
                else (f"{len(reply.payload)} bytes {reply.payload[:16].hex()}")
            )
            self.fail(f"{what}: expected {names}, got {got}", requirement)
        return outcome.code

    # Shorthands: one request, header checked, reply returned.

    async def add(self, probe, session_id, session, timeout_ms=LONG_TIMEOUT_MS, uid=None):
        uid = self.uid() if uid is None else uid
        request = add_request(uid, session_id, session, timeout_ms)
        return await self.exchange(probe, request, uid, Operation.ADD)

    async def get(self, probe, session_id, uid=None, *, malformed="FRAME-1"):
        uid = self.uid() if uid is None else uid
        return await self.exchange(
            probe, get_request(uid, session_id), uid, Operation.GET, malformed=malformed
        )

    async def remove(self, probe, session_id, uid=None):
        uid = self.uid() if uid is None else uid
        return await self.exchange(probe, remove_request(uid, session_id), uid, Operation.REMOVE)

    async def have(self, probe, session_id, uid=None):
        uid = self.uid() if uid is None else uid
        return await self.exchange(probe, have_request(uid, session_id), uid, Operation.HAVE)

    async def stored(
        self, probe, session_id, session, timeout_ms=LONG_TIMEOUT_MS, requirement=None
    ):
        """ADD that must succeed."""
        reply = await self.add(probe, session_id, session, timeout_ms)
        self.expect_status(reply, [Status.OK], "ADD of a new id", requirement)

    async def present(self, probe, session_id, expected: bool, what: str, requirement=None):
        reply = await self.have(probe, session_id)
        want = Status.OK if expected else Status.NOTOK
        self.expect_status(reply, [want], what, requirement)

    async def expect_closed(self, probe: Probe, what: str, requirement: str | None = None) -> str:
        """The connection must close (end-of-file or reset) with no byte first."""
        try:
            return await probe.expect_close(self.timeout)
        except ProbeError as error:
            got = f" (got {error.got[:32].hex()})" if error.got else ""
            self.fail(f"{what}: {error}{got}", requirement)

    async def expect_silence(self, probe: Probe, seconds: float, what: str, requirement=None):
        try:
            await probe.expect_silence(seconds)
        except ProbeError as error:
            got = f" (got {error.got[:32].hex()})" if error.got else ""
            self.fail(f"{what}: {error}{got}", requirement)

    async def still_served(self, what: str, requirement: str | None = None) -> None:
        """A new connection is accepted and answered (the target survived)."""
        try:
            probe = await self.connect()
        except OSError as error:
            self.fail(f"{what}: cannot connect any more: {error}", requirement)
        reply = await self.have(probe, self.new_id())
        self.expect_status(reply, [Status.NOTOK], what, requirement)


def _release(reservations: IdReservations, ids: list[bytes]):
    async def release() -> None:
        reservations.release(ids)

    return release


def _status_name(code: int) -> str:
    try:
        return f"{Status(code).name} ({code:#04x})"
    except ValueError:
        return f"{code:#04x}"
