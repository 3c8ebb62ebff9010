"""The Valkey/Redis engine against a real store: a redis-server (or valkey-server) started here.

Engine behaviour first (one store per test, told apart by key prefix), then dc_server processes
sharing one store, including the store dying and coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serverproc import dc_server, free_port, run_dc_server

from distcache.cache import AddResult, SessionStore, StoreClosedError
from distcache.cache.errors import StoreUnavailableError
from distcache.cache.redis import RedisStore, StoreURLError, parse_store_url
from distcache.cache.redis_link import Endpoint
from distcache.client import Client
from distcache.protocol import NEED_DATA, MessageDecoder, get_request, have_request, remove_request
from distcache.protocol import add_request as encode_add
from distcache.wire import MAX_PAYLOAD, Direction, Operation, Status

OK = bytes([Status.OK])
NOTOK = bytes([Status.NOTOK])
DUPLICATE = bytes([Status.ADD_MATCHING_SESSION])

redis = pytest.importorskip("redis", reason="the redis client package is not installed")

STORE_BINARY = shutil.which("valkey-server") or shutil.which("redis-server")
START_TIMEOUT = 10.0


class StoreProcess:
    """A throw-away redis-server on a loopback port: no persistence, killed at the end."""

    def __init__(self, *extra: str, cluster_node: bool = False, login: str | None = None) -> None:
        if STORE_BINARY is None:
            pytest.skip("neither valkey-server nor redis-server is installed")
        self.port = free_cluster_port() if cluster_node else free_port()
        self._extra = extra
        self._login = login
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [STORE_BINARY, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", *self._extra]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the store did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(START_TIMEOUT)

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self._login, socket_timeout=2, socket_connect_timeout=2
        )


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture(scope="module")
def store_server() -> Iterator[StoreProcess]:
    server = StoreProcess()
    yield server
    server.kill()


@pytest.fixture
def fresh_store_server() -> Iterator[StoreProcess]:
    server = StoreProcess()
    yield server
    server.kill()


def run(coroutine):
    return asyncio.run(coroutine)


def with_store(url: str, body):
    """Run ``await body(store)`` on a fresh engine for ``url``, closing it afterwards."""

    async def go():
        store = RedisStore.from_url(url)
        try:
            return await body(store)
        finally:
            await store.close()

    return run(go())


def unique_url(store_server: StoreProcess, **query: str) -> str:
    """The store's URL with a prefix of its own, so tests never see each other's sessions."""
    query.setdefault("prefix", f"t{uuid.uuid4().hex[:12]}:")
    return store_server.url + "?" + "&".join(f"{k}={v}" for k, v in query.items())


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cluster", "client_url", "prefix"),
    [
        ("redis://127.0.0.1:6379/0", False, "redis://127.0.0.1:6379/0", b"distcache:"),
        ("valkey://cache.example:6380", False, "redis://cache.example:6380", b"distcache:"),
        ("valkeys://h/2?ssl_cert_reqs=required", False, "rediss://h/2", b"distcache:"),
        ("unix:///run/valkey.sock?db=3", False, "unix:///run/valkey.sock", b"distcache:"),
        ("redis+cluster://h:7000?prefix=a%00%FFb", True, "redis://h:7000", b"a\x00\xffb"),
        ("rediss://u:secret@h:6379/0?prefix=", False, "rediss://u:secret@h:6379/0", b""),
    ],
)
def test_url_forms(url: str, cluster: bool, client_url: str, prefix: bytes) -> None:
    settings = parse_store_url(url)
    assert (settings.cluster, settings.client_url, settings.prefix) == (cluster, client_url, prefix)
    assert "secret" not in settings.display


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("memcached://h", "not a store URL scheme"),
        ("redis://h?bogus=1", "unknown parameter 'bogus'"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h/zero", "database number"),
        ("redis://h/1?db=1", "give the database once"),
        ("redis+cluster://h/1", "database 0 only"),
        ("redis://h?ssl_cert_reqs=none", "need a TLS scheme"),
        ("rediss://h?ssl_cert_reqs=maybe", "none, optional or required"),
        ("redis://h?timeout=0", "seconds"),
        ("redis://h?max_connections=-1", "whole number"),
        ("redis://h?prefix=a&prefix=b", "given twice"),
        ("unix://", "socket's path"),
    ],
)
def test_bad_urls_are_typed_errors(url: str, reason: str) -> None:
    with pytest.raises(StoreURLError, match=reason):
        parse_store_url(url)


def test_dc_server_refuses_a_bad_engine_url_without_a_traceback() -> None:
    result = run_dc_server("-listen", "IP:127.0.0.1:0", "-engine", "redis://u:hunter2@h?x=1")
    assert result.returncode == 1
    assert "unknown parameter 'x'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


# -- the engine -------------------------------------------------------------------------------


def test_is_a_session_store(store_server: StoreProcess) -> None:
    assert isinstance(RedisStore.from_url(store_server.url), SessionStore)


def test_add_get_have_remove(store_server: StoreProcess) -> None:
    async def body(store: RedisStore):
        assert await store.add(b"id", b"session", 60_000) is AddResult.STORED
        assert await store.add(b"id", b"other", 60_000) is AddResult.DUPLICATE
        assert await store.get(b"id") == b"session"
        assert await store.have(b"id") is True
        assert await store.count() == 1
        assert await store.remove(b"id") is True
        assert await store.remove(b"id") is False
        assert await store.have(b"id") is False
        assert await store.get(b"id") is None
        assert await store.count() == 0

    with_store(unique_url(store_server), body)


def test_duplicate_add_changes_neither_data_nor_expiry(store_server: StoreProcess) -> None:
    url = unique_url(store_server)

    async def body(store: RedisStore):
        await store.add(b"id", b"first", 200)
        assert await store.add(b"id", b"second", 600_000) is AddResult.DUPLICATE
        assert await store.get(b"id") == b"first"
        await asyncio.sleep(0.6)
        assert await store.have(b"id") is False

    with_store(url, body)


def test_expiry_and_re_add_after_expiry(store_server: StoreProcess) -> None:
    async def body(store: RedisStore):
        await store.add(b"short", b"s", 100)
        await store.add(b"long", b"l", 60_000)
        assert await store.have(b"short")
        await asyncio.sleep(0.5)
        assert await store.get(b"short") is None
        assert await store.have(b"short") is False
        assert await store.remove(b"short") is False
        assert await store.get(b"long") == b"l"
        assert await store.add(b"short", b"again", 60_000) is AddResult.STORED
        assert await store.get(b"short") == b"again"

    with_store(unique_url(store_server), body)


def test_get_and_have_do_not_extend_expiry(store_server: StoreProcess) -> None:
    async def body(store: RedisStore):
        await store.add(b"id", b"s", 300)
        for _ in range(5):
            await asyncio.sleep(0.1)
            await store.get(b"id")
            await store.have(b"id")
        await asyncio.sleep(0.4)
        assert await store.have(b"id") is False

    with_store(unique_url(store_server), body)


def test_timeout_zero_is_stored_already_expired(store_server: StoreProcess) -> None:
    async def body(store: RedisStore):
        assert await store.add(b"zero", b"z", 0) is AddResult.STORED
        assert await store.have(b"zero") is False
        await store.add(b"live", b"l", 60_000)
        assert await store.add(b"live", b"z", 0) is AddResult.DUPLICATE
        assert await store.get(b"live") == b"l"

    with_store(unique_url(store_server), body)


def test_binary_ids_and_the_largest_sessions(store_server: StoreProcess) -> None:
    ids = [b"\x00", b"a\x00b", b"a\x00c", b"\xff" * 64, b"*?[]\\", bytes(range(64))]
    big = bytes(range(256)) * (MAX_PAYLOAD // 256)

    async def body(store: RedisStore):
        for number, session_id in enumerate(ids):
            assert await store.add(session_id, big[number:], 60_000) is AddResult.STORED
        for number, session_id in enumerate(ids):
            assert await store.get(session_id) == big[number:]
        assert await store.get(b"a") is None  # ids are exact bytes, not C strings
        assert await store.count() == len(ids)
        long_id = b"\x01" * MAX_PAYLOAD  # GET/HAVE/REMOVE ids of any length simply miss
        assert await store.get(long_id) is None
        assert await store.have(long_id) is False
        assert await store.remove(long_id) is False

    with_store(unique_url(store_server, prefix="glob*?[x]:"), body)


def test_prefix_separates_caches_and_the_same_url_shares_one(store_server: StoreProcess) -> None:
    first, second = unique_url(store_server), unique_url(store_server)

    async def body():
        a, a_again, b = (RedisStore.from_url(url) for url in (first, first, second))
        try:
            await a.add(b"id", b"from a", 60_000)
            assert await a_again.get(b"id") == b"from a"
            assert await b.get(b"id") is None
            assert await b.add(b"id", b"from b", 60_000) is AddResult.STORED
            assert (await a.count(), await b.count()) == (1, 1)
        finally:
            for store in (a, a_again, b):
                await store.close()

    run(body())


def test_racing_adds_of_one_id_store_exactly_once(store_server: StoreProcess) -> None:
    url = unique_url(store_server, timeout="30")  # 200 cold connections on a busy machine

    async def body():
        stores = [RedisStore.from_url(url) for _ in range(4)]
        try:
            results = await asyncio.gather(
                *(store.add(b"race", b"%d" % n, 60_000) for n in range(50) for store in stores)
            )
        finally:
            for store in stores:
                await store.close()
        return results

    results = run(body())
    assert results.count(AddResult.STORED) == 1
    assert results.count(AddResult.DUPLICATE) == len(results) - 1


def test_pipelined_replies_reach_their_own_callers(store_server: StoreProcess) -> None:
    """Hundreds of calls in flight on the engine's one connection, an error reply among them."""
    url = unique_url(store_server, timeout="30")
    prefix = parse_store_url(url).prefix
    store_server.client().hset(prefix + b"not-a-session", b"field", b"value")

    async def body(store: RedisStore):
        ids = [b"id-%d" % n for n in range(300)]
        await asyncio.gather(*(store.add(i, i[::-1], 60_000) for i in ids))
        calls = [store.get(i) for i in ids]
        calls.insert(150, store.get(b"not-a-session"))  # WRONGTYPE: fails alone
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results.pop(150), StoreUnavailableError)
        assert results == [i[::-1] for i in ids]
        links = [c for c in store_server.client().client_list() if c.get("cmd") == "get"]
        assert len(links) == 1, links  # all of it on one connection

    with_store(url, body)


def test_empty_prefix_counts_the_whole_database(fresh_store_server: StoreProcess) -> None:
    fresh_store_server.client().set(b"foreign", b"x")

    async def body(store: RedisStore):
        await store.add(b"id", b"s", 60_000)
        return await store.count()

    assert with_store(fresh_store_server.url + "?prefix=", body) == 2


def test_bad_arguments_are_typed_errors(store_server: StoreProcess) -> None:
    async def body(store: RedisStore):
        with pytest.raises(TypeError):
            await store.add("id", b"s", 1000)
        with pytest.raises(TypeError):
            await store.get(7)
        with pytest.raises(ValueError):
            await store.add(b"id", b"s", -1)
        with pytest.raises(TypeError):
            await store.add(b"id", b"s", 1.5)

    with_store(unique_url(store_server), body)


def test_closed_store_raises_store_closed(store_server: StoreProcess) -> None:
    async def body():
        store = RedisStore.from_url(unique_url(store_server))
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await store.get(b"id")

    run(body())


# -- connecting: login, database, UNIX socket ------------------------------------------------


@pytest.fixture
def guarded_store_server(tmp_path: Path) -> Iterator[StoreProcess]:
    """A store with a default-user password, an ACL user, and a UNIX socket.

    The ACL user has exactly the rights the operator guide's Security section gives.
    """
    socket_path = tmp_path / "store.sock"
    server = StoreProcess(
        "--requirepass", "p@ss:word",
        "--user", "alice", "on", ">alice-secret", "~distcache:*",
        "+set", "+get", "+del", "+exists", "+scan", "+dbsize",
        "--unixsocket", str(socket_path), "--unixsocketperm", "700",
        login="p@ss:word",
    )  # fmt: skip
    server.socket_path = socket_path
    yield server
    server.kill()


def round_trip(url: str) -> bytes | None:
    async def body(store: RedisStore):
        await store.add(b"id", b"session", 60_000)
        return await store.get(b"id")

    return with_store(url, body)


def test_password_and_acl_user_from_the_url(guarded_store_server: StoreProcess) -> None:
    port = guarded_store_server.port
    assert round_trip(f"redis://:p%40ss%3Aword@127.0.0.1:{port}/0") == b"session"
    alice = f"redis://alice:alice-secret@127.0.0.1:{port}/0"
    assert round_trip(alice) == b"session"

    async def every_command(store: RedisStore) -> None:
        assert await store.add(b"x", b"s", 0) is AddResult.STORED  # EXISTS
        assert await store.add(b"x", b"s", 60_000) is AddResult.STORED  # SET
        assert await store.have(b"x") and await store.remove(b"x")  # EXISTS, DEL
        assert await store.count() == 1  # SCAN: "id" is left

    with_store(alice, every_command)


def test_a_refused_login_fails_calls_without_showing_the_password(
    guarded_store_server: StoreProcess, caplog: pytest.LogCaptureFixture
) -> None:
    port = guarded_store_server.port

    async def body(store: RedisStore):
        with pytest.raises(StoreUnavailableError, match="refused the handshake") as failure:
            await store.get(b"id")
        assert "WRONGPASS" in str(failure.value) and "wrong-secret" not in str(failure.value)
        anonymous = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(StoreUnavailableError, match="NOAUTH"):  # no password at all
            await anonymous.get(b"id")
        await anonymous.close()

    with_store(f"redis://alice:wrong-secret@127.0.0.1:{port}/0", body)
    assert "wrong-secret" not in caplog.text


def test_database_from_the_path_and_the_unix_socket(guarded_store_server: StoreProcess) -> None:
    port, path = guarded_store_server.port, guarded_store_server.socket_path
    assert round_trip(f"redis://:p%40ss%3Aword@127.0.0.1:{port}/3?prefix=db3:") == b"session"
    assert round_trip(f"unix://:p%40ss%3Aword@{path}?db=5&prefix=db5:") == b"session"
    client = guarded_store_server.client()
    assert client.keys() == []  # database 0 untouched
    client.select(3)  # redis-py's own connection: SELECT sticks to it
    assert client.get(b"db3:id") == b"session"
    client.select(5)
    assert client.get(b"db5:id") == b"session"


def test_the_password_is_kept_out_of_descriptions() -> None:
    assert "hunter2" not in repr(RedisStore.from_url("redis://u:hunter2@cache:6379/0"))
    assert "hunter2" not in repr(Endpoint(username="u", password="hunter2"))


def test_unreadable_tls_files_stop_the_server_at_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(StoreURLError, match="cannot load the TLS files"):
        RedisStore.from_url(f"rediss://127.0.0.1:6379/0?ssl_ca_certs={missing}")
    engine = f"rediss://127.0.0.1:6379/0?ssl_certfile={missing}"
    result = run_dc_server("-listen", "IP:127.0.0.1:0", "-engine", engine)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot load the TLS files" in result.stderr


# -- failures ---------------------------------------------------------------------------------


def test_unreachable_store_fails_fast_with_a_typed_error() -> None:
    async def body(store: RedisStore):
        with pytest.raises(StoreUnavailableError, match="ConnectionRefusedError"):
            await store.add(b"id", b"s", 1000)
        assert await store.count() == 0  # best effort: the last count

    with_store(f"redis://127.0.0.1:{free_port()}/0", body)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung store."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_store_that_never_answers_costs_one_time_budget() -> None:
    with silent_listener() as port:

        async def body(store: RedisStore):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="no answer in time"):
                await store.get(b"id")
            # Generous bound: this checks that the call gives up, not how fast it is.
            assert time.monotonic() - started < 5

        with_store(f"redis://127.0.0.1:{port}/0?timeout=0.3", body)


async def scripted_store(answer: bytes) -> tuple[asyncio.AbstractServer, list[int]]:
    """A fake store that sends ``answer`` for every chunk it reads; counts its connections."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while await reader.read(65536):
            writer.write(answer)
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), connections


def test_an_unreadable_reply_fails_the_call_and_the_next_call_reconnects() -> None:
    async def body() -> None:
        server, connections = await scripted_store(b"%%% not RESP\r\n")
        port = server.sockets[0].getsockname()[1]
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            for attempt in (1, 2):
                with pytest.raises(StoreUnavailableError, match="unreadable reply from the store"):
                    await store.have(b"id")
                assert len(connections) == attempt
        finally:
            await store.close()
            server.close()

    run(body())


def test_a_reply_nobody_asked_for_drops_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server, connections = await scripted_store(b":1\r\n:1\r\n")  # one reply too many
        port = server.sockets[0].getsockname()[1]
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            assert await store.have(b"id") is True
            await asyncio.sleep(0.05)  # the second reply arrives, and out of step it is
            assert await store.have(b"id") is True
            assert len(connections) == 2
        finally:
            await store.close()
            server.close()

    run(body())
    assert "a reply nobody asked for" in caplog.text


def test_a_failing_callback_does_not_cost_the_replies_behind_it(
    store_server: StoreProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: RedisStore):
        outcomes: list[object] = []

        def explode(outcome: object) -> None:
            raise RuntimeError("caller bug")

        store.submit("have", (b"a",), explode)
        store.submit("have", (b"b",), outcomes.append)
        assert await store.get(b"c") is None
        assert outcomes == [False]

    with_store(unique_url(store_server), body)
    assert "store reply callback failed" in caplog.text


def test_a_stalled_store_fails_calls_within_the_budget_and_recovers(
    fresh_store_server: StoreProcess,
) -> None:
    async def body(store: RedisStore):
        assert await store.add(b"id", b"s", 60_000) is AddResult.STORED  # connected
        fresh_store_server.client().execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(StoreUnavailableError, match="no answer in time"):
            await store.get(b"id")
        await asyncio.sleep(1.6)  # the pause is over
        assert await store.get(b"id") == b"s"

    with_store(fresh_store_server.url + "?timeout=0.3", body)


def test_full_store_without_eviction_refuses_adds(fresh_store_server: StoreProcess) -> None:
    client = fresh_store_server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 256 * 1024)
    client.config_set("maxmemory-policy", "noeviction")

    async def body(store: RedisStore):
        with pytest.raises(StoreUnavailableError, match="OOM command not allowed"):
            for number in range(100):
                await store.add(b"%d" % number, b"x" * 16_384, 60_000)

    with_store(fresh_store_server.url, body)


def test_full_store_with_volatile_ttl_evicts_the_soonest_expiring(
    fresh_store_server: StoreProcess,
) -> None:
    client = fresh_store_server.client()
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 1024 * 1024)
    client.config_set("maxmemory-policy", "volatile-ttl")
    client.config_set("maxmemory-samples", 10)
    total = 300  # 300 x 10 KB: about three times the room

    async def body(store: RedisStore):
        for number in range(total):
            result = await store.add(b"%d" % number, b"x" * 10_000, 60_000 + 1000 * number)
            assert result is AddResult.STORED
        return [await store.have(b"%d" % number) for number in range(total)]

    present = with_store(fresh_store_server.url, body)
    kept = [n for n in range(total) if present[n]]
    evicted = [n for n in range(total) if not present[n]]
    assert evicted and kept
    assert present[-1]  # the newest, longest-lived session was stored
    # Eviction samples keys, so only on average does it pick the soonest-expiring ones.
    assert sum(evicted) / len(evicted) < sum(kept) / len(kept)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A three-node cluster (no replicas); yields the URL of one node."""
    cli = shutil.which("valkey-cli") or shutil.which("redis-cli")
    if cli is None:
        pytest.skip("no valkey-cli or redis-cli to create a cluster")
    nodes: list[StoreProcess] = []
    with tempfile.TemporaryDirectory() as state:
        try:
            for number in range(3):
                config = f"{state}/nodes-{number}.conf"  # each node keeps its cluster state here
                options = ("--cluster-enabled", "yes", "--cluster-config-file", config)
                nodes.append(StoreProcess(*options, cluster_node=True))
            addresses = [f"127.0.0.1:{node.port}" for node in nodes]
            create = [
                cli,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ]
            subprocess.run(create, check=True, capture_output=True, timeout=30)
            deadline = time.monotonic() + START_TIMEOUT
            while any(
                b"cluster_state:ok" not in n.client().execute_command("CLUSTER", "INFO")
                for n in nodes
            ):
                assert time.monotonic() < deadline, "the cluster did not form"
                time.sleep(0.1)
            yield f"redis+cluster://{addresses[0]}"
        finally:
            for node in nodes:
                node.kill()


def test_cluster_spreads_sessions_over_its_nodes(cluster: str) -> None:
    ids = [b"id-%d\x00" % n for n in range(30)]

    async def body(store: RedisStore):
        for session_id in ids:
            assert await store.add(session_id, session_id * 2, 60_000) is AddResult.STORED
        assert await store.add(ids[0], b"again", 60_000) is AddResult.DUPLICATE
        assert [await store.get(i) for i in ids] == [i * 2 for i in ids]
        assert await store.count() == len(ids)
        assert await store.remove(ids[0]) and not await store.have(ids[0])
        assert await store.add(ids[1], b"z", 0) is AddResult.DUPLICATE

    with_store(cluster + "?prefix=spread:", body)
    node = redis.Redis.from_url(cluster.replace("redis+cluster", "redis"))
    ports = {int(entry[2][1]) for entry in node.execute_command("CLUSTER", "SLOTS")}
    holding = [port for port in ports if redis.Redis(port=port).dbsize()]
    assert len(holding) >= 2, "the sessions did not spread over the nodes"

    async def count_all(store: RedisStore):
        return await store.count()  # DBSIZE summed over the primaries

    assert with_store(cluster + "?prefix=", count_all) == len(ids) - 1


def test_dc_server_on_a_cluster(cluster: str) -> None:
    with dc_server("-engine", cluster + "?prefix=served:") as server, client_of(server) as cache:
        assert cache.add(b"k", b"session", 60_000)
        assert cache.get(b"k") == b"session"
        assert cache.add_status(b"k", b"x", 60_000) is Status.ADD_MATCHING_SESSION


# -- TLS (rediss://) ---------------------------------------------------------------------------


class TlsStoreProcess(StoreProcess):
    """A store that speaks only TLS, with a certificate from a throw-away CA (trustme);
    ``require_client_cert`` makes it demand one from its clients too (mutual TLS)."""

    def __init__(self, tmp: Path, *, require_client_cert: bool = False) -> None:
        trustme = pytest.importorskip("trustme")
        self.ca = trustme.CA()
        self.files = {name: tmp / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
        self.ca.cert_pem.write_to_path(self.files["ca"])
        server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        server_cert.private_key_pem.write_to_path(self.files["key"])
        server_cert.cert_chain_pems[0].write_to_path(self.files["cert"])
        client_cert = self.ca.issue_cert("dc-server.example")
        client_cert.private_key_pem.write_to_path(self.files["ckey"])
        client_cert.cert_chain_pems[0].write_to_path(self.files["ccert"])
        super().__init__(
            "--port", "0", "--tls-port", "{port}",
            "--tls-cert-file", str(self.files["cert"]),
            "--tls-key-file", str(self.files["key"]),
            "--tls-ca-cert-file", str(self.files["ca"]),
            "--tls-auth-clients", "yes" if require_client_cert else "no",
        )  # fmt: skip

    def start(self) -> None:
        self._extra = tuple(str(self.port) if a == "{port}" else a for a in self._extra)
        argv = [STORE_BINARY, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*argv, *self._extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode(errors="replace")
                if "TLS" in error or "tls" in error:
                    pytest.skip(f"{STORE_BINARY} was built without TLS support")
                raise AssertionError(f"the TLS store did not start: {error[-300:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the TLS store did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.files['ca']}"

    def with_client_cert(self) -> str:
        return f"{self.url}&ssl_certfile={self.files['ccert']}&ssl_keyfile={self.files['ckey']}"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def tls_store(tmp_path: Path) -> Iterator[TlsStoreProcess]:
    server = TlsStoreProcess(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def mutual_tls_store(tmp_path: Path) -> Iterator[TlsStoreProcess]:
    server = TlsStoreProcess(tmp_path, require_client_cert=True)
    yield server
    server.kill()


def test_tls_store_verified_against_its_ca(tls_store: TlsStoreProcess) -> None:
    async def body(store: RedisStore):
        assert await store.add(b"id\x00tls", b"\xffsession", 60_000) is AddResult.STORED
        assert await store.get(b"id\x00tls") == b"\xffsession"
        assert await store.remove(b"id\x00tls")

    with_store(tls_store.url + "&timeout=5", body)


def test_tls_store_with_an_untrusted_certificate_is_refused(
    tls_store: TlsStoreProcess, tmp_path: Path
) -> None:
    """Certificates are checked: a CA that did not sign the store's certificate makes every call
    a typed store failure, never a silent plain or unverified connection."""
    trustme = pytest.importorskip("trustme")
    stranger = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(stranger)
    url = f"rediss://127.0.0.1:{tls_store.port}/0?ssl_ca_certs={stranger}&timeout=2"

    async def body(store: RedisStore):
        with pytest.raises(StoreUnavailableError):
            await store.have(b"id")

    with_store(url, body)


def test_plain_redis_url_to_a_tls_only_store_fails_cleanly(tls_store: TlsStoreProcess) -> None:
    async def body(store: RedisStore):
        with pytest.raises(StoreUnavailableError):
            await store.have(b"id")

    with_store(f"redis://127.0.0.1:{tls_store.port}/0?timeout=1", body)


def test_mutual_tls_needs_the_client_certificate(mutual_tls_store: TlsStoreProcess) -> None:
    async def without_cert(store: RedisStore):
        with pytest.raises(StoreUnavailableError):
            await store.have(b"id")

    async def with_cert(store: RedisStore):
        assert await store.add(b"mtls", b"session", 60_000) is AddResult.STORED
        assert await store.have(b"mtls")

    with_store(mutual_tls_store.url + "&timeout=2", without_cert)
    with_store(mutual_tls_store.with_client_cert() + "&timeout=5", with_cert)


def test_two_servers_share_a_tls_store(tls_store: TlsStoreProcess) -> None:
    url = tls_store.url + "&timeout=5"
    with (
        dc_server("-engine", url) as first,
        dc_server("-engine", url) as second,
        Client(first.listen, timeout=5.0, strict_timeouts=False) as a,
        Client(second.listen, timeout=5.0, strict_timeouts=False) as b,
    ):
        assert a.add(b"over-tls", b"session", 60_000)
        assert b.get(b"over-tls") == b"session"
        assert b.remove(b"over-tls")
        assert not a.have(b"over-tls")


# -- dc_server processes on one store ---------------------------------------------------------


def client_of(server, timeout: float = 5.0) -> Client:
    return Client(server.listen, timeout=timeout, strict_timeouts=False)


def test_two_servers_share_one_store(store_server: StoreProcess) -> None:
    url = unique_url(store_server, timeout="5")
    with (
        dc_server("-engine", url) as first,
        dc_server("-engine", url) as second,
        client_of(first) as a,
        client_of(second) as b,
    ):
        assert a.add(b"shared", b"session", 60_000)
        assert b.get(b"shared") == b"session"
        assert b.have(b"shared")
        assert b.add_status(b"shared", b"other", 60_000) is Status.ADD_MATCHING_SESSION
        assert b.remove(b"shared")
        assert not a.have(b"shared")
        assert a.get(b"shared") is None

        assert a.add(b"brief", b"session", 300)
        assert b.have(b"brief")
        time.sleep(0.9)
        assert not b.have(b"brief")
        assert b.add(b"brief", b"anew", 60_000)
        assert a.get(b"brief") == b"anew"


@contextlib.contextmanager
def server_with_open_link(store_server: StoreProcess) -> Iterator:
    """A dc_server on the store whose link to it is already open."""
    with dc_server("-engine", unique_url(store_server, timeout="5")) as server:
        with client_of(server) as warm_up:
            assert warm_up.add(b"warm-up", b"s", 60_000)
        yield server


@contextlib.contextmanager
def writes_held(store_server: StoreProcess) -> Iterator[Callable[..., int]]:
    """The store holds every write command for the block (CLIENT PAUSE WRITE). Yields
    ``queued(at_least, wait=2)``: the bytes waiting unparsed in the store's input buffer for the
    server's link, once they reach ``at_least`` or after ``wait`` seconds."""
    admin = store_server.client()

    def queued(at_least: int, wait: float = 2.0) -> int:
        deadline = time.monotonic() + wait
        while True:
            time.sleep(0.05)
            links = [c for c in admin.client_list() if c["id"] != str(admin.client_id())]
            found = max(int(c.get("qbuf", 0)) for c in links)
            if found >= at_least or time.monotonic() > deadline:
                return found

    admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        yield queued
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")


def test_requests_from_many_connections_are_in_flight_together(store_server: StoreProcess) -> None:
    """The server pipelines store calls: while the store holds writes, the requests of several
    client connections all wait in the store's input buffer for the server's connection."""
    session = b"s" * 1000
    with server_with_open_link(store_server) as server:
        sockets = [server.connect(timeout=10) for _ in range(8)]
        with writes_held(store_server) as queued:
            for uid, sock in enumerate(sockets):
                sock.sendall(add_request(b"held-%d" % uid, uid, session=session))
            # The first held SET is parsed; the seven behind it wait unparsed in the query buffer.
            assert queued(at_least=7 * len(session)) >= 7 * len(session)
        for sock in sockets:
            assert recv_reply(sock)[-1] == Status.OK
            sock.close()


def test_pipelined_requests_of_one_connection_are_in_flight_together(
    store_server: StoreProcess,
) -> None:
    """A proxy's one connection: its pipelined requests reach the store together, and the
    replies come back in request order."""
    session = b"s" * 1000
    with server_with_open_link(store_server) as server:
        sock = server.connect(timeout=10)
        with writes_held(store_server) as queued:
            sock.sendall(b"".join(add_request(b"held-%d" % uid, uid, session=session)
                                  for uid in range(8)))  # fmt: skip
            sock.shutdown(socket.SHUT_WR)  # answered all the same, then closed
            assert queued(at_least=7 * len(session)) >= 7 * len(session)
        answers = read_answers(sock, 8)
        assert [(a.request_uid, a.payload) for a in answers] == [(uid, OK) for uid in range(8)]


def test_requests_in_flight_on_one_connection_hold_a_bounded_number_of_bytes(
    store_server: StoreProcess,
) -> None:
    """Large ADDs pipelined while the store stalls: about two messages' worth go to the store
    (INPUT_BACKLOG), the rest wait in the client's socket; all are answered once it resumes."""
    session = b"s" * 30_000
    with server_with_open_link(store_server) as server:
        sock = server.connect(timeout=10)
        with writes_held(store_server) as queued:
            sock.sendall(b"".join(encode_add(uid, b"big-%d" % uid, session, 60_000)
                                  for uid in range(8)))  # fmt: skip
            sock.shutdown(socket.SHUT_WR)
            # Ample time to send the store everything, were the server allowed to.
            found = queued(at_least=3 * len(session), wait=0.5)
            assert 2 * len(session) <= found < 3 * len(session)  # 3 in flight, 1 parsed
        answers = read_answers(sock, 8)
        assert [(a.request_uid, a.payload) for a in answers] == [(uid, OK) for uid in range(8)]


def read_answers(sock: socket.socket, count: int) -> list:
    """``count`` answers, then nothing more: the server has closed the connection."""
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    answers = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            chunk = sock.recv(65536)
            if not chunk:
                assert len(answers) == count, f"closed after {len(answers)} of {count} answers"
                return answers
            decoder.receive_data(chunk)
        elif len(answers) == count:
            return answers
        else:
            answers.append(event)


@pytest.fixture(scope="module")
def server_on_store(store_server: StoreProcess) -> Iterator:
    with dc_server("-engine", unique_url(store_server, timeout="5")) as server:
        yield server


_OPERATIONS = st.tuples(
    st.sampled_from(Operation), st.integers(0, 3), st.binary(min_size=1, max_size=3000)
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_OPERATIONS, min_size=1, max_size=40))
def test_pipelined_requests_take_effect_in_request_order(server_on_store, operations) -> None:
    """Requests sent in one write are in flight together, yet each sees the ones before it: the
    answers are those of a dict updated one request at a time."""
    namespace = uuid.uuid4().hex.encode()  # each example its own ids
    model: dict[bytes, bytes] = {}
    requests, expected = [], []
    for uid, (operation, number, session) in enumerate(operations):
        session_id = namespace + b"-%d" % number
        if operation is Operation.ADD:
            requests.append(encode_add(uid, session_id, session, 600_000))
            expected.append(DUPLICATE if session_id in model else OK)
            model.setdefault(session_id, session)
        elif operation is Operation.GET:
            requests.append(get_request(uid, session_id))
            expected.append(model.get(session_id, NOTOK))
        elif operation is Operation.REMOVE:
            requests.append(remove_request(uid, session_id))
            expected.append(OK if model.pop(session_id, None) is not None else NOTOK)
        else:
            requests.append(have_request(uid, session_id))
            expected.append(OK if session_id in model else NOTOK)
    with server_on_store.connect(timeout=10) as sock:
        sock.sendall(b"".join(requests))
        sock.shutdown(socket.SHUT_WR)  # the end of input: answered, then closed
        answers = read_answers(sock, len(requests))
    assert [a.request_uid for a in answers] == list(range(len(requests)))
    assert [a.payload for a in answers] == expected


def test_a_protocol_error_behind_requests_in_flight_waits_for_their_answers(
    server_on_store,
) -> None:
    with server_on_store.connect(timeout=10) as sock:
        sock.sendall(
            b"".join(have_request(uid, b"x") for uid in range(12)) + b"\x00\x12\x00\x00\x00"
        )
        answers = read_answers(sock, 12)  # then closed, without an answer to the garbage
    assert [(a.request_uid, a.payload) for a in answers] == [(uid, NOTOK) for uid in range(12)]


def test_conformance_core_profile_with_the_redis_engine(store_server: StoreProcess) -> None:
    """The whole core suite; the capacity cases are expected failures (see the profile)."""
    profile = Path(__file__).parents[1] / "conformance" / "profiles" / "redis-engine.toml"
    server = f"{sys.executable} -m distcache.cli.dc_server -listen {{listen}}"
    engine = f"{store_server.url}?prefix=conformance-{uuid.uuid4().hex[:8]}-{{listen}}:"
    argv = [sys.executable, "-m", "distcache", "conformance", "--profile", "core", "--jobs", "8"]
    argv += ["--server-cmd", f"{server} -engine {engine}", "--implementation-profile", str(profile)]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=110,
        stdin=subprocess.DEVNULL,
    )
    lines = result.stdout.splitlines()
    summary = next((line for line in reversed(lines) if line.startswith("summary:")), "")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "XFAIL" in summary and "FAIL," not in summary, summary


def add_request(session_id: bytes, uid: int, *, session: bytes = b"session") -> bytes:
    payload = (60_000).to_bytes(4, "big") + len(session_id).to_bytes(4, "big")
    payload += session_id + session
    header = b"\x00\x11\x00\x00\x00" + uid.to_bytes(4, "big") + b"\x00\x00\x01"
    return header + len(payload).to_bytes(2, "big") + payload


def recv_reply(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 14 or len(data) < 14 + int.from_bytes(data[12:14], "big"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data


def test_servers_answer_failures_while_the_store_is_down_and_recover(
    fresh_store_server: StoreProcess,
) -> None:
    url = fresh_store_server.url + "?timeout=2"
    with dc_server("-engine", url) as first, dc_server("-engine", url) as second:
        with client_of(first) as a, client_of(second) as b:
            assert a.add(b"before", b"s", 60_000)
            fresh_store_server.kill()
            for _ in range(3):  # answered (the client would time out on a hang), as failures
                assert a.add_status(b"during", b"s", 60_000) is Status.ADD_MATCHING_SESSION
                assert b.get(b"before") is None
                assert not b.have(b"before")
                assert not a.remove(b"before")
            fresh_store_server.start()  # same port, empty store
            assert a.add(b"after", b"s", 60_000)
            assert b.get(b"after") == b"s"
            assert not b.have(b"before")
        log = first.stderr
    assert log.count("unavailable") == 1, log  # one line for the whole outage
    assert log.count("answering again") == 1, log
    assert "Traceback" not in log


def test_workers_each_talk_to_the_store_and_see_one_cache(store_server: StoreProcess) -> None:
    """-workers 2 on Valkey/Redis: no engine owner; each worker has its own store connection."""
    from test_workers import children, only, started, wait_for

    listen = f"UNIX:{tempfile.mkdtemp(prefix='dcw')}/scache"  # one listener shared by both
    engine = unique_url(store_server)
    with dc_server("-engine", engine, "-workers", "2", "-log-level", "INFO", listen=listen) as (
        server
    ):
        wait_for(lambda: len(started(server.stderr)) == 2, what="the workers")
        assert set(started(server.stderr)) == {"worker 1", "worker 2"}
        first, second = started(server.stderr).values()
        assert children(server.pid) == {first, second}
        with only([first, second], first), Client(server.listen) as cache:
            assert cache.add(b"from-first", b"session", 60_000)
        with only([first, second], second), Client(server.listen) as cache:
            assert cache.get(b"from-first") == b"session"
            assert not cache.add(b"from-first", b"again", 60_000)
