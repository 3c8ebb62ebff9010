"""The built-in conformance cases. Importing this package registers them all."""

from . import (
    cache,
    connections,
    framing,
    limits,
    operations,
    peers,
    proxy,
    robustness,
    tls,
    vectors,
)

__all__ = [
    "cache",
    "connections",
    "framing",
    "limits",
    "operations",
    "peers",
    "proxy",
    "robustness",
    "tls",
    "vectors",
]
