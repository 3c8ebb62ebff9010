"""Requirements about what a program does, checked against that program where no other test did:
address forms (ADDR-1 to ADDR-6), the default capacity (CACHE-1), live sockets (SRV-7), the
privilege drop (SEC-3), session data kept out of logs (SEC-4), unusable TLS settings of the proxy
(TLS-7) and the allow-list (TLS-9). Each test runs the real program as a subprocess and fails if
the program breaks the requirement. conformance/coverage.toml's [programs] table maps every such
requirement to the tests that check it (tests/test_coverage_matrix.py keeps the map complete).
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time

import pytest
from proxyproc import dc_client, run_dc_client
from serverproc import (
    START_TIMEOUT,
    DcServer,
    ask,
    connect_to,
    dc_server,
    free_port,
    run_dc_server,
    run_program,
)
from tlspki import PKI

from distcache.conformance.cases._frames import frame
from distcache.protocol import add_request, get_request, have_request
from distcache.wire import Complete, Operation, Status

OK = bytes([Status.OK])
NOTOK = bytes([Status.NOTOK])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _serving(server: DcServer, where) -> socket.socket:
    """A connection to ``where`` (a connect_to address) once the server accepts there."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        assert server.process.poll() is None, server.stderr
        try:
            return where()
        except OSError:
            assert time.monotonic() < deadline, server.stderr
            time.sleep(0.02)


# -- ADDR-1, ADDR-2, ADDR-6: the forms a program accepts and refuses ---------------------------


@pytest.mark.parametrize(
    ("form", "host"),
    [
        ("IP:{port}", "127.0.0.1"),
        ("IPv4:{port}", "127.0.0.1"),
        ("IP::{port}", "127.0.0.1"),
        ("IP:127.0.0.1:{port}", "127.0.0.1"),
        ("IPv4:127.0.0.1:{port}", "127.0.0.1"),
        ("IP:localhost:{port}", "127.0.0.1"),
        ("UNIX:{path}", None),
        # ADDR-6 extensions of the reference programs
        ("IP:[::1]:{port}", "::1"),
        ("127.0.0.1:{port}", "127.0.0.1"),
    ],
)
def test_dc_server_listens_on_every_address_form(tmp_path, form, host):
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port, path = free_port(), str(tmp_path / "s")
    address = form.format(port=port, path=path)
    server = DcServer(["-listen", address], listen=None, wait=False)
    try:
        if host is None:
            sock = _serving(server, lambda: connect_to(f"UNIX:{path}"))
        else:
            sock = _serving(server, lambda: socket.create_connection((host, port), timeout=5))
        with sock:
            assert ask(sock, have_request(1, b"x")) == NOTOK
    finally:
        server.stop()


#: Malformed (ADDR-1), bad ports (ADDR-2), mistyped prefixes and unbracketed IPv6 (ADDR-6).
MALFORMED = [
    "ip:127.0.0.1:9001",
    "TCP:9001",
    "Ip:9001",
    "IP:127.0.0.1:9001x",
    "IP:127.0.0.1:65536",
    "IP:-1",
    "IP:0x50",
    "IP:127.0.0.1:",
    "IP:127.0.0.1:80:1",
    "IP:9001 ",
    "IP:::1:80",
    "FD:-1",
]


@pytest.mark.parametrize("address", MALFORMED)
def test_programs_refuse_malformed_addresses(address, tmp_path):
    server = run_dc_server("-listen", address)
    assert server.returncode == 1 and "bad address" in server.stderr, server.stderr
    proxy = run_dc_client("-listen", f"UNIX:{tmp_path / 'p'}", "-server", address)
    assert proxy.returncode == 1 and address in proxy.stderr, proxy.stderr
    load = run_program("dc_test", "-connect", address)
    assert load.returncode != 0 and "Traceback" not in load.stderr, load.stderr


# -- ADDR-3: listen-only addresses where a connection is needed --------------------------------


@pytest.mark.parametrize("address", ["IP:9001", "IPv4:9001", "IP::9001"])
def test_a_listen_only_address_is_refused_where_a_connection_is_needed(address, tmp_path):
    proxy = run_dc_client("-listen", f"UNIX:{tmp_path / 'p'}", "-server", address)
    assert proxy.returncode == 1 and "listen-only" in proxy.stderr, proxy.stderr
    assert not (tmp_path / "p").exists()  # refused before listening
    load = run_program("dc_test", "-connect", address)
    assert load.returncode != 0 and "listen-only" in load.stderr, load.stderr


# -- ADDR-4: an inherited listening socket ------------------------------------------------------


def test_dc_server_serves_an_inherited_listening_socket():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    argv = [sys.executable, "-m", "distcache.cli.dc_server", "-listen", f"FD:{fd}"]
    process = subprocess.Popen(argv, pass_fds=[fd], stderr=subprocess.PIPE)
    listener.close()  # the server holds the only copy now
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                try:
                    assert ask(sock, have_request(7, b"x")) == NOTOK
                    break
                except OSError:  # accepted by the kernel before the server took it up
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(START_TIMEOUT) == 0


def test_an_fd_that_is_not_a_listening_socket_is_refused(tmp_path):
    with open(tmp_path / "file", "w") as file:
        argv = [sys.executable, "-m", "distcache.cli.dc_server", "-listen", f"FD:{file.fileno()}"]
        done = subprocess.run(
            argv, pass_fds=[file.fileno()], capture_output=True, text=True, timeout=START_TIMEOUT
        )
    assert done.returncode == 1 and "not an inherited listening socket" in done.stderr


# -- ADDR-5: over-long UNIX paths ---------------------------------------------------------------


def test_an_over_long_unix_path_is_refused_not_truncated(tmp_path):
    path = tmp_path / ("x" * 120)
    server = run_dc_server("-listen", f"UNIX:{path}")
    assert server.returncode == 1 and "the limit is" in server.stderr, server.stderr
    proxy = run_dc_client("-listen", f"UNIX:{path}", "-server", "IP:127.0.0.1:1")
    assert proxy.returncode == 1 and "the limit is" in proxy.stderr, proxy.stderr
    assert list(tmp_path.iterdir()) == []  # no socket under a shortened name either


# -- CACHE-1: the default capacity and the whole range ------------------------------------------


def test_the_capacity_defaults_to_512_sessions():
    """512 sessions fit; the 513th ADD evicts the 17 expiring soonest (512 // 30, CACHE-2)."""
    with dc_server() as server, server.connect() as sock:
        for n in range(513):
            assert ask(sock, add_request(n, b"id%d" % n, b"x", 100_000 + n)) == OK
        present = [ask(sock, have_request(n, b"id%d" % n)) == OK for n in range(513)]
    assert present == [False] * 17 + [True] * 496


@pytest.mark.parametrize("sessions", ["64", "60000"])
def test_the_ends_of_the_capacity_range_are_taken(sessions):
    with dc_server("-sessions", sessions) as server, server.connect() as sock:
        assert ask(sock, add_request(1, b"id", b"x", 60_000)) == OK
        assert f"({sessions} sessions)" in server.stderr


# -- SRV-7: a live server's socket is not replaced ---------------------------------------------


def test_a_live_servers_unix_socket_is_not_replaced(tmp_path):
    path = tmp_path / "live.sock"
    with dc_server(listen=f"UNIX:{path}") as first:
        second = run_dc_server("-listen", f"UNIX:{path}")
        assert second.returncode == 1 and "can't listen" in second.stderr, second.stderr
        with first.connect() as sock:
            assert ask(sock, have_request(1, b"x")) == NOTOK  # still the first one's


# -- SEC-3: the privilege drop ------------------------------------------------------------------


def _status_ids(pid: int) -> dict[str, list[int]]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(v) for v in value.split()]
    return fields


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_user_sets_the_users_ids_and_only_its_groups():
    nobody = pwd.getpwnam("nobody")
    with dc_server("-user", "nobody") as server, server.connect() as sock:
        assert ask(sock, have_request(1, b"x")) == NOTOK  # serving, so the drop is done
        ids = _status_ids(server.pid)
    assert set(ids["Uid"]) == {nobody.pw_uid} and set(ids["Gid"]) == {nobody.pw_gid}
    assert set(ids["Groups"]) <= set(os.getgrouplist("nobody", nobody.pw_gid))


def test_a_user_that_cannot_be_taken_stops_the_start():
    result = run_dc_server("-listen", f"IP:127.0.0.1:{free_port()}", "-user", "no-such-user-x")
    assert result.returncode == 1 and "no-such-user-x" in result.stderr, result.stderr
    if os.geteuid() != 0:  # another user than ourselves: not allowed, so no start either
        other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != os.geteuid())
        result = run_dc_server("-listen", f"IP:127.0.0.1:{free_port()}", "-user", other)
        assert result.returncode == 1, result.stderr


# -- SEC-4: no session data in the logs of servers and proxies ---------------------------------

SECRET = b"master-secret-7f3a9c" * 8


def _secret_traffic(sock: socket.socket, sid: bytes) -> None:
    assert ask(sock, add_request(1, sid, SECRET, 60_000)) == OK
    assert ask(sock, get_request(2, sid)) == SECRET
    # A message broken after a frame full of secret: the error is logged, the bytes must not be.
    sock.sendall(
        frame(Operation.ADD, SECRET * 12 + bytes(128), uid=3, complete=Complete.MORE)
        + frame(Operation.GET, SECRET, uid=3)
    )
    sock.settimeout(5)
    while sock.recv(4096):
        pass


def _leaked(text: str) -> bool:
    return "master-secret" in text or SECRET.hex()[:24] in text


def test_servers_and_proxies_keep_session_data_out_of_their_logs(tmp_path):
    with dc_server("-log-level", "DEBUG") as server:
        with server.connect() as sock:
            _secret_traffic(sock, b"direct")
        path = str(tmp_path / "proxy.sock")
        with dc_client(path, server.listen, "-log-level", "DEBUG") as proxy:
            with proxy.connect() as sock:
                _secret_traffic(sock, b"proxied")
            proxy_log = proxy.stderr
        server.stop()
        server_log = server.stderr
    assert "protocol error" in server_log, server_log  # the broken message was logged
    assert not _leaked(server_log), server_log
    assert not _leaked(proxy_log), proxy_log


# -- TLS-7: a proxy with unusable TLS settings does not start ----------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def test_dc_client_refuses_unusable_tls_settings_before_listening(pki, tmp_path):
    unix = tmp_path / "local.sock"
    upstream = f"TLS:127.0.0.1:{free_port()}"
    for flags, reason in (
        (["-tls-ca", str(tmp_path / "missing.pem")], "cannot read"),
        (["-tls-cert", pki.client.cert, "-tls-key", pki.server.key, "-tls-ca", pki.ca], "match"),
    ):
        result = run_dc_client("-listen", f"UNIX:{unix}", "-server", upstream, *flags)
        assert result.returncode == 1, result.stderr
        assert len(result.stderr.splitlines()) == 1 and reason in result.stderr, result.stderr
        assert not unix.exists()


# -- TLS-9: the allow-list ----------------------------------------------------------------------


def test_the_allow_list_closes_other_networks_at_accept():
    with dc_server("-allow", "10.0.0.0/8") as server, server.connect() as sock:
        try:
            sock.sendall(have_request(1, b"x"))
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed, nothing answered
    with dc_server("-allow", "127.0.0.0/8") as server, server.connect() as sock:
        assert ask(sock, have_request(1, b"x")) == NOTOK
