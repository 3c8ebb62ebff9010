"""Start-up steps shared by the long-running legacy programs (dc_server, dc_client).

After the listeners are bound: socket file owner and permissions, then detaching, the pid file
and the change of user, in the legacy order and with the legacy messages. Failures raise
:class:`StartupError`, whose text the program prints before exiting with status 1.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable

from ..netio import ListenError, set_unix_owner
from ..server.daemon import become_user, detach, remove_pidfile, write_pidfile

__all__ = ["StartupError", "apply_socket_file_settings", "become_service"]


class StartupError(Exception):
    """Start-up failed: the message is printed and the exit status is 1."""


def apply_socket_file_settings(options, unix_path: str | None) -> None:
    """-sockowner/-sockgroup/-sockperms: UNIX listeners only; a failure is only a warning."""
    if options.sockowner or options.sockgroup:
        try:
            if unix_path is None:
                raise ListenError("not a UNIX listener")
            set_unix_owner(unix_path, options.sockowner, options.sockgroup)
        except ListenError:
            print(
                f"Warning, can't set socket ownership to user '{options.sockowner or '(null)'}'"
                f" and group '{options.sockgroup or '(null)'}', continuing anyway",
                file=sys.stderr,
            )
    if options.sockperms is not None:
        try:
            if unix_path is None:
                raise OSError("not a UNIX listener")
            os.chmod(unix_path, int(options.sockperms, 8))
        except (OSError, ValueError):
            print(
                f"Warning, can't set socket permissions to '{options.sockperms}', continuing anyway",
                file=sys.stderr,
            )


def become_service(options, *, wait_until_ready: bool = False) -> Callable[[], None] | None:
    """-daemon, -pidfile, -user, in that order. Returns the daemon's "ready" callback, if any.

    A relative pid file path is resolved against the starting directory before detaching (the
    legacy resolved it against ``/``, where the daemon had moved). The listeners are bound but
    not yet listening (see ``bind_listeners``), so the pid file exists before the first client
    can connect; it is removed again on a clean exit.
    """
    pidfile = os.path.abspath(options.pidfile) if options.pidfile else None
    ready = None
    if options.daemon:
        try:
            ready = detach(wait_until_ready=wait_until_ready)
        except OSError:
            raise StartupError("Error, couldn't detach!") from None
    if pidfile:
        try:
            write_pidfile(pidfile)
        except OSError:
            raise StartupError(f"Error, couldn't open 'pidfile' at '{options.pidfile}'.") from None
        atexit.register(remove_pidfile, pidfile)
    if options.user:
        try:
            become_user(options.user)
        except (KeyError, OSError):
            raise StartupError(f"Error, couldn't become user '{options.user}'.") from None
    return ready
