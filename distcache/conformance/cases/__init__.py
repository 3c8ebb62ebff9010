"""The built-in conformance cases. Importing this package registers them all."""

from . import (
    buffering,
    cache,
    cache_running,  # after cache: it adds a variant to one of its cases
    connections,
    eviction,
    framing,
    headers,
    limits,
    operations,
    peers,
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
    "cache_running",
    "connections",
    "eviction",
    "framing",
    "headers",
    "limits",
    "operations",
    "peers",
    "proxy",
    "robustness",
    "statuses",
    "timing",
    "tls",
    "vectors",
]
