"""Prometheus metrics: counters the programs keep as plain integers, exported at scrape time.

The server and the proxy count with ``+= 1`` on their own attributes (nothing per request costs
more than that); the collectors here read those attributes when Prometheus scrapes, and
prometheus_client writes the text exposition format. :class:`MetricsListener` answers
``GET /metrics`` on the program's own event loop: no thread, so nothing races with the counters,
and a forked process keeps working.

Names follow the memcached and Redis exporters (``*_total`` counters, ``*_current_*`` gauges).
A program running several processes (``-workers``) reports them as one: see
:mod:`distcache.monitoring.shared`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .. import __version__
from ..cache import MemoryStore
from ..server.handler import UNAVAILABLE_SLOT, outcome_slot
from ..wire import Operation, Status
from .shared import PUBLISH_SECONDS

__all__ = [
    "METRICS_PATH",
    "MetricsListener",
    "ProxyCollector",
    "ServerCollector",
    "metrics_registry",
]

#: Where the metrics are served.
METRICS_PATH = "/metrics"
#: Longest HTTP request head accepted, and the time a scraper has to send it.
MAX_REQUEST_HEAD = 8192
REQUEST_SECONDS = 10.0
#: Scrapes answered at once; more connections are closed at once.
MAX_SCRAPERS = 8

# The handler's outcome codes (see distcache.server.handler) that each command reports.
_HIT_MISS = (("hit", Status.OK), ("miss", Status.NOTOK), ("unavailable", UNAVAILABLE_SLOT))
_ADD_OUTCOMES = (
    ("stored", Status.OK),
    *(
        (status.name.lower(), status)
        for status in (
            Status.ADD_MATCHING_SESSION,
            Status.ADD_CORRUPT,
            Status.ADD_TIMEOUT_RANGE,
            Status.ADD_ID_RANGE,
            Status.ADD_DATA_RANGE,
        )
    ),
    ("unavailable", UNAVAILABLE_SLOT),
)


def metrics_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of ``collectors`` plus the process's own (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(namespace="", registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


def _info(program: str, **labels: str) -> GaugeMetricFamily:
    names = ["program", "version", *labels]
    info = GaugeMetricFamily("distcache_info", "The program and its version.", labels=names)
    info.add_metric([program, __version__, *labels.values()], 1)
    return info


def _connections(owner, open_now: int, limit: int) -> Iterator:
    yield GaugeMetricFamily(
        "distcache_current_connections", "Client connections open now.", value=open_now
    )
    yield GaugeMetricFamily(
        "distcache_max_connections", "Client connections served at most at once.", value=limit
    )
    yield CounterMetricFamily(
        "distcache_connections", "Client connections accepted and served.", value=owner.accepted
    )
    yield CounterMetricFamily(
        "distcache_rejected_connections",
        "Client connections closed at once because the connection cap was reached.",
        value=owner.refused,
    )
    errors = CounterMetricFamily(
        "distcache_protocol_errors",
        "Client connections closed for breaking the protocol, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(owner.protocol_errors.items()):
        errors.add_metric([reason], count)
    yield errors


class ServerCollector(Collector):
    """The metrics of a :class:`~distcache.server.Server`."""

    def __init__(self, server, engine: str = "", *, clients: bool = True) -> None:
        """``engine`` names the engine in ``distcache_info`` (never a URL with its password);
        without ``clients`` the connections are not reported (the engine's owner, whose
        connections are the workers')."""
        self.server = server
        self.engine = engine
        self.clients = clients

    def collect(self) -> Iterable:
        server = self.server
        yield _info("dc_server", engine=self.engine or type(server.store).__name__)
        outcomes = server.handler.outcomes
        commands = CounterMetricFamily(
            "distcache_commands",
            "Requests answered, by command and outcome (hit, miss, stored, the status of a "
            "refused ADD, or unavailable when the store could not be reached).",
            labels=["command", "status"],
        )
        for operation in Operation:
            for status, code in _ADD_OUTCOMES if operation is Operation.ADD else _HIT_MISS:
                count = outcomes[outcome_slot(operation, code)]
                commands.add_metric([operation.name.lower(), status], count)
        yield commands
        if self.clients:
            yield from _connections(server, server.connection_count, server.max_connections)
        store = server.store
        if type(store) is MemoryStore:  # a shared store is watched through its own exporter
            with contextlib.suppress(RuntimeError):  # closed: nothing left to report
                yield from _memory_cache(store.cache)


def _memory_cache(cache) -> Iterator:
    yield GaugeMetricFamily(
        "distcache_current_sessions",
        "Sessions held now (an expired one counts until the next operation drops it).",
        value=cache.sessions_held,
    )
    yield GaugeMetricFamily(
        "distcache_current_bytes",
        "Bytes of session ids and sessions held now (Python's own overhead not included).",
        value=cache.bytes_held,
    )
    yield GaugeMetricFamily(
        "distcache_limit_sessions", "The most sessions held at once (-sessions).", cache.capacity
    )
    yield CounterMetricFamily(
        "distcache_evictions",
        "Live sessions dropped to make room for a new one.",
        value=cache.evicted,
    )
    yield CounterMetricFamily(
        "distcache_expirations", "Sessions dropped because they expired.", value=cache.expired
    )


class ProxyCollector(Collector):
    """The metrics of a :class:`~distcache.proxy.Proxy` and its upstream link."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterable:
        proxy = self.proxy
        link = proxy.link
        yield _info("dc_client", upstream=str(link.address))
        yield from _connections(proxy, proxy.clients, proxy.settings.max_clients)
        yield GaugeMetricFamily(
            "distcache_upstream_up",
            "1 while the connection to the upstream server is up, else 0.",
            value=1 if link.state.name == "UP" else 0,
        )
        yield CounterMetricFamily(
            "distcache_upstream_connections",
            "Connections made to the upstream server.",
            value=link.connections,
        )
        yield CounterMetricFamily(
            "distcache_upstream_reconnections",
            "Connections made to the upstream server after the first one.",
            value=max(0, link.connections - 1),
        )
        yield GaugeMetricFamily(
            "distcache_upstream_requests_in_flight",
            "Requests forwarded upstream and not answered yet.",
            value=link.in_flight,
        )


class MetricsListener:
    """Serves ``registry`` over HTTP on already bound sockets (GET or HEAD ``/metrics``).

    ``publish`` (a worker's :meth:`~.shared.MetricsSlot.publish`) is called every
    ``PUBLISH_SECONDS`` while the listener is open, and once more when it closes.
    """

    def __init__(
        self, registry: CollectorRegistry, publish: Callable[[], None] | None = None
    ) -> None:
        self.registry = registry
        self._servers: list[asyncio.AbstractServer] = []
        self._scrapers = 0
        self._publish = publish
        self._publishing: asyncio.Task | None = None

    async def start(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            if sock.family == socket.AF_UNIX:
                server = await asyncio.start_unix_server(
                    self._serve, sock=sock, limit=MAX_REQUEST_HEAD
                )
            else:
                server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_REQUEST_HEAD)
            self._servers.append(server)
        if self._publish is not None:
            self._publish()
            self._publishing = asyncio.ensure_future(self._publish_periodically(self._publish))

    @staticmethod
    async def _publish_periodically(publish: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(PUBLISH_SECONDS)
            publish()

    async def close(self) -> None:
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
            self._publishing = None
            self._publish()  # type: ignore[misc]
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._scrapers >= MAX_SCRAPERS:
            writer.transport.abort()
            return
        self._scrapers += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_SECONDS)
            writer.write(self._answer(head))
            await asyncio.wait_for(writer.drain(), REQUEST_SECONDS)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a scraper that went away or never finished its request: nothing to answer
        finally:
            self._scrapers -= 1
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, "text/plain", b"only GET and HEAD\n", b"Allow: GET, HEAD\r\n")
        if target != METRICS_PATH.encode():
            return _response(404, "text/plain", f"see {METRICS_PATH}\n".encode())
        body = generate_latest(self.registry)
        return _response(200, CONTENT_TYPE_LATEST, body, send_body=method == b"GET")


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}


def _response(
    status: int, content_type: str, body: bytes, extra: bytes = b"", *, send_body: bool = True
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + (body if send_body else b"")
