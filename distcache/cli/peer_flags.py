"""The extension flags of the policies against hostile peers (:mod:`distcache.peers`), declared
once for dc_server and dc_client."""

from __future__ import annotations

from ..peers import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_PEER_BYTES,
    MIN_PEER_BYTES,
)
from .legacy_flags import Flag, InvalidArgument, decimal_in

__all__ = [
    "MAX_GRACE_SECONDS",
    "MAX_IDLE_TIMEOUT",
    "grace_flag",
    "idle_timeout_flag",
    "peer_bytes_flag",
    "per_peer_flag",
]

#: Largest -idle-timeout and -grace values (a day, an hour).
MAX_IDLE_TIMEOUT = 86_400
MAX_GRACE_SECONDS = 3_600


def per_peer_flag(default: int) -> Flag:
    return Flag(
        ("-maxperpeer",),
        "max_per_peer",
        "extension: most connections from one TCP peer address (0: no limit)",
        "num",
        decimal_in(0, 1_000_000),
        default,
    )


def peer_bytes_flag() -> Flag:
    return Flag(
        ("-maxpeerbytes",),
        "max_peer_bytes",
        "extension: most bytes the connections of one TCP peer address may hold unanswered "
        f"or unread; beyond it they are read no further (0: no limit, else >= {MIN_PEER_BYTES})",
        "bytes",
        _peer_bytes,
        DEFAULT_MAX_PEER_BYTES,
    )


def _peer_bytes(text: str) -> int:
    value = decimal_in(0, 1 << 40)(text)
    if 0 < value < MIN_PEER_BYTES:
        raise InvalidArgument(f"expected 0 or at least {MIN_PEER_BYTES} bytes, got {text!r}")
    return value


def idle_timeout_flag() -> Flag:
    return Flag(
        ("-idle-timeout",),
        "idle_timeout",
        f"extension: close connections idle this long, 0..{MAX_IDLE_TIMEOUT} (0: never)",
        "seconds",
        decimal_in(0, MAX_IDLE_TIMEOUT),
        int(DEFAULT_IDLE_TIMEOUT),
    )


def grace_flag() -> Flag:
    return Flag(
        ("-grace",),
        "grace",
        f"extension: time a stop signal leaves to answer what was received, 0..{MAX_GRACE_SECONDS}",
        "seconds",
        decimal_in(0, MAX_GRACE_SECONDS),
        int(DEFAULT_GRACE_SECONDS),
    )
