"""A session store on Valkey or Redis, so that several servers can share one cache.

Every session is one key: the key prefix followed by the exact bytes of the session id (binary,
any length; no hashing, so ids can be read back with any Redis client). Each operation is one
command, so each is atomic on the store whichever server sends it:

* ADD: ``SET key session NX PX timeout`` -- stores only if no live key exists (``DUPLICATE``
  otherwise, nothing changed). Redis refuses ``PX 0``; a timeout of 0 makes an entry that is
  gone by the next request, so it is not written at all: ``EXISTS key`` tells ``DUPLICATE``
  from ``STORED``, which is still one atomic command;
* GET: ``GET``; REMOVE: ``DEL`` (1 means removed); HAVE: ``EXISTS``;
* count: ``SCAN MATCH prefix*`` over the whole keyspace (O(keys)), or ``DBSIZE`` when the prefix
  is empty and the database belongs to the cache; best effort, used by the progress line only.

Expiry is kept by the store: an entry added with timeout T is present until T ms after the store
executed the SET (1 ms resolution, "expired once now is strictly later", like the legacy), so it
lives longer than on the memory engine by the time the request took to reach the store.

Capacity is the store's memory, not a session count: run the store with ``maxmemory`` and
``maxmemory-policy volatile-ttl``, which evicts the keys closest to expiry (sampled, so
approximately the soonest-expiring ones, and as many as needed rather than a fixed batch).

Concurrency: on one server the calls of every client connection are pipelined over a single
store connection (:mod:`.redis_link`); on a cluster, redis-py's cluster client keeps a pool of up
to ``max_connections`` connections per node.

Failures: every call has a time budget (``timeout``, 1 s by default; connecting has its own);
past it, or on any store error (connection refused or lost, out of memory, read-only replica,
...), the call raises :class:`StoreUnavailableError`. Calls are never retried: a retried ADD
whose first reply was lost would answer DUPLICATE for its own session. A lost connection is
opened again by the next call, so the store's return needs no action. Outages are logged once
when they begin, every ``OUTAGE_REMINDER_S`` while they last, and once when the store answers
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from distcache.wire import MAX_TIMEOUT_MS

from .engine import AddResult, StoreClosedError, as_bytes, check_timeout
from .errors import StoreUnavailableError
from .redis_link import Link

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT_S",
    "SCHEMES",
    "RedisStore",
    "StoreSettings",
    "StoreURLError",
    "parse_store_url",
]

log = logging.getLogger("distcache.cache.redis")

#: Prepended to every session id; servers given the same URL share the same sessions.
DEFAULT_PREFIX = b"distcache:"
#: Time budget of one call (and of connecting), in seconds.
DEFAULT_TIMEOUT_S = 1.0
#: Cluster only: connections per cluster node (a single server needs just one, pipelined).
DEFAULT_MAX_CONNECTIONS = 64
#: Seconds between two "still unavailable" lines during an outage.
OUTAGE_REMINDER_S = 30.0
#: Keys asked for per SCAN step when counting: larger means fewer round trips but longer steps.
_SCAN_BATCH = 1000
#: Counting walks the keyspace in many steps, so it gets a longer budget than one command.
_COUNT_BUDGET_FACTOR = 10

#: URL scheme -> (the scheme redis-py understands, whether it names a cluster).
SCHEMES: dict[str, tuple[str, bool]] = {
    "redis": ("redis", False),
    "rediss": ("rediss", False),
    "unix": ("unix", False),
    "valkey": ("redis", False),
    "valkeys": ("rediss", False),
    "redis+cluster": ("redis", True),
    "rediss+cluster": ("rediss", True),
    "valkey+cluster": ("redis", True),
    "valkeys+cluster": ("rediss", True),
}

_STORED = AddResult.STORED
_DUPLICATE = AddResult.DUPLICATE


class StoreURLError(ValueError):
    """A store URL that cannot be used: unknown scheme or parameter, or a bad value."""


# -- URLs -------------------------------------------------------------------------------------


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise StoreURLError(f"'{name}' must be a number of seconds, 0 < {name} <= 3600: '{text}'")
    return value


def _count(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise StoreURLError(f"'{name}' must be a whole number 1..100000: '{text}'")
    return int(text)


def _database(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise StoreURLError(f"'{name}' must be a database number: '{text}'")
    return int(text)


def _yes_no(name: str, text: str) -> bool:
    answer = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.lower() not in answer:
        raise StoreURLError(f"'{name}' must be yes or no: '{text}'")
    return answer[text.lower()]


def _cert_reqs(name: str, text: str) -> str:
    if text.lower() not in ("none", "optional", "required"):
        raise StoreURLError(f"'{name}' must be none, optional or required: '{text}'")
    return text.lower()


def _path(name: str, text: str) -> str:
    if not text:
        raise StoreURLError(f"'{name}' needs a file name")
    return text


#: Query parameters handed to redis-py, with their checks. Anything else is refused, so that a
#: typo fails at start-up instead of at the first connection.
_CLIENT_PARAMETERS: dict[str, Callable[[str, str], Any]] = {
    "db": _database,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _path,
    "ssl_certfile": _path,
    "ssl_keyfile": _path,
    "ssl_check_hostname": _yes_no,
}
_OWN_PARAMETERS = ("prefix", "timeout", "max_connections")


@dataclass(frozen=True)
class StoreSettings:
    """What a store URL says, split into this engine's options and redis-py's."""

    #: The URL for redis-py: scheme translated, query removed.
    client_url: str
    cluster: bool
    prefix: bytes = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Further keyword arguments for the redis-py client (db, TLS files).
    client_options: dict[str, Any] = field(default_factory=dict)
    #: The URL without credentials or query, for messages.
    display: str = ""


def parse_store_url(url: str) -> StoreSettings:
    """Check a store URL and split it; raise :class:`StoreURLError` with the reason."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise StoreURLError(f"'{scheme}:' is not a store URL scheme (known: {known})")
    client_scheme, cluster = SCHEMES[scheme]
    if parts.fragment:
        raise StoreURLError("a store URL takes no '#' part")
    try:
        parts.port  # noqa: B018 - only checked here; redis-py reads it again
    except ValueError:
        raise StoreURLError(f"bad port in '{_display(parts)}'") from None
    path_db = _path_database(scheme, parts.path)
    own: dict[str, Any] = {}
    client_options: dict[str, Any] = {}
    # latin-1 maps each %XX escape to one byte, so a prefix can hold any bytes.
    for name, value in parse_qsl(parts.query, keep_blank_values=True, encoding="latin-1"):
        if name in own or name in client_options:
            raise StoreURLError(f"'{name}' is given twice")
        if name == "prefix":
            own[name] = value.encode("latin-1")
        elif name == "timeout":
            own[name] = _seconds(name, value)
        elif name == "max_connections":
            own[name] = _count(name, value)
        elif name in _CLIENT_PARAMETERS:
            client_options[name] = _CLIENT_PARAMETERS[name](name, value)
        else:
            accepted = ", ".join((*_OWN_PARAMETERS, *_CLIENT_PARAMETERS))
            raise StoreURLError(f"unknown parameter '{name}' (accepted: {accepted})")
    if path_db is not None and "db" in client_options:
        raise StoreURLError("give the database once: in the path or as ?db=, not both")
    if cluster and (path_db or client_options.get("db", 0)):
        raise StoreURLError("a cluster has database 0 only")
    if any(name.startswith("ssl_") for name in client_options) and client_scheme != "rediss":
        raise StoreURLError("ssl_* parameters need a TLS scheme (rediss://, valkeys://)")
    # Built by hand: urlunsplit would drop the empty host of unix:///path.
    client_url = f"{client_scheme}://{parts.netloc}{parts.path}"
    return StoreSettings(
        client_url=client_url,
        cluster=cluster,
        client_options=client_options,
        display=_display(parts),
        **own,
    )


def _path_database(scheme: str, path: str) -> int | None:
    """The database number a TCP URL's path gives (None if none); a UNIX URL's path is a file."""
    if scheme == "unix":
        if not path:
            raise StoreURLError(
                "unix:// needs the socket's path, e.g. unix:///run/valkey.sock?db=0"
            )
        return None
    number = path.strip("/")
    if not number:
        return None
    if not number.isascii() or not number.isdigit() or path.count("/") != 1:
        raise StoreURLError(f"the path of a store URL is a database number, e.g. /0: '{path}'")
    return int(number)


def _display(parts) -> str:
    host = parts.hostname or ""
    where = f"[{host}]" if ":" in host else host
    try:
        if parts.port is not None:
            where += f":{parts.port}"
    except ValueError:
        where += ":?"
    return f"{parts.scheme}://{where}{parts.path}"


# -- the engine -------------------------------------------------------------------------------


class _OutageLog:
    """Logs a run of failed calls as one outage, not one line per request."""

    __slots__ = ("_failures", "_last_line", "_name", "_since")

    def __init__(self, name: str) -> None:
        self._name = name
        self._since: float | None = None
        self._failures = 0
        self._last_line = 0.0

    @property
    def active(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._last_line = now
            log.warning(
                "store %s unavailable (%s); answering with failures until it is back",
                self._name,
                _reason(error),
            )
        elif now - self._last_line >= OUTAGE_REMINDER_S:
            self._last_line = now
            log.warning(
                "store %s still unavailable after %.0f s, %d calls failed (%s)",
                self._name,
                now - self._since,
                self._failures,
                _reason(error),
            )

    def succeeded(self) -> None:
        if self._since is not None:
            log.warning(
                "store %s answering again after %.1f s; %d calls failed meanwhile",
                self._name,
                time.monotonic() - self._since,
                self._failures,
            )
            self._since = None
            self._failures = 0


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, TimeoutError) and not text:
        return "no answer in time"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _SingleServer:
    """One Valkey/Redis server through a pipelined link (see :mod:`.redis_link`)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def execute(self, *args: Any) -> Awaitable:
        return self.link.execute(*args)

    async def count_keys(self, pattern: bytes) -> int:
        # SCAN may report a key twice if the store resizes its table meanwhile: best effort.
        cursor, total = b"0", 0
        while True:
            cursor, keys = await self.link.execute(
                "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_BATCH
            )
            total += len(keys)
            if cursor in (b"0", 0):
                return total

    async def dbsize(self) -> int:
        return await self.link.execute("DBSIZE")

    async def close(self) -> None:
        await self.link.close()


class _Cluster:
    """A Valkey/Redis cluster through redis-py's cluster client, which routes each key."""

    def __init__(self, client: Any, budget: float) -> None:
        self.client = client
        self.budget = budget

    async def execute(self, *args: Any) -> Any:
        async with asyncio.timeout(self.budget):
            return await self.client.execute_command(*args)

    async def count_keys(self, pattern: bytes) -> int:
        total = 0
        async for _ in self.client.scan_iter(match=pattern, count=_SCAN_BATCH):
            total += 1
        return total

    async def dbsize(self) -> int:
        # Summed over the primaries; without target_nodes redis-py asks one node only.
        return await self.client.dbsize(target_nodes=self.client.PRIMARIES)

    async def close(self) -> None:
        await self.client.aclose()


class RedisStore:
    """A ``SessionStore`` on Valkey/Redis (one server or a cluster), built on redis-py.

    Build it with :meth:`from_url`.
    """

    def __init__(
        self,
        backend: _SingleServer | _Cluster,
        *,
        prefix: bytes = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT_S,
        name: str = "redis",
    ) -> None:
        if not isinstance(prefix, bytes):
            raise TypeError(f"prefix must be bytes, not {type(prefix).__name__}")
        self._backend: _SingleServer | _Cluster | None = backend
        self._prefix = prefix
        self._timeout = timeout
        self._name = name
        self._outage = _OutageLog(name)
        self._last_count = 0
        self._pattern = _glob_escape(prefix) + b"*"

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url`` (see the module's URL forms). Connects lazily, at the first call."""
        settings = parse_store_url(url)
        return cls(
            _make_backend(settings),
            prefix=settings.prefix,
            timeout=settings.timeout,
            name=settings.display,
        )

    @property
    def prefix(self) -> bytes:
        return self._prefix

    # -- SessionStore -----------------------------------------------------------------------

    async def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        key = self._key(session_id)
        if type(session) is not bytes:
            session = as_bytes("session", session)
        if type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
            check_timeout(timeout_ms)
        if timeout_ms == 0:
            # Redis refuses PX 0. Such an entry is gone by the next request, so writing it would
            # change nothing anyone can see; only a live entry (a duplicate) is visible.
            exists = await self._call("EXISTS", key)
            return _DUPLICATE if exists else _STORED
        stored = await self._call("SET", key, session, "NX", "PX", timeout_ms)
        return _DUPLICATE if stored is None else _STORED

    async def get(self, session_id: bytes) -> bytes | None:
        return await self._call("GET", self._key(session_id))

    async def remove(self, session_id: bytes) -> bool:
        return bool(await self._call("DEL", self._key(session_id)))

    async def have(self, session_id: bytes) -> bool:
        return bool(await self._call("EXISTS", self._key(session_id)))

    async def count(self) -> int:
        """Live sessions under the prefix, or the last count if the store does not answer."""
        backend = self._open_backend()
        counting = backend.count_keys(self._pattern) if self._prefix else backend.dbsize()
        # On failure the outage is logged and the progress line shows the last count meanwhile.
        with contextlib.suppress(StoreUnavailableError):
            self._last_count = await self._guarded(
                counting, budget=self._timeout * _COUNT_BUDGET_FACTOR
            )
        return self._last_count

    async def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            try:
                await backend.close()
            except Exception as error:  # closing a broken link must not stop a shutdown
                log.debug("store %s: error while closing: %s", self._name, _reason(error))

    # -- helpers ----------------------------------------------------------------------------

    def _key(self, session_id: bytes) -> bytes:
        if type(session_id) is not bytes:
            session_id = as_bytes("session_id", session_id)
        return self._prefix + session_id

    def _open_backend(self) -> _SingleServer | _Cluster:
        backend = self._backend
        if backend is None:
            raise StoreClosedError(f"the store {self._name} is closed")
        return backend

    def _call(self, *args: Any) -> Awaitable:
        return self._guarded(self._open_backend().execute(*args))

    async def _guarded(self, command: Awaitable, *, budget: float | None = None) -> Any:
        """Await ``command`` (within ``budget`` if given; single commands are bounded by their
        backend) and turn every store failure into one error."""
        try:
            if budget is None:
                result = await command
            else:
                async with asyncio.timeout(budget):
                    result = await command
        except Exception as error:  # redis-py errors, OSError, TimeoutError: the store failed
            self._outage.failed(error)
            raise StoreUnavailableError(f"store {self._name}: {_reason(error)}") from error
        if self._outage.active:
            self._outage.succeeded()
        return result

    def __repr__(self) -> str:
        state = "" if self._backend is not None else ", closed"
        return f"RedisStore({self._name!r}, prefix={self._prefix!r}{state})"


def _make_backend(settings: StoreSettings) -> _SingleServer | _Cluster:
    # Imported here so that importing this module (for its URL checks) does not need redis-py.
    from redis.asyncio import ConnectionPool
    from redis.asyncio.cluster import RedisCluster
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options = {
        "socket_connect_timeout": settings.timeout,
        # No retries: see the module's doc string (a retried ADD could answer DUPLICATE).
        "retry": Retry(NoBackoff(), 0),
        **settings.client_options,
    }
    if settings.cluster:
        return _Cluster(
            RedisCluster.from_url(
                settings.client_url,
                max_connections=settings.max_connections,
                socket_timeout=settings.timeout,
                **options,
            ),
            settings.timeout,
        )
    # The pool is only a factory of configured connections (URL, TLS, AUTH, database); the link
    # does the pipelining, and its watchdog bounds every wait instead of a socket timeout.
    factory = ConnectionPool.from_url(settings.client_url, socket_timeout=None, **options)
    return _SingleServer(Link(factory.make_connection, settings.timeout))


def _glob_escape(prefix: bytes) -> bytes:
    """``prefix`` as a literal in a SCAN MATCH pattern."""
    special = b"\\*?[]"
    return b"".join(b"\\" + bytes([c]) if c in special else bytes([c]) for c in prefix)
