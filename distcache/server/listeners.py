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
from ..peers import ConnectionRegistry
from ..tls import HANDSHAKE_TIMEOUT, ServerTLS
from .accepting import Acceptor, AcceptSlot, PlainAcceptor
from .handshakes import TLSAcceptor

__all__ = [
    "BACKLOG",
    "Listener",
    "bind_listeners",
    "close_listeners",
    "close_listeners_but",
    "describe_socket",
    "listener_options",
    "listeners_per_worker",
    "reuse_port_copies",
    "serve_listener",
    "serve_queued",
    "stop_listening",
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
    address: Address | str,
    *,
    tls: ServerTLS | None = None,
    allow: AllowList | None = None,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Bound sockets for ``address`` (one per resolved TCP address), not yet listening.

    ``reuse_port`` (TCP only) lets :func:`reuse_port_copies` bind more sockets to the same port,
    one per worker process, among which the kernel spreads the connections by a hash of their
    addresses (``dc_client -workers``; the server's workers share one socket and take turns,
    :mod:`distcache.server.accepting`).

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
        sockets = _bind_tcp(address, reuse_port)
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
    sock: socket.socket,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    registry: ConnectionRegistry | None = None,
    balance: AcceptSlot | None = None,
    **options: Any,
) -> asyncio.AbstractServer | Acceptor:
    """Serve a bound socket with ``protocol_factory`` (listening with ``BACKLOG``): over TLS if it
    carries TLS, and closing refused peers at accept if it carries an allow-list. ``options`` go
    to asyncio. With ``registry``, the connections of a TLS socket count from their accept on
    (a :class:`~distcache.server.handshakes.TLSAcceptor`). With ``balance`` (a worker of
    several), connections are accepted in turn with the other workers
    (:mod:`distcache.server.accepting`)."""
    loop = asyncio.get_running_loop()
    tls = getattr(sock, "tls", None)
    acceptor: Acceptor | None = None
    if tls is not None and registry is not None:
        acceptor = TLSAcceptor(sock, tls, protocol_factory, registry, balance)
    elif balance is not None:
        acceptor = PlainAcceptor(sock, _guarded(sock, protocol_factory), balance)
    if acceptor is not None:
        sock.listen(options.get("backlog", BACKLOG))
        sock.setblocking(False)
        if options.get("start_serving", True):
            await acceptor.start_serving()
        return acceptor
    options = {"backlog": BACKLOG, **listener_options(sock), **options}
    protocol_factory = _guarded(sock, protocol_factory)
    if sock.family == socket.AF_UNIX:
        # The socket file is the program's: removed by it (by the supervisor under -workers, not
        # by a worker that stops) and never looked at after a change of user, which may no
        # longer reach its directory. Python 3.13's asyncio and uvloop would stat it here and
        # unlink it at close; older asyncio neither does that nor knows the option.
        try:
            return await loop.create_unix_server(
                protocol_factory, sock=sock, cleanup_socket=False, **options
            )
        except TypeError:
            return await loop.create_unix_server(protocol_factory, sock=sock, **options)
    return await loop.create_server(protocol_factory, sock=sock, **options)


def _guarded(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]
) -> Callable[[], asyncio.Protocol]:
    allow = getattr(sock, "allow", None)
    return guard(protocol_factory, allow) if allow else protocol_factory


def serve_queued(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol]
) -> list[asyncio.Task]:
    """Accept the connections waiting in ``sock``'s queue and serve them as
    :func:`serve_listener` would; returns the tasks setting them up.

    A stopping program calls it just before it closes a listener: the kernel completed these
    connections, and their clients may have sent requests, before the stop; closing the
    listener would reset them."""
    loop = asyncio.get_running_loop()
    protocol_factory = _guarded(sock, protocol_factory)
    options = listener_options(sock)
    tasks = []
    while True:
        try:
            connection, _ = sock.accept()
        except OSError:  # nothing more queued (EAGAIN), or the listener is gone
            break
        connection.setblocking(False)
        tasks.append(
            loop.create_task(loop.connect_accepted_socket(protocol_factory, connection, **options))
        )
    return tasks


async def stop_listening(
    registry: ConnectionRegistry,
    listeners: list[asyncio.AbstractServer],
    sockets: list[socket.socket],
    protocol_factory: Callable[[], asyncio.Protocol],
    grace: float,
) -> None:
    """The first step of a graceful stop: close ``listeners`` (serving ``sockets``), after
    taking in the connections the kernel has queued on them when there is a ``grace`` period
    to answer them in. Every connection admitted from now on finishes at once."""
    registry.stopping()
    queued = []
    if grace > 0:
        for listener, sock in zip(listeners, sockets, strict=True):
            if isinstance(listener, Acceptor):
                listener.accept_now()  # they count, and finish, like the others
            else:
                queued += serve_queued(sock, protocol_factory)
    for listener in listeners:
        listener.close()
    if queued:
        _, late = await asyncio.wait(queued, timeout=grace)
        for task in late:  # TLS handshakes that did not finish in time
            task.cancel()
        results = await asyncio.gather(*queued, return_exceptions=True)
        del results  # a client that left meanwhile, or a failed handshake: nothing to serve


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
        copy = Listener(sock.family, sock.type, sock.proto)
        copy.tls, copy.allow = getattr(sock, "tls", None), getattr(sock, "allow", None)
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
                f"cannot listen again on '{describe_socket(sock)}': {error.strerror or error}",
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
            sock = Listener(family, kind, proto)
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


def describe_socket(sock: socket.socket) -> str:
    """A listening socket in the address grammar (``IP:host:port``, ``TLS:host:port``,
    ``UNIX:path``): what an operator would pass to reach it, TLS included."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"UNIX:{name}"
    host, port = name[:2]
    prefix = "TLS" if getattr(sock, "tls", None) is not None else "IP"
    return f"{prefix}:[{host}]:{port}" if ":" in host else f"{prefix}:{host}:{port}"


def unix_path_of(sockets: list[socket.socket]) -> str | None:
    """The file system path of a UNIX listener, or None for other listeners."""
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                name = sock.getsockname()
                return name if isinstance(name, str) and name else None
    return None
