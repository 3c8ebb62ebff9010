"""Turning recorded vectors into cases, with their requirement ids from the mapping table.

A legacy vector whose recording pins a defect (flags ``legacy-bug`` or ``environment-dependent``)
is not replayed as recorded: its case replays the vector of the same id recorded from the
reference implementation (``vectors/reference/``), which shows the safe behaviour the spec asks
for instead.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from .. import conformance_data_path
from ..protocol import MessageDecoder, RemoteProtocolError, Request, check_add
from ..wire import Direction, Operation
from .vectors import (
    Reconnect,
    Send,
    Vector,
    VectorFormatError,
    legacy_vector_files,
    reference_vector_files,
)

__all__ = ["MAPPING_FORMAT", "VectorPlan", "touched_ids", "vector_plans"]

MAPPING_FORMAT = "distcache-vector-requirements/1"
MAPPING_NAME = "vector-requirements.toml"


@dataclass(frozen=True, slots=True)
class VectorPlan:
    """What the case for one legacy vector replays, and against which requirements."""

    legacy: Vector
    played: Vector | None  # None: unsafe and no reference recording exists yet
    requirements: tuple[str, ...]
    #: The SHOULD the legacy recording deviates from, when the spec allows it nonetheless.
    should_deviation: str | None = None

    @property
    def replaced(self) -> bool:
        return self.played is not self.legacy


def _mapping() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str], dict[str, str]]:
    """Requirements by group and by vector, SHOULD deviations and pinned requirements."""
    path = conformance_data_path() / MAPPING_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise VectorFormatError(f"{MAPPING_NAME}: {error}") from None
    if raw.get("format") != MAPPING_FORMAT:
        raise VectorFormatError(f"{MAPPING_NAME}: not a {MAPPING_FORMAT} file")
    return (
        raw.get("groups", {}),
        raw.get("vectors", {}),
        raw.get("should-deviations", {}),
        raw.get("pins", {}),
    )


def vector_plans() -> list[VectorPlan]:
    """One plan per legacy vector, in file order."""
    groups, per_vector, deviations, pins = _mapping()
    reference = {v.id: v for f in reference_vector_files() for v in f}
    plans = []
    for vector_file in legacy_vector_files():
        for vector in vector_file:
            requirements = per_vector.get(vector.id) or groups.get(vector.group)
            if not requirements:
                raise VectorFormatError(f"{MAPPING_NAME}: no requirements for {vector.id}")
            pin = pins.get(vector.id)
            if not pin:
                raise VectorFormatError(f"{MAPPING_NAME}: no pinned requirement for {vector.id}")
            # The pinned requirement comes first: a mismatch is reported against it.
            requirements = [pin, *(r for r in requirements if r != pin)]
            played = reference.get(vector.id) if vector.unsafe else vector
            deviation = deviations.get(vector.id) if played is not vector else None
            plans.append(VectorPlan(vector, played, tuple(requirements), deviation))
    return plans


def touched_ids(vector: Vector) -> frozenset[bytes]:
    """Every session id the vector's requests name: vectors with disjoint sets cannot disturb
    each other on one server, so they may share an instance instead of each needing its own."""
    ids: set[bytes] = set()
    decoder = MessageDecoder(receives=Direction.REQUEST)
    for step in vector.steps:
        if isinstance(step, Reconnect):
            decoder = MessageDecoder(receives=Direction.REQUEST)
        elif isinstance(step, Send) and decoder is not None:
            try:
                for event in decoder.events(step.data):
                    if not isinstance(event, Request):
                        continue
                    if event.operation is Operation.ADD:
                        checked = check_add(event.payload)
                        session_id = getattr(checked, "session_id", None)
                        if session_id is not None:
                            ids.add(session_id)
                    else:
                        ids.add(event.payload)
            except RemoteProtocolError:
                decoder = None  # the server closes here; nothing after it counts
    return frozenset(ids)
