"""The case registry: every conformance case, declared with :func:`case`.

A case is an async function taking a :class:`~distcache.conformance.context.CaseContext`. It
returns when the target behaved acceptably and raises :class:`CaseFailure` (naming the requirement
broken) when it did not. Where the spec allows more than one behaviour, the case declares the set
of acceptable ``outcomes`` (as h2spec and tlsfuzzer do), accepts each of them, and says which one
it saw (``ctx.outcome(name)``); the report shows it. Each case declares the requirement ids it
tests, its level, the profile it belongs to, the kind of target it needs, what the target setup
must offer (``needs``) and when else it cannot run (``unsupported_when``); from these
:mod:`.possible` derives the grades a case can give, which ``--list`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "LEVELS",
    "NEEDS",
    "PROFILES",
    "Case",
    "CaseFailure",
    "Unsupported",
    "add_running_variant",
    "all_cases",
    "case",
    "register",
]

#: Profiles, in the order a default run plays them (robustness last: it may crash the target).
#: ``tls`` holds the cases of distcache over TLS (they need a TLS: target).
PROFILES = ("core", "strict", "tls", "robustness")
LEVELS = ("MUST", "SHOULD")
#: What a case may need from the target setup. ``sessions:N`` asks for a fresh target with a
#: cache of N sessions (it implies ``fresh``).
NEEDS = ("fresh", "restart", "proxy", "process")
_SESSIONS = re.compile(r"sessions:([0-9]+)")


class CaseFailure(Exception):
    """The target broke a requirement. ``requirement`` names it (default: the case's first);
    ``level`` says which of its keywords was broken when it has both (default: its level)."""

    def __init__(self, detail: str, requirement: str | None = None, level: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.requirement = requirement
        self.level = level


class Unsupported(Exception):
    """The case cannot run against this target setup (e.g. it needs fresh state)."""


@dataclass(frozen=True)
class Case:
    """One conformance case."""

    id: str
    title: str
    requirements: tuple[str, ...]
    level: str
    profile: str
    needs: frozenset[str]
    target: str  # "server" or "proxy"
    run: Callable[[Any], Awaitable[None]] = field(repr=False, compare=False)
    #: Extra seconds the case may legitimately spend (its own sleeps), added to its deadline.
    slack: float = 0.0
    #: How many step timeouts the case may use at most, for its global deadline.
    steps: int = 8
    params: dict = field(default_factory=dict, compare=False, repr=False)
    #: Session ids the case names, when known: a "fresh" case may then share a server with other
    #: cases whose ids are disjoint (an empty cache is only needed for the ids it touches).
    touches: frozenset[bytes] | None = None
    #: Every behaviour the spec allows here, when it allows more than one (names, in prose).
    outcomes: tuple[str, ...] = ()
    #: When the case itself declares it cannot run (beyond what ``needs``, ``profile`` and
    #: ``target`` imply), in prose: shown by ``--list`` with the grades the case can give.
    unsupported_when: tuple[str, ...] = ()
    #: How to check the same rule on a running server the runner cannot give the fresh state
    #: the case needs (it then runs alone, after the other cases of its profile).
    running_variant: Callable[[Any], Awaitable[None]] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def sessions(self) -> int | None:
        for need in self.needs:
            match = _SESSIONS.fullmatch(need)
            if match:
                return int(match.group(1))
        return None

    @property
    def needs_fresh(self) -> bool:
        return "fresh" in self.needs or self.sessions is not None


_REGISTRY: dict[str, Case] = {}


def register(new: Case) -> Case:
    """Add a case object (used by the decorator and by generated cases)."""
    if new.id in _REGISTRY:
        raise ValueError(f"duplicate conformance case id {new.id!r}")
    if new.level not in LEVELS:
        raise ValueError(f"{new.id}: level must be one of {LEVELS}")
    if new.profile not in PROFILES:
        raise ValueError(f"{new.id}: profile must be one of {PROFILES}")
    for need in new.needs:
        if need not in NEEDS and not _SESSIONS.fullmatch(need):
            raise ValueError(f"{new.id}: unknown need {need!r}")
    if not new.requirements:
        raise ValueError(f"{new.id}: a case must name at least one requirement")
    _REGISTRY[new.id] = new
    return new


def case(
    *,
    id: str,
    requirements: list[str] | tuple[str, ...],
    title: str,
    level: str = "MUST",
    profile: str = "core",
    needs: set[str] | frozenset[str] = frozenset(),
    target: str = "server",
    slack: float = 0.0,
    steps: int = 8,
    outcomes: tuple[str, ...] = (),
    unsupported_when: tuple[str, ...] = (),
):
    """Register the decorated ``async def (ctx)`` as a conformance case."""

    def decorate(function):
        register(
            Case(
                id=id,
                title=title,
                requirements=tuple(requirements),
                level=level,
                profile=profile,
                needs=frozenset(needs),
                target=target,
                run=function,
                slack=slack,
                steps=steps,
                outcomes=tuple(outcomes),
                unsupported_when=tuple(unsupported_when),
            )
        )
        return function

    return decorate


def add_running_variant(
    case_id: str, run: Callable[[Any], Awaitable[None]], unsupported_when: tuple[str, ...] = ()
) -> None:
    """Give a registered case a variant for running servers (see :attr:`Case.running_variant`);
    ``unsupported_when`` says when the variant cannot judge the rule."""
    old = _REGISTRY[case_id]
    _REGISTRY[case_id] = replace(
        old, running_variant=run, unsupported_when=old.unsupported_when + unsupported_when
    )


def all_cases() -> list[Case]:
    """Every registered case (importing the built-in case modules first), in id order."""
    from . import cases  # noqa: F401 - registers the built-in cases

    return sorted(_REGISTRY.values(), key=lambda c: _sort_key(c.id))


def _sort_key(case_id: str):
    # Natural order: FRAME-2 before FRAME-10, vector/x-002 before vector/x-010.
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", case_id)]
