"""Round trips of random ids and sessions through a real dc_server, the 1-byte and short-session
rules end to end, reget, and the checks refused before any traffic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxyproc import DcClient
from serverproc import dc_server, free_port

from distcache.client import (
    Client,
    InvalidRequest,
    Mode,
    NoUpstream,
    UpstreamDisconnected,
)
from distcache.wire import MAX_PAYLOAD, MAX_SESSION_ID, MAX_SESSION_ON_WIRE

P = Mode.PERSISTENT
LONG = 20.0


@pytest.fixture(scope="module")
def server():
    with dc_server("-sessions", "2000") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.listen, timeout=LONG) as connected:
        yield connected


@pytest.fixture
def offline():
    """A LATE client aimed at a port nobody listens on: any traffic would raise ConnectionFailed,
    so an InvalidRequest proves the call was refused before any."""
    return Client(f"IP:127.0.0.1:{free_port()}", P | Mode.LATE, timeout=LONG)


sessions = st.binary(min_size=1, max_size=5000).filter(lambda s: s not in (b"\x01", b"\x02"))


@settings(max_examples=150, deadline=None)
@given(session_id=st.binary(min_size=1, max_size=MAX_SESSION_ID), session=sessions)
def test_add_then_get_returns_the_session(client, session_id, session):
    client.remove(session_id)
    assert client.add(session_id, session, 60_000)
    assert client.get(session_id) == session
    assert client.reget(session_id) == session
    assert client.have(session_id)
    assert client.remove(session_id)
    assert client.get(session_id) is None


def test_largest_session_round_trips(client):
    session = bytes(range(256)) * (MAX_SESSION_ON_WIRE // 256) + b"z" * (MAX_SESSION_ON_WIRE % 256)
    assert client.add(b"k", session, 60_000)
    assert client.get(b"k") == session
    assert client.remove(b"k")


@pytest.mark.parametrize("session", [b"\x00", b"\x03", b"ab", b"abc", b"abcd"])
def test_short_sessions_are_hits(server, session):
    with (
        Client(server.listen, P, timeout=LONG) as fresh,
        Client(server.listen, P, timeout=LONG, legacy_get_semantics=True) as legacy,
    ):
        assert fresh.add(b"short", session, 60_000)
        assert fresh.get(b"short") == session
        assert legacy.get(b"short") is None  # the legacy rule: under 5 bytes is a miss
        assert fresh.remove(b"short")


def test_ambiguous_one_byte_sessions_need_opting_in(server, offline):
    for session in (b"\x01", b"\x02"):
        with pytest.raises(InvalidRequest, match="could never be read back"):
            offline.add(b"k", session, 60_000)
    with Client(server.listen, P, timeout=LONG, allow_ambiguous=True) as client:
        assert client.add(b"one", b"\x01", 60_000)
        assert client.have(b"one")
        assert client.get(b"one") is None  # stored, yet reads as a miss: why it is refused
        assert client.add(b"two", b"\x02", 60_000)
        with pytest.raises(UpstreamDisconnected):
            client.get(b"two")
        assert client.remove(b"one") and client.remove(b"two")


def test_reget_is_cleared_by_a_missed_get_and_by_other_operations(client):
    assert client.add(b"A", b"alpha", 60_000)
    assert client.get(b"A") == b"alpha"
    assert client.reget(b"A") == b"alpha"
    assert client.reget(b"B") is None
    assert client.get(b"B") is None
    assert client.reget(b"A") is None  # the legacy returned the miss byte here (B16)
    assert client.get(b"A") == b"alpha"
    client.have(b"A")
    assert client.reget(b"A") is None
    assert client.remove(b"A")


def test_timeout_checks(server, offline):
    with pytest.raises(InvalidRequest, match="501"):
        offline.add(b"k", b"v", 500)
    with pytest.raises(InvalidRequest):
        offline.add(b"k", b"v", 604_800_001)
    with pytest.raises(InvalidRequest, match="32-bit"):
        offline.add(b"k", b"v", -1)
    with Client(server.listen, P, timeout=LONG, strict_timeouts=False) as lax:
        assert lax.add(b"short-lived", b"v", 1)
        assert lax.add_status(b"too-long", b"v", 604_800_001) == 102


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"", b"v", 60_000), InvalidRequest),
        ((b"k", b"", 60_000), InvalidRequest),
        ((b"k" * 100, b"v" * (MAX_PAYLOAD - 107), 60_000), InvalidRequest),
        (("k", b"v", 60_000), TypeError),
        ((b"k", "v", 60_000), TypeError),
        ((b"k", b"v", 1.5e6), TypeError),
    ],
)
def test_add_arguments_refused_before_any_traffic(offline, args, error):
    with pytest.raises(error):
        offline.add(*args)
    assert not offline.connected


@pytest.mark.parametrize("operation", ["get", "remove", "have"])
def test_id_arguments_refused_before_any_traffic(offline, operation):
    for bad, error in (
        (b"", InvalidRequest),
        (b"k" * (MAX_PAYLOAD + 1), InvalidRequest),
        ("k", TypeError),
    ):
        with pytest.raises(error):
            getattr(offline, operation)(bad)


def test_an_oversize_add_is_refused_exactly_at_the_limit(server):
    with Client(server.listen, P, timeout=LONG) as client:
        exact = b"v" * (MAX_PAYLOAD - 8 - 2)
        assert client.add(b"ok", exact, 60_000)
        assert client.remove(b"ok")
        with pytest.raises(InvalidRequest, match="32768"):
            client.add(b"ok", exact + b"v", 60_000)


def test_the_real_proxy_without_upstream_raises_no_upstream(tmp_path):
    proxy = DcClient(str(tmp_path / "proxy.sock"), f"IP:127.0.0.1:{free_port()}")
    try:
        with Client(f"UNIX:{proxy.path}", P, timeout=LONG) as client:
            with pytest.raises(NoUpstream):
                client.have(b"k")
            with pytest.raises(NoUpstream):
                client.get(b"k")
    finally:
        proxy.stop()
