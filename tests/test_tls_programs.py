"""The programs over TLS, as an operator runs them: dc_server with a plain UNIX and a TLS listener,
dc_client forwarding a UNIX socket over TLS (with a dc_test load and a packet capture proving no
session byte crosses in clear), SIGHUP reloads, dc_snoop and ``distcache`` one-shots over TLS, and
the one-line start-up errors."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from capturing import distcache, tcpdump
from proxyproc import dc_client, run_dc_client
from serverproc import dc_server, free_port, run_dc_server, run_program
from tlspki import PKI

from distcache.client import Client, ConnectionFailed, ConnectionLost, Mode
from distcache.tls import TLSFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("other"), "other")


def tls_address() -> str:
    return f"TLS:127.0.0.1:{free_port()}"


def next_line(process: subprocess.Popen, timeout: float = 10.0) -> str:
    """The next line a program writes to its stderr pipe, or a failure after ``timeout``."""
    readable, _, _ = select.select([process.stderr], [], [], timeout)
    assert readable, f"no line on stderr within {timeout} s"
    return process.stderr.readline().decode()


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- start-up errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        ([], "needs a certificate and its key"),
        (["-tls-cert", "/nonexistent/server.crt", "-tls-key", "KEY"], "cannot read the TLS"),
        (["-tls-cert", "CERT", "-tls-key", "OTHER_KEY"], "does not match"),
        (["-tls-cert", "CERT", "-tls-key", "KEY", "-tls-ca", "KEY"], "no usable certificate"),
    ],
)
def test_dc_server_refuses_unusable_tls_settings_before_listening(
    pki, other_ca, tmp_path, flags, reason
):
    files = {"CERT": pki.server.cert, "KEY": pki.server.key, "OTHER_KEY": other_ca.server.key}
    flags = [files.get(flag, flag) for flag in flags]
    unix = tmp_path / "local.sock"
    result = run_dc_server("-listen", f"UNIX:{unix}", "-listen", tls_address(), *flags)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and reason in result.stderr, result.stderr
    assert not unix.exists()  # nothing was bound


def test_tls_flags_without_a_tls_address_are_refused(pki):
    result = run_dc_server("-listen", f"IP:127.0.0.1:{free_port()}", *pki.server_flags())
    assert result.returncode == 1 and "apply to TLS:host:port" in result.stderr
    result = run_dc_client("-listen", "UNIX:/nonexistent/x", "-server", "IP:127.0.0.1:1",
                           *pki.client_flags())  # fmt: skip
    assert result.returncode == 1 and "apply to TLS:host:port" in result.stderr


def test_allow_without_a_plain_tcp_listener_is_refused(tmp_path):
    result = run_dc_server("-listen", f"UNIX:{tmp_path / 's'}", "-allow", "10.0.0.0/8")
    assert result.returncode == 1 and "-allow applies to plain TCP" in result.stderr
    result = run_dc_server("-listen", f"IP:127.0.0.1:{free_port()}", "-allow", "10.0.0.1/8")
    assert result.returncode == 1 and "given an invalid argument" in result.stderr


# -- serving --------------------------------------------------------------------------------------


def test_dc_server_serves_unix_and_mutual_tls_listeners_at_once(pki, tmp_path):
    unix = tmp_path / "local.sock"
    tls = tls_address()
    with dc_server("-listen", f"UNIX:{unix}", *pki.server_flags(), listen=tls) as server:
        # The start-up line names each listener as an operator would dial it, TLS included.
        wait_for(lambda: "serving on" in server.stderr, "no start-up line")
        assert f"serving on {tls}, UNIX:{unix};" in server.stderr, server.stderr
        with Client(tls, tls=pki.client_files()) as remote:
            assert remote.add(b"shared", b"one cache, two listeners", 60_000)
        with Client(f"UNIX:{unix}") as local:
            assert local.get(b"shared") == b"one cache, two listeners"
        with pytest.raises((ConnectionFailed, ConnectionLost)):
            Client(tls, Mode.TEMPORARY, tls=TLSFiles(ca=pki.ca)).have(b"shared")
        result = distcache("get", "--server", tls, "--tls-cert", pki.client.cert,
                           "--tls-key", pki.client.key, "--tls-ca", pki.ca, "shared")  # fmt: skip
        assert result.returncode == 0 and result.stdout == b"one cache, two listeners"
        result = distcache("have", "--server", tls, "--tls-ca", pki.ca, "shared")
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_sighup_reloads_certificates_without_dropping_connections(pki, other_ca, tmp_path):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    tls = tls_address()
    with dc_server("-tls-cert", str(cert), "-tls-key", str(key), "-log-level", "INFO",
                   listen=tls) as server:  # fmt: skip
        established = Client(tls, tls=TLSFiles(ca=pki.ca))
        assert established.add(b"kept", b"across reloads", 60_000)
        shutil.copy(other_ca.server.cert, cert)
        shutil.copy(other_ca.server.key, key)
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in server.stderr, "no reload was logged")

        with Client(tls, tls=TLSFiles(ca=other_ca.ca)) as renewed:
            assert renewed.get(b"kept") == b"across reloads"
        assert established.get(b"kept") == b"across reloads"  # same connection, not dropped

        key.write_text("not a key\n")
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in server.stderr, "no failed reload was logged")
        failures = [line for line in server.stderr.splitlines() if "reload failed" in line]
        assert len(failures) == 1
        with Client(tls, tls=TLSFiles(ca=other_ca.ca)) as still:
            assert still.have(b"kept")  # the previous certificates stay in use
        assert established.have(b"kept")
        established.close()
        assert server.process.poll() is None


def session_marker() -> bytes:
    """A session whose bytes cannot appear in a capture by chance."""
    return b"SESSION-SECRET-" + os.urandom(8).hex().encode() + b"-MASTER-KEY" * 20


def captured_payload(path: str) -> bytes:
    import dpkt

    data = b""
    with open(path, "rb") as capture:
        for _, frame in dpkt.pcap.Reader(capture):
            data += bytes(dpkt.ethernet.Ethernet(frame).data.data.data)
    return data


def run_forwarded(pki: PKI | None, tmp_path, capture: str) -> bytes:
    """Apache's view: a UNIX socket, dc_client forwarding it to dc_server (over TLS with a pki),
    a known session and a legacy-style dc_test load through it, captured between the two."""
    port = free_port()
    secure = pki is not None
    upstream = f"{'TLS' if secure else 'IP'}:127.0.0.1:{port}"
    server_flags = pki.server_flags() if secure else []
    client_flags = pki.client_flags() if secure else []
    secret = session_marker()
    with tcpdump(capture, port), dc_server(*server_flags, listen=upstream):
        path = str(tmp_path / f"scache-{port}")
        with dc_client(path, upstream, *client_flags) as proxy:
            with Client(f"UNIX:{path}") as local:
                wait_for(lambda: local.have(b"warm-up") is False, "dc_client never forwarded")
                assert local.add(b"apache-session-id", secret, 60_000)
                assert local.get(b"apache-session-id") == secret
            load = run_program("dc_test", "-connect", f"UNIX:{path}", "-sessions", "10",
                               "-ops", "300", "-persistent", timeout=120)  # fmt: skip
            assert load.returncode == 0, load.stderr
            assert "all tests complete" in load.stderr
            assert proxy.alive
        time.sleep(0.5)  # let tcpdump write the last segments
    return secret


def test_dc_client_forwards_a_unix_socket_over_tls_and_nothing_crosses_in_clear(pki, tmp_path):
    capture = str(tmp_path / "tls.pcap")
    secret = run_forwarded(pki, tmp_path, capture)
    payload = captured_payload(capture)
    assert len(payload) > 10_000, "the capture holds the session traffic"
    assert b"\x17\x03\x03" in payload  # TLS application-data records
    assert secret[:32] not in payload and b"apache-session-id" not in payload


def test_the_capture_check_sees_sessions_of_plain_tcp(tmp_path):
    # The same run without TLS: the check above would have failed.
    capture = str(tmp_path / "plain.pcap")
    secret = run_forwarded(None, tmp_path, capture)
    payload = captured_payload(capture)
    assert secret[:32] in payload and b"apache-session-id" in payload


def test_dc_test_and_dc_snoop_speak_tls_on_both_sides(pki, tmp_path):
    tls = tls_address()
    snoop = tls_address()
    log = tmp_path / "snoop.log"
    with dc_server(*pki.server_flags(), listen=tls):
        direct = run_program("dc_test", "-connect", tls, "-sessions", "5", "-ops", "100",
                             "-persistent", *pki.client_flags(), timeout=120)  # fmt: skip
        assert direct.returncode == 0, direct.stderr
        # One certificate serves both roles: server to the clients, client to the server.
        argv = ["-listen", snoop, "-server", tls, "-log", str(log), *pki.server_flags()]
        process = subprocess.Popen([sys.executable, "-m", "distcache.cli.dc_snoop", *argv],
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            snooped = None
            deadline = time.monotonic() + 10
            while snooped is None:
                try:
                    with Client(snoop, tls=pki.client_files()) as client:
                        snooped = client.add(b"seen", b"by the snooper", 60_000)
                except ConnectionFailed:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.05)
            assert snooped
            startup = process.stderr.readline().decode()
            assert f"relaying {snoop} to {tls}" in startup, startup
            wait_for(lambda: "ADD" in log.read_text(), "dc_snoop logged nothing")
            assert b"seen".hex() in log.read_text() or "seen" in log.read_text()
        finally:
            process.terminate()
            process.wait(10)
            process.stderr.close()


def test_dc_snoop_reloads_its_files_on_sighup_and_keeps_relaying(pki, other_ca, tmp_path):
    cert, key = tmp_path / "snoop.crt", tmp_path / "snoop.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    upstream, snoop = tls_address(), tls_address()
    with dc_server(*pki.server_flags(mutual=False), listen=upstream):
        argv = ["-listen", snoop, "-server", upstream, "-log", str(tmp_path / "snoop.log"),
                "-tls-cert", str(cert), "-tls-key", str(key), "-tls-ca", pki.ca]  # fmt: skip
        process = subprocess.Popen([sys.executable, "-m", "distcache.cli.dc_snoop", *argv],
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            assert "relaying" in next_line(process)
            established = Client(snoop, tls=pki.client_files())
            assert established.add(b"kept", b"across reloads", 60_000)
            shutil.copy(other_ca.server.cert, cert)
            shutil.copy(other_ca.server.key, key)
            process.send_signal(signal.SIGHUP)
            assert "reloaded" in next_line(process)
            renewed = TLSFiles(pki.client.cert, pki.client.key, other_ca.ca)
            with Client(snoop, tls=renewed) as client:  # the new certificate is presented
                assert client.get(b"kept") == b"across reloads"
            assert established.get(b"kept") == b"across reloads"  # not dropped
            established.close()
            assert process.poll() is None
        finally:
            process.terminate()
            process.wait(10)
            process.stderr.close()


def test_dc_client_reloads_its_files_on_sighup_and_keeps_forwarding(pki, tmp_path):
    cert, key = tmp_path / "web.crt", tmp_path / "web.key"
    shutil.copy(pki.client.cert, cert)
    shutil.copy(pki.client.key, key)
    upstream = tls_address()
    with dc_server(*pki.server_flags(), listen=upstream):
        path = str(tmp_path / "scache")
        flags = ["-tls-cert", str(cert), "-tls-key", str(key), "-tls-ca", pki.ca]
        with dc_client(path, upstream, *flags) as proxy, Client(f"UNIX:{path}") as local:
            assert local.add(b"before", b"reload", 60_000)
            renewed = pki.issue("client-renewed", "client.example")
            shutil.copy(renewed.cert, cert)
            shutil.copy(renewed.key, key)
            proxy.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in proxy.stderr, "dc_client logged no reload")
            key.write_text("broken\n")
            proxy.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload failed" in proxy.stderr, "dc_client logged no failure")
            assert local.get(b"before") == b"reload"
            assert proxy.alive


def test_dc_client_can_listen_on_tls_with_client_certificates(pki, tmp_path):
    listen = tls_address()
    with dc_server(listen=f"IP:127.0.0.1:{free_port()}") as server:
        argv = [sys.executable, "-m", "distcache.cli.dc_client", "-listen", listen,
                "-server", server.listen, *pki.server_flags()]  # fmt: skip
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with Client(listen, tls=pki.client_files()) as client:
                        assert client.add(b"via", b"a TLS proxy", 60_000)
                    break
                except ConnectionFailed:
                    assert time.monotonic() < deadline and process.poll() is None
                    time.sleep(0.05)
            with pytest.raises((ConnectionFailed, ConnectionLost)):
                Client(listen, Mode.TEMPORARY, tls=TLSFiles(ca=pki.ca)).have(b"via")
        finally:
            process.terminate()
            process.wait(10)
            process.stderr.close()


def test_workers_serve_tls_and_all_reload_on_sighup(pki, other_ca, tmp_path):
    """dc_server -workers 2 on a TLS listener: each worker's own socket keeps the TLS, and the
    supervisor passes SIGHUP on, so every worker serves the renewed certificate."""
    from test_workers import OWNERS, children

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    tls = tls_address()
    with dc_server("-tls-cert", str(cert), "-tls-key", str(key), "-log-level", "INFO",
                   "-workers", "2", listen=tls) as server:  # fmt: skip
        wait_for(lambda: len(children(server.pid)) == 2 + OWNERS, "the workers did not start")
        processes = children(server.pid)
        with Client(tls, tls=TLSFiles(ca=pki.ca)) as first:
            assert first.add(b"tls-workers", b"one cache", 60_000)
        for _ in range(10):  # spread over both workers' sockets
            with Client(tls, tls=TLSFiles(ca=pki.ca)) as other:
                assert other.get(b"tls-workers") == b"one cache"
        shutil.copy(other_ca.server.cert, cert)
        shutil.copy(other_ca.server.key, key)
        server.signal(signal.SIGHUP)
        reloading = 2 + OWNERS
        wait_for(lambda: server.stderr.count("reloaded") >= reloading, "not every one reloaded")
        assert "received SIGHUP: passed on to the workers" in server.stderr
        for _ in range(10):
            with Client(tls, tls=TLSFiles(ca=other_ca.ca)) as renewed:
                assert renewed.get(b"tls-workers") == b"one cache"
        assert children(server.pid) == processes  # reloaded, not restarted


def test_the_dc_client_guides_unit_forwards_over_tls(pki, tmp_path):
    """The proxy unit of the dc_client guide, with this host's files, port and user."""
    from pathlib import Path

    guide = (Path(__file__).parent.parent / "docs" / "guide" / "dc_client.rst").read_text()
    unit = guide.split("# /etc/systemd/system/distcache-proxy.service", 1)[1]
    exec_start = re.search(r"ExecStart=\S+((?:.*\\\n)*.*)", unit).group(1)
    line = exec_start.replace("\\\n", " ")
    assert "-server TLS:" in line and "-tls-ca" in line
    upstream = tls_address()
    files = {"web1.crt": pki.client.cert, "web1.key": pki.client.key, "ca.pem": pki.ca}
    for name, path in files.items():
        line = line.replace(f"/etc/distcache/{name}", path)
    line = line.replace("/run/distcache-proxy", str(tmp_path))
    line = line.replace("cache.example.net:9001", upstream.replace("127.0.0.1", "localhost")[4:])
    line = line.replace("127.0.0.1:9401", f"127.0.0.1:{free_port()}")
    user = "nobody" if os.geteuid() == 0 else None
    line = line.replace("-user distcache", f"-user {user}" if user else "")
    line = line.replace("-sockowner distcache", f"-sockowner {user}" if user else "")
    with dc_server(*pki.server_flags(), listen=upstream):
        argv = [sys.executable, "-m", "distcache.cli.dc_client", *line.split()]
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            assert "forwarding to TLS:localhost:" in next_line(process)
            with Client(f"UNIX:{tmp_path / 'scache'}") as apache:
                wait_for(lambda: apache.have(b"warm-up") is False, "no TLS upstream")
                assert apache.add(b"through", b"the unit", 60_000)
            with Client(upstream, tls=pki.client_files()) as direct:
                assert direct.get(b"through") == b"the unit"
        finally:
            process.terminate()
            process.wait(10)
            process.stderr.close()
