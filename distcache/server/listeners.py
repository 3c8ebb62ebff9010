"""Listening sockets for parsed addresses, bound before the event loop runs.

Binding happens synchronously, before the server detaches or drops privileges (as the legacy did:
privileged ports and root-owned socket directories work, and a bind failure is reported on the
terminal); the event loop adopts the bound sockets later. The UNIX-path and inherited-socket
policies are the network layer's (:mod:`distcache.netio`).
"""

from __future__ import annotations

import contextlib
import socket

from .. import netio
from ..address import Address, parse_address

__all__ = ["BACKLOG", "bind_listeners", "close_listeners", "unix_path_of"]

#: Listen backlog, the legacy's.
BACKLOG = 511


def bind_listeners(address: Address | str) -> list[socket.socket]:
    """Bound sockets for ``address`` (one per resolved TCP address), not yet listening.

    They start listening when a server starts serving them (with ``BACKLOG``), so that what a
    program does between binding and serving (detaching, writing its pid file) is done before
    any client can connect. An inherited listener (``FD:``) already listens.

    Raises ``AddressError`` for an address that cannot be listened on and ``netio.ListenError``
    when binding fails.
    """
    if not isinstance(address, Address):
        address = parse_address(address)
    address = address.require_listen()
    if address.kind == "tcp":
        return _bind_tcp(address)
    if address.kind == "unix":
        return [_bind_unix(address)]
    return [netio.inherited_listener(address)]


def close_listeners(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def _bind_tcp(address: Address) -> list[socket.socket]:
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            address.family or socket.AF_UNSPEC,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE,
        )
    except socket.gaierror as error:
        raise netio.ListenError(f"cannot resolve '{address}': {error.strerror}") from None
    bound: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Each family gets its own socket, as asyncio does.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.setblocking(False)
    except OSError as error:
        close_listeners(bound)
        raise netio.ListenError(
            f"cannot listen on '{address}': {error.strerror or error}", error.errno
        ) from None
    return bound


def _bind_unix(address: Address) -> socket.socket:
    path = address.path
    assert path is not None
    netio.clear_unix_path(address, replace_stale=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise netio.ListenError(
            f"cannot listen on '{address}': {error.strerror or error}", error.errno
        ) from None
    return sock


def unix_path_of(sockets: list[socket.socket]) -> str | None:
    """The file system path of a UNIX listener, or None for other listeners."""
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                name = sock.getsockname()
                return name if isinstance(name, str) and name else None
    return None
