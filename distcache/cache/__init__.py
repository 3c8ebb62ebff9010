"""Session storage: the engine interface the server serves from, and the in-memory engine.

``SessionStore`` is the async interface every engine implements, ``CallbackStore`` the callback
form an engine may add (the server then needs no task per request); ``MemoryStore`` is the
in-memory engine (the legacy default cache), and ``MemoryCache`` its synchronous core for callers
that must not await. ``MonotonicClock`` drives expiry by default; ``ManualClock`` lets tests step
time.
"""

from .engine import (
    AddResult,
    CallbackStore,
    Clock,
    ManualClock,
    MonotonicClock,
    SessionStore,
    StoreClosedError,
)
from .memory import MemoryCache, MemoryStore, eviction_batch

__all__ = [
    "AddResult",
    "CallbackStore",
    "Clock",
    "ManualClock",
    "MemoryCache",
    "MemoryStore",
    "MonotonicClock",
    "SessionStore",
    "StoreClosedError",
    "eviction_batch",
]
