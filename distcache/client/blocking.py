"""The blocking client: the legacy DC_CTX API, with timeouts and typed errors."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from ..address import Address
from ..tls import ClientTLSSetting
from ..wire import Status
from .calls import Call
from .connection import ClientConnection, UidCounter
from .errors import (
    ConnectionLost,
    DistcacheError,
    OperationTimeout,
    ProtocolViolation,
    TransportError,
    UpstreamError,
)
from .modes import DEFAULT_MODE, Mode, checks_pid, connects_eagerly, keeps_connection, may_resend
from .settings import DEFAULT_TIMEOUT, Settings, SettingsView
from .sockets import open_socket

_RECV_SIZE = 65536


class _Link:
    """One open socket and its protocol state."""

    __slots__ = ("conn", "sock")

    def __init__(self, sock: socket.socket, conn: ClientConnection) -> None:
        self.sock = sock
        self.conn = conn


class Client(SettingsView):
    """A blocking distcache client (the legacy DC_CTX), safe to use from one thread at a time.

    ``address``: a legacy address string (``IP:127.0.0.1:9001``, ``UNIX:/path``) or an Address;
    listen-only addresses raise AddressError (a ValueError).
    ``mode``: a :class:`Mode` (default ``PERSISTENT | PIDCHECK | RETRY``) or a legacy integer.
    A PERSISTENT client without LATE connects here and raises ConnectionFailed if it cannot.
    ``timeout``: seconds each operation may take, connecting included (None: forever).
    ``strict_timeouts``, ``allow_ambiguous``: ADD validation, see :meth:`add_status`.
    ``legacy_get_semantics``: GET replies shorter than 5 bytes are misses, as in the legacy.
    ``tls``: for a ``TLS:`` address, how the server is verified and what certificate this client
    presents: an ``ssl.SSLContext``, :class:`~distcache.tls.TLSFiles` (read at once: bad files
    raise TLSError), or None to verify against the system's trust store without a certificate.
    The server's certificate and host name are always checked; a refused handshake is
    ConnectionFailed (with TLS 1.3 a refused client certificate may show as ConnectionLost at the
    first reply instead).

    Every operation may raise TransportError (ConnectionFailed, ConnectionLost, OperationTimeout),
    ProtocolViolation, UpstreamDisconnected or NoUpstream (a proxy answered), and InvalidRequest
    (a ValueError) or TypeError for arguments it will not send. After any TransportError or
    ProtocolViolation the connection is dropped; the next operation opens a new one.
    """

    def __init__(
        self,
        address: Address | str,
        mode: Mode | int = DEFAULT_MODE,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        strict_timeouts: bool = True,
        allow_ambiguous: bool = False,
        legacy_get_semantics: bool = False,
        tls: ClientTLSSetting = None,
    ) -> None:
        self._settings = Settings.build(
            address, mode, timeout, strict_timeouts, allow_ambiguous, legacy_get_semantics, tls
        )
        self._uids = UidCounter()
        self._link: _Link | None = None
        self._last_get: tuple[bytes, bytes] | None = None
        if connects_eagerly(self.mode):
            self._link = self._open(self._deadline())

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out dead at the next operation)."""
        return self._link is not None

    # -- operations -------------------------------------------------------------------------------

    def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> bool:
        """Store ``session`` under ``session_id`` for ``timeout_ms`` milliseconds.

        True if stored; False if the server refused (already present, id too long, ...): use
        :meth:`add_status` to tell why.
        """
        return self.add_status(session_id, session, timeout_ms) is Status.OK

    def add_status(self, session_id: bytes, session: bytes, timeout_ms: int) -> Status:
        """Like :meth:`add`, but return the server's status: ``Status.OK``, or the refusal
        (``ADD_MATCHING_SESSION`` 101, ``ADD_ID_RANGE`` 103, ...).

        Raises InvalidRequest before any traffic for an empty id or session, an ADD payload over
        MAX_PAYLOAD, a timeout outside 501..604800000 ms (``strict_timeouts=False`` allows any
        32-bit value), or a 1-byte session 0x01/0x02, which no GET could read back
        (``allow_ambiguous=True`` allows it).
        """
        return self._run(self._settings.add(session_id, session, timeout_ms))

    def get(self, session_id: bytes) -> bytes | None:
        """The session stored under ``session_id``, or None on a miss (see the package docs for
        how 1-byte replies are read)."""
        self._last_get = None
        session = self._run(self._settings.get(session_id), keep_last_get=True)
        if session is not None:
            self._last_get = (bytes(session_id), session)
        return session

    def reget(self, session_id: bytes) -> bytes | None:
        """The session returned by the last successful :meth:`get`, if it was for this same id
        and no other operation (nor a failed or missed get) came since; else None. No traffic."""
        last = self._last_get
        if last is None or last[0] != session_id:
            return None
        return last[1]

    def remove(self, session_id: bytes) -> bool:
        """Remove the session stored under ``session_id``: True if removed, False if absent."""
        return self._run(self._settings.remove(session_id))

    def have(self, session_id: bytes) -> bool:
        """Whether a session is stored under ``session_id``."""
        return self._run(self._settings.have(session_id))

    def close(self) -> None:
        """Close the connection, if any. The client may still be used (it reconnects)."""
        self._last_get = None
        if self._link is not None:
            self._link.sock.close()
            self._link = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client('{self.address}', {self.mode!r}, timeout={self.timeout})"

    # -- machinery --------------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        timeout = self.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _open(self, deadline: float | None) -> _Link:
        return _Link(
            open_socket(self.address, deadline, self._settings.tls), ClientConnection(self._uids)
        )

    def _run(self, call: Call, *, keep_last_get: bool = False) -> Any:
        if not keep_last_get:
            self._last_get = None
        deadline = self._deadline()
        for attempt in (0, 1):
            link, reused = self._acquire(deadline)
            try:
                result = self._exchange(link, call, deadline)
            except UpstreamError:
                self._release(link)  # a proxy's answer: the connection itself is fine
                raise
            except (TransportError, ProtocolViolation) as error:
                self._drop(link)
                if may_resend(self.mode, error, attempt=attempt, reused=reused):
                    continue
                raise
            except BaseException:
                self._drop(link)  # interrupted mid-exchange: the stream is out of step
                raise
            self._release(link)
            return result
        raise AssertionError("unreachable")

    def _acquire(self, deadline: float | None) -> tuple[_Link, bool]:
        """The connection to use and whether it was opened before this operation."""
        link = self._link
        if link is not None and checks_pid(self.mode) and link.conn.owner_pid != os.getpid():
            # Forked: close our copy of the descriptor only (the parent's stays open), reconnect.
            link.sock.close()
            self._link = link = None
        if link is not None:
            return link, True
        link = self._open(deadline)
        if keeps_connection(self.mode):
            self._link = link
        return link, False

    def _release(self, link: _Link) -> None:
        if not keeps_connection(self.mode):
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        link.sock.close()
        if self._link is link:
            self._link = None

    def _exchange(self, link: _Link, call: Call, deadline: float | None) -> Any:
        sock, conn = link.sock, link.conn
        data = conn.send(call)
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
            while True:
                sock.settimeout(_remaining(deadline))
                chunk = sock.recv(_RECV_SIZE)
                for completion in conn.receive_data(chunk):
                    if completion.error is not None:
                        raise completion.error
                    return completion.result
                if not chunk:
                    raise ConnectionLost("the server closed the connection")  # pragma: no cover
        except DistcacheError:
            raise
        except TimeoutError:
            raise OperationTimeout(
                f"no reply from '{self.address}' within {self.timeout} s"
            ) from None
        except OSError as error:
            raise ConnectionLost(
                f"connection to '{self.address}' failed: {error.strerror or error}"
            ) from None


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left
