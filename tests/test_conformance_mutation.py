"""The suite's own mutation test: each switch of the faulty server (proxy, TLS server) breaks one
requirement, and the cases that the mutation table (conformance/coverage.toml) lists for it must
fail, blaming that requirement; the same server (proxy) with no switch must pass every one of
those cases.

Only the listed cases run against each faulty server, and several runs go at once, so the whole
table costs about as much as its slowest few runs.
"""

from __future__ import annotations

import json
import queue
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distcache.conformance.coverage import TARGETS, load_coverage
from distcache.conformance.requirements import level_of

HERE = Path(__file__).parent
PYTHON = shlex.quote(sys.executable)
FAULTY = f"{PYTHON} {shlex.quote(str(HERE / 'faulty_servers.py'))}"
FAULTY_PROXY = f"{PYTHON} {shlex.quote(str(HERE / 'faulty_proxy.py'))}"
FAULTY_TLS = f"{PYTHON} {shlex.quote(str(HERE / 'faulty_tls_servers.py'))}"
#: The TLS server is started with the runner's throw-away CA and requires client certificates.
TLS_FLAGS = " -tls-cert {tls_cert} -tls-key {tls_key} -tls-ca {tls_ca}"
#: Runs at once: each is a runner process plus the faulty servers it starts.
PARALLEL_RUNS = 4
HANG_GUARD = 240
#: One port range per run at a time (below the kernel's automatic range, as the runner's own).
PORT_RANGES: queue.Queue[str] = queue.Queue()
for _slot in range(PARALLEL_RUNS):
    PORT_RANGES.put(f"{21000 + 2000 * _slot}-{21000 + 2000 * _slot + 1999}")
#: The first test waits for every run (the module's fixture plays them all side by side).
pytestmark = pytest.mark.timeout(900)

FAULTS = load_coverage().faults


def _command(target: str, fault_name: str | None) -> list[str]:
    switch = f" -fault {fault_name}" if fault_name else ""
    if target == "server":
        return ["--server-cmd", FAULTY + " -listen {listen} -sessions {sessions}" + switch]
    if target == "tls-server":
        command = FAULTY_TLS + " -listen {listen} -sessions {sessions}" + TLS_FLAGS + switch
        return ["--server-cmd", command]
    template = " -listen {listen} -server {upstream} -retry {retry_ms} -idle {idle_ms}"
    template += " -maxinflight {max_in_flight}"
    return ["--proxy-cmd", FAULTY_PROXY + switch + template]


def _run(target: str, fault_name: str | None, cases: tuple[str, ...]) -> dict:
    # Runs side by side draw their ports from ranges of their own: a target that lost a port to
    # another run's target would be reached through that one, and its grades would be the other's.
    ports = PORT_RANGES.get()
    try:
        return _run_in(target, fault_name, cases, ports)
    finally:
        PORT_RANGES.put(ports)


def _run_in(target: str, fault_name: str | None, cases: tuple[str, ...], ports: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "report.json"
        args = [sys.executable, "-m", "distcache", "conformance", *_command(target, fault_name)]
        args += [a for case_id in cases for a in ("--case", case_id)]
        args += ["--format", "json", "--output", str(output), "--jobs", "4", "--ports", ports]
        done = subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD)
        if not output.exists():
            return {"error": done.stderr, "results": []}
        report = json.loads(output.read_text())
    report["exit"] = done.returncode
    return report


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    """Every fault's run, and each correct twin's run of all its listed cases, side by side."""
    jobs = {f.name: (f.target, f.name, f.cases) for f in FAULTS}
    for target in TARGETS:
        every_case = tuple(sorted({c for f in FAULTS if f.target == target for c in f.cases}))
        jobs[f"correct {target}"] = (target, None, every_case)
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {key: pool.submit(_run, *job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_each_fault_fails_its_cases_on_the_requirement_it_breaks(fault, reports):
    report = reports[fault.name]
    results = {r["id"]: r for r in report["results"]}
    expected_grade = "FAIL" if level_of(fault.breaks) == "MUST" else "NON-STRICT"
    for case_id in fault.cases:
        result = results.get(case_id)
        assert result is not None, (case_id, report.get("error"))
        assert result["grade"] == expected_grade, (fault.name, case_id, result["detail"])
        assert result["requirement"]["id"] == fault.breaks, (fault.name, case_id, result)
    if expected_grade == "FAIL":
        assert report["exit"] != 0


@pytest.mark.parametrize("target", TARGETS)
def test_the_correct_twin_passes_every_case_of_the_table(target, reports):
    report = reports[f"correct {target}"]
    bad = [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]
    assert report["results"] and not bad, bad
    assert report["exit"] == 0
