"""Connection modes: the legacy DC_CTX flags, with the legacy values, and the rules they imply.

Each rule lives here once; the blocking and the asyncio clients only ask.
"""

from __future__ import annotations

import enum

from .errors import OperationTimeout, TransportError


class Mode(enum.IntFlag):
    """How a client manages its connection (legacy DC_CTX flag values).

    ``TEMPORARY`` (0) opens one connection per operation. ``PERSISTENT`` keeps one connection and
    reuses it. The other three only modify ``PERSISTENT``; giving them without it is an error.

    Unlike the legacy, a connection that failed (network error, timeout, protocol violation) is
    always dropped, and the next operation opens a new one: a dead connection is never reused.
    """

    TEMPORARY = 0
    #: One connection, opened when the client is created (unless LATE) and reused.
    PERSISTENT = 0x1
    #: After a fork, the child opens its own connection once, then reuses it (the legacy reconnected
    #: on every operation in the child, B13). Without it a child shares its parent's socket, and
    #: their replies interleave: only safe if one of them never uses the client again.
    PIDCHECK = 0x2
    #: When the network fails during an operation, reconnect once and resend it (with a fresh uid).
    #: A failed reconnect raises ConnectionFailed and leaves the client usable (legacy crash, B14).
    #: Timeouts and protocol violations are never resent.
    RETRY = 0x4
    #: Do not connect when the client is created; connect at the first operation.
    LATE = 0x8


#: The clients' default: one reused connection, safe across fork, resilient to server restarts.
DEFAULT_MODE = Mode.PERSISTENT | Mode.PIDCHECK | Mode.RETRY

_MODIFIERS = Mode.PIDCHECK | Mode.RETRY | Mode.LATE


def check_mode(mode: Mode | int) -> Mode:
    """Validate a mode given as a Mode or a legacy integer; raise ValueError if it is meaningless."""
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be a Mode or an int, not {type(mode).__name__}")
    if mode & ~int(Mode.PERSISTENT | _MODIFIERS):
        raise ValueError(f"mode {int(mode):#x} has undefined bits (known: 0x1, 0x2, 0x4, 0x8)")
    mode = Mode(mode)
    if mode & _MODIFIERS and not mode & Mode.PERSISTENT:
        raise ValueError(f"{mode!r}: PIDCHECK, RETRY and LATE only apply with PERSISTENT")
    return mode


def connects_eagerly(mode: Mode) -> bool:
    """Whether creating (or opening) the client connects at once."""
    return bool(mode & Mode.PERSISTENT) and not mode & Mode.LATE


def keeps_connection(mode: Mode) -> bool:
    """Whether a connection outlives the operation that opened it."""
    return bool(mode & Mode.PERSISTENT)


def checks_pid(mode: Mode) -> bool:
    """Whether a connection inherited across fork must be replaced before use."""
    return bool(mode & Mode.PIDCHECK)


def may_resend(mode: Mode, error: BaseException, *, attempt: int, reused: bool) -> bool:
    """Whether an operation that failed with ``error`` on attempt ``attempt`` (0 = first) is resent.

    Only in RETRY mode, only once, only on a network failure (not a timeout), and only when the
    failed connection was an old one being reused: a fresh connection that fails at once says the
    server is down, and a second try would just fail again.
    """
    return (
        bool(mode & Mode.RETRY)
        and attempt == 0
        and reused
        and isinstance(error, TransportError)
        and not isinstance(error, OperationTimeout)
    )
