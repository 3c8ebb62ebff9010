"""Blocking connects for the blocking client (the asyncio client uses :mod:`distcache.netio`).

Same policies as the rest of the package: host names are resolved at connect time, every
address a name resolves to is tried in turn, and TCP sockets have Nagle disabled.
"""

from __future__ import annotations

import os
import socket
import time

from ..address import Address
from ..tls import ClientTLSSetting, client_ssl
from .errors import ConnectionFailed, OperationTimeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise OperationTimeout("the operation timed out while connecting")
    return left


def open_socket(
    address: Address, deadline: float | None, tls: ClientTLSSetting = None
) -> socket.socket:
    """A connected blocking socket for ``address``; ConnectionFailed or OperationTimeout if not.

    A ``TLS:`` address gets a completed, verified handshake (under ``tls``) before it is returned.
    """
    if address.kind == "unix":
        return _connect(socket.AF_UNIX, address.path, address, deadline)
    if address.kind == "fd":
        return _inherited(address)
    try:
        candidates = socket.getaddrinfo(
            address.host, address.port, address.family or socket.AF_UNSPEC, socket.SOCK_STREAM
        )
    except socket.gaierror as error:
        raise ConnectionFailed(f"cannot resolve '{address.host}': {error.strerror}") from None
    failure: ConnectionFailed | None = None
    for family, _, _, _, sockaddr in candidates:
        try:
            sock = _connect(family, sockaddr, address, deadline)
        except ConnectionFailed as error:
            failure = error
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _handshake(sock, address, deadline, tls) if address.tls else sock
    assert failure is not None  # getaddrinfo never returns an empty list
    raise failure


def _connect(family: int, sockaddr, address: Address, deadline: float | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        sock.connect(sockaddr)
    except TimeoutError:
        sock.close()
        raise OperationTimeout(f"connecting to '{address}' timed out") from None
    except OSError as error:
        sock.close()
        raise ConnectionFailed(
            f"cannot connect to '{address}': {error.strerror or error}"
        ) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _handshake(
    sock: socket.socket, address: Address, deadline: float | None, tls: ClientTLSSetting
) -> socket.socket:
    try:
        sock.settimeout(_remaining(deadline))
        wrapped = client_ssl(tls).wrap_socket(sock, server_hostname=address.host)
    except TimeoutError:
        sock.close()
        raise OperationTimeout(f"the TLS handshake with '{address}' timed out") from None
    except OSError as error:  # ssl.SSLError and ssl.CertificateError among them
        sock.close()
        raise ConnectionFailed(f"TLS handshake with '{address}' failed: {error}") from None
    except BaseException:
        sock.close()
        raise
    return wrapped


def _inherited(address: Address) -> socket.socket:
    # An FD address is one inherited connection: the socket takes the descriptor over, so once
    # closed it cannot be reopened (a later connect fails cleanly).
    fd = address.read_fd
    if fd != address.write_fd:
        raise ConnectionFailed(f"'{address}': the blocking client needs one socket descriptor")
    try:
        return socket.socket(fileno=fd)
    except OSError as error:
        raise ConnectionFailed(f"cannot use '{address}': {os.strerror(error.errno or 0)}") from None
