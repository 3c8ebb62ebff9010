"""Loading ``distcache-vectors/1`` files into frozen dataclasses.

A vector is a recorded exchange: the bytes a client sent and what the target did in return, as a
list of steps played strictly in order. This module only reads and checks the files; playing the
steps against a live target is :mod:`distcache.conformance.replay`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import conformance_data_path

__all__ = [
    "FORMAT",
    "Expect",
    "ExpectClose",
    "ExpectSilence",
    "ExpectTargetDies",
    "Reconnect",
    "Send",
    "Sleep",
    "Step",
    "Vector",
    "VectorFile",
    "VectorFormatError",
    "legacy_vector_files",
    "load_vector_file",
    "load_vector_files",
    "reference_vector_files",
    "step_to_json",
]

#: The only format this module reads.
FORMAT = "distcache-vectors/1"
#: Flags that mark a recorded behaviour as something a new implementation must not copy.
UNSAFE_FLAGS = frozenset({"legacy-bug", "environment-dependent"})
#: ``dc_client -retry`` when a proxy vector does not say.
LEGACY_RETRY_MS = 5000


class VectorFormatError(ValueError):
    """A vector file is unreadable or does not follow ``distcache-vectors/1``."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes in one write."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Expect:
    """Read exactly these bytes (one frame as the target sent it) and compare them."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ExpectClose:
    """The target closes the connection: end-of-file or a reset, and no further byte."""


@dataclass(frozen=True, slots=True)
class ExpectSilence:
    """Nothing arrives for ``ms`` milliseconds and the connection stays open."""

    ms: int


@dataclass(frozen=True, slots=True)
class ExpectTargetDies:
    """The target process exits. Only the caller, who knows the process, can judge this."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``ms`` milliseconds without reading."""

    ms: int


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Close the connection and open a new one to the same, still running target."""


Step = Send | Expect | ExpectClose | ExpectSilence | ExpectTargetDies | Sleep | Reconnect


@dataclass(frozen=True, slots=True)
class Vector:
    """One recorded exchange."""

    id: str
    title: str
    why: str
    flags: frozenset[str]
    setup: dict[str, Any]
    steps: tuple[Step, ...]
    group: str = ""
    target_kind: str = "server"

    @property
    def unsafe(self) -> bool:
        """True when the recording pins a legacy defect (or the legacy machine's memory)."""
        return bool(self.flags & UNSAFE_FLAGS)

    @property
    def sessions(self) -> int | None:
        """The cache capacity the vector was recorded with, if it says."""
        return self.setup.get("sessions")

    @property
    def upstream_running(self) -> bool:
        """Proxy vectors: whether a server listens behind the proxy (else nothing does)."""
        return self.setup.get("upstream", "running") == "running"

    @property
    def proxy_timers(self) -> dict[str, int]:
        """Proxy vectors: ``retry_ms`` and ``idle_ms`` for the proxy (legacy defaults if unset)."""
        return {
            "retry_ms": self.setup.get("retry_ms", LEGACY_RETRY_MS),
            "idle_ms": self.setup.get("idle_ms", 0),
        }

    @property
    def expects_death(self) -> bool:
        return any(isinstance(step, ExpectTargetDies) for step in self.steps)


@dataclass(frozen=True, slots=True)
class VectorFile:
    """One file: a group of vectors recorded from one kind of target."""

    path: Path
    recorded_from: str
    target_kind: str
    group: str
    vectors: tuple[Vector, ...] = field(default=())

    def __iter__(self) -> Iterator[Vector]:
        return iter(self.vectors)


def _hex(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise VectorFormatError(f"{where}: expected a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VectorFormatError(f"{where}: not valid hex") from None


def _milliseconds(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise VectorFormatError(f"{where}: expected a non-negative integer of milliseconds")
    return value


def _flag(value: Any, where: str) -> None:
    if value is not True:
        raise VectorFormatError(f"{where}: expected true")


def _parse_step(raw: Any, where: str) -> Step:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise VectorFormatError(f"{where}: a step is an object with exactly one key")
    ((kind, value),) = raw.items()
    if kind == "send":
        return Send(_hex(value, where))
    if kind == "expect":
        return Expect(_hex(value, where))
    if kind == "expect_close":
        _flag(value, where)
        return ExpectClose()
    if kind == "expect_silence_ms":
        return ExpectSilence(_milliseconds(value, where))
    if kind == "expect_target_dies":
        _flag(value, where)
        return ExpectTargetDies()
    if kind == "sleep_ms":
        return Sleep(_milliseconds(value, where))
    if kind == "reconnect":
        _flag(value, where)
        return Reconnect()
    raise VectorFormatError(f"{where}: unknown step kind {kind!r}")


def step_to_json(step: Step) -> dict[str, Any]:
    """The JSON object of a step, as the files write it."""
    if isinstance(step, Send):
        return {"send": step.data.hex()}
    if isinstance(step, Expect):
        return {"expect": step.data.hex()}
    if isinstance(step, ExpectClose):
        return {"expect_close": True}
    if isinstance(step, ExpectSilence):
        return {"expect_silence_ms": step.ms}
    if isinstance(step, ExpectTargetDies):
        return {"expect_target_dies": True}
    if isinstance(step, Sleep):
        return {"sleep_ms": step.ms}
    return {"reconnect": True}


def _require(raw: dict, key: str, kind: type, where: str):
    value = raw.get(key)
    if not isinstance(value, kind):
        raise VectorFormatError(f"{where}: '{key}' missing or not a {kind.__name__}")
    return value


def _parse_vector(raw: Any, where: str, group: str, target_kind: str) -> Vector:
    if not isinstance(raw, dict):
        raise VectorFormatError(f"{where}: a vector is an object")
    vector_id = _require(raw, "id", str, where)
    where = f"{where} ({vector_id})"
    steps = _require(raw, "steps", list, where)
    flags = raw.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise VectorFormatError(f"{where}: 'flags' must be a list of strings")
    setup = raw.get("setup", {})
    if not isinstance(setup, dict):
        raise VectorFormatError(f"{where}: 'setup' must be an object")
    return Vector(
        id=vector_id,
        title=raw.get("title", ""),
        why=raw.get("why", ""),
        flags=frozenset(flags),
        setup=dict(setup),
        steps=tuple(_parse_step(s, f"{where} step {i}") for i, s in enumerate(steps)),
        group=group,
        target_kind=target_kind,
    )


def load_vector_file(path: str | Path) -> VectorFile:
    """Read one vector file; raise VectorFormatError with a one-line reason if it is bad."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise VectorFormatError(f"{path}: cannot read: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VectorFormatError(f"{path}: not JSON: {error}") from None
    where = path.name
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise VectorFormatError(f"{where}: not a {FORMAT} file")
    group = _require(raw, "group", str, where)
    target_kind = _require(raw, "target_kind", str, where)
    vectors = _require(raw, "vectors", list, where)
    return VectorFile(
        path=path,
        recorded_from=raw.get("recorded_from", ""),
        target_kind=target_kind,
        group=group,
        vectors=tuple(
            _parse_vector(v, f"{where} vector {i}", group, target_kind)
            for i, v in enumerate(vectors)
        ),
    )


def load_vector_files(directory: str | Path) -> list[VectorFile]:
    """Every ``*.json`` vector file of a directory, sorted by name."""
    return [load_vector_file(p) for p in sorted(Path(directory).glob("*.json"))]


def legacy_vector_files() -> list[VectorFile]:
    """The vectors recorded from legacy distcache 1.5.1 (shipped with the package)."""
    return load_vector_files(conformance_data_path() / "vectors" / "legacy-1.5.1")


def reference_vector_files() -> list[VectorFile]:
    """The safe-behaviour vectors recorded from the reference implementation."""
    directory = conformance_data_path() / "vectors" / "reference"
    return load_vector_files(directory) if directory.is_dir() else []
