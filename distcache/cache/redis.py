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
store connection (:mod:`.redis_link`, on hiredis), each reported to a callback
(``CallbackStore``) so that a request costs no task; on a cluster, redis-py's cluster client
routes each key and keeps up to ``max_connections`` connections per node.

Failures: every call has a time budget (``timeout``, 1 s by default, connecting included);
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
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from distcache.wire import MAX_TIMEOUT_MS

from .engine import AddResult, StoreClosedError, as_bytes, check_timeout, report_when_done
from .errors import StoreUnavailableError
from .redis_link import Endpoint, Link

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

#: URL scheme -> (the plain scheme it stands for, whether it names a cluster).
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


#: Query parameters of the connection (database, TLS files), with their checks. Anything else
#: is refused, so that a typo fails at start-up instead of at the first connection.
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
    """What a store URL says, split into this engine's options and the connection's."""

    #: The URL of the connection: scheme translated, query removed.
    client_url: str
    cluster: bool
    prefix: bytes = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: The connection's parameters (db, TLS files), as redis-py names them.
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
        parts.port  # noqa: B018 - only checked here; the connection reads it again
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
        self.send = link.send
        self.execute = link.execute

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
        self._calls: set[asyncio.Future] = set()  # referenced until done

    async def execute(self, *args: Any) -> Any:
        async with asyncio.timeout(self.budget):
            return await self.client.execute_command(*args)

    def send(self, args: tuple, callback: Callable[[Any], None]) -> None:
        report_when_done(self.execute(*args), callback, self._calls)

    async def count_keys(self, pattern: bytes) -> int:
        total = 0
        async for _ in self.client.scan_iter(match=pattern, count=_SCAN_BATCH):
            total += 1
        return total

    async def dbsize(self) -> int:
        # Summed over the primaries; without target_nodes redis-py asks one node only.
        return await self.client.dbsize(target_nodes=self.client.PRIMARIES)

    async def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        await self.client.aclose()


# What each operation's reply means (see the module's doc string for the commands).
def _added(reply: Any) -> AddResult:
    return _DUPLICATE if reply is None else _STORED


def _exists_means_duplicate(reply: Any) -> AddResult:
    return _DUPLICATE if reply else _STORED


def _as_is(reply: Any) -> Any:
    return reply


class RedisStore:
    """A ``SessionStore`` (and ``CallbackStore``) on Valkey/Redis, one server or a cluster.

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
        self._commands = {
            "add": self._add_command,
            "get": self._get_command,
            "remove": self._remove_command,
            "have": self._have_command,
        }

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

    @property
    def in_order(self) -> bool:
        """One store: every call goes down one connection, in order. A cluster spreads them."""
        return isinstance(self._backend, _SingleServer)

    # -- SessionStore: each coroutine is its command, awaited ---------------------------------

    async def add(self, session_id: bytes, session: bytes, timeout_ms: int) -> AddResult:
        return await self._run(*self._add_command(session_id, session, timeout_ms))

    async def get(self, session_id: bytes) -> bytes | None:
        return await self._run(*self._get_command(session_id))

    async def remove(self, session_id: bytes) -> bool:
        return await self._run(*self._remove_command(session_id))

    async def have(self, session_id: bytes) -> bool:
        return await self._run(*self._have_command(session_id))

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

    # -- CallbackStore: the server's path, with no coroutine per request ---------------------

    def submit(self, method: str, args: tuple, done: Callable[[object], None]) -> None:
        command, meaning = self._commands[method](*args)
        outcome = self._outcome

        def settle(reply: Any) -> None:
            done(outcome(reply, meaning))

        self._open_backend().send(command, settle)

    # -- commands: (the store command, what its reply means) ----------------------------------

    def _add_command(self, session_id: bytes, session: bytes, timeout_ms: int) -> tuple:
        key = self._key(session_id)
        if type(session) is not bytes:
            session = as_bytes("session", session)
        if type(timeout_ms) is not int or not 0 <= timeout_ms <= MAX_TIMEOUT_MS:
            check_timeout(timeout_ms)
        if timeout_ms == 0:
            # Redis refuses PX 0. Such an entry is gone by the next request, so writing it would
            # change nothing anyone can see; only a live entry (a duplicate) is visible.
            return ("EXISTS", key), _exists_means_duplicate
        return ("SET", key, session, "NX", "PX", timeout_ms), _added

    def _get_command(self, session_id: bytes) -> tuple:
        return ("GET", self._key(session_id)), _as_is

    def _remove_command(self, session_id: bytes) -> tuple:
        return ("DEL", self._key(session_id)), bool

    def _have_command(self, session_id: bytes) -> tuple:
        return ("EXISTS", self._key(session_id)), bool

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

    def _outcome(self, reply: Any, meaning: Callable[[Any], Any]) -> Any:
        """What a reply means, or StoreUnavailableError for a failed command (logged)."""
        if isinstance(reply, BaseException):  # error reply, broken link, timeout, closed ...
            self._outage.failed(reply)
            return StoreUnavailableError(f"store {self._name}: {_reason(reply)}")
        if self._outage.active:
            self._outage.succeeded()
        return meaning(reply)

    async def _run(self, command: tuple, meaning: Callable[[Any], Any]) -> Any:
        return await self._guarded(self._open_backend().execute(*command), meaning)

    async def _guarded(
        self,
        call: Awaitable,
        meaning: Callable[[Any], Any] = _as_is,
        *,
        budget: float | None = None,
    ) -> Any:
        """What ``call``'s reply means (within ``budget`` if given: single commands are bounded
        by their backend); every store failure raises one error, as :meth:`_outcome` says."""
        try:
            async with asyncio.timeout(budget):
                reply = await call
        except Exception as error:  # ReplyError, OSError, TimeoutError, redis-py's errors
            reply = error
        result = self._outcome(reply, meaning)
        if isinstance(result, StoreUnavailableError):
            raise result from reply
        return result

    def __repr__(self) -> str:
        state = "" if self._backend is not None else ", closed"
        return f"RedisStore({self._name!r}, prefix={self._prefix!r}{state})"


def _make_backend(settings: StoreSettings) -> _SingleServer | _Cluster:
    if not settings.cluster:
        return _SingleServer(Link(_endpoint(settings), settings.timeout))
    # Imported here: only clusters need redis-py.
    from redis.asyncio.cluster import RedisCluster
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return _Cluster(
        RedisCluster.from_url(
            settings.client_url,
            max_connections=settings.max_connections,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            # No retries: see the module's doc string (a retried ADD could answer DUPLICATE).
            retry=Retry(NoBackoff(), 0),
            **settings.client_options,
        ),
        settings.timeout,
    )


def _endpoint(settings: StoreSettings) -> Endpoint:
    """Where a single store is, from a checked URL."""
    parts = urlsplit(settings.client_url)
    options = settings.client_options
    unix = parts.scheme == "unix"
    # parse_store_url allowed the database in the path (TCP only) or as ?db=, not both.
    database = options.get("db") or (0 if unix else int(parts.path.strip("/") or 0))
    login = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "database": database,
    }
    if unix:
        return Endpoint(unix_path=parts.path, **login)
    tls = _tls_context(options) if parts.scheme == "rediss" else None
    return Endpoint(host=parts.hostname or "localhost", port=parts.port or 6379, tls=tls, **login)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """TLS as redis-py sets it up: the certificate verified, and its host name checked."""
    verify = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    mode = verify[options.get("ssl_cert_reqs", "required")]
    try:
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        context.check_hostname = mode != ssl.CERT_NONE and options.get("ssl_check_hostname", True)
        context.verify_mode = mode
        if "ssl_certfile" in options:
            context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    except (OSError, ssl.SSLError) as error:  # a missing or unreadable file: refuse at start-up
        raise StoreURLError(f"cannot load the TLS files: {error}") from None
    return context


def _glob_escape(prefix: bytes) -> bytes:
    """``prefix`` as a literal in a SCAN MATCH pattern."""
    special = b"\\*?[]"
    return b"".join(b"\\" + bytes([c]) if c in special else bytes([c]) for c in prefix)
