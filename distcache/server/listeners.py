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

__all__ = [
    "BACKLOG",
    "bind_listeners",
    "close_listeners",
    "close_listeners_but",
    "listeners_per_worker",
    "reuse_port_copies",
    "unix_path_of",
]

#: Listen backlog, the legacy's.
BACKLOG = 511


def bind_listeners(address: Address | str, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bound sockets for ``address`` (one per resolved TCP address), not yet listening.

    ``reuse_port`` (TCP only) lets :func:`reuse_port_copies` bind more sockets to the same port,
    one per worker process, among which the kernel spreads the connections evenly.

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
        return _bind_tcp(address, reuse_port)
    if address.kind == "unix":
        return [_bind_unix(address)]
    return [netio.inherited_listener(address)]


def close_listeners(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def listeners_per_worker(sockets: list[socket.socket], workers: int) -> list[list[socket.socket]]:
    """The listeners of each of ``workers`` processes: ``sockets`` for the first, and for each
    other one its own copies (:func:`reuse_port_copies`) or the same shared sockets."""
    return [sockets] + [reuse_port_copies(sockets) for _ in range(workers - 1)]


def close_listeners_but(shares: list[list[socket.socket]], mine: list[socket.socket]) -> None:
    """In a worker: close the listeners of the other workers (the kernel then stops counting on
    this process to accept on them)."""
    kept = {id(sock) for sock in mine}
    others = {id(sock): sock for share in shares for sock in share if id(sock) not in kept}
    close_listeners(list(others.values()))


def reuse_port_copies(sockets: list[socket.socket]) -> list[socket.socket]:
    """For another worker: a new, listening socket on the same port for each TCP socket bound
    with ``reuse_port``; other listeners (UNIX, inherited) are shared as they are.

    With one shared socket the kernel gives a burst of connections to whichever worker accepts
    first, and long-lived connections can all end up on one worker; with a socket each, it
    spreads them by a hash of their addresses.
    """
    copies, made = [], []
    for sock in sockets:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEPORT
        ):
            copies.append(sock)
            continue
        copy = socket.socket(sock.family, sock.type, sock.proto)
        try:
            copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if sock.family == socket.AF_INET6:
                copy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            copy.bind(sock.getsockname())
            copy.listen(BACKLOG)
            copy.setblocking(False)
        except OSError as error:
            copy.close()
            close_listeners(made)
            raise netio.ListenError(
                f"cannot listen again on {sock.getsockname()}: {error.strerror or error}",
                error.errno,
            ) from None
        copies.append(copy)
        made.append(copy)
    return copies


def _bind_tcp(address: Address, reuse_port: bool = False) -> list[socket.socket]:
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
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
