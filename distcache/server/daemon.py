"""Process set-up of a long-running server: detaching, the pid file, switching user."""

from __future__ import annotations

import contextlib
import os
import pwd
import sys
from collections.abc import Callable
from importlib import import_module

__all__ = ["become_user", "detach", "remove_pidfile", "write_pidfile"]


def detach(*, wait_until_ready: bool = False) -> Callable[[], None]:
    """Become a daemon: double fork (no controlling terminal can be reacquired), new session,
    working directory ``/``, standard streams on ``/dev/null``.

    The launching process exits 0 at once, like the legacy's daemon(3); with
    ``wait_until_ready`` it waits instead until the daemon calls the returned function (exit 0:
    the pid file is written and the daemon serves) or exits first (exit 1), so that start-up
    failures after detaching still reach the exit status. The returned function does nothing
    without ``wait_until_ready``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe() if wait_until_ready else (-1, -1)
    if os.fork():
        if wait_until_ready:
            os.close(write_fd)
            os._exit(0 if os.read(read_fd, 1) == b"." else 1)
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    if not wait_until_ready:
        return _nothing
    os.close(read_fd)

    def ready() -> None:
        os.write(write_fd, b".")
        os.close(write_fd)

    return ready


def _nothing() -> None:
    """Nobody waits for a daemon detached without ``wait_until_ready``."""


def write_pidfile(path: str) -> None:
    """Write this process's pid in decimal, without a trailing newline (as the legacy did).

    The file is written beside its final name and renamed into place, so that a reader never
    sees it empty or half written.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as pidfile:
            pidfile.write(str(os.getpid()))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def remove_pidfile(path: str) -> None:
    """Remove the pid file if it still names this process (a forked child, or a newer instance
    that took the file over, leaves it alone)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as pidfile:
            if int(pidfile.read().strip()) != os.getpid():
                return
        os.unlink(path)


def become_user(name: str) -> None:
    """Switch to user ``name``: its primary group, its supplementary groups, then its uid.

    The legacy only called setuid, so a server started as root kept root's groups. Raises
    ``KeyError`` for an unknown user and ``OSError`` when a switch is not permitted.
    """
    entry = pwd.getpwnam(name)
    # What resolving a host name imports on first use (the event loop's thread pool, the idna
    # codec), loaded while the interpreter's own library is still readable: it may not be for
    # the new user (a Python installed under root's home directory).
    for module in ("concurrent.futures.thread", "encodings.idna"):
        import_module(module)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
