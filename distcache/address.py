"""The legacy address grammar: ``IP:port``, ``IP:host:port``, ``UNIX:path``, ``FD:r:w``, and
``TLS:host:port``.

Parsing is pure: no socket is opened and no name is resolved. What an address may be used for
(listen, connect or both) is decided here, as the legacy parser did.

Accepted forms (prefixes are case-sensitive)::

    IP:port  IPv4:port  IP::port     listen only, all IPv4 interfaces
    IP:host:port  IPv4:host:port     listen and connect
    UNIX:path                        listen and connect, stream UNIX socket
    FD:n  FD:r:w                     one inherited connection (either fd, not both, may be -1)

Extensions over the legacy grammar (which had no IPv6)::

    IP:[::1]:port  IPv6:[::1]:port   an IPv6 literal, always in brackets
    IPv6:port  IPv6::port            listen only, all IPv6 interfaces
    IPv6:host:port                   a host name resolved to IPv6 addresses only
    TLS:host:port  TLS:[::1]:port    distcache inside TLS over TCP (host: a name, IPv4 or IPv6)
    TLS:port                         listen only, TLS on all IPv4 interfaces

A ``TLS:`` address is a TCP address whose ``tls`` field is set: the same host and port forms as
``IP:``; the certificates come from the program's TLS settings (:mod:`distcache.tls`).

Deliberate differences from the legacy parser:

- Host names are kept as text and resolved when connecting or listening; the legacy resolved them
  while parsing (so ``IP:nosuch.invalid:9001`` was a parse error there and is a connect or listen
  error here). A name under ``IP:`` may resolve to IPv4 or IPv6; under ``IPv4:`` to IPv4 only.
- Numeric IPv4 hosts follow the classic ``inet_aton`` reading, like the legacy: a leading ``0``
  means octal and ``0x`` hexadecimal, and one to four parts are allowed (``010.0.0.1`` is
  ``8.0.0.1``, ``127.1`` is ``127.0.0.1``). They are stored, and printed, in dotted decimal.
- ``UNIX:`` with an empty path, and paths longer than the platform's socket path limit, are
  rejected here; the legacy accepted both (the empty path failed later, long ones were silently
  truncated).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_FD",
    "MAX_PORT",
    "MAX_UNIX_PATH_BYTES",
    "MIN_ADDRESS_LENGTH",
    "Address",
    "AddressError",
    "AddressKind",
    "parse_address",
    "port_argument",
]

#: Bounds on the whole address string, as the legacy parser enforced them.
MIN_ADDRESS_LENGTH = 2
MAX_ADDRESS_LENGTH = 255
#: Largest TCP port.
MAX_PORT = 65535
#: Largest descriptor number an ``FD:`` address may name.
MAX_FD = 65535
#: Longest UNIX socket path in bytes: ``sun_path`` less its terminating NUL.
MAX_UNIX_PATH_BYTES = (108 if sys.platform.startswith("linux") else 104) - 1

AddressKind = Literal["tcp", "unix", "fd"]

_PREFIXES = ("IP", "IPv4", "IPv6", "UNIX", "FD", "TLS")
_PREFIX_LIST = ", ".join(p + ":" for p in _PREFIXES)
# The legacy number parser (strtol-like) skips leading white space and takes one sign.
_NUMBER = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INET_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_MAX_HOST_NAME = 253
# Zone ids are kept simple so that a bracketed literal can always be found again.
_IPV6_ZONE = re.compile(r"[A-Za-z0-9_.-]+")


class AddressError(ValueError):
    """An address string is malformed, or an address cannot be used the way it was asked to be."""


@dataclass(frozen=True, slots=True)
class Address:
    """One parsed address. Build it with :func:`parse_address`; ``str()`` gives it back.

    ``kind`` selects the fields that matter: ``host``/``port``/``family`` for ``"tcp"``
    (``host`` None means all interfaces), ``path`` for ``"unix"``, ``read_fd``/``write_fd`` for
    ``"fd"``. ``family`` is ``AF_INET`` or ``AF_INET6`` when the address pins one, None when a
    host name may resolve to either.
    """

    kind: AddressKind
    host: str | None = None
    port: int | None = None
    path: str | None = None
    read_fd: int | None = None
    write_fd: int | None = None
    family: socket.AddressFamily | None = None
    #: TCP carrying TLS (a ``TLS:`` address).
    tls: bool = False

    def __post_init__(self) -> None:
        # Direct construction must not produce an address that cannot be printed and parsed back.
        if parse_address(str(self)) != self:
            raise AddressError(f"inconsistent address fields: {self!r}")

    @property
    def can_listen(self) -> bool:
        """Every form can be listened on (an FD address only if it is a listening socket)."""
        return True

    @property
    def can_connect(self) -> bool:
        """TCP addresses need a host to connect to; UNIX and FD addresses always can."""
        return self.kind != "tcp" or self.host is not None

    def require_listen(self) -> Address:
        """Return self if a listener may be made from this address, else raise AddressError."""
        if not self.can_listen:
            raise AddressError(f"'{self}' cannot be listened on")
        return self

    def require_connect(self) -> Address:
        """Return self if this address names a peer, else raise AddressError."""
        if not self.can_connect:
            raise AddressError(
                f"'{self}' is listen-only; a connect address needs a host: IP:host:port"
            )
        return self

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"UNIX:{self.path}"
        if self.kind == "fd":
            if self.read_fd == self.write_fd:
                return f"FD:{self.read_fd}"
            return f"FD:{self.read_fd}:{self.write_fd}"
        if self.tls:
            return "TLS:" + _format_tcp(self.host, self.port, self.family).partition(":")[2]
        return _format_tcp(self.host, self.port, self.family)


def _format_tcp(host: str | None, port: int | None, family: int | None) -> str:
    if host is None:
        return f"IPv6:{port}" if family == socket.AF_INET6 else f"IP:{port}"
    if _is_ip_literal(host):
        return f"IP:[{host}]:{port}" if ":" in host else f"IP:{host}:{port}"
    prefix = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}.get(family, "IP")
    return f"{prefix}:{host}:{port}"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_address(text: str) -> Address:
    """Parse a legacy address string; raise AddressError with a one-line reason if it is bad."""
    if not isinstance(text, str):
        raise AddressError(f"an address must be a string, not {type(text).__name__}")
    try:
        return _parse(text)
    except _Bad as bad:
        raise AddressError(f"bad address {text!r}: {bad.reason}") from None


def _make(**fields: object) -> Address:
    """Build an Address from fields the parser has already checked (skips re-validation)."""
    address = object.__new__(Address)
    for name, field in Address.__dataclass_fields__.items():
        object.__setattr__(address, name, fields.get(name, field.default))
    return address


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse(text: str) -> Address:
    if not MIN_ADDRESS_LENGTH <= len(text) <= MAX_ADDRESS_LENGTH:
        raise _Bad(f"length {len(text)} is outside {MIN_ADDRESS_LENGTH}..{MAX_ADDRESS_LENGTH}")
    prefix, colon, body = text.partition(":")
    if not colon:
        raise _Bad(f"no prefix (expected one of {_PREFIX_LIST})")
    if prefix not in _PREFIXES:
        raise _Bad(f"unknown prefix '{prefix}:' (prefixes are case-sensitive: {_PREFIX_LIST})")
    if prefix == "UNIX":
        return _parse_unix(body)
    if prefix == "FD":
        return _parse_fd(body)
    if prefix == "TLS":
        return _parse_tls(body)
    return _parse_tcp(prefix, body)


def _parse_number(text: str, what: str, low: int, high: int) -> int:
    match = _NUMBER.fullmatch(text)
    value = int(match.group(1)) if match else None
    if value is None or not low <= value <= high:
        raise _Bad(f"{what} must be decimal {low}..{high}, got '{text}'")
    return value


def _parse_unix(path: str) -> Address:
    if not path:
        raise _Bad("UNIX socket path is empty")
    if "\0" in path:
        raise _Bad("UNIX socket path contains a NUL character")
    size = len(os.fsencode(path))
    if size > MAX_UNIX_PATH_BYTES:
        raise _Bad(f"UNIX socket path is {size} bytes, the limit is {MAX_UNIX_PATH_BYTES}")
    return _make(kind="unix", path=path)


def _parse_fd(body: str) -> Address:
    fields = body.split(":")
    if len(fields) > 2:
        raise _Bad("expected FD:n or FD:read:write")
    fds = [_parse_number(f, "a descriptor", -1, MAX_FD) for f in fields]
    read_fd, write_fd = fds[0], fds[-1]
    if read_fd == write_fd == -1:
        raise _Bad("at most one of the descriptors may be -1")
    return _make(kind="fd", read_fd=read_fd, write_fd=write_fd)


def _parse_tcp(prefix: str, body: str) -> Address:
    # The legacy parser skips one colon right after the prefix ("IP::9001").
    if body.startswith(":"):
        body = body[1:]
    if body.startswith("["):
        host_text, port_text = _split_bracketed(body)
        host, family = _parse_ipv6_literal(prefix, host_text)
    elif ":" in body:
        host_text, _, port_text = body.partition(":")
        if ":" in port_text:
            raise _Bad(
                "too many ':' (write IPv6 literals in brackets, e.g. IP:[::1]:9001; "
                "nothing may follow the port)"
            )
        host, family = _parse_host(prefix, host_text)
    else:
        port_text, host = body, None
        family = socket.AF_INET6 if prefix == "IPv6" else socket.AF_INET
    port = _parse_number(port_text, "port", 0, MAX_PORT)
    return _make(kind="tcp", host=host, port=port, family=family)


def _parse_tls(body: str) -> Address:
    # The host and port forms of IP:; a name may resolve to IPv4 or IPv6 addresses.
    plain = _parse_tcp("IP", body)
    return _make(kind="tcp", host=plain.host, port=plain.port, family=plain.family, tls=True)


def _split_bracketed(body: str) -> tuple[str, str]:
    host, bracket, rest = body[1:].partition("]")
    if not bracket:
        raise _Bad("'[' without a closing ']'")
    if not rest.startswith(":"):
        raise _Bad("expected ':port' after the bracketed IPv6 address")
    return host, rest[1:]


def _parse_ipv6_literal(prefix: str, text: str) -> tuple[str, socket.AddressFamily]:
    if prefix == "IPv4":
        raise _Bad("an IPv4: address cannot hold a bracketed IPv6 address")
    literal, percent, zone = text.partition("%")
    if percent and not _IPV6_ZONE.fullmatch(zone):
        raise _Bad(f"bad IPv6 zone id '{zone}'")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise _Bad(f"'{text}' is not an IPv6 address") from None
    return str(address) + percent + zone, socket.AF_INET6


def _parse_host(prefix: str, text: str) -> tuple[str, socket.AddressFamily | None]:
    if not text:
        raise _Bad("the host is empty (use IP:port to listen on all interfaces)")
    ipv4 = _inet_aton(text)
    if ipv4 is not None:
        if prefix == "IPv6":
            raise _Bad(f"an IPv6: address cannot hold the IPv4 address '{text}'")
        return ipv4, socket.AF_INET
    if len(text) > _MAX_HOST_NAME or not _HOST_NAME.fullmatch(text):
        raise _Bad(f"'{text}' is neither an IPv4 address nor a valid host name")
    family = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}.get(prefix)
    return text, family


def _inet_aton_number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part, 16)
    return int(part, 8 if part.startswith("0") else 10)


def _inet_aton(text: str) -> str | None:
    """Dotted-decimal form of a numeric IPv4 host, None if ``text`` is not numeric at all."""
    parts = text.removesuffix(".").split(".")
    if not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    if text.endswith(".") or len(parts) > 4:
        raise _Bad(f"'{text}' is not a valid IPv4 address")
    try:
        values = [_inet_aton_number(part) for part in parts]
    except ValueError:
        raise _Bad(f"'{text}' is not a valid IPv4 address (bad octal part)") from None
    *leading, last = values
    last_bits = 8 * (4 - len(leading))
    if any(v > 0xFF for v in leading) or last >= 1 << last_bits:
        raise _Bad(f"'{text}' is not a valid IPv4 address (a part is out of range)")
    number = last
    for index, value in enumerate(leading):
        number |= value << (24 - 8 * index)
    return str(ipaddress.IPv4Address(number))


def port_argument(text: str) -> int:
    """A TCP port 1..MAX_PORT from a command line (an argparse ``type``: ValueError if not)."""
    port = int(text)
    if not 0 < port <= MAX_PORT:
        raise ValueError(text)
    return port


port_argument.__name__ = "port"  # argparse names the type in its error message
