"""Command-line entry points: the legacy-named programs and the ``distcache`` umbrella command."""

import sys


class UsageError(Exception):
    """Bad usage detected after parsing; reported in one line with exit status 2."""


def read_input(path: str) -> bytes:
    """The bytes of file ``path`` (``-``: standard input); UsageError if it cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
