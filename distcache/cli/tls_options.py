"""The TLS and allow-list options of every program: flags to settings, checked at start-up.

Every problem is one line, raised as :class:`TLSSetupError` before anything listens: unreadable
or mismatched files, a ``TLS:`` listen address without a certificate and key, and TLS flags (or
``-allow``) given where no address would use them, which would leave an operator believing a
link is protected when it is not. SIGHUP re-reads the files (:func:`reload_on_sighup`).
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable, Iterable

from ..address import Address
from ..allowlist import AllowList
from ..tls import ClientTLS, ServerTLS, TLSError, TLSFiles

__all__ = [
    "TLSSetupError",
    "add_tls_arguments",
    "allow_list",
    "check_used",
    "client_tls",
    "files_from",
    "reload_on_sighup",
    "server_tls",
]

log = logging.getLogger("distcache.tls")


class TLSSetupError(Exception):
    """The TLS or allow-list settings cannot be used; the message is one line."""


def files_from(options: object) -> TLSFiles:
    """The ``tls_cert``/``tls_key``/``tls_ca`` values of parsed options (a dict or a namespace)."""
    get = options.get if isinstance(options, dict) else lambda name: getattr(options, name, None)
    return TLSFiles(get("tls_cert"), get("tls_key"), get("tls_ca"))


def server_tls(files: TLSFiles, listen: Iterable[Address]) -> ServerTLS | None:
    """The TLS of the ``TLS:`` addresses among ``listen`` (None when there is none)."""
    if not any(address.tls for address in listen):
        return None
    try:
        return ServerTLS(files)
    except TLSError as error:
        raise TLSSetupError(str(error)) from None


def client_tls(files: TLSFiles, connect: Iterable[Address]) -> ClientTLS | None:
    """The TLS of the ``TLS:`` addresses among ``connect`` (None when there is none)."""
    if not any(address.tls for address in connect):
        return None
    try:
        return ClientTLS(files)
    except TLSError as error:
        raise TLSSetupError(str(error)) from None


def check_used(files: TLSFiles, addresses: Iterable[Address], dash: str = "-") -> None:
    """Refuse TLS flags when none of the program's addresses is a ``TLS:`` one."""
    if files and not any(address.tls for address in addresses):
        raise TLSSetupError(
            f"{dash}tls-cert, {dash}tls-key and {dash}tls-ca apply to TLS:host:port addresses,"
            " and none was given"
        )


def allow_list(networks: list, listen: Iterable[Address]) -> AllowList | None:
    """The ``-allow`` networks, refused when no plain TCP listener would apply them."""
    if not networks:
        return None
    if not any(address.kind == "tcp" and not address.tls for address in listen):
        raise TLSSetupError("-allow applies to plain TCP (IP:) listeners, and none was given")
    return AllowList(networks)


def reload_on_sighup(holders: Iterable[ServerTLS | ClientTLS | None]) -> Callable[[], None] | None:
    """A SIGHUP action re-reading each holder's files (None when there is nothing to reload).

    Until the program's event loop installs it, SIGHUP is ignored (its default would kill the
    process). A failed reload keeps the context in use and logs one line.
    """
    active = [holder for holder in holders if holder is not None]
    if not active:
        return None
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def reload() -> None:
        for holder in active:
            try:
                holder.reload()
            except TLSError as error:
                log.error("TLS reload failed, keeping the certificates in use: %s", error)
            else:
                log.warning(
                    "TLS certificates reloaded from %s", holder.files.cert or holder.files.ca
                )

    return reload


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-ca`` for a ``distcache`` subcommand."""
    group = parser.add_argument_group("TLS (for TLS:host:port addresses)")
    group.add_argument(
        "--tls-cert", metavar="FILE", help="PEM certificate (chain) to present to the server"
    )
    group.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA the server's certificate must chain to (default: the system trust store)",
    )
