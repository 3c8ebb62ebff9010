"""``distcache conformance``: run the conformance suite against a server or a proxy."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from ..spec.catalogue import DEFAULT_SPEC_BASE
from . import UsageError
from .tls_options import TLSSetupError, add_tls_arguments, check_used, files_from

__all__ = ["register"]

PROFILE_CHOICES = ("core", "strict", "robustness", "tls", "all")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "conformance",
        help="run the conformance suite against a server or proxy",
        description=(
            "Run the conformance suite. Without a target, the reference server is started "
            "in-process. Exit status: 0 passed (every selected case ran and no MUST failed; "
            "with --profile strict or all, no SHOULD either), 1 failed (a requirement failed or "
            "the target crashed, hung or flooded), 2 usage error or a target unreachable from "
            "the start, 3 incomplete (nothing failed, but some cases could not run against "
            "this target setup), 128+N stopped by signal N."
        ),
    )
    parser.add_argument(
        "address",
        nargs="?",
        metavar="ADDR",
        help="a running server: IP:host:port, UNIX:path or TLS:host:port (see --tls-ca)",
    )
    parser.add_argument(
        "--server-cmd",
        metavar="CMD",
        help=(
            "start the server under test; where it listens is {listen} (distcache syntax), "
            "{host} and {port}, or {path} (a UNIX socket); its capacity {sessions}: e.g. "
            '"dc_server -listen {listen} -sessions {sessions}" or "myserver --port {port}"; '
            "with {tls_cert}, {tls_key} and {tls_ca} it gets certificates from a throw-away CA "
            "and {listen} is a TLS: address"
        ),
    )
    parser.add_argument(
        "--proxy-cmd",
        metavar="CMD",
        help=(
            "test a proxy, started per case from this template: where it listens as for "
            "--server-cmd, its upstream as {upstream} (or {upstream_host} and {upstream_port}), "
            "{retry_ms}, {idle_ms} and {max_in_flight} optional (cases that need an idle limit "
            "or a bound on requests in flight are UNSUPPORTED without them); e.g. "
            '"dc_client -listen {listen} -server {upstream} -retry {retry_ms} -idle {idle_ms} '
            '-maxinflight {max_in_flight}"'
        ),
    )
    parser.add_argument(
        "--ports",
        metavar="LOW-HIGH",
        help=(
            "draw every port the runner listens on or gives a target from this range "
            "(e.g. 40000-40999; default: below the kernel's automatic range)"
        ),
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help=(
            "list the cases (with the grades each can give, when it is UNSUPPORTED, and the "
            "behaviours it accepts; with --implementation-profile, which give XFAIL) and the "
            "coverage matrix, and exit"
        ),
    )
    parser.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="PREFIX",
        help="run cases with this id prefix",
    )
    parser.add_argument(
        "--requirement",
        action="append",
        default=[],
        metavar="ID",
        help="run the cases that test this requirement (e.g. CACHE-2), in every profile",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILE_CHOICES,
        help=(
            "core, strict (adds SHOULD cases), robustness, tls (the TLS cases and core, over "
            "TLS; without a target the reference server runs with mutual TLS), or all "
            "(default: core, robustness)"
        ),
    )
    add_tls_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=1.0, metavar="SECONDS", help="per step (default 1)"
    )
    parser.add_argument(
        "--implementation-profile", metavar="FILE", help="expected failures (TOML or JSON)"
    )
    parser.add_argument("--format", choices=("text", "json", "junit"), default="text")
    parser.add_argument("--output", metavar="FILE", help="write the report here")
    parser.add_argument("--spec-base", default=DEFAULT_SPEC_BASE, metavar="URL")
    parser.add_argument("--jobs", type=int, default=16, help="cases run at once (default 16)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    parser.add_argument(
        "--record",
        metavar="DIR",
        help=(
            "record the safe-behaviour vectors from the reference server and proxy into DIR "
            "and exit"
        ),
    )
    parser.set_defaults(handler=run)


def _select(cases, args):
    from ..conformance.registry import PROFILES

    if args.profile in (None,):
        profiles = {"core", "robustness"}
    elif args.profile == "all":
        profiles = set(PROFILES)
    elif args.profile == "strict":
        profiles = {"core", "strict"}
    elif args.profile == "tls":
        profiles = {"core", "tls"}
    else:
        profiles = {args.profile}
    chosen = [c for c in cases if c.profile in profiles]
    if args.case:
        chosen = [c for c in cases if any(c.id.startswith(p) for p in args.case)]
        if not chosen:
            raise UsageError(f"no case id starts with {' or '.join(args.case)} (see --list)")
    if args.requirement:
        wanted = set(args.requirement)
        chosen = [c for c in (chosen if args.case else cases) if wanted & set(c.requirements)]
        if not chosen:
            raise UsageError(f"no case tests {' or '.join(args.requirement)} (see --list)")
    return chosen


def _list(cases, implementation) -> int:
    from ..conformance.coverage import CoverageError, load_coverage
    from ..conformance.possible import possible_grades

    try:
        coverage = load_coverage()
    except CoverageError as error:
        raise UsageError(f"conformance data: {error}") from None
    for case in cases:
        needs = ",".join(sorted(case.needs)) or "-"
        proved = ",".join(f.name for f in coverage.proving(case.id)) or "-"
        possible = possible_grades(case, implementation)
        grades = ",".join(g.value for g in possible.grades)
        outcomes = " | ".join(possible.outcomes) or "-"
        print(
            f"{case.id}\t{','.join(case.requirements)}\t{case.level}\t{case.profile}\t"
            f"{case.target}\t{needs}\t{case.title}\t{proved}\t{grades}\t"
            f"{possible.when() or '-'}\t{outcomes}"
        )
    print()
    print_matrix(cases, coverage)
    return 0


def print_matrix(cases, coverage) -> None:
    """The coverage matrix after the case list: one line per requirement, gaps called out."""
    from ..conformance.coverage import coverage_matrix

    print("# coverage: requirement, level, kind, status, cases, cases proved to fail on it")
    gaps = []
    for row in coverage_matrix(cases, coverage):
        req = row.requirement
        if row.status == "tested":
            detail = f"{len(row.cases)}\t{len(row.proved)}"
        elif row.status == "elsewhere":
            detail = f"0\t-\t{row.elsewhere}"
        elif row.status == "program":
            detail = f"0\t-\tprogram tests: {' '.join(row.program_tests)}"
        else:
            detail = "0\t-"
        if row.status == "gap":
            gaps.append(f"{req.id} ({req.level})")
        print(f"{req.id}\t{req.level}\t{req.kind}\t{row.status}\t{detail}")
    print(f"# gaps: {', '.join(gaps) if gaps else 'none'}")


def run(args) -> int:
    from ..conformance.grading import ProfileError, load_profile
    from ..conformance.registry import all_cases
    from ..conformance.vectors import VectorFormatError

    if args.timeout <= 0 or args.timeout > 60:
        raise UsageError("--timeout must be between 0 and 60 seconds")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.address and args.server_cmd:
        raise UsageError("give either ADDR or --server-cmd, not both")
    if args.ports:
        _confine_ports(args.ports)
    try:
        cases = all_cases()
    except VectorFormatError as error:
        raise UsageError(f"conformance data: {error}") from None
    implementation = None
    if args.implementation_profile:
        try:
            implementation = load_profile(args.implementation_profile)
        except ProfileError as error:
            raise UsageError(str(error)) from None
    if args.list:
        return _list(cases, implementation)
    if args.record:
        from ..conformance.record import record_reference_vectors

        return record_reference_vectors(Path(args.record), timeout=args.timeout)
    selected = _select(cases, args)
    return _run_until_stopped(args, selected, implementation)


def _confine_ports(text: str) -> None:
    from ..conformance.targets import confine_ports

    low, dash, high = text.partition("-")
    try:
        confine_ports(int(low), int(high))
    except ValueError as error:
        reason = str(error) if dash and low.isdigit() and high.isdigit() else "use LOW-HIGH"
        raise UsageError(f"--ports {text}: {reason}") from None


#: Signals that stop a run; every target it started is stopped with it.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _run_until_stopped(args, selected, implementation) -> int:
    """Run the suite; on SIGINT, SIGTERM, SIGHUP or the death of our parent, stop every target
    the run started, remove its files, and exit 128 + the signal number."""
    from ..conformance import launch

    launch.die_with_parent(signal.SIGTERM)
    received: list[int] = []

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            received.append(signum)
            task.cancel()

        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await _run(args, selected, implementation)
        except asyncio.CancelledError:
            if not received:
                raise
            return 128 + received[0]
        finally:
            await launch.stop_all()

    try:
        status = asyncio.run(main())
    finally:
        launch.stop_all_now()  # nothing is left by now; a safety net for unexpected exits
    if received:
        print(f"stopped by signal {signal.Signals(received[0]).name}", file=sys.stderr)
    return status


async def _run(args, selected, implementation) -> int:
    from ..conformance.report import render_json, render_junit, render_text
    from ..conformance.runner import Runner
    from ..conformance.targets import (
        CommandSetup,
        FixedSetup,
        InProcessSetup,
        ProxySetup,
        TargetUnavailable,
    )

    server = None
    try:
        proxy = ProxySetup(args.proxy_cmd) if args.proxy_cmd else None
        files = files_from(args)
        if args.address:
            server = FixedSetup(args.address, tls=_target_tls(args.address, files))
        elif files:
            raise UsageError("--tls-cert, --tls-key and --tls-ca describe a TLS: ADDR")
        elif args.server_cmd:
            server = CommandSetup(args.server_cmd)
        elif proxy is None:
            server = InProcessSetup(tls=args.profile == "tls")
        else:
            server = None
        tls_target = False
        if server is not None:
            shared = await server.shared()  # unreachable from the start: a usage-level error
            tls_target = shared.address.startswith("TLS:")
    except TargetUnavailable as error:
        if server is not None:
            await server.close()  # what it made so far (a throw-away CA's files)
        raise UsageError(str(error)) from None
    explicit = bool(args.case)
    kinds = ({"server"} if server else set()) | ({"proxy"} if proxy else set())
    if not explicit:
        selected = [c for c in selected if c.target in kinds]
    if not (explicit or tls_target or args.profile == "tls"):
        selected = [c for c in selected if c.profile != "tls"]  # they need a TLS: target
    target = " + ".join(
        part
        for part in (
            server.description if server else "",
            f"proxy: {args.proxy_cmd}" if proxy else "",
        )
        if part
    )
    strict = args.profile in ("strict", "all")
    progress = _progress if sys.stderr.isatty() else None
    runner = Runner(
        server=server,
        proxy=proxy,
        timeout=args.timeout,
        implementation=implementation,
        jobs=args.jobs,
        strict=strict,
        on_result=progress,
    )
    report = await runner.run(selected, target)
    if progress:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    render = {"text": render_text, "json": render_json, "junit": render_junit}[args.format]
    text = (
        render(report, args.spec_base, verbose=args.verbose)
        if args.format == "text"
        else render(report, args.spec_base)
    )
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot write '{args.output}': {error.strerror}") from None
        if args.format != "text":
            print(render_text(report, args.spec_base), end="")
    else:
        print(text, end="")
    return report.exit_status


def _target_tls(address: str, files):
    """The client files reaching ``address`` (checked now: bad files are a usage error)."""
    from ..address import AddressError, parse_address
    from ..tls import ClientTLS, TLSError

    try:
        target = parse_address(address)
    except AddressError as error:
        raise UsageError(str(error)) from None
    try:
        check_used(files, [target], dash="--")
        if target.tls:
            ClientTLS(files)
    except (TLSSetupError, TLSError) as error:
        raise UsageError(str(error)) from None
    return files if target.tls else None


def _progress(result, done: int, total: int) -> None:
    print(
        f"\r\033[K[{done}/{total}] {result.grade.value:<11} {result.case.id}",
        end="",
        file=sys.stderr,
        flush=True,
    )
