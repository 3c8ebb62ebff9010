"""The suite's own mutation test: each switch of the faulty server breaks one requirement, and the
cases that the mutation table (conformance/coverage.toml) lists for it must fail, blaming that
requirement; the same server with no switch must pass every one of those cases.

Only the listed cases run against each faulty server, and several runs go at once, so the whole
table costs about as much as its slowest few runs.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distcache.conformance.coverage import load_coverage
from distcache.conformance.requirements import level_of

HERE = Path(__file__).parent
FAULTY = f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'faulty_servers.py'))}"
#: Runs at once: each is a runner process plus the faulty servers it starts.
PARALLEL_RUNS = 4
HANG_GUARD = 240

SERVER_FAULTS = [f for f in load_coverage().faults if f.target == "server"]


def _run(fault_name: str | None, cases: tuple[str, ...]) -> dict:
    command = FAULTY + " -listen {listen} -sessions {sessions}"
    if fault_name:
        command += f" -fault {fault_name}"
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "report.json"
        args = [sys.executable, "-m", "distcache", "conformance", "--server-cmd", command]
        args += [a for case_id in cases for a in ("--case", case_id)]
        args += ["--format", "json", "--output", str(output), "--jobs", "4"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD)
        if not output.exists():
            return {"error": done.stderr, "results": []}
        report = json.loads(output.read_text())
    report["exit"] = done.returncode
    return report


@pytest.fixture(scope="module")
def reports() -> dict[str | None, dict]:
    """Every fault's run, and the correct twin's run of all listed cases, played side by side."""
    every_case = tuple(sorted({c for f in SERVER_FAULTS for c in f.cases}))
    jobs = {f.name: f.cases for f in SERVER_FAULTS}
    jobs[None] = every_case
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {name: pool.submit(_run, name, cases) for name, cases in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("fault", SERVER_FAULTS, ids=[f.name for f in SERVER_FAULTS])
def test_each_fault_fails_its_cases_on_the_requirement_it_breaks(fault, reports):
    report = reports[fault.name]
    results = {r["id"]: r for r in report["results"]}
    expected_grade = "FAIL" if level_of(fault.breaks) == "MUST" else "NON-STRICT"
    for case_id in fault.cases:
        result = results.get(case_id)
        assert result is not None, (case_id, report.get("error"))
        assert result["grade"] == expected_grade, (fault.name, case_id, result["detail"])
        assert result["requirement"]["id"] == fault.breaks, (fault.name, case_id, result)
    assert report["exit"] == (1 if expected_grade == "FAIL" else 0)


def test_the_correct_twin_passes_every_case_of_the_table(reports):
    report = reports[None]
    bad = [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]
    assert report["results"] and not bad, bad
    assert report["exit"] == 0
