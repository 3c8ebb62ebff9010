"""The log set-up of the long-running programs: one destination, one format, one bound.

Destinations (the ``-log`` flag):

``stderr`` (the default)
    for a terminal, or systemd's journal, which reads a service's standard error;
``syslog`` or ``syslog:PATH``
    the local syslog daemon through ``/dev/log`` (or the datagram socket at PATH), facility
    ``daemon``, tagged with the program's name and process id;
any other text
    a file, appended to; it survives ``-daemon``. It is reopened on SIGHUP (logrotate's
    ``postrotate``), and also by itself when it has been moved or deleted, which is what a
    process that never sees the signal (a worker) relies on.

The destination is opened before the program detaches or changes user, so a wrong path is a
start-up error on the terminal; after rotation the new file is created by the user the program
runs as, which therefore needs write access to the file's directory.

Every record goes through :class:`~distcache.monitoring.ratelimit.RateLimitedHandler`, whatever
logger wrote it (records propagate to the root logger, where the handler sits), so no peer can
make the log grow faster than the bound documented there.

Levels: ERROR, the program fails at its job for some clients (an engine failure); WARNING, an
operator should look (a refusal at a connection cap, a peer breaking the protocol, the upstream
server lost); INFO, the life of the program (start-up, the upstream regained, a client leaving in
the middle of a message); DEBUG, detail for diagnosis.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys

from .ratelimit import BoundedFormatter, RateLimitedHandler

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "SYSLOG_SOCKET",
    "LogDestinationError",
    "ReopeningFileHandler",
    "call_on_sighup",
    "reopen_log_files",
    "setup_logging",
]

#: The threshold when none is given: the start-up line and everything above it.
DEFAULT_LOG_LEVEL = "INFO"
#: Where the local syslog daemon listens.
SYSLOG_SOCKET = "/dev/log"

_TEXT_FORMAT = "%(asctime)s {program}[%(process)d] %(levelname)s %(name)s: %(message)s"
# Syslog adds the time and host itself; the tag "program[pid]: " is the traditional one.
_SYSLOG_FORMAT = "{program}[%(process)d]: %(levelname)s %(name)s: %(message)s"


class LogDestinationError(Exception):
    """The log destination cannot be opened (the message names it and says why)."""


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """A log file appended to, reopened when moved or deleted, or after :meth:`request_reopen`.

    A reopening that fails (a program that changed user may not open the file it opened as
    root) keeps the file already open, says so there in one line, and stops watching for moves
    until the next request, so a rotation the program cannot follow costs one line, not a crash
    or a line per record.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", errors="backslashreplace")
        self._reopen_requested = False
        self._watching = True

    def request_reopen(self) -> None:
        """Reopen before the next record (safe to call from a signal handler)."""
        self._reopen_requested = True

    def reopenIfNeeded(self) -> None:
        if self.stream is None:
            return
        try:
            if self._reopen_requested:
                self._reopen_requested = False
                self._reopen()
            elif self._watching and self._moved():
                self._reopen()
        except OSError as error:  # the file, or the directory, is closed to the new user
            self._watching = False
            self._note(f"cannot reopen the log file {self.baseFilename} "
                       f"({error.strerror or error}): still writing to the file already open")  # fmt: skip

    def _moved(self) -> bool:
        try:
            status = os.stat(self.baseFilename)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != (self.dev, self.ino)

    def _reopen(self) -> None:
        stream = self._open()
        self.stream.flush()
        self.stream.close()
        self.stream = stream
        self._watching = True
        self._statstream()

    def _note(self, message: str) -> None:
        record = logging.makeLogRecord(
            {"name": __name__, "levelno": logging.WARNING, "levelname": "WARNING", "msg": message}
        )
        logging.FileHandler.emit(self, record)


def setup_logging(program: str, destination: str | None = None, level: str | None = None):
    """Send every record at ``level`` or above to ``destination``, bounded; return the handler.

    Replaces whatever handlers the root logger had. Raises LogDestinationError when the
    destination cannot be opened. With a file destination, SIGHUP reopens it.
    """
    target, text_format = _open_destination(destination or "stderr", program)
    target.setFormatter(BoundedFormatter(logging.Formatter(text_format.format(program=program))))
    handler = RateLimitedHandler(target)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or DEFAULT_LOG_LEVEL)
    if isinstance(target, ReopeningFileHandler):
        call_on_sighup(target.request_reopen)
    return handler


#: What SIGHUP does once call_on_sighup has been used (each must only set a flag).
_sighup_callbacks: list = []


def call_on_sighup(callback) -> None:
    """Call ``callback()`` on SIGHUP, besides what is already called (log files to reopen).

    Installs the handler on first use; until then SIGHUP keeps its default action.
    """
    if not _sighup_callbacks:
        signal.signal(signal.SIGHUP, _sighup)
    _sighup_callbacks.append(callback)


def _sighup(_signum, _frame) -> None:
    reopen_log_files()


def reopen_log_files() -> None:
    """Do what SIGHUP does to the log files, for a program whose event loop handles SIGHUP
    itself (asyncio's handler replaces the one installed here)."""
    for callback in _sighup_callbacks:
        callback()


def _open_destination(destination: str, program: str) -> tuple[logging.Handler, str]:
    if destination == "stderr":
        return logging.StreamHandler(sys.stderr), _TEXT_FORMAT
    if destination == "syslog" or destination.startswith("syslog:"):
        path = destination.partition(":")[2] or SYSLOG_SOCKET
        try:
            _check_syslog(path)
            handler = logging.handlers.SysLogHandler(
                address=path, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
        except OSError as error:
            raise LogDestinationError(
                f"can't reach syslog at '{path}': {error.strerror or error}"
            ) from None
        return handler, _SYSLOG_FORMAT
    path = os.path.abspath(destination)  # -daemon moves to / before the first reopen
    try:
        return ReopeningFileHandler(path), _TEXT_FORMAT
    except OSError as error:
        raise LogDestinationError(
            f"can't open log file '{destination}': {error.strerror or error}"
        ) from None


def _check_syslog(path: str) -> None:
    """Raise OSError unless a syslog daemon listens at ``path`` (datagram or stream socket).

    SysLogHandler ignores a failed connection (and then drops every line), as openlog(3) does;
    an operator who asked for syslog is told at start instead.
    """
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return
            except OSError as error:
                failure = error
    raise failure
