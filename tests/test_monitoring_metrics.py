"""-metrics: the counters read over HTTP after known traffic against real dc_server and dc_client
processes, with exact values."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from proxyproc import dc_client
from serverproc import ask, dc_server, free_port

from distcache.protocol import (
    add_request,
    get_request,
    have_request,
    remove_request,
)
from distcache.wire import Status


def scrape(address: str) -> dict[tuple[str, frozenset], float]:
    """Every sample served at ``http://address/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


OK, NOTOK = bytes([Status.OK]), bytes([Status.NOTOK])


def test_server_metrics_count_known_traffic_exactly():
    metrics = f"127.0.0.1:{free_port()}"
    with dc_server("-sessions", "64", "-metrics", metrics) as server:
        sock = server.connect()
        uid = iter(range(1, 1000))
        for n in range(65):  # the 65th evicts the two stored first (64 // 30)
            assert ask(sock, add_request(next(uid), b"id%02d" % n, b"x" * 10, 60_000)) == OK
        assert ask(sock, add_request(next(uid), b"id64", b"y", 60_000)) == bytes(
            [Status.ADD_MATCHING_SESSION]
        )
        assert ask(sock, add_request(next(uid), b"", b"x", 1000)) == bytes([Status.ADD_ID_RANGE])
        assert ask(sock, add_request(next(uid), b"t", b"x", 604_800_001)) == bytes(
            [Status.ADD_TIMEOUT_RANGE]
        )
        assert ask(sock, add_request(next(uid), b"exp", b"x", 0)) == OK
        time.sleep(0.05)  # "exp" is gone 1 ms after it was added
        assert ask(sock, get_request(next(uid), b"id10")) == b"x" * 10
        assert ask(sock, get_request(next(uid), b"id00")) == NOTOK  # evicted
        assert ask(sock, get_request(next(uid), b"exp")) == NOTOK  # expired
        assert ask(sock, have_request(next(uid), b"id20")) == OK
        assert ask(sock, have_request(next(uid), b"nope")) == NOTOK
        assert ask(sock, remove_request(next(uid), b"id30")) == OK
        assert ask(sock, remove_request(next(uid), b"id30")) == NOTOK
        with server.connect() as bad:
            bad.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert bad.recv(1) == b""
        wait_until(lambda: value(scrape(metrics), "distcache_current_connections") == 1)
        samples = scrape(metrics)
        sock.close()

    commands = {
        ("add", "stored"): 66,
        ("add", "add_matching_session"): 1,
        ("add", "add_id_range"): 1,
        ("add", "add_timeout_range"): 1,
        ("add", "add_corrupt"): 0,
        ("add", "add_data_range"): 0,
        ("add", "unavailable"): 0,
        ("get", "hit"): 1,
        ("get", "miss"): 2,
        ("have", "hit"): 1,
        ("have", "miss"): 1,
        ("remove", "hit"): 1,
        ("remove", "miss"): 1,
    }
    for (command, status), count in commands.items():
        assert value(samples, "distcache_commands_total", command=command, status=status) == count
    assert value(samples, "distcache_evictions_total") == 2
    assert value(samples, "distcache_expirations_total") == 1
    assert value(samples, "distcache_current_sessions") == 62  # 65 - 2 evicted - 1 removed
    assert value(samples, "distcache_current_bytes") == 62 * (4 + 10)
    assert value(samples, "distcache_limit_sessions") == 64
    # The start-up probe of the test helper, the traffic, the garbage.
    assert value(samples, "distcache_connections_total") == 3
    assert value(samples, "distcache_rejected_connections_total") == 0
    assert value(samples, "distcache_protocol_errors_total", reason="bad_version") == 1
    assert value(samples, "distcache_max_connections") == 1024
    assert value(
        samples, "distcache_info", program="dc_server", version=_version(), engine="memory:"
    )
    assert value(samples, "process_resident_memory_bytes") > 0


def _version() -> str:
    from distcache import __version__

    return __version__


def test_connections_refused_at_the_cap_are_counted():
    metrics = f"127.0.0.1:{free_port()}"
    # At -maxconns an idle connection would make room (ROBUST-5); a peer's own limit refuses.
    with dc_server("-maxconns", "8", "-maxperpeer", "1", "-metrics", metrics) as server:
        # The start-up probe of the test helper must be gone before the one slot is taken.
        wait_until(lambda: value(scrape(metrics), "distcache_current_connections") == 0)
        held = server.connect()
        assert ask(held, have_request(1, b"x")) == NOTOK
        for _ in range(3):
            with server.connect() as refused:
                assert refused.recv(1) == b""
        samples = scrape(metrics)
        held.close()
    assert value(samples, "distcache_rejected_connections_total") == 3
    assert value(samples, "distcache_current_connections") == 1


def test_the_metrics_listener_answers_only_its_path():
    metrics = f"127.0.0.1:{free_port()}"
    with dc_server("-metrics", f"IP:{metrics}"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://{metrics}/other", timeout=5)
        assert error.value.code == 404
        request = urllib.request.Request(f"http://{metrics}/metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=5)
        assert error.value.code == 405
        # A scraper that never finishes its request does not stop the others.
        host, port = metrics.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as silent:
            silent.sendall(b"GET /metrics HTTP/1.1\r\n")
            assert scrape(metrics)[("distcache_connections_total", frozenset())] == 1


def test_a_metrics_address_that_cannot_be_bound_stops_the_start():
    from serverproc import run_dc_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_dc_server(
            "-listen", f"IP:127.0.0.1:{free_port()}", "-metrics", f"127.0.0.1:{port}"
        )
    assert result.returncode == 1
    assert f"can't serve metrics on '127.0.0.1:{port}'" in result.stderr


def test_proxy_metrics_follow_the_upstream_link(tmp_path):
    metrics = f"127.0.0.1:{free_port()}"
    listen = f"IP:127.0.0.1:{free_port()}"
    path = str(tmp_path / "proxy.sock")
    with (
        dc_server(listen=listen) as server,
        dc_client(path, listen, "-retry", "100", "-metrics", metrics) as proxy,
    ):
        local = proxy.connect()
        assert ask(local, have_request(1, b"x")) == NOTOK
        samples = scrape(metrics)
        assert value(samples, "distcache_upstream_up") == 1
        assert value(samples, "distcache_upstream_connections_total") == 1
        assert value(samples, "distcache_upstream_reconnections_total") == 0
        assert value(samples, "distcache_current_connections") == 1
        assert value(
            samples, "distcache_info", program="dc_client", version=_version(), upstream=listen
        )
        server.stop()
        wait_until(lambda: value(scrape(metrics), "distcache_upstream_up") == 0)
        with dc_server(listen=listen):
            wait_until(lambda: value(scrape(metrics), "distcache_upstream_up") == 1)
            with proxy.connect() as bad:
                bad.sendall(b"\x00\x12\x00\x00garbage")
                assert bad.recv(1) == b""
            samples = scrape(metrics)
        local.close()
    assert value(samples, "distcache_upstream_connections_total") == 2
    assert value(samples, "distcache_upstream_reconnections_total") == 1
    assert value(samples, "distcache_protocol_errors_total", reason="bad_version") == 1
    assert value(samples, "distcache_connections_total") == 3  # the helper's probe, local, bad


def test_commands_on_a_store_engine_are_counted_and_an_unreachable_store_too():
    from test_cache_redis import StoreProcess

    store = StoreProcess()
    metrics = f"127.0.0.1:{free_port()}"
    try:
        with dc_server("-engine", store.url, "-metrics", metrics) as server:
            sock = server.connect()
            assert ask(sock, add_request(1, b"k", b"v", 60_000)) == OK
            assert ask(sock, add_request(2, b"k", b"v", 60_000)) == bytes(
                [Status.ADD_MATCHING_SESSION]
            )
            assert ask(sock, get_request(3, b"k")) == b"v"
            assert ask(sock, have_request(4, b"nope")) == NOTOK
            store.kill()
            assert ask(sock, get_request(5, b"k")) == NOTOK  # the store's outage answer
            samples = scrape(metrics)
            sock.close()
    finally:
        store.kill()
    counts = {
        ("add", "stored"): 1,
        ("add", "add_matching_session"): 1,
        ("get", "hit"): 1,
        ("get", "miss"): 0,
        ("get", "unavailable"): 1,
        ("have", "miss"): 1,
    }
    for (command, status), count in counts.items():
        assert value(samples, "distcache_commands_total", command=command, status=status) == count
    assert ("distcache_current_sessions", frozenset()) not in samples  # the store's to report
    assert "RedisStore('redis://127.0.0.1:" in next(
        dict(labels)["engine"] for name, labels in samples if name == "distcache_info"
    )


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("9400", "write 127.0.0.1:9400 for this host only, or IP:9400 for every IPv4 interface"),
        ("TLS:127.0.0.1:9400", "metrics are plain HTTP"),
        ("bogus", "bad address 'bogus': no prefix"),
    ],
)
@pytest.mark.parametrize("program", ["dc_server", "dc_client"])
def test_a_metrics_address_that_is_no_plain_listen_address_is_refused(
    tmp_path, program, given, reason
):
    """A port alone would have to guess the interface (and used to mean all of them); TLS:
    would promise an encryption the HTTP listener does not do. The error names what was given."""
    from serverproc import run_program

    args = ["-listen", f"UNIX:{tmp_path / 'l.sock'}", "-metrics", given]
    if program == "dc_client":
        args += ["-server", "IP:127.0.0.1:1"]
    result = run_program(program, *args)
    assert result.returncode == 1
    first, second = result.stderr.splitlines()[:2]
    assert first == f"Error, can't serve metrics on '{given}'"
    assert second.startswith("Error, ") and reason in second
