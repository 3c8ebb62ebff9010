"""The optional compiled decoder, on the pattern of aiohttp's and msgpack's extensions.

``distcache.protocol._cdecoder`` is built from ``_cdecoder.c`` by ``pip install`` where a C
compiler exists. It is used when it imports, was built from the current schema (its
``SCHEMA_DIGEST`` matches :func:`distcache.wire.cheader.digest`) and ``DISTCACHE_NO_EXTENSIONS``
is unset or empty; otherwise the pure-Python decoder does all the work.
"""

from __future__ import annotations

import os
import warnings

from ..wire import cheader

#: True when the environment asks for pure Python (read once, at import).
NO_EXTENSIONS = bool(os.environ.get("DISTCACHE_NO_EXTENSIONS"))


def load():
    """The compiled module, or None (not built, disabled, or built from an older schema)."""
    if NO_EXTENSIONS:
        return None
    try:
        from . import _cdecoder
    except ImportError:
        return None
    if cheader.digest() != _cdecoder.SCHEMA_DIGEST:
        warnings.warn(
            "distcache: the compiled decoder was built from another schema; rebuild it "
            "(pip install -e .); using pure Python",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _cdecoder
