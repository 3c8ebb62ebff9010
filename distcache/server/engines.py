"""Storage-engine selection by URL: ``memory:`` today, more schemes as engines are written.

The server only sees the ``SessionStore`` interface; this registry maps a URL scheme to a factory
``(url, capacity) -> SessionStore`` so a new engine is one :func:`register_engine` call away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from ..cache import MemoryStore, SessionStore
from ..cache.redis import SCHEMES as STORE_SCHEMES
from ..cache.redis import RedisStore, StoreURLError
from ..wire import DEFAULT_CACHE_SESSIONS

log = logging.getLogger("distcache.server")

__all__ = ["DEFAULT_ENGINE_URL", "EngineError", "open_engine", "register_engine"]

#: The engine used when none is named: the in-memory cache of the legacy server.
DEFAULT_ENGINE_URL = "memory:"

EngineFactory = Callable[[str, int], SessionStore]

_FACTORIES: dict[str, EngineFactory] = {}


class EngineError(ValueError):
    """An engine URL names no known engine, or its engine refused the URL."""


def register_engine(scheme: str, factory: EngineFactory) -> None:
    """Make ``scheme:...`` URLs open engines built by ``factory(url, capacity)``."""
    _FACTORIES[scheme.lower()] = factory


def engine_schemes() -> list[str]:
    """The URL schemes an engine is registered for."""
    return sorted(_FACTORIES)


def open_engine(url: str, capacity: int) -> SessionStore:
    """The engine named by ``url``, sized for ``capacity`` sessions where the engine has a size."""
    scheme = urlsplit(url).scheme.lower() if ":" in url else ""
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}:" for name in engine_schemes())
        raise EngineError(f"unknown storage engine '{url}' (known: {known})")
    return factory(url, capacity)


def _memory_engine(url: str, capacity: int) -> SessionStore:
    if url.lower() != "memory:":
        raise EngineError(f"the memory engine takes no parameters: use 'memory:', not '{url}'")
    return MemoryStore(capacity)


register_engine("memory", _memory_engine)


def _store_engine(url: str, capacity: int) -> SessionStore:
    """Valkey/Redis (redis-py itself is imported only when a cluster is opened)."""
    try:
        store = RedisStore.from_url(url)
    except StoreURLError as error:
        raise EngineError(f"bad storage engine URL: {error}") from None
    except ImportError as error:
        raise EngineError(f"the Valkey/Redis engine needs the {error.name} package") from None
    if capacity != DEFAULT_CACHE_SESSIONS:
        log.warning("-sessions is ignored by %r: the store's maxmemory bounds the cache", store)
    return store


for _scheme in STORE_SCHEMES:
    register_engine(_scheme, _store_engine)
