"""The built-in conformance cases. Importing this package registers them all."""

from . import (
    cache,
    cache_running,  # after cache: it adds a variant to one of its cases
    connections,
    framing,
    limits,
    operations,
    proxy,
    robustness,
    tls,
    vectors,
)

__all__ = [
    "cache",
    "cache_running",
    "connections",
    "framing",
    "limits",
    "operations",
    "proxy",
    "robustness",
    "tls",
    "vectors",
]
