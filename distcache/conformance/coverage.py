"""The coverage matrix: for every requirement, the cases that test it and the faulty targets that
prove those cases can fail.

Three sources meet here: the requirement catalogue (``requirements.toml``), the case registry, and
the mutation table (``coverage.toml``), which names, for each switch of the test suite's faulty
server, the requirement it breaks and the cases that must fail on it. A requirement the suite
could check over the wire but no case tests is a gap; a MUST gap fails the project's tests. The
same table names, for each requirement about a program's observable behaviour, the tests that
check it against that program.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .. import conformance_data_path
from ..spec.catalogue import Requirement, load_requirements

__all__ = [
    "COVERAGE_FORMAT",
    "Coverage",
    "CoverageError",
    "Fault",
    "MatrixRow",
    "coverage_matrix",
    "load_coverage",
    "read_coverage",
]

COVERAGE_FORMAT = "distcache-coverage/1"
COVERAGE_NAME = "coverage.toml"
#: Requirement kinds a conformance case can check: the others are programs, APIs or internals.
WIRE_KINDS = ("wire", "wire-proxy")
#: What a fault switches: the faulty server, the faulty proxy, or the faulty TLS server.
TARGETS = ("server", "proxy", "tls-server")


class CoverageError(ValueError):
    """The mutation table is unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One switch of the faulty server (proxy, TLS server), the requirement it breaks, and the
    cases that fail on it."""

    name: str
    target: str
    breaks: str
    does: str
    cases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Coverage:
    faults: tuple[Fault, ...]
    #: Wire requirements no case can check against a server or proxy -> where they are checked.
    elsewhere: dict[str, str]
    #: Requirements about a program's observable behaviour -> the tests (``path::name``) that
    #: run that program and fail if it breaks them.
    programs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def proving(self, case_id: str, requirement_id: str | None = None) -> tuple[Fault, ...]:
        """The faults that prove ``case_id`` can fail (on ``requirement_id``, when given)."""
        return tuple(
            f for f in self.faults if case_id in f.cases and requirement_id in (None, f.breaks)
        )


@dataclass(frozen=True, slots=True)
class MatrixRow:
    requirement: Requirement
    cases: tuple[str, ...]
    #: case id -> names of the faults it fails on, blaming this requirement (cases with one).
    proved: dict[str, tuple[str, ...]]
    elsewhere: str | None
    #: Tests that run the program this requirement speaks of (``path::name``).
    program_tests: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``tested``, ``gap``, ``elsewhere``, ``program`` (checked against the program it
        speaks of) or ``not-wire`` (an API or internal rule)."""
        if self.cases:
            return "tested"
        if self.elsewhere:
            return "elsewhere"
        if self.program_tests:
            return "program"
        if self.requirement.kind not in WIRE_KINDS:
            return "not-wire"
        return "gap"


@cache
def load_coverage() -> Coverage:
    """The mutation table shipped with the conformance data (read once)."""
    return read_coverage(conformance_data_path() / COVERAGE_NAME)


def read_coverage(path: Path) -> Coverage:
    """Read and check a mutation table (``coverage.toml``); raises :class:`CoverageError`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CoverageError(f"{path.name}: {error}") from None
    if raw.get("format") != COVERAGE_FORMAT:
        raise CoverageError(f"{path.name}: not a {COVERAGE_FORMAT} file")
    faults = []
    for entry in raw.get("fault", []):
        if not isinstance(entry, dict) or not isinstance(entry.get("cases"), list):
            raise CoverageError(f"{path.name}: every fault needs a list of cases")
        try:
            fault = Fault(
                str(entry["name"]),
                str(entry["target"]),
                str(entry["breaks"]),
                str(entry["does"]),
                tuple(str(c) for c in entry["cases"]),
            )
        except (KeyError, TypeError) as error:
            raise CoverageError(f"{path.name}: a fault lacks {error}") from None
        if fault.target not in TARGETS or not fault.cases or not fault.does.strip():
            raise CoverageError(
                f"{path.name}: fault {fault.name}: bad target, no description or no cases"
            )
        if any(f.name == fault.name for f in faults):
            raise CoverageError(f"{path.name}: fault {fault.name} is listed twice")
        faults.append(fault)
    elsewhere = raw.get("elsewhere", {})
    if not all(isinstance(v, str) and v.strip() for v in elsewhere.values()):
        raise CoverageError(f"{path.name}: [elsewhere] maps ids to where they are checked")
    programs = raw.get("programs", {})
    if not all(
        isinstance(v, list) and v and all(isinstance(t, str) and "::" in t for t in v)
        for v in programs.values()
    ):
        raise CoverageError(f"{path.name}: [programs] maps ids to lists of path::test names")
    return Coverage(tuple(faults), dict(elsewhere), {k: tuple(v) for k, v in programs.items()})


def coverage_matrix(cases=None, coverage: Coverage | None = None) -> list[MatrixRow]:
    """One row per catalogue requirement, in catalogue order."""
    if cases is None:
        from .registry import all_cases

        cases = all_cases()
    coverage = coverage or load_coverage()
    by_requirement: dict[str, list[str]] = {}
    for case in cases:
        for requirement_id in case.requirements:
            by_requirement.setdefault(requirement_id, []).append(case.id)
    rows = []
    for requirement in load_requirements():
        ids = tuple(by_requirement.get(requirement.id, ()))
        proved = {}
        for case_id in ids:
            names = tuple(f.name for f in coverage.proving(case_id, requirement.id))
            if names:
                proved[case_id] = names
        rows.append(
            MatrixRow(
                requirement,
                ids,
                proved,
                coverage.elsewhere.get(requirement.id),
                coverage.programs.get(requirement.id, ()),
            )
        )
    return rows
