"""The monitoring flags of the long-running programs: ``-log`` and ``-metrics``.

The work is done by :mod:`distcache.monitoring`; this module declares the flags once and turns
their failures into start-up errors.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from importlib import import_module

from ..address import AddressError, parse_address
from ..monitoring import LogDestinationError, setup_logging
from ..monitoring.logs import reopen_log_files
from ..netio import ListenError
from ..server import bind_listeners
from .legacy_flags import Flag
from .service import StartupError

__all__ = ["LOG_FLAG", "METRICS_FLAG", "bind_metrics", "start_logging", "with_log_reopening"]

LOG_FLAG = Flag(
    ("-log",),
    "log",
    "extension: where the log goes: stderr, syslog, syslog:<socket>, or a file to append to "
    "and reopen on SIGHUP",
    "dest",
    str,
    "stderr",
)

METRICS_FLAG = Flag(
    ("-metrics",),
    "metrics",
    "extension: serve Prometheus metrics at http://<address>/metrics (e.g. 127.0.0.1:9400)",
    "address",
)

#: Said for a bare port: which address is meant is the operator's choice to make.
_BARE_PORT_HINT = (
    "a port alone is no address: write 127.0.0.1:{port} for this host only, or IP:{port} for"
    " every IPv4 interface"
)


def start_logging(program: str, destination: str | None, level: str | None) -> None:
    """Open the log destination now (before detaching), or raise StartupError."""
    try:
        setup_logging(program, destination, level)
    except LogDestinationError as error:
        raise StartupError(f"Error, {error}") from None


def bind_metrics(text: str | None) -> list[socket.socket]:
    """The bound sockets of ``-metrics`` (none without the flag), or raise StartupError.

    Any listen address of the grammar, a bare ``host:port`` included, but no ``TLS:`` (the
    metrics are plain HTTP) and no port alone (it would have to guess the interface).
    """
    if text is None:
        return []
    try:
        if text.isascii() and text.isdigit():
            raise AddressError(_BARE_PORT_HINT.format(port=text))
        address = parse_address(text).require_listen()
        if address.tls:
            raise AddressError("metrics are plain HTTP: give an IP:, UNIX: or host:port address")
        sockets = bind_listeners(address)
        # Loaded now, before -user drops privileges: the new user may not be able to read the
        # interpreter's own library (a Python installed under root's home directory).
        import_module("distcache.monitoring.metrics")
        return sockets
    except (AddressError, ListenError) as error:
        raise StartupError(f"Error, can't serve metrics on '{text}'\nError, {error}") from None


def with_log_reopening(action: Callable[[], None] | None) -> Callable[[], None] | None:
    """A SIGHUP action for the event loop that also reopens the log files.

    When the loop takes SIGHUP over (to re-read TLS files), the handler that reopens the log
    files is replaced; this puts the reopening back. None (nothing for the loop to do) leaves
    SIGHUP to that handler.
    """
    if action is None:
        return None

    def reopen_then_act() -> None:
        reopen_log_files()
        action()

    return reopen_then_act
