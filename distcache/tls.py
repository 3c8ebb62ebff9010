"""TLS for distcache connections: contexts built from certificate files, reloadable in place.

Only Python's :mod:`ssl` (OpenSSL) does the cryptography; this module decides the policy, once,
for every program:

- TLS 1.2 or later, OpenSSL's default cipher choice (no RC4, no export ciphers, no compression);
- a server presents ``cert``/``key``; given a ``ca`` it requires a client certificate that chains
  to that CA (mutual TLS) and refuses the handshake otherwise;
- a client always verifies the server's certificate and host name, against ``ca`` when given and
  the system's trust store otherwise; given ``cert``/``key`` it presents them when asked.

File problems (missing, unreadable, not PEM, a key that does not match its certificate, a key
protected by a passphrase) raise :class:`TLSError` with a one-line reason naming the file, so a
program can refuse to start before it listens. The distcache framing is unchanged inside TLS.

Reloading (SIGHUP): :class:`ServerTLS` hands asyncio one *front* context whose server-name
callback moves each new handshake onto the context built from the most recent files. The
callback runs for every ClientHello, with or without SNI, so new connections get new certificates
while established ones keep theirs; a reload that fails keeps the previous context.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from dataclasses import dataclass

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MINIMUM_VERSION",
    "ClientTLS",
    "ClientTLSSetting",
    "ServerTLS",
    "TLSError",
    "TLSFiles",
    "check_client_setting",
    "client_context",
    "client_ssl",
    "server_context",
]

#: The oldest protocol version either side accepts.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: Seconds a peer may take to complete the handshake; a slower one is dropped, so half-open
#: handshakes cannot hold the server's resources for long.
HANDSHAKE_TIMEOUT = 10.0


class TLSError(ValueError):
    """TLS files or settings that cannot be used; the message is one line naming the cause."""


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Paths of PEM files: this side's certificate chain and key, and the CA peers must chain to."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    def __bool__(self) -> bool:
        return any((self.cert, self.key, self.ca))


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context presenting ``files.cert``/``files.key``; with ``files.ca``, mutual TLS."""
    if not (files.cert and files.key):
        raise TLSError("a TLS listener needs a certificate and its key (-tls-cert and -tls-key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, files.cert, files.key)
    if files.ca:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context that verifies the server (against ``files.ca``, else the system store)
    and presents ``files.cert``/``files.key`` when both are given."""
    if bool(files.cert) != bool(files.key):
        raise TLSError("a TLS client certificate needs its key, and a key its certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host name checks
    context.minimum_version = MINIMUM_VERSION
    if files.ca:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if files.cert and files.key:
        _load_chain(context, files.cert, files.key)
    return context


def _check_readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError as error:
        raise TLSError(f"cannot read the {what} '{path}': {error.strerror or error}") from None
    if b"-----BEGIN " not in head:
        raise TLSError(f"the {what} '{path}' is not a PEM file")


def _refuse_passphrase() -> bytes:
    # Without this, OpenSSL would prompt on the terminal (or hang a daemon) for a passphrase.
    raise TLSError("is protected by a passphrase; give an unencrypted key file")


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    _check_readable(cert, "TLS certificate")
    _check_readable(key, "TLS key")
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except TLSError as error:
        raise TLSError(f"the TLS key '{key}' {error}") from None
    except ssl.SSLError as error:
        raise TLSError(_chain_problem(error, cert, key)) from None
    except OSError as error:
        raise TLSError(f"cannot load '{cert}' and '{key}': {error.strerror or error}") from None


def _chain_problem(error: ssl.SSLError, cert: str, key: str) -> str:
    reason = error.reason or ""
    if "KEY_VALUES_MISMATCH" in reason:
        return f"the TLS key '{key}' does not match the certificate '{cert}'"
    if "PEM" in reason or "NO_START_LINE" in reason:
        return f"'{cert}' or '{key}' holds no usable PEM certificate or key ({reason})"
    if "EE_KEY_TOO_SMALL" in reason or "CA_MD_TOO_WEAK" in reason:
        return f"the TLS certificate '{cert}' is too weak for this OpenSSL ({reason})"
    return f"cannot use the TLS certificate '{cert}' and key '{key}': {reason or error}"


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    _check_readable(ca, "TLS CA file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        raise TLSError(
            f"the TLS CA file '{ca}' holds no usable certificate ({error.reason or error})"
        ) from None
    except OSError as error:
        raise TLSError(f"cannot read the TLS CA file '{ca}': {error.strerror or error}") from None


class _Reloadable:
    """The context built from ``files``, rebuilt by :meth:`reload` (the old one kept on failure)."""

    def __init__(self, files: TLSFiles) -> None:
        # Absolute: a daemon has moved to / by the time a reload reads them again.
        paths = (files.cert, files.key, files.ca)
        self.files = TLSFiles(*(os.path.abspath(path) if path else None for path in paths))
        self._current = self._build(self.files)

    @staticmethod
    def _build(files: TLSFiles) -> ssl.SSLContext:
        raise NotImplementedError

    def reload(self) -> None:
        """Re-read the files; on TLSError the context in use is kept."""
        self._current = self._build(self.files)

    @property
    def current(self) -> ssl.SSLContext:
        """The context built from the most recently read files."""
        return self._current


class ServerTLS(_Reloadable):
    """A server's TLS: :attr:`context` goes to the listeners, :meth:`reload` re-reads the files."""

    _build = staticmethod(server_context)

    def __init__(self, files: TLSFiles) -> None:
        super().__init__(files)
        self.context = self._current
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._current is not self.context:
            connection.context = self._current
        return None


class ClientTLS(_Reloadable):
    """A client's TLS: :attr:`current` is used for each new connection; :meth:`reload` re-reads."""

    _build = staticmethod(client_context)


#: What a client may be given for its TLS connections: a context made elsewhere, reloadable
#: files, files, or None (verify the server against the system's trust store, no certificate).
ClientTLSSetting = ssl.SSLContext | ClientTLS | TLSFiles | None


def client_ssl(setting: ClientTLSSetting) -> ssl.SSLContext:
    """The context a new TLS connection uses under ``setting``."""
    if isinstance(setting, ssl.SSLContext):
        return setting
    if isinstance(setting, ClientTLS):
        return setting.current
    if setting:
        return client_context(setting)
    return _system_trust_context()


@functools.cache
def _system_trust_context() -> ssl.SSLContext:
    return client_context(TLSFiles())


def check_client_setting(setting: object) -> ClientTLSSetting:
    """``setting`` if a client may be given it, else TypeError (and TLSError for bad files)."""
    if setting is None or isinstance(setting, ssl.SSLContext | ClientTLS):
        return setting
    if isinstance(setting, TLSFiles):
        return ClientTLS(setting) if setting else None  # read now: bad files fail at once
    raise TypeError(
        f"tls must be an ssl.SSLContext, TLSFiles or ClientTLS, not {type(setting).__name__}"
    )


class _QuietHalfClose(logging.Filter):
    """Drops asyncio's per-connection warning that keeping a TLS connection half-open after the
    peer's end of stream has no effect: the server and proxy keep plain TCP half-open so replies
    to earlier requests still go out, and over TLS asyncio closes the connection once they are
    flushed, which is the right outcome and not worth a log line per connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("returning true from eof_received()")


logging.getLogger("asyncio").addFilter(_QuietHalfClose())
