"""Listening sockets for parsed addresses, bound before the event loop runs.

Binding happens synchronously, before the server detaches or drops privileges (as the legacy did:
privileged ports and root-owned socket directories work, and a bind failure is reported on the
terminal); the event loop adopts the bound sockets later. The UNIX-path and inherited-socket
policies are the network layer's (:mod:`distcache.netio`).

Each bound socket is a :class:`Listener`: it carries how its connections are served (the TLS
context of a ``TLS:`` address, the allow-list of a plain TCP one), so whatever code serves it
(:func:`serve_listener`, or a stream server given :func:`listener_options`) serves it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from .. import netio
from ..address import Address, AddressError, parse_address
from ..allowlist import AllowList, guard
from ..tls import HANDSHAKE_TIMEOUT, ServerTLS

__all__ = [
    "BACKLOG",
    "Listener",
    "bind_listeners",
    "close_listeners",
    "listener_options",
    "serve_listener",
    "unix_path_of",
]

#: Listen backlog, the legacy's.
BACKLOG = 511


class Listener(socket.socket):
    """A bound socket and how its connections are served."""

    #: The TLS of a ``TLS:`` listener (its ``context`` follows reloads).
    tls: ServerTLS | None = None
    #: The clients a plain TCP listener serves (None: everyone).
    allow: AllowList | None = None


def bind_listeners(
    address: Address | str, *, tls: ServerTLS | None = None, allow: AllowList | None = None
) -> list[socket.socket]:
    """Bound sockets for ``address`` (one per resolved TCP address), not yet listening.

    They start listening when a server starts serving them (with ``BACKLOG``), so that what a
    program does between binding and serving (detaching, writing its pid file) is done before
    any client can connect. An inherited listener (``FD:``) already listens.

    A ``TLS:`` address needs ``tls``, which its sockets then carry (and only theirs); ``allow``
    applies to plain TCP addresses and is ignored for the others. Raises ``AddressError`` for an
    address that cannot be listened on and ``netio.ListenError`` when binding fails.
    """
    if not isinstance(address, Address):
        address = parse_address(address)
    address = address.require_listen()
    if address.tls and tls is None:
        raise AddressError(f"'{address}' needs a TLS certificate and key (-tls-cert, -tls-key)")
    if address.kind == "tcp":
        sockets = _bind_tcp(address)
    elif address.kind == "unix":
        sockets = [_bind_unix(address)]
    else:
        sockets = [Listener(fileno=netio.inherited_listener(address).detach())]
    for sock in sockets:
        assert isinstance(sock, Listener)
        if address.tls:
            sock.tls = tls
        elif address.kind == "tcp" and allow:
            sock.allow = allow
    return sockets


def listener_options(sock: socket.socket) -> dict[str, Any]:
    """Keyword arguments for asyncio's ``create_server``/``start_server`` serving ``sock``."""
    tls = getattr(sock, "tls", None)
    if tls is None:
        return {}
    return {"ssl": tls.context, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}


async def serve_listener(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol], **options: Any
) -> asyncio.Server:
    """Serve a bound socket with ``protocol_factory`` (listening with ``BACKLOG``): over TLS if it
    carries TLS, and closing refused peers at accept if it carries an allow-list. ``options`` go
    to asyncio."""
    loop = asyncio.get_running_loop()
    allow = getattr(sock, "allow", None)
    if allow:
        protocol_factory = guard(protocol_factory, allow)
    options = {"backlog": BACKLOG, **listener_options(sock), **options}
    if sock.family == socket.AF_UNIX:
        return await loop.create_unix_server(protocol_factory, sock=sock, **options)
    return await loop.create_server(protocol_factory, sock=sock, **options)


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
            sock = Listener(family, kind, proto)
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
    sock = Listener(socket.AF_UNIX, socket.SOCK_STREAM)
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
