"""``dc_server -workers N``: worker processes that own the client connections, one cache.

Every worker accepts on the inherited listeners and runs the same connection code as a single
process (decoding, validation, refusals, order, back-pressure). Where the cache lives decides the
rest:

* **memory engine**: one more process, the engine's owner, serves the cache as a plain server on
  a UNIX socket in a private directory (mode 0700) that the supervisor binds and keeps; each
  worker forwards its requests there over one pipelined link (:mod:`distcache.server.relay`).
  Capacity, eviction and every ADD/GET rule are the owner's, exactly as with one process. The
  supervisor keeps the owner's listener open, so a replacement owner takes over the connections
  the workers make while it starts (the cache itself starts empty, as after a restart).
* **Valkey/Redis**: each worker opens its own connection to the store; no owner is needed.

On SIGTERM/SIGINT the workers stop first, then the owner, so that requests the workers were
relaying still get their answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import replace
from functools import partial

from ..address import parse_address
from ..cache import MemoryStore, SessionStore
from ..workers import Supervisor, WorkerSpec
from .engines import open_engine
from .listeners import (
    BACKLOG,
    bind_listeners,
    close_listeners,
    close_listeners_but,
    listeners_per_worker,
)
from .relay import OwnerRelay
from .run import RunOptions, defer_stop_requests, run_server, stop_requested_early

__all__ = ["OWNER_SOCKET_NAME", "run_workers"]

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
    started; ``-progress`` is reported by the owner (Valkey/Redis: by the first worker)."""
    child_options = replace(options, on_ready=None)
    for sock in sockets:  # the pid file is written: clients may queue for the first worker
        sock.listen(BACKLOG)
    shares = listeners_per_worker(sockets, workers)
    # SIGHUP re-reads the TLS files in every worker (the owner has none: harmless to it).
    forwarded = (signal.SIGHUP,) if options.on_reload is not None else ()
    if type(store) is not MemoryStore:
        specs = [
            WorkerSpec(
                "worker",
                _store_worker(shares, n, engine_url, sessions, child_options),
            )
            for n in range(workers)
        ]
        supervisor = Supervisor(
            specs,
            killable=options.killable,
            on_started=options.on_ready,
            stop_requested=stop_requested_early,
            forwarded=forwarded,
        )
        return supervisor.run()
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

    def owner() -> int:
        close_listeners_but(shares, [])
        defer_stop_requests(options.killable)
        owner_options = replace(child_options, max_connections=max(workers * 4, 64))
        return run_server(owner_sockets, store, owner_options)

    def worker(mine: list[socket.socket]) -> int:
        close_listeners(owner_sockets)
        close_listeners_but(shares, mine)
        defer_stop_requests(options.killable)
        relay = OwnerRelay(owner_address)
        worker_options = replace(child_options, progress=0, handler=relay)
        return run_server(mine, relay, worker_options)  # type: ignore[arg-type]

    def clean_up() -> None:
        close_listeners(owner_sockets)
        close_listeners_but(shares, sockets)  # the copies; the CLI's own sockets are its own
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)

    specs = [WorkerSpec("engine owner", owner, stage=1)]
    specs += [WorkerSpec("worker", partial(worker, share)) for share in shares]
    supervisor = Supervisor(
        specs,
        killable=options.killable,
        on_started=options.on_ready,
        on_exit=clean_up,
        stop_requested=stop_requested_early,
        forwarded=forwarded,
    )
    return supervisor.run()


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
