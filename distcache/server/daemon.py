"""Process set-up of a long-running server: detaching, the pid file, switching user."""

from __future__ import annotations

import os
import pwd

__all__ = ["become_user", "detach", "write_pidfile"]


def detach() -> None:
    """Become a daemon: double fork (no controlling terminal can be reacquired), new session,
    working directory ``/``, standard streams on ``/dev/null``. The launching process exits 0."""
    if os.fork():
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


def write_pidfile(path: str) -> None:
    """Write this process's pid in decimal, without a trailing newline (as the legacy did)."""
    with open(path, "w", encoding="ascii") as pidfile:
        pidfile.write(str(os.getpid()))


def become_user(name: str) -> None:
    """Switch to user ``name``: its primary group, its supplementary groups, then its uid.

    The legacy only called setuid, so a server started as root kept root's groups. Raises
    ``KeyError`` for an unknown user and ``OSError`` when a switch is not permitted.
    """
    entry = pwd.getpwnam(name)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
