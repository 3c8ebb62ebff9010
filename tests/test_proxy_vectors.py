"""The legacy proxy vectors replayed against our proxy.

Vectors that pin plain legacy behaviour must give identical bytes (fresh in-process server and
proxy per vector, real sockets). Vectors that pin a legacy defect (an abort, a reply flood, reads
of stale memory) get the safe behaviour instead, checked against a ``dc_client`` process: the
proxy is transparent (the bytes it returns for the vector's writes are exactly what the server
itself returns for the same writes, and it closes the connection exactly when the server does),
and it keeps running and serving new connections.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from proxyproc import connect_unix, dc_client, start_proxy
from serverproc import ServerThread, address_of, free_port

from distcache.conformance import legacy_vector_files, replay
from distcache.conformance.vectors import Reconnect, Send, Sleep
from distcache.protocol import have_request

PROXY_VECTORS = [
    vector for file in legacy_vector_files() if file.target_kind == "proxy" for vector in file
]
SAFE = [v for v in PROXY_VECTORS if not v.unsafe]
UNSAFE = [v for v in PROXY_VECTORS if v.unsafe]
#: A reply arriving later than this after the last write counts as "nothing more came".
QUIET = 0.3


@pytest.fixture(scope="module")
def servers():
    thread = ServerThread()
    yield thread
    thread.close()


def _upstream(servers, vector):
    """A fresh server for the vector, or (for ``upstream: absent``) an address nobody serves."""
    if vector.setup.get("upstream") == "absent":
        return None, f"IP:127.0.0.1:{free_port()}"
    server = servers.start(vector.sessions or 512)
    return server, address_of(server)


@pytest.mark.parametrize("vector", SAFE, ids=lambda v: v.id)
def test_plain_vector_is_byte_exact(servers, vector, tmp_path):
    server, upstream = _upstream(servers, vector)
    proxy = start_proxy(
        servers,
        upstream,
        f"UNIX:{tmp_path}/px",
        retry_ms=vector.setup.get("retry_ms", 5000),
        idle_ms=vector.setup.get("idle_ms", 0),
    )
    try:
        result = asyncio.run(replay(vector, f"UNIX:{tmp_path}/px", step_timeout=3.0))
    finally:
        servers.call(proxy.close())
        if server is not None:
            servers.stop(server)
    assert result.passed, result.mismatch.describe()


def _play(sock: socket.socket, vector) -> tuple[list[bytes], list[bool]]:
    """Write each ``send`` step on its own (honouring sleeps and reconnects); return, per
    connection, every byte received and whether the peer closed."""
    received, closed = [b""], [False]

    def drain(current: socket.socket, wait: float) -> None:
        current.settimeout(wait)
        while not closed[-1]:
            try:
                chunk = current.recv(65536)
            except TimeoutError:
                return
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed[-1] = True
            received[-1] += chunk

    for step in vector.steps:
        if isinstance(step, Send) and not closed[-1]:
            try:
                sock.sendall(step.data)
            except (BrokenPipeError, ConnectionResetError):
                closed[-1] = True
            drain(sock, 0.05)
        elif isinstance(step, Sleep):
            time.sleep(step.ms / 1000)
        elif isinstance(step, Reconnect):
            drain(sock, QUIET)
            address = sock.getpeername()
            sock.close()
            sock = _connect(address)
            received.append(b"")
            closed.append(False)
    drain(sock, QUIET)
    sock.close()
    return received, closed


def _connect(address) -> socket.socket:
    if isinstance(address, str):
        return connect_unix(address)
    return socket.create_connection(address, timeout=5)


def _still_serving(path: str) -> bytes:
    with connect_unix(path) as sock:
        sock.sendall(have_request(7, b"alive?"))
        sock.settimeout(3)
        return sock.recv(100)


@pytest.mark.parametrize("vector", UNSAFE, ids=lambda v: v.id)
def test_legacy_defect_gets_the_safe_behaviour(servers, vector, tmp_path):
    absent = vector.setup.get("upstream") == "absent"
    direct = None
    if not absent:
        reference = servers.start(vector.sessions or 512)
        try:
            host, port = address_of(reference).split(":")[1:]
            direct = _play(socket.create_connection((host, int(port)), timeout=5), vector)
        finally:
            servers.stop(reference)
    server, upstream = _upstream(servers, vector)
    path = str(tmp_path / "px2")
    try:
        with dc_client(path, upstream) as proxy:
            through_proxy = _play(connect_unix(path), vector)
            assert proxy.alive, proxy.stderr
            answer = _still_serving(path)
            assert proxy.alive
    finally:
        if server is not None:
            servers.stop(server)
    if absent:
        # No server: the bad bytes close that connection, without a reply (nothing to forward).
        assert through_proxy == ([b""], [True])
        assert answer == bytes.fromhex("0011000001000000070003010000")  # EMPTY reply
    else:
        assert through_proxy == direct
        assert answer == bytes.fromhex("001100000100000007000301000101")  # HAVE: absent
