"""Grades, and implementation profiles (expected failures with a reason each, as tlsfuzzer does)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = ["PROFILE_FORMAT", "Grade", "ImplementationProfile", "ProfileError", "load_profile"]

PROFILE_FORMAT = "distcache-implementation-profile/1"


class Grade(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"  # a MUST broken
    NON_STRICT = "NON-STRICT"  # a SHOULD broken
    XFAIL = "XFAIL"  # failed, as the implementation profile expects
    XPASS = "XPASS"  # passed although the profile expects a failure
    UNSUPPORTED = "UNSUPPORTED"  # the target setup lacks what the case needs
    ERROR = "ERROR"  # the target crashed, hung or became unreachable

    def __str__(self) -> str:
        return self.value


#: Grades in report order.
GRADE_ORDER = tuple(Grade)


class ProfileError(ValueError):
    """An implementation profile is unreadable or malformed."""


@dataclass(frozen=True)
class ImplementationProfile:
    """Expected failures of one implementation: case id (or ``prefix*``) -> why."""

    name: str
    expected: dict[str, str] = field(default_factory=dict)
    #: Cases whose outcome on this implementation depends on timing: a failure grades XFAIL and
    #: a pass stays PASS (an XPASS would only report a race won).
    nondeterministic: dict[str, str] = field(default_factory=dict)

    def expectation(self, case_id: str) -> str | None:
        """The reason ``case_id`` is expected to fail, or None."""
        return _lookup(self.expected, case_id)

    def may_fail(self, case_id: str) -> str | None:
        """The reason ``case_id`` may fail or pass depending on timing, or None."""
        return _lookup(self.nondeterministic, case_id)


def _lookup(table: dict[str, str], case_id: str) -> str | None:
    if case_id in table:
        return table[case_id]
    best = None
    for pattern, reason in table.items():
        matches = pattern.endswith("*") and case_id.startswith(pattern[:-1])
        if matches and (best is None or len(pattern) > len(best[0])):
            best = (pattern, reason)
    return best[1] if best else None


def load_profile(path: str | Path) -> ImplementationProfile:
    """Read a TOML or JSON implementation profile."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ProfileError(
            f"cannot read implementation profile '{path}': {error.strerror}"
        ) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ProfileError(f"implementation profile '{path}' does not parse: {error}") from None
    if not isinstance(raw, dict) or raw.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"'{path}' is not a {PROFILE_FORMAT} file")
    tables = {}
    for key in ("expected-failures", "nondeterministic"):
        table = raw.get(key, raw.get(key.replace("-", "_"), {}))
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items()
        ):
            raise ProfileError(f"'{path}': {key} must map case ids to a non-empty reason each")
        tables[key] = dict(table)
    return ImplementationProfile(
        str(raw.get("implementation", path.stem)),
        tables["expected-failures"],
        tables["nondeterministic"],
    )
