"""``dc_server -workers N``: worker processes that own the client connections, one cache.

Every worker accepts on the inherited listeners and runs the same connection code as a single
process (decoding, validation, refusals, order, back-pressure). Where the cache lives decides the
rest:

* **memory engine, shared**: where the optional extension ``distcache.cache._shared`` is built,
  the supervisor makes the cache in shared memory before it forks (``MemoryStore.sharing``) and
  every worker answers from it directly, as a single process answers from its own; capacity,
  eviction and every ADD/GET rule are the one cache's. The cache outlives any worker (the
  supervisor keeps it mapped too). The first worker reports ``-progress``, counting the
  requests of all workers (each publishes its count in shared memory twice a second).
* **memory engine, relayed** (no extension, or ``DISTCACHE_NO_EXTENSIONS=1``): one more
  process, the engine's owner, serves the cache as a plain server on a UNIX socket in a private
  directory (mode 0700) that the supervisor binds and keeps; each worker forwards its requests
  there over one pipelined link (:mod:`distcache.server.relay`). Capacity, eviction and every
  ADD/GET rule are the owner's, exactly as with one process. The supervisor keeps the owner's listener open, so a replacement owner takes over the connections
  the workers make while it starts (the cache itself starts empty, as after a restart).
* **Valkey/Redis**: each worker opens its own connection to the store; no owner is needed.

On SIGTERM/SIGINT the workers stop first, then the owner, so that requests the workers were
relaying still get their answers. SIGHUP does in every process what it does to a single one
(reopen the log file, re-read the TLS files) and never stops the server.

With ``-metrics`` every child writes its counters to shared memory and whichever answers a scrape
reports them all (:mod:`distcache.monitoring.shared`).

The private directory is removed by the supervisor when it exits, and by the owner when it
finds itself orphaned (the supervisor was killed), so that no exit leaves it behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from ..address import parse_address
from ..cache import MemoryStore, SessionStore
from ..monitoring.logs import reopen_log_files
from ..workers import Supervisor, WorkerSpec, stop_timeout_for
from .accepting import AcceptCounts
from .engines import open_engine
from .listeners import (
    BACKLOG,
    bind_listeners,
    close_listeners,
    close_listeners_but,
    listeners_per_worker,
)
from .progress import OperationTotals
from .relay import OwnerRelay
from .run import RunOptions, defer_stop_requests, run_server, stop_requested_early

__all__ = ["OWNER_SOCKET_NAME", "run_workers"]

log = logging.getLogger("distcache.server")

#: The owner's socket file, in the private directory the supervisor creates.
OWNER_SOCKET_NAME = "engine"


def run_workers(
    sockets: list[socket.socket],
    store: SessionStore,
    *,
    engine_url: str,
    sessions: int,
    workers: int,
    options: RunOptions,
) -> int:
    """Supervise ``workers`` processes serving ``sockets`` (plus the owner of a memory ``store``)
    until a stop signal; return the exit status. ``options.on_ready`` is called once all are
    started; ``-progress`` is reported by the owner (shared cache, Valkey/Redis: by the first
    worker)."""
    child_options = replace(options, on_ready=None)
    for sock in sockets:  # the pid file is written: clients may queue for the first worker
        sock.listen(BACKLOG)
    shares = listeners_per_worker(sockets, workers)
    # SIGHUP: the parent reloads too, so that a replacement child starts with what was re-read.
    reload = options.on_reload or reopen_log_files
    supervision = {
        "killable": options.killable,
        "on_started": options.on_ready,
        "stop_requested": stop_requested_early,
        "on_forward": lambda _signum: reload(),
        "stop_timeout": stop_timeout_for(options.grace),
    }
    # -metrics: every child publishes its counters in shared memory (the owner in slot 0).
    shared = _shared_metrics(options, workers + 1)

    # The workers take connections in turn: each holds no more than the least loaded one.
    accepts = AcceptCounts(workers)
    # -progress counts the operations of all workers (without an owner, that sees them all).
    operations = OperationTotals(workers) if options.progress else None

    def with_metrics(index: int, *, clients: bool = True) -> tuple[RunOptions, Callable | None]:
        """A child's options with its metrics slot, and what the parent does when it exits."""
        if shared is None:
            return child_options, None
        slot = shared.slot(index, clients=clients)
        return replace(child_options, metrics_slot=slot), partial(shared.retire, index)

    def for_worker(n: int) -> tuple[RunOptions, Callable[[], None]]:
        """Worker ``n``'s options (role, metrics, turn at accepting, share of -progress), and
        what the parent does when it exits."""
        worker_options, retire_metrics = with_metrics(n + 1)
        worker_options = replace(
            worker_options,
            role=f"worker {n + 1} of {workers}",
            accept_slot=accepts.slot(n),
            operations=operations,
            worker_index=n,
        )

        def retire() -> None:
            accepts.retire(n)
            if retire_metrics is not None:
                retire_metrics()

        return worker_options, retire

    memory = type(store) is MemoryStore
    # Made before the fork, so that every worker maps it (None without the extension).
    shared_store = _shared_store(store.cache.capacity) if memory else None
    if not memory or shared_store is not None:
        specs = []
        for n in range(workers):
            worker_options, retire = for_worker(n)
            if shared_store is not None:
                run = _shared_worker(shares, n, shared_store, worker_options)
            else:
                run = _store_worker(shares, n, engine_url, sessions, worker_options)
            specs.append(WorkerSpec("worker", run, on_exit=retire))
        return Supervisor(specs, **supervision).run()
    directory = tempfile.mkdtemp(prefix="distcache-")  # 0700: only this user reaches the owner
    try:
        owner_address = parse_address(f"UNIX:{os.path.join(directory, OWNER_SOCKET_NAME)}")
        owner_sockets = bind_listeners(owner_address)
        for sock in owner_sockets:
            # Listening from now on, across owner restarts: a worker's connection waits in the
            # backlog for the owner instead of being refused.
            sock.listen(BACKLOG)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise

    supervisor_pid = os.getpid()

    owner_options, retire_owner = with_metrics(0, clients=False)  # its clients are the workers
    owner_options = replace(
        owner_options,
        max_connections=max(workers * 4, 64),
        role=f"engine owner of {workers} workers",
    )

    def owner() -> int:
        close_listeners_but(shares, [])
        defer_stop_requests(options.killable)
        try:
            return run_server(owner_sockets, store, owner_options)
        finally:
            if os.getppid() != supervisor_pid:  # orphaned: nobody else will remove it
                shutil.rmtree(directory, ignore_errors=True)

    def worker(mine: list[socket.socket], worker_options: RunOptions) -> int:
        close_listeners(owner_sockets)
        close_listeners_but(shares, mine)
        defer_stop_requests(options.killable)
        relay = OwnerRelay(owner_address, store.cache.capacity)
        worker_options = replace(worker_options, progress=0, operations=None, handler=relay)
        return run_server(mine, relay, worker_options)  # type: ignore[arg-type]

    def clean_up() -> None:
        close_listeners(owner_sockets)
        close_listeners_but(shares, sockets)  # the copies; the CLI's own sockets are its own
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)

    specs = [WorkerSpec("engine owner", owner, stage=1, on_exit=retire_owner)]
    for n, share in enumerate(shares):
        worker_options, retire = for_worker(n)
        specs.append(WorkerSpec("worker", partial(worker, share, worker_options), on_exit=retire))
    return Supervisor(specs, on_exit=clean_up, **supervision).run()


def _store_worker(shares, number: int, engine_url: str, sessions: int, options: RunOptions):
    """A worker on its own connection to Valkey/Redis (the first one reports -progress)."""
    sockets = shares[number]

    def worker() -> int:
        close_listeners_but(shares, sockets)
        defer_stop_requests(options.killable)
        store = open_engine(engine_url, sessions)
        progress = options.progress if number == 0 else 0
        return run_server(sockets, store, replace(options, progress=progress))

    return worker


def _shared_store(capacity: int) -> MemoryStore | None:
    """The memory engine in shared memory, or None: no extension, or no room to map it (a
    limit on address space, strict overcommit), in which case the workers relay instead."""
    try:
        return MemoryStore.sharing(capacity)
    except OSError as error:
        log.warning(
            "cannot map the cache in shared memory (%s): the workers relay to an engine owner",
            error.strerror or error,
        )
        return None


def _shared_worker(shares, number: int, store: MemoryStore, options: RunOptions):
    """A worker answering from the cache in shared memory (the first one reports -progress)."""
    sockets = shares[number]

    def worker() -> int:
        close_listeners_but(shares, sockets)
        defer_stop_requests(options.killable)
        progress = options.progress if number == 0 else 0
        return run_server(sockets, store, replace(options, progress=progress))

    return worker


def _shared_metrics(options: RunOptions, slots: int):
    """Shared memory for the children's metrics, with -metrics (None without)."""
    if not options.metrics_sockets:
        return None
    from ..monitoring.shared import SharedMetrics  # needs prometheus_client

    return SharedMetrics(slots)
