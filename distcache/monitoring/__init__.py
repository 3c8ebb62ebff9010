"""What an operator watches: bounded logs, Prometheus metrics, a health probe.

Shared by the long-running programs (``dc_server``, ``dc_client``, ``dc_snoop``); the command-line
glue lives in :mod:`distcache.cli.monitoring`. The submodules :mod:`.metrics` and :mod:`.shared`
(the metrics of several processes as one; both need prometheus_client) and :mod:`.health` (which
needs the client library) are imported on demand.
"""

from .logs import DEFAULT_LOG_LEVEL, LogDestinationError, setup_logging
from .ratelimit import (
    KIND_LINES_PER_WINDOW,
    MAX_BYTES_PER_WINDOW,
    MAX_LINE_BYTES,
    MAX_LINES_PER_WINDOW,
    TOTAL_LINES_PER_WINDOW,
    WINDOW_SECONDS,
    RateLimitedHandler,
)

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "KIND_LINES_PER_WINDOW",
    "MAX_BYTES_PER_WINDOW",
    "MAX_LINES_PER_WINDOW",
    "MAX_LINE_BYTES",
    "TOTAL_LINES_PER_WINDOW",
    "WINDOW_SECONDS",
    "LogDestinationError",
    "RateLimitedHandler",
    "setup_logging",
]
