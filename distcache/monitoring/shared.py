"""The metrics of a program serving from several processes (``-workers``), reported as one.

The supervisor maps one block of shared memory before it forks (:class:`SharedMetrics`) and
gives each child a slot of it. A child writes a snapshot of its own metrics there (its
collectors' samples, as JSON) every ``PUBLISH_SECONDS``, just before it answers a scrape, and when
its metrics listener closes. Every child accepts on the one metrics listener, and whichever
answers a scrape adds up all the slots (:func:`merge`): the scrape describes the whole server,
as a single process would, and Prometheus needs one target per server.

Counters stay monotonic across a replacement: a new child starts from the counters its
predecessor left in the slot (so a child killed outright loses only what it counted since its
last snapshot), and the supervisor drops a dead child's gauges (its connections are gone) when it
reaps it (:meth:`SharedMetrics.retire`).

A slot has two buffers, each under a sequence number that is odd while it is written; a snapshot
goes to the buffer not in use, then the slot's generation points at it. A reader therefore never
takes half a snapshot, even of a child killed in the middle of writing one.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["PUBLISH_SECONDS", "SLOT_BYTES", "MetricsSlot", "SharedMetrics", "merge"]

log = logging.getLogger("distcache.monitoring")

#: Seconds between two snapshots of a child (a scrape shows the other children this far behind).
PUBLISH_SECONDS = 1.0
#: Room for one snapshot (a child's metrics take about 5 KB of JSON).
BUFFER_BYTES = 64 * 1024
_WORD = struct.Struct("<Q")
# generation | (sequence, length, data) x 2
SLOT_BYTES = _WORD.size + 2 * (2 * _WORD.size + BUFFER_BYTES)
#: How the values of one sample from several processes combine (default: their sum).
_COMBINE: dict[str, Callable[[Iterable[float]], float]] = {
    "distcache_info": max,  # the same labels in every process: 1
    "distcache_upstream_up": min,  # 1 only while every worker has its server
    "process_start_time_seconds": min,  # the oldest
    # The memory engine's: reported by its owner alone, or by every worker of a shared cache
    # (the same cache, read by each): never added up.
    "distcache_current_sessions": max,
    "distcache_current_bytes": max,
    "distcache_limit_sessions": max,
    "distcache_evictions_total": max,
    "distcache_expirations_total": max,
}
#: Metric types whose values describe the present, dropped with the process that reported them.
_GAUGE_TYPES = ("gauge", "info", "stateset", "unknown")

# A snapshot: [[name, type, documentation, [[sample name, {label: value}, value], ...]], ...]
Snapshot = list


class SharedMetrics:
    """``slots`` places for snapshots in memory shared with the children forked after it."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, slots * SLOT_BYTES)  # anonymous and shared: kept by fork

    def slot(self, index: int, *, clients: bool = True) -> MetricsSlot:
        """The slot of child ``index``; ``clients``: whether it reports client connections."""
        return MetricsSlot(self, index, clients)

    def read(self, index: int) -> Snapshot:
        """The last complete snapshot of slot ``index`` ([] before the first)."""
        base = index * SLOT_BYTES
        for _ in range(100):
            generation = self._word(base)
            if generation == 0:
                return []
            buffer = base + _WORD.size + (generation % 2) * (2 * _WORD.size + BUFFER_BYTES)
            sequence = self._word(buffer)
            length = self._word(buffer + _WORD.size)
            start = buffer + 2 * _WORD.size
            data = bytes(self._memory[start : start + min(length, BUFFER_BYTES)])
            if sequence % 2 == 0 and self._word(buffer) == sequence:
                return json.loads(data)
            time.sleep(0)  # the writer is half-way: read again
        return []

    def write(self, index: int, snapshot: Snapshot) -> None:
        """Replace slot ``index``'s snapshot (by its one writer: the child, or after its death
        the supervisor). A snapshot too large for the slot is dropped with one log line."""
        data = json.dumps(snapshot, separators=(",", ":")).encode()
        if len(data) > BUFFER_BYTES:
            log.error("metrics snapshot of %d bytes does not fit in its slot: dropped", len(data))
            return
        base = index * SLOT_BYTES
        generation = self._word(base)
        buffer = base + _WORD.size + ((generation + 1) % 2) * (2 * _WORD.size + BUFFER_BYTES)
        sequence = self._word(buffer)
        writing = sequence + 1 if sequence % 2 == 0 else sequence + 2
        _WORD.pack_into(self._memory, buffer, writing)
        _WORD.pack_into(self._memory, buffer + _WORD.size, len(data))
        start = buffer + 2 * _WORD.size
        self._memory[start : start + len(data)] = data
        _WORD.pack_into(self._memory, buffer, writing + 1)
        _WORD.pack_into(self._memory, base, generation + 1)

    def retire(self, index: int) -> None:
        """After the child of slot ``index`` died: keep its counters, drop its gauges."""
        snapshot = self.read(index)
        if snapshot:
            self.write(index, counters_of(snapshot))

    def totals(self) -> list[Metric]:
        """Every slot's snapshot, merged."""
        return merge(self.read(index) for index in range(self.slots))

    def _word(self, offset: int) -> int:
        return _WORD.unpack_from(self._memory, offset)[0]


class MetricsSlot(Collector):
    """A child's place in :class:`SharedMetrics`, and the collector of the whole program.

    :meth:`registry` gives it the child's own metrics; :meth:`collect` (a scrape) publishes them and
    returns the totals of every process.
    """

    def __init__(self, shared: SharedMetrics, index: int, clients: bool) -> None:
        self.shared = shared
        self.index = index
        #: Whether the child reports client connections (not the engine's owner: its clients
        #: are the workers).
        self.clients = clients
        self._own: CollectorRegistry | None = None
        self._base: Snapshot = []

    def registry(self, own: CollectorRegistry) -> CollectorRegistry:
        """The registry of the whole program, for the metrics listener; from now on the slot
        publishes ``own`` on top of the counters a predecessor left in it."""
        self._own = own
        self._base = counters_of(self.shared.read(self.index))
        whole = CollectorRegistry(auto_describe=False)
        whole.register(self)
        return whole

    def publish(self) -> None:
        if self._own is not None:
            mine = snapshot_of(self._own.collect())
            self.shared.write(self.index, snapshot_of(merge([self._base, mine])))

    def collect(self) -> Iterator[Metric]:
        self.publish()
        yield from self.shared.totals()


def snapshot_of(families: Iterable[Metric]) -> Snapshot:
    return [
        [family.name, family.type, family.documentation, [list(s[:3]) for s in family.samples]]
        for family in families
    ]


def counters_of(snapshot: Snapshot) -> Snapshot:
    return [family for family in snapshot if family[1] not in _GAUGE_TYPES]


def merge(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """The families of several processes as one: each sample (name and labels) combined by
    ``_COMBINE`` (the sum unless listed there), families in the order first seen."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    labels_of: dict[tuple, dict[str, str]] = {}
    for snapshot in snapshots:
        for name, kind, documentation, samples in snapshot:
            if name not in families:
                families[name] = Metric(name, documentation, kind)
                values[name] = {}
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                labels_of[key] = labels
                values[name].setdefault(key, []).append(value)
    for name, family in families.items():
        for key, seen in values[name].items():
            combine = _COMBINE.get(key[0], sum)
            family.add_sample(key[0], labels_of[key], combine(seen))
    return list(families.values())
