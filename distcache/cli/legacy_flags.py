"""Legacy command lines: single-dash flags read strictly left to right.

Shared by the drop-in programs (dc_server, dc_client, dc_test, dc_snoop), whose legacy namesakes
all parse alike: every flag is its own argv word and its argument is the next word (no ``-x=y``);
words are processed in order, so ``-h`` prints the usage and exits 0 as soon as it is met, while an
error *before* it has already ended the program with status 1.

The legacy messages are reproduced because scripts match them. Two programs (dc_server, dc_test)
print an extra dash in front of the flag in their error lines (``Error, --sessions given an invalid
argument``); dc_client and dc_snoop print the flag as typed. ``doubled_dash`` selects the style,
which applies to the legacy flags only: the extensions are always named as typed.

A program declares its flags once (:class:`Flag`), gets a parsed ``dict`` from
:meth:`CommandLine.parse`, or a :class:`FlagExit` carrying the status and the lines to print.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..workers import MAX_WORKERS, parse_workers

__all__ = [
    "HELP_WORDS",
    "LOG_LEVELS",
    "SERVICE_FLAGS",
    "TLS_FLAGS",
    "CommandLine",
    "Flag",
    "FlagExit",
    "InvalidArgument",
    "decimal_in",
    "log_level_flag",
    "octal_mode",
    "run_parser",
    "workers_flag",
]

#: The words that ask for the usage text.
HELP_WORDS = ("-h", "-help", "-?")


class InvalidArgument(ValueError):
    """Raised by a converter: the flag's argument is not acceptable (the legacy message follows)."""


class FlagExit(Exception):
    """Parsing ended the program: print ``lines`` (stdout for status 0, else stderr) and exit
    with ``status``."""

    def __init__(self, status: int, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.status = status
        self.lines = list(lines)


@dataclass(frozen=True)
class Flag:
    """One flag. ``metavar`` None makes it a switch (stored as True when present)."""

    names: tuple[str, ...]
    dest: str
    help: str
    metavar: str | None = None
    #: Turns the argument text into a value; raises InvalidArgument (or ValueError) when bad.
    convert: Callable[[str], Any] = str
    default: Any = None
    #: When set, giving the flag twice prints this line before the invalid-argument error.
    repeat_error: str | None = None
    #: The flag may be given several times; its value is the list of arguments, in order.
    repeatable: bool = False

    @property
    def extension(self) -> bool:
        """Not a legacy flag (its help says so first, as the usage shows it)."""
        return self.help.startswith("extension")


def decimal_in(low: int, high: int) -> Callable[[str], int]:
    """A converter accepting plain decimal digits whose value lies in ``low..high``.

    Stricter than the legacy ``atoi`` (which read ``100abc`` as 100 and ``abc`` as 0): a typo is
    reported instead of silently changing the meaning of the run.
    """

    def convert(text: str) -> int:
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise InvalidArgument(f"expected a decimal number in {low}..{high}, got {text!r}")
        return int(text)

    return convert


def octal_mode(text: str) -> int:
    """A file mode given in octal (``600``, ``0660``), as ``-sockperms`` takes it."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise InvalidArgument(f"expected an octal file mode, got {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"file mode {text!r} is out of range")
    return mode


#: Logging thresholds the ``-log-level`` extension takes.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise InvalidArgument(f"one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def log_level_flag() -> Flag:
    """The ``-log-level`` extension flag (default INFO: the start-up line and what follows)."""
    return Flag(
        ("-log-level",),
        "log_level",
        f"extension: logging threshold, one of {', '.join(LOG_LEVELS)}",
        "level",
        _log_level,
        "INFO",
    )


def workers_flag() -> Flag:
    """The ``-workers`` extension flag (default 1: one process, as the legacy)."""
    return Flag(
        ("-workers",),
        "workers",
        f"extension: processes serving the listener, 1..{MAX_WORKERS} or auto (one per CPU)",
        "num",
        parse_workers,
        1,
    )


#: The legacy daemon flags that dc_server and dc_client share, in their legacy order.
SERVICE_FLAGS: tuple[Flag, ...] = (
    Flag(("-daemon",), "daemon", "detach and run in the background"),
    Flag(("-pidfile",), "pidfile", "write the process id to this file", "path"),
    Flag(("-user",), "user", "run as this user (and its groups) once listening", "user"),
    Flag(("-sockowner",), "sockowner", "owner of the UNIX socket file", "user"),
    Flag(("-sockgroup",), "sockgroup", "group of the UNIX socket file", "group"),
    Flag(("-sockperms",), "sockperms", "permissions of the UNIX socket file, e.g. 600", "octal"),
    Flag(("-killable",), "killable", "stop cleanly on SIGUSR1/SIGUSR2 (else ignored)"),
)


#: TLS settings (extensions) of every program: they apply to its ``TLS:`` addresses.
TLS_FLAGS: tuple[Flag, ...] = (
    Flag(
        ("-tls-cert",),
        "tls_cert",
        "extension: PEM certificate (chain) presented on TLS: addresses",
        "file",
    ),
    Flag(("-tls-key",), "tls_key", "extension: PEM private key of -tls-cert", "file"),
    Flag(
        ("-tls-ca",),
        "tls_ca",
        "extension: PEM CA that peer certificates must chain to; a TLS listener then requires"
        " client certificates",
        "file",
    ),
)


@dataclass
class CommandLine:
    """The flags of one program and its usage text."""

    program: str
    summary: str
    flags: Sequence[Flag]
    doubled_dash: bool = False
    #: Extra paragraphs printed after the flag list.
    notes: str = ""
    _by_name: dict[str, Flag] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {name: flag for flag in self.flags for name in flag.names}

    def usage(self) -> str:
        lines = [f"Usage: {self.program} [options]", self.summary, "", "Options:"]
        for flag in self.flags:
            words = ", ".join(flag.names) + (f" <{flag.metavar}>" if flag.metavar else "")
            words += " ..." if flag.repeatable else ""
            default = f" (default {flag.default})" if flag.default not in (None, False) else ""
            lines.append(f"  {words:<26} {flag.help}{default}")
        lines.append(f"  {', '.join(HELP_WORDS):<26} print this usage and exit")
        if self.notes:
            lines += ["", self.notes.rstrip()]
        return "\n".join(lines)

    def _error(self, *lines: str) -> FlagExit:
        return FlagExit(1, [*lines, self.usage()])

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """Values by ``dest`` (defaults filled in); raises FlagExit for usage and errors."""
        values = {
            flag.dest: list(flag.default or ()) if flag.repeatable else flag.default
            for flag in self.flags
        }
        seen: set[str] = set()
        words = list(argv)
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if word in HELP_WORDS:
                raise FlagExit(0, [self.usage()])
            flag = self._by_name.get(word)
            if flag is None:
                raise self._error(f'Error, "{word}" not recognised')
            # The legacy's extra dash only where scripts may match it: a legacy flag by its
            # legacy name. An extension (or an alias) is named as the user typed it.
            legacy = not flag.extension and word == flag.names[0]
            shown = f"-{word}" if self.doubled_dash and legacy else word
            if flag.metavar is None:
                values[flag.dest] = True
                continue
            if index >= len(words):
                raise self._error(f"Error, {shown} requires an argument")
            text = words[index]
            index += 1
            if flag.dest in seen and flag.repeat_error:
                raise self._error(flag.repeat_error, f"Error, {shown} given an invalid argument")
            try:
                if flag.repeatable:
                    values[flag.dest].append(flag.convert(text))
                else:
                    values[flag.dest] = flag.convert(text)
            except ValueError as error:
                # The legacy line stays exact (scripts match it); the reason follows on its own.
                reason = [f"  ({error})"] if str(error) else []
                raise self._error(f"Error, {shown} given an invalid argument", *reason) from None
            seen.add(flag.dest)
        return values


def run_parser(command_line: CommandLine, argv: Sequence[str] | None) -> dict[str, Any] | int:
    """Parse ``argv`` (default ``sys.argv[1:]``); on FlagExit print its lines and return its
    status, so that a ``main`` can ``return`` it directly."""
    try:
        return command_line.parse(sys.argv[1:] if argv is None else argv)
    except FlagExit as stop:
        # Asked-for usage (status 0) is output, on stdout; errors go to stderr.
        stream = sys.stdout if stop.status == 0 else sys.stderr
        for line in stop.lines:
            print(line, file=stream)
        return stop.status
