"""-metrics with -workers: one scrape reports the whole program, whichever process answers it.

Traffic is sent through each worker on purpose (the others stopped, see test_workers.only); the
scrapes that follow must all show the totals, since any process may answer one.
"""

from __future__ import annotations

import os
import signal

from proxyproc import DcClient
from serverproc import DcServer, ask, free_port
from test_monitoring_metrics import NOTOK, OK, scrape, value, wait_until
from test_workers import only, server_with_workers, started, wait_for, workers_of

from distcache.protocol import add_request, get_request, have_request
from distcache.wire import Status

SCRAPES = 12  # with 3 processes answering, each of them answers one of 12 (all but 3 in 10^5)


def every_scrape(metrics: str, predicate) -> bool:
    """Whether ``SCRAPES`` scrapes in a row all satisfy ``predicate`` (a sample it reads that is
    missing counts as not satisfying it)."""
    try:
        return all(predicate(scrape(metrics)) for _ in range(SCRAPES))
    except KeyError:
        return False


def test_server_workers_metrics_add_up_every_process() -> None:
    metrics = f"127.0.0.1:{free_port()}"
    with server_with_workers("-metrics", metrics, "-sessions", "64", workers=2) as server:
        workers = workers_of(server)
        for n, pid in enumerate(workers):
            with only(workers, pid), server.connect() as sock:
                assert ask(sock, add_request(1, b"id%d" % n, b"x" * 10, 60_000)) == OK
                assert ask(sock, get_request(2, b"id%d" % n)) == b"x" * 10
                assert ask(sock, get_request(3, b"absent")) == NOTOK
                assert ask(sock, have_request(4, b"id%d" % n)) == OK
                refused = add_request(5, b"", b"x", 1000)  # refused by the worker itself
                assert ask(sock, refused) == bytes([Status.ADD_ID_RANGE])

        def totals(samples) -> bool:
            commands = "distcache_commands_total"
            return (
                value(samples, commands, command="add", status="stored") == 2
                and value(samples, commands, command="add", status="add_id_range") == 2
                and value(samples, commands, command="get", status="hit") == 2
                and value(samples, commands, command="get", status="miss") == 2
                and value(samples, commands, command="have", status="hit") == 2
                # one cache's, never added up over the workers that share it
                and value(samples, "distcache_current_sessions") == 2
                and value(samples, "distcache_current_bytes") == 2 * (3 + 10)
                and value(samples, "distcache_limit_sessions") == 64
                # the start-up probe of the test helper, then one connection per worker; the
                # owner's connections (the workers' links) are not clients
                and value(samples, "distcache_connections_total") == 3
                and value(samples, "distcache_current_connections") == 0
            )

        wait_for(lambda: every_scrape(metrics, totals), what="the totals in every scrape")
        samples = scrape(metrics)
        info = [key for key in samples if key[0] == "distcache_info"]
        assert len(info) == 1 and ("engine", "memory:") in info[0][1]
        assert value(samples, "distcache_max_connections") == 2 * 1024  # both workers' caps

        # A worker killed outright: its counters stay in the totals (they never go backwards).
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: workers[0] not in workers_of(server), what="a replacement")
        with server.connect() as sock:
            assert ask(sock, have_request(6, b"id0")) == OK

            def after_the_kill(samples) -> bool:
                have = value(samples, "distcache_commands_total", command="have", status="hit")
                return (
                    have == 3
                    and value(samples, "distcache_connections_total") == 4
                    and value(samples, "distcache_current_connections") == 1
                )

            wait_for(lambda: every_scrape(metrics, after_the_kill), what="the new totals")


def test_a_dead_worker_s_gauges_leave_the_totals() -> None:
    """Its connections died with it: the supervisor drops them as it reaps the worker."""
    metrics = f"127.0.0.1:{free_port()}"
    with server_with_workers("-metrics", metrics, workers=2) as server:
        workers = workers_of(server)
        with only(workers, workers[0]):
            held = server.connect()
            assert ask(held, have_request(1, b"x")) == NOTOK
        try:
            connected = lambda s: value(s, "distcache_current_connections") == 1  # noqa: E731
            wait_for(lambda: every_scrape(metrics, connected), what="the open connection")
            os.kill(workers[0], signal.SIGKILL)
            wait_for(lambda: workers[0] not in workers_of(server), what="a replacement")
            gone = lambda s: value(s, "distcache_current_connections") == 0  # noqa: E731
            wait_for(lambda: every_scrape(metrics, gone), what="the connection to leave")
        finally:
            held.close()


def test_proxy_workers_metrics_add_up_every_worker(tmp_path) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    upstream = DcServer([], listen=f"IP:127.0.0.1:{free_port()}")
    path = str(tmp_path / "scache")
    proxy = DcClient(path, upstream.listen, "-workers", "3", "-metrics", metrics)
    try:
        wait_for(lambda: len(started(proxy.stderr)) == 3, what="the workers")
        workers = workers_of(proxy)
        for pid in workers:
            with only(workers, pid), proxy.connect() as local:
                assert ask(local, have_request(1, b"x")) == NOTOK

        def totals(samples) -> bool:
            return (
                value(samples, "distcache_upstream_connections_total") == 3  # one link each
                and value(samples, "distcache_upstream_up") == 1
                and value(samples, "distcache_connections_total") == 4  # the probe, then 3
                and value(samples, "distcache_max_connections") == 3 * 1024
            )

        wait_for(lambda: every_scrape(metrics, totals), what="the totals in every scrape")
        upstream.stop()  # every link goes down
        down = lambda s: value(s, "distcache_upstream_up") == 0  # noqa: E731
        wait_until(lambda: every_scrape(metrics, down))
    finally:
        proxy.stop()
        upstream.stop()
