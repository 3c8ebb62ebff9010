"""The grades a case can give, and when, read from its declaration (not from a run).

``distcache conformance --list`` prints them so that an implementer knows before a run which cases
may be UNSUPPORTED on a target setup (and why), which may grade NON-STRICT rather than FAIL, which
an implementation profile turns into XFAIL, and which behaviours a case accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .grading import Grade, ImplementationProfile
from .registry import Case
from .requirements import level_of, requirement_info

__all__ = ["NO_IDLE_LIMIT", "PossibleGrades", "possible_grades"]

RUNNING_SERVER = "on a running server (needs --server-cmd or no target)"
NO_PROCESS = "unless the runner starts the target process (--server-cmd)"
NO_PROXY = "without --proxy-cmd"
NO_IDLE_LIMIT = "without {idle_ms} in --proxy-cmd"
PLAIN_TARGET = "on a target that is not TLS: (needs --profile tls, or TLS:host:port with --tls-ca)"


@dataclass(frozen=True, slots=True)
class PossibleGrades:
    """What one case can give: its grades in report order, when it is UNSUPPORTED, why an
    implementation profile expects it to fail, and the behaviours it accepts."""

    grades: tuple[Grade, ...]
    unsupported_when: tuple[str, ...]
    expected_failure: str | None
    outcomes: tuple[str, ...]

    def when(self) -> str:
        """One line: the conditions behind UNSUPPORTED and XFAIL (empty if none)."""
        parts = []
        if self.unsupported_when:
            parts.append("UNSUPPORTED " + "; ".join(self.unsupported_when))
        if self.expected_failure:
            parts.append(f"XFAIL expected: {self.expected_failure}")
        return " / ".join(parts)


def _unsupported(case: Case) -> tuple[str, ...]:
    reasons = []
    if case.target == "proxy":
        reasons.append(NO_PROXY)
    elif case.running_variant is None and (
        "restart" in case.needs or (case.needs_fresh and (case.touches is None or case.sessions))
    ):
        reasons.append(RUNNING_SERVER)
    if "process" in case.needs:
        reasons.append(NO_PROCESS)
    if case.profile == "tls":
        reasons.append(PLAIN_TARGET)
    reasons.extend(r for r in case.unsupported_when if r not in reasons)
    return tuple(reasons)


def possible_grades(case: Case, implementation: ImplementationProfile | None = None):
    """The grades ``case`` can give under ``implementation`` (None: no implementation profile).

    Every case can PASS, FAIL (a malformed reply breaks FRAME-1, whatever the case tests) and
    give ERROR (the target crashed, hung or went away). NON-STRICT needs a SHOULD among the
    case's requirements (or in one's text: a MUST with a SHOULD part). Under an implementation profile, a case it expects to fail gives XFAIL
    instead of FAIL, NON-STRICT and ERROR, and XPASS instead of PASS; a case it lists as
    nondeterministic gives XFAIL instead of FAIL and NON-STRICT.
    """
    grades = {Grade.PASS, Grade.FAIL, Grade.ERROR}
    if case.level == "SHOULD" or any(
        level_of(r) == "SHOULD" or "SHOULD" in requirement_info(r, "")["text"]
        for r in case.requirements
    ):
        grades.add(Grade.NON_STRICT)
    unsupported = _unsupported(case)
    if unsupported:
        grades.add(Grade.UNSUPPORTED)
    reason = None
    if implementation is not None:
        reason = implementation.expectation(case.id)
        if reason is not None:
            grades -= {Grade.PASS, Grade.FAIL, Grade.NON_STRICT, Grade.ERROR}
            grades |= {Grade.XFAIL, Grade.XPASS}
        else:
            reason = implementation.may_fail(case.id)
            if reason is not None:
                grades -= {Grade.FAIL, Grade.NON_STRICT}
                grades.add(Grade.XFAIL)
    ordered = tuple(g for g in Grade if g in grades)
    return PossibleGrades(ordered, unsupported, reason, case.outcomes)
