"""``-allow CIDR``: the client networks a plain TCP listener serves; others are closed at accept.

For sites that cannot deploy certificates yet. It is an allow-list of source addresses, checked
before a byte is read, not authentication: anyone who can send from an allowed address (or spoof
one on the path) still reads and writes any session. TLS listeners rely on certificates instead.

IPv4 clients of an IPv6 socket (``::ffff:a.b.c.d``) are matched as the IPv4 address they are.
Refusals are logged at most once a second, with the count of those not logged, so a flood of
refused connections cannot flood the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable

__all__ = ["AllowList", "cidr_argument", "guard"]

log = logging.getLogger("distcache.allow")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Seconds between two log lines about refused connections.
LOG_INTERVAL = 1.0


def cidr_argument(text: str) -> Network:
    """A network such as ``10.0.0.0/8``, ``192.0.2.7`` or ``2001:db8::/32`` (ValueError if bad).

    Host bits set below the prefix (``10.0.0.1/8``) are refused: they usually hide a typo.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as error:
        raise ValueError(f"'{text}' is not a network in CIDR form: {error}") from None


cidr_argument.__name__ = "CIDR"  # argparse names the type in its error message


class AllowList:
    """The networks whose clients are served."""

    def __init__(self, networks: Iterable[Network | str]) -> None:
        self.networks = tuple(
            n if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) else cidr_argument(n)
            for n in networks
        )
        self._refused = 0  # not logged yet
        self._logged_at = -LOG_INTERVAL

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(map(str, self.networks))

    def permits(self, host: str) -> bool:
        """Whether a client whose address is ``host`` (text, as ``getpeername`` gives it) may stay."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def admits(self, transport: asyncio.BaseTransport) -> bool:
        """Check a new connection's peer; log (rate-limited) and return False if it is refused."""
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else ""
        if self.permits(host):
            return True
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            more = (
                f" (and {self._refused - 1} more since the last report)"
                if self._refused > 1
                else ""
            )
            log.warning("refused a connection from %s: not in -allow %s%s", host, self, more)
            self._logged_at = now
            self._refused = 0
        return False


def guard(
    factory: Callable[[], asyncio.Protocol], allow: AllowList
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory whose connections are closed at once unless ``allow`` admits the peer;
    the protocol ``factory`` makes never sees a refused connection."""

    def make() -> asyncio.Protocol:
        return _Gate(factory, allow)

    return make


class _Gate(asyncio.Protocol):
    """Checks the peer, then hands every callback to the real protocol."""

    __slots__ = ("_allow", "_factory", "_inner")

    def __init__(self, factory: Callable[[], asyncio.Protocol], allow: AllowList) -> None:
        self._factory = factory
        self._allow = allow
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._allow.admits(transport):
            transport.abort()
            return
        self._inner = self._factory()
        transport.set_protocol(self._inner)  # later callbacks go straight to it
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
