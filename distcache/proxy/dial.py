"""Connecting an :class:`asyncio.Protocol` to the upstream address (TCP, UNIX or inherited FDs).

The proxy's upstream side is protocol callbacks rather than streams, so it connects with the
loop's own ``create_connection``; inherited descriptors, which the loop cannot adopt when they are
pipes, go through :func:`~distcache.netio.open_fd_connection` and a small pump. Failures raise
:class:`~distcache.netio.ConnectError`, as :func:`~distcache.netio.open_connection` does.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from ..address import Address
from ..netio import ConnectError, open_fd_connection, tls_connect_options
from ..tls import ClientTLSSetting

__all__ = ["dial"]

_READ_SIZE = 1 << 16
_pumps: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones


async def dial(
    address: Address,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    timeout: float,
    tls: ClientTLSSetting = None,
) -> asyncio.Transport:
    """Connect within ``timeout`` seconds (a ``TLS:`` address verified under ``tls``); the
    protocol's callbacks run from then on."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if address.kind == "tcp":
                transport, _ = await loop.create_connection(
                    protocol_factory,
                    address.host,
                    address.port,
                    family=address.family or socket.AF_UNSPEC,
                    **tls_connect_options(address, tls, timeout),
                )
                # Requests are small and each waits for its reply: never hold one back.
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return transport
            if address.kind == "unix":
                transport, _ = await loop.create_unix_connection(protocol_factory, address.path)
                return transport
            return await _pump_fd_connection(address, protocol_factory())
    except TimeoutError:
        raise ConnectError(
            f"connecting to '{address}' timed out after {timeout} s", errno.ETIMEDOUT
        ) from None
    except socket.gaierror as error:
        raise ConnectError(f"cannot resolve '{address.host}': {error.strerror}") from None
    except ConnectError:
        raise
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise ConnectError(f"cannot connect to '{address}': {reason}", error.errno) from None


async def _pump_fd_connection(address: Address, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Drive ``protocol`` from the streams of an FD address (a rare, one-shot upstream)."""
    reader, writer = await open_fd_connection(address)
    transport = writer.transport
    protocol.connection_made(transport)

    async def pump() -> None:
        failure = None
        try:
            while data := await reader.read(_READ_SIZE):
                protocol.data_received(data)
            protocol.eof_received()
        except OSError as error:
            failure = error
        writer.close()  # the pump holds the writer: dropping it would close the transport
        protocol.connection_lost(failure)

    task = asyncio.get_running_loop().create_task(pump())
    _pumps.add(task)
    task.add_done_callback(_pumps.discard)
    return transport
