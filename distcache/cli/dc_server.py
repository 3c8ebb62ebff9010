"""``dc_server``: the distcache cache server, with the legacy command line.

Flags are single-dash words processed left to right, as in distcache 1.5.1; the legacy error
messages are kept word for word (including the doubled dash of the missing-argument and
invalid-argument messages). Deliberate differences from the legacy program:

- exit status 0 on a clean shutdown and 1 on every start-up error (the legacy inverted both);
- SIGTERM and SIGINT shut down cleanly (the legacy was simply killed);
- ``-sessions`` 1..63 is refused at once with status 1 (the legacy failed later, with status 0);
- a relative ``-pidfile`` is taken relative to the starting directory, also with ``-daemon``;
- ``-user`` also switches to the user's groups, not only its uid;
- a UNIX listener refuses to replace anything but a stale socket file;
- extensions: ``-maxconns``, ``-log-level``, ``-engine``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from ..address import AddressError, parse_address
from ..netio import ListenError, set_unix_owner
from ..server import (
    DEFAULT_ENGINE_URL,
    DEFAULT_MAX_CONNECTIONS,
    EngineError,
    RunOptions,
    bind_listeners,
    open_engine,
    run_server,
    unix_path_of,
)
from ..server.daemon import become_user, detach, write_pidfile
from ..server.run import ignore_stop_requests
from ..wire import DEFAULT_CACHE_SESSIONS, MAX_CACHE_SESSIONS, MIN_CACHE_SESSIONS

__all__ = ["Options", "UsageError", "main", "parse_args"]

#: Largest ``-progress`` value the legacy accepted.
MAX_PROGRESS = 1_000_000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

USAGE = f"""\
Usage: dc_server -listen <address> [options...]

  -listen <address>    where to accept clients (required): IP:<port>, IP:<host>:<port>,
                       UNIX:<path>, IP:[<ipv6>]:<port>
  -sessions <num>      cache capacity in sessions, {MIN_CACHE_SESSIONS}..{MAX_CACHE_SESSIONS} (default {DEFAULT_CACHE_SESSIONS})
  -progress <num>      also report progress each time <num> more operations are done
  -daemon              detach and run in the background
  -pidfile <path>      write the server's process id to <path>
  -user <user>         run as <user> (and its groups) once listening
  -sockowner <user>    owner of the socket file (UNIX listeners only)
  -sockgroup <group>   group of the socket file (UNIX listeners only)
  -sockperms <octal>   permissions of the socket file (UNIX listeners only), e.g. 600
  -killable            stop cleanly on SIGUSR1/SIGUSR2 (otherwise they are ignored)
  -h, -help, -?        print this help and exit

Extensions (not in distcache 1.5.1):
  -maxconns <num>      most clients served at once; more are closed at once (default {DEFAULT_MAX_CONNECTIONS})
  -log-level <level>   logging threshold: {", ".join(LOG_LEVELS)} (default WARNING)
  -engine <url>        storage engine (default {DEFAULT_ENGINE_URL})

SIGTERM and SIGINT always stop the server cleanly (exit status 0).
"""


class UsageError(Exception):
    """A bad command line: ``message`` is printed (then the usage text if ``show_usage``)."""

    def __init__(self, message: str, *, show_usage: bool = True) -> None:
        super().__init__(message)
        self.show_usage = show_usage


class HelpRequested(Exception):
    """``-h``/``-help``/``-?`` was reached."""


@dataclass
class Options:
    listen: str | None = None
    sessions: int = DEFAULT_CACHE_SESSIONS
    progress: int = 0
    daemon: bool = False
    pidfile: str | None = None
    user: str | None = None
    sockowner: str | None = None
    sockgroup: str | None = None
    sockperms: str | None = None
    killable: bool = False
    maxconns: int = DEFAULT_MAX_CONNECTIONS
    log_level: str = "WARNING"
    engine: str = DEFAULT_ENGINE_URL


def _atoi(text: str) -> int:
    """C ``atoi``: optional white space and sign, the leading digits, the rest ignored (0 if none)."""
    stripped = text.lstrip(" \t\n\v\f\r")
    sign = -1 if stripped[:1] == "-" else 1
    if stripped[:1] in "+-" and stripped:
        stripped = stripped[1:]
    digits = ""
    for char in stripped:
        if not char.isascii() or not char.isdigit():
            break
        digits += char
    return sign * int(digits) if digits else 0


def _invalid(flag: str) -> UsageError:
    return UsageError(f"Error, -{flag} given an invalid argument")


def _sessions(flag: str, value: str) -> int:
    sessions = _atoi(value)
    if not 1 <= sessions <= MAX_CACHE_SESSIONS:
        raise _invalid(flag)
    if sessions < MIN_CACHE_SESSIONS:
        raise UsageError(
            f"Error, {flag} must be {MIN_CACHE_SESSIONS}..{MAX_CACHE_SESSIONS}"
            f" (the cache cannot hold fewer than {MIN_CACHE_SESSIONS} sessions), got {sessions}"
        )
    return sessions


def _progress(flag: str, value: str) -> int:
    progress = _atoi(value)
    if not 0 <= progress <= MAX_PROGRESS:  # the legacy saw negative numbers as huge ones
        raise _invalid(flag)
    return progress


def _maxconns(flag: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise UsageError(f"Error, {flag} needs a whole number of connections, at least 1")
    return int(value)


def _log_level(flag: str, value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"Error, {flag} takes one of {', '.join(LOG_LEVELS)}, not '{value}'")
    return level


def _text(flag: str, value: str) -> str:
    return value


# flag -> (Options attribute, value converter or None for a switch)
_FLAGS = {
    "-listen": ("listen", _text),
    "-sessions": ("sessions", _sessions),
    "-progress": ("progress", _progress),
    "-daemon": ("daemon", None),
    "-pidfile": ("pidfile", _text),
    "-user": ("user", _text),
    "-sockowner": ("sockowner", _text),
    "-sockgroup": ("sockgroup", _text),
    "-sockperms": ("sockperms", _text),
    "-killable": ("killable", None),
    "-maxconns": ("maxconns", _maxconns),
    "-log-level": ("log_level", _log_level),
    "-engine": ("engine", _text),
}
_HELP_FLAGS = ("-h", "-help", "-?")


def parse_args(argv: list[str]) -> Options:
    """Parse the command line left to right; raise UsageError or HelpRequested."""
    options = Options()
    words = iter(argv)
    for word in words:
        if word in _HELP_FLAGS:
            raise HelpRequested
        spec = _FLAGS.get(word)
        if spec is None:
            raise UsageError(f'Error, "{word}" not recognised')
        attribute, convert = spec
        if convert is None:
            setattr(options, attribute, True)
            continue
        value = next(words, None)
        if value is None:
            raise UsageError(f"Error, -{word} requires an argument")
        setattr(options, attribute, convert(word, value))
    if options.listen is None:
        raise UsageError("Error, must provide -listen", show_usage=False)
    return options


class StartupError(Exception):
    """Start-up failed; the message is printed and the exit status is 1."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        options = parse_args(args)
    except HelpRequested:
        sys.stderr.write(USAGE)
        return 0
    except UsageError as error:
        print(error, file=sys.stderr)
        if error.show_usage:
            sys.stderr.write(USAGE)
        return 1
    ignore_stop_requests()
    logging.basicConfig(
        level=options.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        return _start(options)
    except StartupError as error:
        print(error, file=sys.stderr)
        return 1


def _start(options: Options) -> int:
    try:
        store = open_engine(options.engine, options.sessions)
    except EngineError as error:
        raise StartupError(f"Error, {error}") from None
    try:
        sockets = bind_listeners(parse_address(options.listen))
    except (AddressError, ListenError) as error:
        raise StartupError(f"Error, can't listen on '{options.listen}'\nError, {error}") from None
    _apply_socket_file_settings(options, unix_path_of(sockets))
    pidfile = os.path.abspath(options.pidfile) if options.pidfile else None
    if options.daemon:
        try:
            detach()
        except OSError:
            raise StartupError("Error, couldn't detach!") from None
    if pidfile:
        try:
            write_pidfile(pidfile)
        except OSError:
            raise StartupError(f"Error, couldn't open 'pidfile' at '{options.pidfile}'.") from None
    if options.user:
        try:
            become_user(options.user)
        except (KeyError, OSError):
            raise StartupError(f"Error, couldn't become user '{options.user}'.") from None
    run_options = RunOptions(
        progress=options.progress, killable=options.killable, max_connections=options.maxconns
    )
    return run_server(sockets, store, run_options)


def _apply_socket_file_settings(options: Options, unix_path: str | None) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
