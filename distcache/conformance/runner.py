"""The runner: plays cases against a target setup, grades them, and never hangs.

Cases that share a target run concurrently (each on its own connections with its own random ids);
cases needing fresh state get their own instance, or, against a running server that cannot give
fresh state, replay with fresh ids of their own (:mod:`.fresh_ids`) or run their running-server
variant alone after the others; the robustness profile runs last and one case at a time, because
it may crash the target. The verdict is passed, failed or incomplete (some case could not run). Every case has a global deadline. A crash (process exit)
is detected and the target restarted when the setup can; a fixed target that stops answering ends
the run cleanly, the remaining cases graded ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..netio import ConnectError
from ..protocol import RemoteProtocolError
from . import launch
from .context import CaseContext
from .fresh_ids import IdReservations
from .grading import Grade, ImplementationProfile
from .probe import WireLog
from .registry import PROFILES, Case, CaseFailure, Unsupported
from .requirements import level_of
from .targets import Instance, ProxySetup, ServerSetup, TargetUnavailable
from .upstream import FakeUpstream

__all__ = ["EXIT_STATUS", "CaseResult", "RunReport", "Runner"]

#: Seconds added to every case's deadline for starting and stopping what it needs.
DEADLINE_OVERHEAD = 3.0
#: Extra seconds for a running-server variant: it measures what it cannot be told (a capacity).
RUNNING_VARIANT_SLACK = 60.0
#: Exit status of a run by verdict (2 is a usage error, raised before any case runs).
EXIT_STATUS = {"passed": 0, "failed": 1, "incomplete": 3}


@dataclass
class CaseResult:
    case: Case
    grade: Grade
    detail: str = ""
    requirement: str | None = None  # the requirement a failure is reported against
    duration_ms: float = 0.0
    wire: WireLog = field(default_factory=WireLog)
    expected_failure: str | None = None  # the implementation profile's reason
    outcome: str | None = None  # which acceptable outcome the target showed, for such cases


@dataclass
class RunReport:
    target: str
    results: list[CaseResult]
    strict: bool = False
    profile_name: str | None = None
    duration_ms: float = 0.0
    stopped: str | None = None  # why the run ended early

    def summary(self) -> dict[str, int]:
        counts = {grade.value: 0 for grade in Grade}
        for result in self.results:
            counts[result.grade.value] += 1
        return counts

    @property
    def failed(self) -> bool:
        failing = {Grade.FAIL, Grade.ERROR, Grade.XPASS}
        if self.strict:
            failing.add(Grade.NON_STRICT)
        return any(r.grade in failing for r in self.results)

    @property
    def not_run(self) -> int:
        """Cases that could not run against this target setup (graded UNSUPPORTED)."""
        return sum(r.grade is Grade.UNSUPPORTED for r in self.results)

    @property
    def verdict(self) -> str:
        """``failed``, else ``incomplete`` when some case did not run, else ``passed``."""
        if self.failed:
            return "failed"
        return "incomplete" if self.not_run else "passed"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.verdict]


class Runner:
    def __init__(
        self,
        *,
        server: ServerSetup | None,
        proxy: ProxySetup | None = None,
        timeout: float = 1.0,
        implementation: ImplementationProfile | None = None,
        jobs: int = 16,
        strict: bool = False,
        on_result: Callable[[CaseResult, int, int], None] | None = None,
    ):
        self.server = server
        self.proxy = proxy
        self.timeout = timeout
        self.implementation = implementation
        self.jobs = jobs
        self.strict = strict
        self.on_result = on_result
        self._lost: str | None = None  # a fixed target stopped answering
        self._restart_lock = asyncio.Lock()
        self._reservations = IdReservations()
        self._done = 0
        self._total = 0

    async def run(self, cases: list[Case], target_description: str) -> RunReport:
        start = time.monotonic()
        self._total = len(cases)
        results: dict[str, CaseResult] = {}
        try:
            for profile in PROFILES:
                batch = [c for c in cases if c.profile == profile]
                if not batch:
                    continue
                parallel = 1 if profile == "robustness" else self.jobs
                limit = asyncio.Semaphore(parallel)

                async def one(case, limit=limit):
                    async with limit:
                        result = await self._run_case(case)
                    results[case.id] = result
                    self._done += 1
                    if self.on_result:
                        self.on_result(result, self._done, self._total)

                alone = [c for c in batch if self._variant_for(c) is not None]
                await _all_or_none(one(c) for c in batch if c not in alone)
                for case in alone:  # they fill a shared cache: nothing else may run meanwhile
                    await one(case)
        finally:
            try:
                if self.server is not None:
                    await self.server.close()
            finally:
                # Whatever path the run took, no target it started outlives it.
                await launch.stop_all()
        ordered = [results[c.id] for c in cases if c.id in results]
        return RunReport(
            target=target_description,
            results=ordered,
            strict=self.strict,
            profile_name=self.implementation.name if self.implementation else None,
            duration_ms=(time.monotonic() - start) * 1000,
            stopped=self._lost,
        )

    # -- one case ---------------------------------------------------------------------------

    def _variant_for(self, case: Case):
        """The case's running-server variant, when this setup cannot give it fresh state."""
        if case.running_variant is None or case.target != "server" or self.server is None:
            return None
        return None if "fresh" in self.server.capabilities else case.running_variant

    async def _run_case(self, case: Case) -> CaseResult:
        started = time.monotonic()
        log = WireLog()
        try:
            result = await self._attempt(case, log)
        except Exception as error:  # a defect of the runner: grade it, never abort the run
            result = CaseResult(case, Grade.ERROR, f"internal error: {error!r}")
        result.duration_ms = (time.monotonic() - started) * 1000
        result.wire = log
        return self._apply_profile(result)

    async def _attempt(self, case: Case, log: WireLog) -> CaseResult:
        if self._lost:
            return CaseResult(case, Grade.ERROR, f"not run: {self._lost}")
        instance, owned, lent, shared_ids, play = None, False, False, False, case.run
        try:
            if case.target == "proxy":
                if self.proxy is None:
                    raise Unsupported("proxy cases need --proxy-cmd")
            else:
                if self.server is None:
                    raise Unsupported("server cases need a server target")
                if self._variant_for(case) is not None:
                    instance, play = await self.server.shared(), case.running_variant
                elif case.needs_fresh and case.touches is not None and case.sessions is None:
                    if "fresh" in self.server.capabilities:
                        instance, lent = await self.server.clean(case.touches), True
                    else:
                        # A running server: the case replays with fresh ids of its own instead.
                        instance, shared_ids = await self.server.shared(), True
                elif case.needs_fresh:
                    instance, owned = await self.server.fresh(case.sessions), True
                else:
                    instance = await self.server.shared()
                if "restart" in case.needs and "restart" not in self.server.capabilities:
                    raise Unsupported("needs a target the runner can restart (give --server-cmd)")
                if "process" in case.needs and "process" not in self.server.capabilities:
                    raise Unsupported("needs a target process the runner starts (--server-cmd)")
        except Unsupported as why:
            return CaseResult(case, Grade.UNSUPPORTED, str(why))
        except TargetUnavailable as error:
            return CaseResult(case, Grade.ERROR, f"target unavailable: {error}")
        context = CaseContext(
            case,
            instance,
            timeout=self.timeout,
            log=log,
            proxy_setup=self.proxy,
            upstream_factory=FakeUpstream if self.proxy else None,
            shared_ids=shared_ids,
            reservations=self._reservations,
        )
        try:
            result = await self._play(case, context, play)
            if result.grade in (Grade.FAIL, Grade.NON_STRICT, Grade.ERROR):
                result = await self._check_target(case, context.instance, result, owned or lent)
        finally:
            await context.close_all()
            if owned:
                await instance.stop()
            if lent:
                self.server.release(instance)
        return result

    async def _play(self, case: Case, context: CaseContext, play) -> CaseResult:
        deadline = self.timeout * case.steps + case.slack + DEADLINE_OVERHEAD
        if play is not case.run:
            deadline += RUNNING_VARIANT_SLACK
        try:
            await asyncio.wait_for(play(context), deadline)
        except CaseFailure as failure:
            requirement = failure.requirement or case.requirements[0]
            level = failure.level or level_of(requirement, case.level)
            grade = Grade.FAIL if level == "MUST" else Grade.NON_STRICT
            if case.level == "SHOULD" and requirement in case.requirements[:1]:
                grade = Grade.NON_STRICT
            return CaseResult(case, grade, failure.detail, requirement)
        except Unsupported as why:
            return CaseResult(case, Grade.UNSUPPORTED, str(why))
        except TimeoutError:
            return CaseResult(
                case, Grade.ERROR, f"no result within the case deadline of {deadline:.1f} s (hung?)"
            )
        except TargetUnavailable as error:
            return CaseResult(case, Grade.ERROR, f"target unavailable: {error}")
        except (ConnectError, ConnectionError, OSError) as error:
            return CaseResult(case, Grade.ERROR, f"target unreachable: {error}")
        except RemoteProtocolError as error:
            return CaseResult(case, Grade.FAIL, f"malformed reply: {error}", "FRAME-1")
        except Exception as error:  # a defect of the case itself: report it, keep running
            return CaseResult(case, Grade.ERROR, f"internal error: {error!r}")
        return CaseResult(case, Grade.PASS, outcome=context.seen_outcome)

    async def _check_target(
        self, case: Case, instance: Instance | None, result: CaseResult, owned: bool
    ) -> CaseResult:
        """After a failure: was it a crash, or did the target become unreachable?"""
        if instance is None:
            return result
        if instance.process is not None and instance.process.returncode is None:
            # A dying process closes its sockets before its exit status can be collected.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(instance.process.wait(), 0.5)
        crashed = instance.crash_description()
        if crashed:
            if "ROBUST-1" in case.requirements:
                result = CaseResult(case, Grade.FAIL, f"{crashed} ({result.detail})", "ROBUST-1")
            else:
                result = CaseResult(case, Grade.ERROR, f"{crashed} ({result.detail})")
            if not owned and case.target != "proxy":  # a proxy is started per case, never shared
                await self._restart(instance)
            return result
        if owned or await instance.reachable(max(self.timeout, 1.0)):
            return result
        # A fixed target that no longer accepts connections: nothing more can be learned.
        if self.server is not None and "restart" in self.server.capabilities:
            await self._restart(instance)
            return CaseResult(case, Grade.ERROR, f"target stopped answering ({result.detail})")
        self._lost = f"target unreachable since case {case.id}"
        return CaseResult(case, Grade.ERROR, f"target unreachable ({result.detail})")

    async def _restart(self, crashed: Instance) -> None:
        if self.server is None:
            return
        async with self._restart_lock:
            current = await self.server.shared()
            if current is not crashed:
                return  # someone else restarted it already
            try:
                await self.server.restart_shared()
            except (TargetUnavailable, Unsupported) as error:
                self._lost = f"target crashed and could not be restarted: {error}"

    def _apply_profile(self, result: CaseResult) -> CaseResult:
        if self.implementation is None:
            return result
        reason = self.implementation.expectation(result.case.id)
        if reason is None:
            reason = self.implementation.may_fail(result.case.id)
            if reason is not None and result.grade in (Grade.FAIL, Grade.NON_STRICT):
                result.expected_failure = reason
                result.detail = (
                    f"{result.detail} [timing-dependent on this implementation: {reason}]"
                )
                result.grade = Grade.XFAIL
            return result
        result.expected_failure = reason
        if result.grade in (Grade.FAIL, Grade.NON_STRICT, Grade.ERROR):
            result.detail = f"{result.detail} [expected: {reason}]"
            result.grade = Grade.XFAIL
        elif result.grade is Grade.PASS:
            result.grade = Grade.XPASS
            result.detail = f"passed, but the implementation profile expects a failure: {reason}"
        return result


async def _all_or_none(coroutines) -> None:
    """Run the coroutines concurrently; if one raises (or the run is cancelled), cancel the
    others and wait for them before the error goes on. (``asyncio.gather`` leaves them running:
    a case could then start a target after the run's clean-up.)"""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
