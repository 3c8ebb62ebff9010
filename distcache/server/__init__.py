"""The reference distcache server: a thin asyncio shell around :mod:`distcache.protocol`.

:class:`Server` serves any :class:`~distcache.cache.SessionStore` on already bound listening
sockets (:func:`bind_listeners`); :func:`run_server` runs one until a stop signal;
:func:`open_engine` picks the storage engine from a URL (``memory:``).
"""

from .connection import INPUT_BACKLOG, REPLY_BACKLOG, ServerConnection
from .engines import DEFAULT_ENGINE_URL, EngineError, open_engine, register_engine
from .handler import RequestHandler
from .listeners import bind_listeners, close_listeners, unix_path_of
from .progress import ProgressReporter, format_progress
from .run import RunOptions, new_event_loop, run_server
from .server import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_PEER, Server

__all__ = [
    "DEFAULT_ENGINE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_PEER",
    "INPUT_BACKLOG",
    "REPLY_BACKLOG",
    "EngineError",
    "ProgressReporter",
    "RequestHandler",
    "RunOptions",
    "Server",
    "ServerConnection",
    "bind_listeners",
    "close_listeners",
    "format_progress",
    "new_event_loop",
    "open_engine",
    "register_engine",
    "run_server",
    "unix_path_of",
]
