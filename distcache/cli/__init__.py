"""Command-line entry points: the legacy-named programs and the ``distcache`` umbrella command."""


class UsageError(Exception):
    """Bad usage detected after parsing; reported in one line with exit status 2."""
