"""distcache over TLS with real handshakes: mutual authentication, every refusal a client or a
server must make, the client library (blocking and asyncio) and the allow-list of plain TCP."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import warnings

import pytest
from serverproc import ServerThread
from tlspki import PKI

from distcache.address import parse_address
from distcache.allowlist import AllowList, cidr_argument
from distcache.cache import MemoryStore
from distcache.client import AsyncClient, Client, ConnectionFailed, ConnectionLost, Mode
from distcache.protocol import have_request
from distcache.server import Server, bind_listeners
from distcache.tls import ServerTLS, TLSError, TLSFiles, client_context, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("other"), "other")


@pytest.fixture(scope="module")
def thread():
    loop = ServerThread()
    yield loop
    loop.close()


def start_server(thread: ServerThread, *listen: str, tls=None, allow=None) -> Server:
    async def start() -> Server:
        server = Server(MemoryStore(512))
        sockets = []
        for address in listen:
            sockets += bind_listeners(address, tls=tls, allow=allow)
        await server.start(sockets)
        return server

    return thread.call(start())


@pytest.fixture
def mutual_server(thread, pki):
    server = start_server(thread, "TLS:127.0.0.1:0", tls=ServerTLS(pki.server_files()))
    yield f"TLS:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    thread.stop(server)


def refused(address: str, tls) -> Exception:
    """The error a blocking client gets for one operation: the handshake (ConnectionFailed) or,
    with TLS 1.3 where the server checks the client's certificate after the client finished,
    the first reply (ConnectionLost)."""
    client = Client(address, Mode.TEMPORARY, tls=tls, timeout=5)
    with pytest.raises((ConnectionFailed, ConnectionLost)) as caught:
        client.have(b"anything")
    return caught.value


# -- accepted -------------------------------------------------------------------------------------


def test_mutual_tls_is_accepted_by_the_blocking_client(mutual_server, pki):
    with Client(mutual_server, tls=pki.client_files()) as client:
        assert client.add(b"id-1", b"session over TLS", 60_000)
        assert client.get(b"id-1") == b"session over TLS"
        assert client.remove(b"id-1")
        assert not client.have(b"id-1")


def test_mutual_tls_is_accepted_by_the_async_client_pipelining(mutual_server, pki):
    async def run() -> list:
        async with AsyncClient(mutual_server, tls=pki.client_files()) as client:
            await client.add(b"id-2", b"x" * 30_000, 60_000)  # many frames, many TLS records
            return await asyncio.gather(*(client.get(b"id-2") for _ in range(50)))

    assert asyncio.run(run()) == [b"x" * 30_000] * 50


def test_an_ssl_context_may_be_given_instead_of_files(mutual_server, pki):
    context = client_context(pki.client_files())
    with Client(mutual_server, tls=context) as client:
        assert not client.have(b"nothing")


def test_host_names_are_verified_against_the_certificate(thread, pki):
    server = start_server(thread, "TLS:localhost:0", tls=ServerTLS(pki.server_files()))
    port = server.sockets[0].getsockname()[1]
    try:
        with Client(f"TLS:localhost:{port}", tls=pki.client_files()) as client:
            assert not client.have(b"nothing")
    finally:
        thread.stop(server)


# -- refused --------------------------------------------------------------------------------------


def test_a_client_without_a_certificate_is_refused(mutual_server, pki):
    refused(mutual_server, TLSFiles(ca=pki.ca))


def test_a_client_certificate_from_another_ca_is_refused(mutual_server, other_ca):
    files = TLSFiles(other_ca.client.cert, other_ca.client.key, other_ca.ca)
    error = refused(mutual_server, files)
    # The client itself refuses first: the server's certificate is not from its CA.
    assert "certificate verify failed" in str(error)


def test_a_client_certificate_from_another_ca_is_refused_by_the_server(
    mutual_server, pki, other_ca
):
    # Trusting the right server, presenting a certificate the server's CA did not issue.
    files = TLSFiles(other_ca.client.cert, other_ca.client.key, pki.ca)
    refused(mutual_server, files)


def test_an_expired_client_certificate_is_refused(mutual_server, pki):
    expired = pki.expired("client-expired", "client.example")
    refused(mutual_server, TLSFiles(expired.cert, expired.key, pki.ca))


def test_an_expired_server_certificate_is_refused(thread, pki):
    expired = pki.expired("server-expired", "127.0.0.1")
    server = start_server(
        thread, "TLS:127.0.0.1:0", tls=ServerTLS(TLSFiles(expired.cert, expired.key))
    )
    port = server.sockets[0].getsockname()[1]
    try:
        error = refused(f"TLS:127.0.0.1:{port}", TLSFiles(ca=pki.ca))
        assert "expired" in str(error)
    finally:
        thread.stop(server)


def test_a_wrong_host_name_is_refused(thread, pki):
    wrong = pki.issue("server-elsewhere", "cache.elsewhere.example")
    server = start_server(thread, "TLS:127.0.0.1:0", tls=ServerTLS(TLSFiles(wrong.cert, wrong.key)))
    port = server.sockets[0].getsockname()[1]
    try:
        error = refused(f"TLS:127.0.0.1:{port}", TLSFiles(ca=pki.ca))
        assert "match" in str(error) or "mismatch" in str(error)
    finally:
        thread.stop(server)


def test_a_server_is_not_trusted_without_a_ca_that_issued_it(mutual_server, pki):
    # No -tls-ca: the system trust store, which does not know the throw-away CA.
    files = TLSFiles(pki.client.cert, pki.client.key)
    assert "certificate verify failed" in str(refused(mutual_server, files))


def test_a_plain_client_gets_no_reply_from_a_tls_listener_which_keeps_serving(mutual_server, pki):
    host, port = mutual_server.removeprefix("TLS:").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as plain:
        plain.sendall(have_request(1, b"plain"))
        received = b""
        while chunk := plain.recv(4096):
            received += chunk
    # At most a TLS alert record (content type 21), never a distcache reply.
    assert received == b"" or received[0] == 21
    with Client(mutual_server, tls=pki.client_files()) as client:
        assert not client.have(b"still served")


def test_a_tls_client_to_a_plain_listener_fails_cleanly(thread, pki):
    server = start_server(thread, "IP:127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    try:
        refused(f"TLS:127.0.0.1:{port}", pki.client_files())
        with Client(f"IP:127.0.0.1:{port}") as client:
            assert not client.have(b"still served")
    finally:
        thread.stop(server)


def tls_1_1_only_client(pki) -> ssl.SSLContext:
    """A client offering TLS 1.1 and nothing else. OpenSSL's default security level forbids a
    TLS 1.1 handshake on the client's own side (no acceptable signature algorithm), which would
    make a refusal look like the server's; level 0 lets the client really offer it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = client_context(pki.client_files())
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def test_a_tls_1_1_client_is_able_to_complete_a_handshake(thread, pki):
    # The control for the test below: a server that still accepts TLS 1.1 gets it from this client.
    class OldServerTLS(ServerTLS):
        @staticmethod
        def _build(files):
            context = server_context(files)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            return context

    server = start_server(thread, "TLS:127.0.0.1:0", tls=OldServerTLS(pki.server_files()))
    port = server.sockets[0].getsockname()[1]
    try:
        client = tls_1_1_only_client(pki)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.1"
    except ssl.SSLError as error:
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {error}")
    finally:
        thread.stop(server)


def test_tls_1_1_is_refused(mutual_server, pki):
    # The test above shows this client does get TLS 1.1 from a server that allows it.
    with pytest.raises(ConnectionFailed) as caught:
        Client(mutual_server, tls=tls_1_1_only_client(pki))
    # The server's refusal (an alert, or asyncio closing the connection), not the client giving
    # up before it asked ("no protocols available", "legacy sigalg disallowed").
    reason = str(caught.value)
    assert any(
        sign in reason
        for sign in ("protocol version", "PROTOCOL_VERSION", "(EOF)", "UNEXPECTED_EOF")
    ), reason


# -- files ----------------------------------------------------------------------------------------


def test_unusable_files_are_one_line_errors(pki, other_ca, tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = {
        TLSFiles(str(tmp_path / "missing.crt"), pki.server.key): "cannot read",
        TLSFiles(str(not_pem), pki.server.key): "not a PEM file",
        TLSFiles(pki.server.cert, other_ca.server.key): "does not match",
        TLSFiles(pki.server.cert, pki.server.key, str(not_pem)): "not a PEM file",
        TLSFiles(pki.server.cert, pki.server.key, pki.server.key): "no usable certificate",
        TLSFiles(ca=pki.ca): "needs a certificate and its key",
    }
    for files, reason in cases.items():
        with pytest.raises(TLSError) as caught:
            server_context(files)
        assert reason in str(caught.value) and "\n" not in str(caught.value), files


def test_a_passphrase_protected_key_is_refused_without_prompting(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization

    with open(pki.server.key, "rb") as file:
        key = serialization.load_pem_private_key(file.read(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSError, match="passphrase"):
        server_context(TLSFiles(pki.server.cert, str(encrypted)))


def test_contexts_refuse_protocols_older_than_tls_1_2(pki):
    assert server_context(pki.server_files()).minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context(TLSFiles(ca=pki.ca))
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert server_context(pki.server_files()).verify_mode == ssl.CERT_REQUIRED
    assert server_context(pki.server_files(mutual=False)).verify_mode == ssl.CERT_NONE


def test_a_tls_address_cannot_be_bound_without_certificates():
    with pytest.raises(ValueError, match="needs a TLS certificate"):
        bind_listeners("TLS:127.0.0.1:0")


def test_reload_switches_new_handshakes_and_keeps_the_old_context_on_failure(
    thread, pki, other_ca, tmp_path
):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    tls = ServerTLS(TLSFiles(str(cert), str(key)))
    server = start_server(thread, "TLS:127.0.0.1:0", tls=tls)
    address = f"TLS:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        before = Client(address, tls=TLSFiles(ca=pki.ca))
        assert not before.have(b"x")
        shutil.copy(other_ca.server.cert, cert)
        shutil.copy(other_ca.server.key, key)
        tls.reload()
        with Client(address, tls=TLSFiles(ca=other_ca.ca)) as after:
            assert not after.have(b"x")
        refused(address, TLSFiles(ca=pki.ca))
        assert not before.have(b"x")  # established before the reload: still served
        before.close()
        key.write_text("broken\n")
        with pytest.raises(TLSError):
            tls.reload()
        with Client(address, tls=TLSFiles(ca=other_ca.ca)) as kept:
            assert not kept.have(b"x")
    finally:
        thread.stop(server)


# -- allow-list -----------------------------------------------------------------------------------


def test_allow_list_matching():
    allow = AllowList(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    assert allow.permits("10.1.2.3") and allow.permits("192.0.2.7")
    assert allow.permits("::ffff:10.9.9.9")  # an IPv4 client of an IPv6 socket
    assert allow.permits("2001:db8::1")
    assert not allow.permits("192.0.2.8") and not allow.permits("127.0.0.1")
    assert not allow.permits("") and not allow.permits("local")
    with pytest.raises(ValueError, match="CIDR"):
        cidr_argument("10.0.0.1/8")
    with pytest.raises(ValueError, match="CIDR"):
        cidr_argument("ten")


def test_allow_list_closes_other_clients_at_accept(thread, caplog):
    server = start_server(thread, "IP:127.0.0.1:0", allow=AllowList(["192.0.2.0/24"]))
    port = server.sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(have_request(1, b"id"))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
        assert "refused a connection from 127.0.0.1" in caplog.text
    finally:
        thread.stop(server)
    server = start_server(thread, "IP:127.0.0.1:0", allow=AllowList(["127.0.0.0/8"]))
    port = server.sockets[0].getsockname()[1]
    try:
        with Client(f"IP:127.0.0.1:{port}") as client:
            assert not client.have(b"id")
    finally:
        thread.stop(server)


def test_allow_list_leaves_unix_and_tls_listeners_alone(thread, pki, tmp_path):
    path = tmp_path / "s"
    server = start_server(
        thread,
        f"UNIX:{path}",
        "TLS:127.0.0.1:0",
        tls=ServerTLS(pki.server_files()),
        allow=AllowList(["192.0.2.0/24"]),
    )
    tls_port = next(s.getsockname()[1] for s in server.sockets if s.family == socket.AF_INET)
    try:
        with Client(f"UNIX:{path}") as client:
            assert not client.have(b"id")
        with Client(f"TLS:127.0.0.1:{tls_port}", tls=pki.client_files()) as client:
            assert not client.have(b"id")
    finally:
        thread.stop(server)


def test_tls_addresses_parse_and_print_back():
    for text in ("TLS:127.0.0.1:9001", "TLS:[::1]:9001", "TLS:cache.example:9001", "TLS:9001"):
        address = parse_address(text)
        assert address.tls and address.kind == "tcp" and str(address) == text
    assert parse_address("TLS::9001") == parse_address("TLS:9001")
    assert not parse_address("TLS:9001").can_connect
    assert parse_address("TLS:[::1]:1").family == socket.AF_INET6
    assert parse_address("IP:127.0.0.1:1") != parse_address("TLS:127.0.0.1:1")


def test_ipv6_literals_are_verified_against_the_certificate(thread, pki):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = start_server(thread, "TLS:[::1]:0", tls=ServerTLS(pki.server_files()))
    except OSError as error:
        pytest.skip(f"cannot listen on ::1: {error}")
    port = server.sockets[0].getsockname()[1]
    try:
        with Client(f"TLS:[::1]:{port}", tls=pki.client_files()) as client:
            assert client.add(b"v6", b"over IPv6", 60_000)
    finally:
        thread.stop(server)
