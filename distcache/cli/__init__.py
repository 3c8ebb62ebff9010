"""Command-line entry points: the legacy-named programs and the ``distcache`` umbrella command."""
