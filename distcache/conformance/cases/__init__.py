"""The built-in conformance cases. Importing this package registers them all."""

from . import (
    buffering,
    cache,
    connections,
    eviction,
    framing,
    headers,
    limits,
    operations,
    proxy,
    robustness,
    statuses,
    timing,
    tls,
    vectors,
)

__all__ = [
    "buffering",
    "cache",
    "connections",
    "eviction",
    "framing",
    "headers",
    "limits",
    "operations",
    "proxy",
    "robustness",
    "statuses",
    "timing",
    "tls",
    "vectors",
]
