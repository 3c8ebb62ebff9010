"""The TLS profile: distcache inside TLS, and every connection a TLS server must refuse.

These cases need a ``TLS:`` target (``distcache conformance --profile tls`` starts the reference
server with a throw-away CA; a running target needs ``--tls-ca`` and, when it requires client
certificates, ``--tls-cert``/``--tls-key``). Against a plain target they are UNSUPPORTED. The
core profile runs over TLS unchanged whenever the target is a ``TLS:`` address.

A refusal is seen either as a failed handshake or, with TLS 1.3 (where the server checks the
client's certificate after the client has finished its side of the handshake), as a connection
closed before the first request is answered; both are accepted, any reply is a failure.
"""

from __future__ import annotations

import ssl
import warnings

from ...address import parse_address
from ...netio import ConnectError
from ...protocol import have_request
from ...tls import TLSFiles, client_context
from ...wire import Operation, Status
from ..probe import ProbeError
from ..registry import Unsupported, case

#: First byte of a TLS alert record.
TLS_ALERT = 21
#: When a TLS case cannot run (what ``--list`` shows beyond "not a TLS: target").
NEEDS_CLIENT_CERTIFICATES = (
    "on a target that does not require client certificates (give --tls-cert and --tls-key, "
    "or {tls_ca} in --server-cmd)"
)
NEEDS_TARGET_CA = "unless the runner starts the target and made its CA (--server-cmd or no target)"


def _require_tls(t) -> TLSFiles:
    if not parse_address(t.address).tls or t.tls is None:
        raise Unsupported("needs a TLS: target (--profile tls, or TLS:host:port with --tls-ca)")
    return t.tls


def _require_client_certificates(t) -> TLSFiles:
    files = _require_tls(t)
    if not files.cert:
        raise Unsupported(
            "needs a target that requires client certificates (give --tls-cert and --tls-key)"
        )
    return files


def _plain_address(t) -> str:
    """The target's TLS listener as a plain TCP address (same host and port)."""
    return str(parse_address(t.address.replace("TLS:", "IP:", 1)))


async def _expect_refused(t, tls, what: str, requirement: str) -> None:
    """Connect under ``tls`` and send a HAVE: the target must refuse before answering it."""
    try:
        probe = await t.connect(t.address, tls=tls)
    except (ConnectError, OSError):
        return  # the handshake failed: refused
    uid = t.uid()
    await probe.send(have_request(uid, t.new_id()))
    try:
        reply = await probe.response(t.timeout)
    except ProbeError:
        return  # closed (or reset) without a reply: refused after the handshake
    except Exception:
        t.fail(f"{what}: the target sent bytes instead of refusing", requirement)
    t.fail(f"{what}: the request was answered ({reply.operation.name})", requirement)


def _refusal_case(*, id: str, title: str, what: str, client, unsupported_when=()):
    """A case connecting as a client the target must refuse (``client(t)`` gives its TLS files
    or context), then checking that the target still serves others (TLS-3)."""
    requirement = id.partition("/")[0]

    @case(
        id=id,
        requirements=[requirement, "TLS-3"],
        profile="tls",
        title=title,
        unsupported_when=unsupported_when,
    )
    async def run(t):
        await _expect_refused(t, client(t), what, requirement)
        await t.still_served(f"after refusing {what}", "TLS-3")

    return run


@case(
    id="TLS-1/operations-inside-tls",
    requirements=["TLS-1", "TLS-2"],
    profile="tls",
    title="ADD, GET, HAVE and REMOVE over TLS 1.2 or later, framing unchanged",
)
async def operations_inside_tls(t):
    _require_tls(t)
    probe = await t.connect()
    version = probe.tls_version
    if version not in ("TLSv1.2", "TLSv1.3"):
        t.fail(f"negotiated {version}, expected TLS 1.2 or later", "TLS-2")
    sid, session = t.new_id(), t.new_session(20_000)  # many frames, many TLS records
    # The first reply read inside TLS: bytes that are not its frames break TLS-1 itself.
    reply = await t.get(probe, sid, malformed="TLS-1")
    t.expect_status(reply, [Status.NOTOK], "GET of an unknown id over TLS", "TLS-1")
    await t.stored(probe, sid, session)
    reply = await t.get(probe, sid, malformed="TLS-1")
    if reply.payload != session:
        t.fail("GET over TLS returned other bytes than were added", "TLS-1")
    await t.present(probe, sid, True, "HAVE of a stored id over TLS", "TLS-1")
    reply = await t.remove(probe, sid)
    t.expect_status(reply, [Status.OK], "REMOVE over TLS", "TLS-1")


def _tls_1_1_client(t):
    context = client_context(_require_tls(t))
    try:
        with warnings.catch_warnings():  # offering old versions is the point of this case
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this side offer it at all
    except (ValueError, ssl.SSLError) as error:
        raise Unsupported(f"this Python/OpenSSL cannot offer TLS 1.1: {error}") from None
    return context


_refusal_case(
    id="TLS-2/old-protocol-refused",
    title="a client offering only TLS 1.1 is refused",
    what="a TLS 1.1 client",
    client=_tls_1_1_client,
    unsupported_when=("where this Python/OpenSSL cannot offer TLS 1.1",),
)

_refusal_case(
    id="TLS-4/no-client-certificate-refused",
    title="a client presenting no certificate is refused when certificates are required",
    what="a client without a certificate",
    client=lambda t: TLSFiles(ca=_require_client_certificates(t).ca),
    unsupported_when=(NEEDS_CLIENT_CERTIFICATES,),
)


def _stranger_client(t) -> TLSFiles:
    files = _require_client_certificates(t)
    stranger = _stranger(t)
    return TLSFiles(stranger.cert, stranger.key, files.ca)


_refusal_case(
    id="TLS-5/untrusted-certificate-refused",
    title="a client certificate from a CA the server does not trust is refused",
    what="a certificate from an untrusted CA",
    client=_stranger_client,
    unsupported_when=(NEEDS_CLIENT_CERTIFICATES,),
)


def _expired_client(t) -> TLSFiles:
    files = _require_client_certificates(t)
    pki = t.instance.pki
    if pki is None:
        raise Unsupported("needs the target's CA key: a target the runner starts (--server-cmd)")
    return TLSFiles(pki.expired.cert, pki.expired.key, files.ca)


_refusal_case(
    id="TLS-5/expired-certificate-refused",
    title="an expired client certificate from the trusted CA is refused",
    what="an expired certificate",
    client=_expired_client,
    unsupported_when=(NEEDS_CLIENT_CERTIFICATES, NEEDS_TARGET_CA),
)


@case(
    id="TLS-3/plain-client-refused",
    requirements=["TLS-3"],
    profile="tls",
    title="a plain-TCP client of a TLS listener gets no distcache reply; the server keeps serving",
)
async def plain_client_refused(t):
    _require_tls(t)
    probe = await t.connect(_plain_address(t))
    await probe.send(have_request(t.uid(), t.new_id()))
    data, outcome = await probe.drain_for(t.timeout)
    if data and data[0] != TLS_ALERT:
        t.fail(f"the TLS listener answered plain bytes with {data[:16].hex()}", "TLS-3")
    if outcome is None:
        t.fail("the TLS listener kept a plain-TCP connection open", "TLS-3")
    await t.still_served("after a plain-TCP client", "TLS-3")


@case(
    id="TLS-3/refusal-leaves-others-served",
    requirements=["TLS-3"],
    profile="tls",
    title="a refused handshake does not disturb a connection already being served",
)
async def refusal_leaves_others(t):
    _require_tls(t)
    good = await t.connect()
    sid = t.new_id()
    await t.stored(good, sid, b"kept across a refusal")
    plain = await t.connect(_plain_address(t))
    await plain.send(b"\x16\x03\x01\x00\x05garbage-handshake")
    await plain.drain_for(min(t.timeout, 0.5))
    reply = await t.get(good, sid)
    if reply.payload != b"kept across a refusal":
        t.fail("the established TLS connection lost its session after a refusal", "TLS-3")
    reply = await t.have(good, sid)
    t.check_header(reply, reply.request_uid, Operation.HAVE)


def _stranger(t):
    from ..pki import RunPKI

    pki = t.instance.pki
    if pki is None:
        try:
            pki = RunPKI()
        except ImportError:
            raise Unsupported("needs trustme to make a stranger certificate") from None

        async def remove() -> None:
            pki.close()

        t.on_cleanup(remove)
    return pki.stranger
