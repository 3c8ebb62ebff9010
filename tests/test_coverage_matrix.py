"""The coverage matrix: no MUST of the wire without a case, a consistent mutation table, vector
cases that blame the requirement their vector pins, and the matrix in ``--list``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import faulty_proxy
import faulty_servers
import faulty_tls_servers
import pytest

from distcache import conformance_data_path
from distcache.conformance.coverage import (
    WIRE_KINDS,
    CoverageError,
    coverage_matrix,
    load_coverage,
    read_coverage,
)
from distcache.conformance.registry import all_cases
from distcache.conformance.vector_cases import vector_plans
from distcache.spec.catalogue import load_requirements


def test_no_must_requirement_of_the_wire_is_without_a_case():
    gaps = [row.requirement.id for row in coverage_matrix() if row.status == "gap"]
    must_gaps = [
        g for g in gaps if next(r for r in load_requirements() if r.id == g).level == "MUST"
    ]
    assert not must_gaps, f"MUST requirements no conformance case tests: {must_gaps}"


def test_every_tested_must_requirement_has_a_fault_that_fails_its_cases():
    """A case that no faulty target makes fail could pass anything: for each MUST the suite
    tests, the mutation table names a fault that fails at least one of its cases on it."""
    unproved = [
        row.requirement.id
        for row in coverage_matrix()
        if row.status == "tested" and row.requirement.level == "MUST" and not row.proved
    ]
    assert not unproved, f"MUST requirements whose cases no fault makes fail: {unproved}"


def test_a_requirement_without_a_case_is_a_gap_unless_checked_elsewhere():
    rows = {row.requirement.id: row for row in coverage_matrix()}
    assert rows["FRAME-8"].status == "elsewhere"  # a client's duty
    assert rows["CTX-1"].status == "not-wire"
    assert rows["CACHE-2"].status == "tested" and rows["CACHE-2"].proved
    # Take every case of CACHE-2 away and it becomes a gap.
    cases = [c for c in all_cases() if "CACHE-2" not in c.requirements]
    rows = {row.requirement.id: row for row in coverage_matrix(cases)}
    assert rows["CACHE-2"].status == "gap"


def test_the_mutation_table_names_real_switches_cases_and_requirements():
    coverage = load_coverage()
    cases = {c.id: c for c in all_cases()}
    requirements = {r.id: r for r in load_requirements()}
    names = [f.name for f in coverage.faults]
    assert len(names) == len(set(names))
    for fault in coverage.faults:
        switches = {
            "server": faulty_servers.FAULTS,
            "proxy": faulty_proxy.PATCHES,
            "tls-server": faulty_tls_servers.FAULTS,
        }[fault.target]
        assert fault.name in switches, fault.name
        assert fault.breaks in requirements, fault
        for case_id in fault.cases:
            assert case_id in cases, (fault.name, case_id)
            assert fault.breaks in cases[case_id].requirements, (fault.name, case_id)
    proxy_faults = {f.name for f in coverage.faults if f.target == "proxy"}
    assert set(faulty_proxy.PATCHES) == proxy_faults  # no switch without a row in the table
    for requirement_id in coverage.elsewhere:
        assert requirements[requirement_id].kind in WIRE_KINDS, requirement_id


def test_every_requirement_about_a_program_is_checked_against_that_program():
    """Each requirement of kind cli names tests that run the program (coverage.toml's
    [programs]); each test named there exists, so the map cannot point at nothing."""
    coverage = load_coverage()
    requirements = {r.id: r for r in load_requirements()}
    missing = [
        r.id for r in requirements.values() if r.kind == "cli" and r.id not in coverage.programs
    ]
    assert not missing, f"program requirements without a test of the program: {missing}"
    root = Path(__file__).parent.parent
    for requirement_id, tests in coverage.programs.items():
        assert requirement_id in requirements, requirement_id
        for test in tests:
            path, _, name = test.partition("::")
            source = (root / path).read_text()
            assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), test
    rows = {row.requirement.id: row for row in coverage_matrix()}
    assert rows["SRV-2"].status == "program" and rows["SRV-2"].program_tests
    assert rows["CTX-1"].status == "not-wire"  # the client library's: tested, not a program


def test_every_vector_case_blames_the_requirement_its_vector_pins():
    raw = tomllib.loads((conformance_data_path() / "vector-requirements.toml").read_text())
    pins = raw["pins"]
    known = {r.id for r in load_requirements()}
    plans = vector_plans()
    assert {p.legacy.id for p in plans} == set(pins)
    cases = {c.id: c for c in all_cases()}
    for plan in plans:
        assert pins[plan.legacy.id] in known
        assert cases[f"vector/{plan.legacy.id}"].requirements[0] == pins[plan.legacy.id]
    assert cases["vector/server-corrupt-023"].requirements[0] == "FRAME-10"
    assert cases["vector/server-expiry-007"].requirements[0] == "ADD-5"


def test_list_prints_the_faults_per_case_and_the_matrix():
    done = subprocess.run(
        [sys.executable, "-m", "distcache", "conformance", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    by_id = {line.split("\t")[0]: line.split("\t") for line in lines if line}
    assert by_id["GET-1/get-keeps-expiry"][7] == "get_refreshes_expiry,ignore_expiry"
    assert by_id["FRAME-1"][1:4] == ["MUST", "wire", "tested"]
    assert by_id["FRAME-8"][3] == "elsewhere"
    assert by_id["SRV-3"][3] == "program" and "test_killable_stops_on_sigusr" in by_id["SRV-3"][6]
    assert lines[-1].startswith("# gaps: ") and "MUST" not in lines[-1]


def test_requirement_selects_the_cases_of_a_requirement(tmp_path):
    output = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distcache",
            "conformance",
            "--requirement",
            "HAVE-1",
            "--case",
            "HAVE-1/",
            "--format",
            "json",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ids = {r["id"] for r in json.loads(output.read_text())["results"]}
    assert ids == {c.id for c in all_cases() if c.id.startswith("HAVE-1/")}


_FAULT = (
    '[[fault]]\nname = "x"\ntarget = "server"\nbreaks = "FRAME-1"\ndoes = "it"\n'
    'cases = ["FRAME-1/reply-frames-back-to-back"]\n'
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('format = "other/1"\n', "not a distcache-coverage/1 file"),
        ('format = "distcache-coverage/1"\n[[fault]]\nname = "x"\ncases = "A"\n', "list of cases"),
        (
            'format = "distcache-coverage/1"\n' + _FAULT.replace('"server"', '"client"'),
            "bad target",
        ),
        ('format = "distcache-coverage/1"\n' + _FAULT + _FAULT, "listed twice"),
        ('format = "distcache-coverage/1"\n[elsewhere]\n"FRAME-8" = ""\n', "[elsewhere]"),
        ('format = "distcache-coverage/1"\n[programs]\n"SRV-1" = ["x.py"]\n', "[programs]"),
        ('format = "distcache-coverage/1"\n[programs]\n"SRV-1" = []\n', "[programs]"),
        ("format = ", "coverage.toml"),
    ],
)
def test_a_malformed_mutation_table_is_refused_with_a_reason(tmp_path, body, message):
    path = tmp_path / "coverage.toml"
    path.write_text(body)
    with pytest.raises(CoverageError, match=message.replace("[", r"\[")):
        read_coverage(path)


def test_a_well_formed_mutation_table_reads_back(tmp_path):
    path = tmp_path / "coverage.toml"
    path.write_text('format = "distcache-coverage/1"\n' + _FAULT)
    (fault,) = read_coverage(path).faults
    assert (fault.name, fault.breaks, fault.cases) == (
        "x",
        "FRAME-1",
        ("FRAME-1/reply-frames-back-to-back",),
    )
