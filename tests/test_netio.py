"""Listeners and connections over real sockets: TCP (IPv4, IPv6), UNIX and inherited FDs."""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import pwd
import socket
import stat
import sys

import pytest

try:
    import uvloop
except ImportError:  # the server runs on asyncio's own loop where uvloop is missing
    uvloop = None

from distcache.address import MAX_FD, AddressError, parse_address
from distcache.netio import (
    ConnectError,
    ListenError,
    open_connection,
    open_fd_connection,
    set_unix_owner,
    start_listener,
    write_chunks,
)

IO_DEADLINE = 10.0  # seconds; only guards against a hung test, never measured


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, IO_DEADLINE))


def nodelay(sock) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


async def echo(reader, writer):
    writer.write(await reader.readexactly(5))
    await writer.drain()
    writer.close()


async def echo_once(address, *, timeout=IO_DEADLINE) -> bytes:
    reader, writer = await open_connection(address, timeout=timeout)
    writer.write(b"hello")
    data = await reader.read()
    writer.close()
    return data


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- TCP ---------------------------------------------------------------------------------------


async def _nodelay_scenario():
    """Listen and connect on loopback TCP: (reused address, echoed bytes, NODELAY on the
    connecting end, NODELAY on the accepted end)."""
    accepted_nodelay = asyncio.get_running_loop().create_future()

    async def serve(reader, writer):
        accepted_nodelay.set_result(nodelay(writer.get_extra_info("socket")))
        await echo(reader, writer)

    server = await start_listener("IP:127.0.0.1:0", serve)
    listener = server.sockets[0]
    reused = bool(listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
    port = listener.getsockname()[1]
    reader, writer = await open_connection(f"IP:127.0.0.1:{port}", timeout=IO_DEADLINE)
    connected_nodelay = nodelay(writer.get_extra_info("socket"))
    writer.write(b"hello")
    data = await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return reused, data, connected_nodelay, await accepted_nodelay


@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
        ),
    ],
)
def test_tcp_listen_and_connect_with_nodelay_on_both_ends(loop):
    runner = uvloop.run if loop == "uvloop" else asyncio.run
    result = runner(asyncio.wait_for(_nodelay_scenario(), IO_DEADLINE))
    assert result == (True, b"hello", True, True)


class _Flow(asyncio.Protocol):
    """Counts how often the transport asks it to stop writing."""

    def __init__(self) -> None:
        self.pauses = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=64 * 1024)

    def pause_writing(self) -> None:
        self.pauses += 1


async def _write_chunks_to_a_peer_that_never_reads() -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    try:
        transport, flow = await loop.connect_accepted_socket(_Flow, ours)
        chunk = b"x" * 32 * 1024
        for _ in range(64):  # 8 MiB in all: far past the kernel's buffers and the high mark
            write_chunks(transport, [chunk, chunk, chunk, chunk])
            if flow.pauses:
                break
        buffered = transport.get_write_buffer_size()
        transport.abort()
        return flow.pauses, buffered
    finally:
        theirs.close()


@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")
        ),
    ],
)
def test_write_chunks_pauses_the_writer_at_the_high_water_mark(loop):
    """Back-pressure of several replies in one call (on CPython 3.12.0-3.12.8 and 3.13.0-3.13.1
    the stock transport's writelines() never paused: the server and proxy buffered replies to a
    peer that never reads without limit)."""
    runner = uvloop.run if loop == "uvloop" else asyncio.run
    pauses, buffered = runner(asyncio.wait_for(_write_chunks_to_a_peer_that_never_reads(), 10))
    assert pauses == 1
    assert buffered < 1024 * 1024  # stopped at the first pause, not after all 8 MiB


def test_all_interfaces_form_listens_on_ipv4_any():
    async def scenario():
        server = await start_listener(parse_address("IP:0"), echo)
        families = {s.family for s in server.sockets}
        hosts = {s.getsockname()[0] for s in server.sockets}
        port = server.sockets[0].getsockname()[1]
        data = await echo_once(f"IP:127.0.0.1:{port}")
        server.close()
        return families, hosts, data

    assert run(scenario()) == ({socket.AF_INET}, {"0.0.0.0"}, b"hello")


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback on this host")
def test_ipv6_listen_and_connect():
    async def scenario():
        server = await start_listener("IP:[::1]:0", echo)
        port = server.sockets[0].getsockname()[1]
        assert server.sockets[0].family == socket.AF_INET6
        data = await echo_once(f"IPv6:[::1]:{port}")
        server.close()
        return data

    assert run(scenario()) == b"hello"


def test_host_names_are_resolved_when_connecting():
    async def scenario():
        server = await start_listener("IP:127.0.0.1:0", echo)
        port = server.sockets[0].getsockname()[1]
        data = await echo_once(f"IPv4:localhost:{port}")
        server.close()
        return data

    assert run(scenario()) == b"hello"


def test_connect_refused_is_a_connect_error():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(
            ConnectError, match=f"cannot connect to 'IP:127.0.0.1:{port}'"
        ) as caught:
            run(echo_once(f"IP:127.0.0.1:{port}"))
    assert caught.value.errno == errno.ECONNREFUSED


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on Linux SYN dropping")
def test_connect_timeout_is_a_connect_error():
    # A listener that never accepts and has a full queue drops new SYNs: the connect hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        try:
            with pytest.raises(ConnectError, match=r"timed out after 0\.2 s") as caught:
                run(open_connection(f"IP:127.0.0.1:{port}", timeout=0.2))
        finally:
            for filler in fillers:
                filler.close()
    assert caught.value.errno == errno.ETIMEDOUT


def test_listen_only_address_cannot_be_connected():
    with pytest.raises(AddressError, match="listen-only"):
        run(open_connection("IP:9001", timeout=1))


def test_port_in_use_is_a_listen_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=f"cannot listen on 'IP:127.0.0.1:{port}'") as caught:
            run(start_listener(f"IP:127.0.0.1:{port}", echo))
    assert caught.value.errno == errno.EADDRINUSE


def test_socket_permissions_are_refused_for_tcp():
    with pytest.raises(AddressError, match="UNIX listeners only"):
        run(start_listener("IP:127.0.0.1:0", echo, sock_mode=0o600))


# --- UNIX --------------------------------------------------------------------------------------


def test_unix_listen_and_connect_with_permissions(tmp_path):
    path = tmp_path / "cache.sock"

    async def scenario():
        server = await start_listener(f"UNIX:{path}", echo, sock_mode=0o600)
        mode = os.stat(path).st_mode
        data = await echo_once(f"UNIX:{path}")
        server.close()
        return mode, data

    mode, data = run(scenario())
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert data == b"hello"


def leave_stale_socket(path) -> None:
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: connecting to it is refused


def test_stale_unix_socket_is_replaced(tmp_path):
    path = tmp_path / "stale.sock"
    leave_stale_socket(path)

    async def scenario():
        server = await start_listener(f"UNIX:{path}", echo)
        data = await echo_once(f"UNIX:{path}")
        server.close()
        return data

    assert run(scenario()) == b"hello"


def test_stale_unix_socket_is_kept_when_asked(tmp_path):
    path = tmp_path / "stale.sock"
    leave_stale_socket(path)
    with pytest.raises(AddressError, match="stale socket"):
        run(start_listener(f"UNIX:{path}", echo, unix_replace_stale=False))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_live_unix_socket_is_not_stolen(tmp_path):
    path = tmp_path / "live.sock"

    async def scenario():
        first = await start_listener(f"UNIX:{path}", echo)
        with pytest.raises(AddressError, match="is in use by a running server"):
            await start_listener(f"UNIX:{path}", echo)
        data = await echo_once(f"UNIX:{path}")  # the first server is still reachable
        first.close()
        return data

    assert run(scenario()) == b"hello"


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_non_socket_at_unix_path_is_not_replaced(tmp_path, kind):
    path = tmp_path / "occupied"
    if kind == "file":
        path.write_text("precious")
    else:
        path.mkdir()
    with pytest.raises(AddressError, match="is not a socket; refusing to replace it"):
        run(start_listener(f"UNIX:{path}", echo))
    assert path.is_file() if kind == "file" else path.is_dir()


def test_unix_connect_to_missing_path_is_a_connect_error(tmp_path):
    with pytest.raises(ConnectError, match="cannot connect to 'UNIX:") as caught:
        run(echo_once(f"UNIX:{tmp_path / 'absent.sock'}"))
    assert caught.value.errno == errno.ENOENT


def test_set_unix_owner_by_name(tmp_path):
    path = tmp_path / "owned.sock"
    leave_stale_socket(path)
    me = pwd.getpwuid(os.getuid())
    set_unix_owner(str(path), me.pw_name, None)
    assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (me.pw_uid, me.pw_gid)
    group = grp.getgrgid(os.getgid())
    set_unix_owner(str(path), None, group.gr_name)
    assert os.lstat(path).st_gid == group.gr_gid


def test_set_unix_owner_unknown_user_is_a_listen_error(tmp_path):
    path = tmp_path / "owned.sock"
    leave_stale_socket(path)
    with pytest.raises(ListenError, match="no such user 'no-such-user-here'"):
        set_unix_owner(str(path), "no-such-user-here", None)
    with pytest.raises(ListenError, match="no such group"):
        set_unix_owner(str(path), None, "no-such-group-here")


# --- inherited descriptors ---------------------------------------------------------------------


def ping_pong(ours: socket.socket, address: str) -> None:
    """Through the stream ``address`` opens: ``ours`` sends ping, gets pong, and the writer
    closes."""

    async def scenario():
        reader, writer = await asyncio.wait_for(open_fd_connection(address), IO_DEADLINE)
        ours.sendall(b"ping")
        received = await asyncio.wait_for(reader.readexactly(4), IO_DEADLINE)
        writer.write(b"pong")
        await writer.drain()
        writer.close()
        return received

    assert run(scenario()) == b"ping"
    assert ours.recv(4) == b"pong"


def test_fd_socket_is_wrapped_as_a_stream():
    ours, theirs = socket.socketpair()
    with ours:
        ping_pong(ours, f"FD:{theirs.detach()}")


def test_fd_two_descriptors_of_one_socket_are_one_stream():
    """FD:r:w where both descriptors are the same socket (as inetd-style launchers pass it)."""
    ours, theirs = socket.socketpair()
    read_fd = theirs.detach()
    write_fd = os.dup(read_fd)
    with ours:
        ping_pong(ours, f"FD:{read_fd}:{write_fd}")
        assert ours.recv(1) == b""  # closing the writer closed both descriptors


def test_fd_pipes_are_wrapped_as_a_stream_and_closed_together():
    inbound_read, inbound_write = os.pipe()
    outbound_read, outbound_write = os.pipe()

    async def scenario():
        reader, writer = await open_connection(
            f"FD:{inbound_read}:{outbound_write}", timeout=IO_DEADLINE
        )
        os.write(inbound_write, b"ping")
        received = await reader.readexactly(4)
        writer.write(b"pong")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return received

    assert run(scenario()) == b"ping"
    with os.fdopen(outbound_read, "rb") as outbound:
        assert outbound.read() == b"pong"
    with pytest.raises(BrokenPipeError):  # closing the writer closed the read side too
        os.write(inbound_write, b"late")
    os.close(inbound_write)


def test_fd_with_no_read_side_reads_end_of_file():
    outbound_read, outbound_write = os.pipe()

    async def scenario():
        reader, writer = await open_fd_connection(f"FD:-1:{outbound_write}")
        writer.write(b"x")
        writer.close()
        return await reader.read()

    assert run(scenario()) == b""
    with os.fdopen(outbound_read, "rb") as outbound:
        assert outbound.read() == b"x"


def test_fd_with_no_write_side_refuses_writes():
    inbound_read, inbound_write = os.pipe()
    os.close(inbound_write)

    async def scenario():
        reader, writer = await open_fd_connection(f"FD:{inbound_read}:-1")
        with pytest.raises(BrokenPipeError, match="no write descriptor"):
            writer.write(b"x")
        writer.close()
        return await reader.read()

    assert run(scenario()) == b""


def test_closed_fd_is_a_connect_error():
    # The highest descriptor an address may name: never open in this process, never reused.
    closed = MAX_FD
    with pytest.raises(
        ConnectError, match=f"cannot use the descriptors of 'FD:{closed}'"
    ) as caught:
        run(open_fd_connection(f"FD:{closed}"))
    assert caught.value.errno == errno.EBADF


def test_regular_file_fd_is_a_connect_error(tmp_path):
    with open(tmp_path / "plain", "wb") as plain:
        with pytest.raises(ConnectError, match="must be a pipe, a socket or a character device"):
            run(open_fd_connection(f"FD:{plain.fileno()}"))
        plain.write(b"still open")  # a refused descriptor is left to its owner


def test_fd_listener_serves_an_inherited_listening_socket():
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    port = inherited.getsockname()[1]

    async def scenario():
        server = await start_listener(f"FD:{inherited.detach()}", echo)
        data = await echo_once(f"IP:127.0.0.1:{port}")
        server.close()
        return data

    assert run(scenario()) == b"hello"


def test_fd_listener_refuses_a_connected_socket():
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(AddressError, match="not an inherited listening socket"):
        run(start_listener(f"FD:{theirs.fileno()}", echo))
