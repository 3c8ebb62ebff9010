"""The extension flags of the policies against hostile peers (:mod:`distcache.peers`), declared
once for dc_server and dc_client."""

from __future__ import annotations

from ..peers import DEFAULT_GRACE_SECONDS, DEFAULT_IDLE_TIMEOUT
from .legacy_flags import Flag, decimal_in

__all__ = [
    "MAX_GRACE_SECONDS",
    "MAX_IDLE_TIMEOUT",
    "grace_flag",
    "idle_timeout_flag",
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
