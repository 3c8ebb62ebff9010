"""One case per recorded vector: ``vector/<vector id>``."""

from __future__ import annotations

from ...wire import DEFAULT_CACHE_SESSIONS
from ..possible import NO_IDLE_LIMIT
from ..registry import Case, CaseFailure, Unsupported, register
from ..replay import replay
from ..vector_cases import VectorPlan, touched_ids, vector_plans
from ..vectors import Expect, ExpectClose, ExpectSilence, Sleep, Vector


def _budget(vector: Vector | None) -> tuple[int, float]:
    """(step timeouts, extra seconds) the replay may need: a hang guard, not a speed limit."""
    if vector is None:
        return 1, 0.0
    waits = sum(isinstance(s, Expect | ExpectClose) for s in vector.steps)
    pauses = sum(s.ms for s in vector.steps if isinstance(s, Sleep | ExpectSilence)) / 1000
    return waits + 2, pauses + 1.0


def _needs(vector: Vector) -> frozenset[str]:
    if vector.target_kind == "proxy":
        return frozenset({"proxy"})
    sessions = vector.sessions
    if sessions and sessions != DEFAULT_CACHE_SESSIONS:
        return frozenset({f"sessions:{sessions}"})
    return frozenset({"fresh"})


def _touches(plan: VectorPlan) -> frozenset[bytes] | None:
    # Capacity vectors count sessions: they need a server of their own.
    if plan.played is None or _needs(plan.legacy) != {"fresh"}:
        return None
    return touched_ids(plan.played)


def _make_run(plan: VectorPlan):
    async def run(t):
        vector = plan.played
        if vector is None:
            raise Unsupported(
                "recorded behaviour is a legacy defect; no safe-behaviour recording yet"
            )
        if vector.target_kind == "proxy":
            if vector.upstream_running:
                upstream = await t.reference_upstream(vector.sessions)
            else:
                upstream = t.absent_upstream()
            address, tls = await t.start_proxy(upstream, **vector.proxy_timers), None
        else:
            address, tls = t.address, t.tls
            vector = await t.with_fresh_ids(vector)
        result = await replay(vector, address, step_timeout=t.timeout, log=t.log, tls=tls)
        if not result.passed and plan.should_deviation:
            # The legacy recording is allowed too; replayed with ids of its own.
            legacy = await t.with_fresh_ids(plan.legacy, always=True)
            again = await replay(legacy, address, step_timeout=t.timeout, log=t.log, tls=tls)
            if again.passed:
                raise CaseFailure(
                    f"{result.mismatch.describe()} (reference recording); the target behaves as "
                    f"the legacy recording does, which meets the MUSTs but not a SHOULD of "
                    f"{plan.should_deviation}",
                    plan.should_deviation,
                    "SHOULD",
                )
        if not result.passed:
            source = "reference recording" if plan.replaced else "legacy recording"
            t.fail(f"{result.mismatch.describe()} ({source})")
        if result.reached_death is not None:
            t.fail("the vector expects the target to die; a conforming target must survive")

    return run


def _unsupported_when(plan: VectorPlan) -> tuple[str, ...]:
    if plan.played is None:
        return ("always: no safe-behaviour recording of this legacy defect yet",)
    if plan.played.target_kind == "proxy" and plan.played.proxy_timers.get("idle_ms"):
        return (NO_IDLE_LIMIT,)
    return ()


def _register_all() -> None:
    for plan in vector_plans():
        legacy = plan.legacy
        steps, slack = _budget(plan.played or legacy)
        profile = "robustness" if legacy.expects_death else "core"
        title = legacy.title
        if plan.replaced:
            title = f"{title} [safe behaviour instead of the legacy defect]"
        register(
            Case(
                id=f"vector/{legacy.id}",
                title=title,
                requirements=plan.requirements,
                level="MUST",
                profile=profile,
                needs=_needs(legacy),
                target=legacy.target_kind,
                run=_make_run(plan),
                slack=slack,
                steps=steps,
                touches=_touches(plan),
                unsupported_when=_unsupported_when(plan),
            )
        )


_register_all()
