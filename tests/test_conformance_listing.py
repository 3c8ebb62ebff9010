"""What ``distcache conformance --list`` announces about each case before any run: the grades it
can give, when it cannot run, what an implementation profile makes of it, and the behaviours it
accepts; and the per-case outcome in the JUnit report of a run."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from distcache import conformance_data_path

HANG_GUARD = 60
#: Columns of a case line of --list.
COLUMNS = (
    "id",
    "requirements",
    "level",
    "profile",
    "target",
    "needs",
    "title",
    "proved",
    "grades",
    "when",
    "outcomes",
)


def listing(*args: str) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-m", "distcache", "conformance", "--list", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.split("\n\n", 1)[0].splitlines():
        fields = line.split("\t")
        assert len(fields) == len(COLUMNS), line
        rows[fields[0]] = dict(zip(COLUMNS, fields, strict=True))
    return rows


def test_each_case_lists_the_grades_it_can_give_and_when():
    rows = listing()
    plain = rows["ADD-2/check-order-and-codes"]
    assert (plain["grades"], plain["when"]) == ("PASS,FAIL,ERROR", "-")
    should = rows["CONN-3/pipelined-answered-back-to-back"]
    assert should["grades"] == "PASS,FAIL,NON-STRICT,ERROR"
    fresh = rows["CACHE-5/duplicate-evicts-nothing"]
    assert "UNSUPPORTED" in fresh["grades"].split(",")
    assert fresh["when"].startswith("UNSUPPORTED on a running server")
    # A fresh case with ids of its own replays with fresh ids on a running server: it runs.
    assert "UNSUPPORTED" not in rows["ADD-5/add-over-expired"]["grades"]
    assert "without --proxy-cmd" in rows["PROXY-1/uid-rewriting"]["when"]
    assert "{idle_ms}" in rows["vector/proxy-errors-014"]["when"]
    bound = rows["PROXY-9/requests-beyond-the-bound-wait"]
    assert "{max_in_flight}" in bound["when"] and "NON-STRICT" in bound["grades"]
    assert "TLS:" in rows["TLS-4/no-client-certificate-refused"]["when"]
    assert "client certificates" in rows["TLS-4/no-client-certificate-refused"]["when"]
    assert "over TLS" in rows["CONN-4/half-close-delivers-replies"]["when"]
    assert all("XFAIL" not in row["grades"] for row in rows.values())  # no profile given


def test_cases_that_accept_several_behaviours_list_them():
    rows = listing()
    outcomes = rows["ROBUST-3/oversize-message-refused-on-its-header"]["outcomes"].split(" | ")
    assert outcomes == [
        "closed on the crossing frame's header",
        "closed once the crossing frame's data arrived",
    ]
    assert len(rows["CONN-7/nothing-after-a-protocol-error"]["outcomes"].split(" | ")) == 2
    assert rows["ADD-2/check-order-and-codes"]["outcomes"] == "-"


def test_an_implementation_profile_shows_which_cases_give_xfail():
    profile = conformance_data_path() / "profiles" / "legacy-1.5.1.toml"
    rows = listing("--implementation-profile", str(profile))
    from distcache.conformance.grading import load_profile

    legacy = load_profile(profile)
    expected = [i for i in rows if legacy.expectation(i)]
    timing = [i for i in rows if legacy.may_fail(i) and not legacy.expectation(i)]
    assert expected and timing
    for case_id in expected:
        grades = rows[case_id]["grades"].split(",")
        assert {"XFAIL", "XPASS"} <= set(grades) and "PASS" not in grades, case_id
        assert legacy.expectation(case_id) in rows[case_id]["when"]
    for case_id in timing:  # pass or XFAIL, never FAIL and never XPASS
        grades = set(rows[case_id]["grades"].split(","))
        assert {"PASS", "XFAIL"} <= grades and not {"FAIL", "XPASS"} & grades, case_id
    others = [i for i in rows if not legacy.may_fail(i) and not legacy.expectation(i)]
    assert all("XFAIL" not in rows[i]["grades"] for i in others)


def test_junit_carries_the_outcome_a_case_saw(tmp_path):
    junit = tmp_path / "report.xml"
    command = [sys.executable, "-m", "distcache", "conformance", "--case", "ROBUST-3"]
    done = subprocess.run(
        [*command, "--format", "junit", "--output", str(junit)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == 0, done.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("verdict"), root.get("exit_status")) == ("passed", "0")
    [case] = list(root.iter("testcase"))
    properties = {p.get("name"): p.get("value") for p in case.find("properties")}
    accepted = properties["acceptable_outcomes"].split(" | ")
    assert properties["grade"] == "PASS" and properties["outcome"] in accepted
    assert len(accepted) == 2
