"""asyncio listeners and connections for parsed addresses (TCP, UNIX and inherited FDs).

Policies carried over from the legacy network layer: TCP listeners set SO_REUSEADDR and every TCP
socket, accepted or connected, has Nagle disabled (TCP_NODELAY). One deliberate difference: a UNIX
listener only replaces a *stale* socket file (one nobody accepts on); the legacy unlinked whatever
was at the path, stealing a live server's socket or deleting a regular file.

``TLS:`` addresses: a connection verifies the server against the ``tls`` setting it is given
(:mod:`distcache.tls`; the system trust store when none) and checks the address's host name; a
listener needs an ``ssl`` server context.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import pwd
import re
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .address import Address, AddressError, parse_address
from .tls import HANDSHAKE_TIMEOUT, ClientTLSSetting, client_ssl

__all__ = [
    "ConnectError",
    "ListenError",
    "clear_unix_path",
    "inherited_listener",
    "open_connection",
    "open_fd_connection",
    "set_unix_owner",
    "start_listener",
    "tls_connect_options",
    "write_chunks",
]

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


#: CPython 3.12.0-3.12.8 and 3.13.0-3.13.1: the stock selector transport's writelines() never
#: pauses the protocol at its high-water mark (CPython gh-127655), so a peer that does not read
#: would make the process buffer without limit. There the chunks are joined into one write().
_RUNNING = sys.version_info[:3]
_WRITELINES_SKIPS_PAUSE = (3, 12) <= _RUNNING < (3, 12, 9) or (3, 13) <= _RUNNING < (3, 13, 2)


def write_chunks(transport: asyncio.WriteTransport, chunks: Sequence[bytes]) -> None:
    """Write several buffers in one call, with the transport's flow control (pause_writing)."""
    if _WRITELINES_SKIPS_PAUSE:
        transport.write(b"".join(chunks))
    else:
        transport.writelines(chunks)


class ConnectError(OSError):
    """Connecting to an address failed or timed out; ``errno`` holds the cause when known."""

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


class ListenError(OSError):
    """A listener could not be set up (bind failed, ownership or permissions not applied)."""

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


def _as_address(address: Address | str) -> Address:
    return address if isinstance(address, Address) else parse_address(address)


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def start_listener(
    address: Address | str,
    client_connected_cb: ClientConnected,
    *,
    backlog: int = 511,
    unix_replace_stale: bool = True,
    sock_mode: int | None = None,
    **server_options: Any,
) -> asyncio.Server:
    """Listen on ``address`` and call ``client_connected_cb(reader, writer)`` per connection.

    ``sock_mode`` (e.g. ``0o600``) is applied to a UNIX socket file with chmod. An ``FD:n``
    address is served only if descriptor ``n`` is an inherited listening socket; a single
    inherited connection is opened with :func:`open_fd_connection` instead. Extra keyword
    arguments (``limit``, ``ssl``, ...) go to asyncio's server.
    """
    address = _as_address(address).require_listen()
    if address.tls != (server_options.get("ssl") is not None):
        raise AddressError(f"'{address}': a TLS: address, and only one, needs an ssl context")
    if sock_mode is not None and address.kind != "unix":
        raise AddressError(f"socket permissions apply to UNIX listeners only, not '{address}'")

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _set_nodelay(writer)
        result = client_connected_cb(reader, writer)
        if result is not None:
            await result

    options = {"backlog": backlog, "start_serving": True, **server_options}
    try:
        if address.kind == "tcp":
            return await asyncio.start_server(
                on_connect,
                host=address.host,
                port=address.port,
                family=address.family or socket.AF_UNSPEC,
                reuse_address=True,
                **options,
            )
        if address.kind == "unix":
            clear_unix_path(address, replace_stale=unix_replace_stale)
            server = await asyncio.start_unix_server(on_connect, path=address.path, **options)
            if sock_mode is not None:
                _chmod_socket(server, address, sock_mode)
            return server
        return await asyncio.start_server(on_connect, sock=inherited_listener(address), **options)
    except OSError as error:
        if isinstance(error, ListenError):
            raise
        raise ListenError(f"cannot listen on '{address}': {_reason(error)}", error.errno) from None


def _reason(error: OSError) -> str:
    # asyncio words connect failures itself ("Connect call failed ('127.0.0.1', 9)", or
    # "Multiple exceptions: ..." when a name has several addresses); the errno's own text is
    # what people recognise.
    if error.errno:
        return os.strerror(error.errno)
    codes = set(_ERRNO_IN_TEXT.findall(str(error)))
    if len(codes) == 1:
        return os.strerror(int(codes.pop()))
    return error.strerror or str(error) or type(error).__name__


_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")


def clear_unix_path(address: Address, *, replace_stale: bool) -> None:
    """Make way for a UNIX listener: remove a stale socket file, refuse anything else."""
    path = address.path
    assert path is not None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AddressError(
            f"'{address}': {path} exists and is not a socket; refusing to replace it"
        )
    if _unix_socket_is_live(path):
        raise AddressError(f"'{address}': {path} is in use by a running server")
    if not replace_stale:
        raise AddressError(f"'{address}': a stale socket is left at {path}; remove it first")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unix_socket_is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        outcome = probe.connect_ex(path)
    if outcome in (0, errno.EAGAIN, errno.EINPROGRESS):
        return True  # accepted, or a full backlog: somebody is listening either way
    if outcome in (errno.ECONNREFUSED, errno.ENOENT):
        return False
    raise ListenError(f"cannot probe the socket at {path}: {os.strerror(outcome)}", outcome)


def _chmod_socket(server: asyncio.Server, address: Address, mode: int) -> None:
    try:
        os.chmod(address.path, mode)  # type: ignore[arg-type]
    except OSError as error:
        server.close()
        raise ListenError(
            f"cannot set permissions {mode:o} on '{address}': {_reason(error)}", error.errno
        ) from None


def inherited_listener(address: Address) -> socket.socket:
    """The listening socket an ``FD:n`` address names (inherited from the parent process)."""
    fd = address.read_fd
    if fd != address.write_fd or not _is_listening_socket(fd):
        raise AddressError(
            f"'{address}' is not an inherited listening socket; "
            "open a single inherited connection with open_fd_connection"
        )
    return socket.socket(fileno=fd)


def _is_listening_socket(fd: int | None) -> bool:
    if fd is None or fd < 0:
        return False
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    with probe:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def set_unix_owner(path: str, user: str | int | None, group: str | int | None) -> None:
    """chown a UNIX socket file by name or id, as the legacy ``-sockowner/-sockgroup`` did.

    With only ``user`` the group becomes that user's primary group; with only ``group`` the
    owner is left unchanged. Raises ListenError with the reason on failure.
    """
    try:
        uid, user_gid = _lookup_user(user)
        gid = _lookup_group(group) if group is not None else user_gid
        os.chown(path, uid, gid)
    except (KeyError, OSError) as error:
        reason = error.args[0] if isinstance(error, KeyError) else _reason(error)
        raise ListenError(
            f"cannot set the owner of {path} to user {user!r} and group {group!r}: {reason}",
            getattr(error, "errno", None),
        ) from None


def _lookup_user(user: str | int | None) -> tuple[int, int]:
    if user is None:
        return -1, -1
    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise KeyError(f"no such user {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def _lookup_group(group: str | int) -> int:
    try:
        return (grp.getgrgid(group) if isinstance(group, int) else grp.getgrnam(group)).gr_gid
    except KeyError:
        raise KeyError(f"no such group {group!r}") from None


def tls_connect_options(
    address: Address, tls: ClientTLSSetting, timeout: float | None = None
) -> dict[str, Any]:
    """asyncio connect arguments for ``address``: for a ``TLS:`` one, the client context, the
    host name to verify and a handshake time limit; nothing otherwise."""
    if not address.tls:
        return {}
    return {
        "ssl": client_ssl(tls),
        "server_hostname": address.host,
        "ssl_handshake_timeout": timeout or HANDSHAKE_TIMEOUT,
    }


async def open_connection(
    address: Address | str,
    *,
    timeout: float | None,
    tls: ClientTLSSetting = None,
    **stream_options: Any,
) -> Streams:
    """Connect to a TCP or UNIX address (or wrap an FD address) within ``timeout`` seconds.

    A ``TLS:`` address is verified under ``tls`` (see :func:`distcache.tls.client_ssl`); a
    refused handshake is a ConnectError. Raises ConnectError on failure or timeout, AddressError
    for a listen-only address.
    """
    address = _as_address(address).require_connect()
    if address.kind == "fd":
        return await open_fd_connection(address)
    if address.kind == "tcp":
        stream_options.update(tls_connect_options(address, tls, timeout))
        attempt = asyncio.open_connection(
            address.host, address.port, family=address.family or socket.AF_UNSPEC, **stream_options
        )
    else:
        attempt = asyncio.open_unix_connection(address.path, **stream_options)
    try:
        # Not asyncio.wait_for: before 3.12 it can swallow a cancellation that arrives as the
        # attempt fails (a refused connection), and the caller's deadline is then lost.
        async with asyncio.timeout(timeout):
            reader, writer = await attempt
    except asyncio.TimeoutError:  # noqa: UP041 - not the builtin TimeoutError before 3.11
        raise ConnectError(
            f"connecting to '{address}' timed out after {timeout} s", errno.ETIMEDOUT
        ) from None
    except socket.gaierror as error:
        raise ConnectError(f"cannot resolve '{address.host}': {error.strerror}") from None
    except OSError as error:
        raise ConnectError(
            f"cannot connect to '{address}': {_reason(error)}", error.errno
        ) from None
    _set_nodelay(writer)
    return reader, writer


async def open_fd_connection(address: Address | str) -> Streams:
    """Wrap the inherited descriptors of an ``FD:`` address as one stream.

    The streams take ownership of the descriptors: closing the writer closes them all. A socket
    given as ``FD:n``, or as ``FD:r:w`` with two descriptors of it, is wrapped as a socket;
    otherwise each side must be a pipe, a socket or a character device. A -1 read side reads as
    end-of-file; a -1 write side refuses writes with BrokenPipeError. Raises ConnectError,
    leaving the descriptors open, if they cannot be used.
    """
    address = _as_address(address)
    if address.kind != "fd":
        raise AddressError(f"'{address}' is not an FD address")
    read_fd, write_fd = address.read_fd, address.write_fd
    assert read_fd is not None and write_fd is not None
    try:
        modes = {fd: os.fstat(fd).st_mode for fd in (read_fd, write_fd) if fd >= 0}
    except OSError as error:
        raise ConnectError(
            f"cannot use the descriptors of '{address}': {_reason(error)}", error.errno
        ) from None
    if read_fd != write_fd and _same_socket(read_fd, write_fd):
        # Two descriptors of one socket (as inetd-style launchers pass them): a write-pipe
        # transport would watch the socket for readability and take incoming data for a hang-up,
        # so keep one descriptor and serve it as a socket.
        os.close(write_fd)
        write_fd = read_fd
    if read_fd == write_fd and stat.S_ISSOCK(modes[read_fd]):
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=read_fd))
        _set_nodelay(writer)
        return reader, writer
    if not all(_is_stream_like(mode) for mode in modes.values()):
        raise ConnectError(
            f"cannot use the descriptors of '{address}': "
            "each must be a pipe, a socket or a character device"
        )
    return await _open_pipes(read_fd, write_fd)


def _same_socket(first: int, second: int) -> bool:
    """Whether two descriptors refer to the same socket (``-1`` refers to nothing)."""
    if first < 0 or second < 0:
        return False
    a, b = os.fstat(first), os.fstat(second)
    return stat.S_ISSOCK(a.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _is_stream_like(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


async def _open_pipes(read_fd: int, write_fd: int) -> Streams:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    read_transport = write_transport = None
    if read_fd >= 0:
        protocol = asyncio.StreamReaderProtocol(reader)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: protocol, os.fdopen(read_fd, "rb", buffering=0)
        )
    else:
        reader.feed_eof()
    write_protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader())
    if write_fd >= 0:
        # One descriptor for both directions: each transport must own its own copy.
        own_fd = os.dup(write_fd) if write_fd == read_fd else write_fd
        write_transport, _ = await loop.connect_write_pipe(
            lambda: write_protocol, os.fdopen(own_fd, "wb", buffering=0)
        )
    pair = _PipePair(read_transport, write_transport, write_protocol)
    return reader, asyncio.StreamWriter(pair, write_protocol, reader, loop)


class _PipePair(asyncio.WriteTransport):
    """Both halves of an FD address behind one transport, so closing the writer closes both."""

    def __init__(
        self,
        read_transport: asyncio.ReadTransport | None,
        write_transport: asyncio.WriteTransport | None,
        write_protocol: asyncio.BaseProtocol,
    ) -> None:
        super().__init__()
        self._read = read_transport
        self._write = write_transport
        self._write_protocol = write_protocol
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write is None:
            raise BrokenPipeError(errno.EPIPE, "this FD address has no write descriptor (-1)")
        self._write.write(data)

    def can_write_eof(self) -> bool:
        return self._write is not None

    def write_eof(self) -> None:
        if self._write is not None:
            self._write.close()  # a pipe's end-of-file is its closed write end

    def get_write_buffer_size(self) -> int:
        return self._write.get_write_buffer_size() if self._write else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        side = self._write or self._read
        return side.get_extra_info(name, default) if side else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._read is not None:
            self._read.close()
        if self._write is not None:
            self._write.close()
        else:
            self._write_protocol.connection_lost(None)  # nothing else will end the stream

    def abort(self) -> None:
        self.close()
