"""The conformance runner end to end: real processes, real sockets, and servers with faults.

The suite must pass the reference server and must fail each deliberately faulty server on the
requirement its fault breaks; crashing, silent and flooding targets must end in ERROR/FAIL
within bounded time (the wall-clock bounds below are hang guards, not performance checks).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from distcache.conformance.targets import RefusingAddress, _ephemeral_ports, free_tcp_address

HERE = Path(__file__).parent
FAULTY = f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'faulty_servers.py'))}"
HANG_GUARD = 60


def conformance(*args: str, timeout: float = HANG_GUARD) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "distcache", "conformance", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def json_report(*args: str, tmp_path: Path) -> tuple[int, dict]:
    output = tmp_path / "report.json"
    done = conformance(*args, "--format", "json", "--output", str(output))
    assert output.exists(), done.stderr
    return done.returncode, json.loads(output.read_text())


def faulty_cmd(*faults: str) -> str:
    return (
        FAULTY + " -listen {listen} -sessions {sessions}" + "".join(f" -fault {f}" for f in faults)
    )


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["results"]}


def test_the_whole_suite_passes_the_reference_server_in_process(tmp_path):
    code, report = json_report(tmp_path=tmp_path)
    bad = [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]
    assert code == 0 and not bad, bad
    assert report["summary"]["PASS"] > 200
    assert all(r["requirements"] and "wire" in r for r in report["results"])


def test_the_whole_suite_passes_dc_server_started_by_the_runner(tmp_path):
    command = f"{shlex.quote(sys.executable)} -m distcache.cli.dc_server -listen {{listen}} "
    command += "-sessions {sessions}"
    code, report = json_report("--server-cmd", command, "--profile", "all", tmp_path=tmp_path)
    bad = [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]
    assert code == 0 and not bad, bad


# Each fault of the faulty server failing its requirement, and its correct twin passing, is the
# mutation test (test_conformance_mutation.py, driven by conformance/coverage.toml).


def test_a_broken_should_is_non_strict_and_fails_only_in_strict_mode(tmp_path):
    args = ("--server-cmd", faulty_cmd("half_close_drop"), "--case", "CONN-4")
    code, report = json_report(*args, tmp_path=tmp_path)
    assert by_id(report)["CONN-4/half-close-delivers-replies"]["grade"] == "NON-STRICT"
    assert code == 0
    code, _ = json_report(*args, "--profile", "strict", tmp_path=tmp_path)
    assert code == 1


def test_a_target_crashing_mid_run_is_restarted_and_reported(tmp_path):
    started = time.monotonic()
    code, report = json_report(
        "--server-cmd",
        faulty_cmd("crash_mid_run"),
        "--case",
        "FRAME-5",
        "--case",
        "GET",
        "--case",
        "REM",
        "--case",
        "HAVE",
        "--case",
        "RESP",
        "--case",
        "FRAME-3",
        "--jobs",
        "1",
        tmp_path=tmp_path,
    )
    grades = {r["grade"] for r in report["results"]}
    assert code == 1 and "ERROR" in grades
    assert any("exited" in r["detail"] for r in report["results"] if r["grade"] == "ERROR")
    assert "PASS" in grades  # the run went on after restarting the target
    assert time.monotonic() - started < HANG_GUARD


def test_a_silent_target_fails_within_the_timeouts(tmp_path):
    started = time.monotonic()
    code, report = json_report(
        "--server-cmd",
        faulty_cmd("never_answer"),
        "--case",
        "GET",
        "--case",
        "RESP",
        "--case",
        "FRAME-3",
        "--timeout",
        "0.5",
        tmp_path=tmp_path,
    )
    assert code == 1
    assert all(r["grade"] in ("FAIL", "ERROR") for r in report["results"])
    assert time.monotonic() - started < HANG_GUARD


def test_a_fixed_target_that_dies_ends_the_run_cleanly(tmp_path):
    address = free_tcp_address()
    port = int(address.rsplit(":", 1)[1])
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "faulty_servers.py"),
            "-listen",
            address,
            "-fault",
            "crash_on_bad_version",
        ],
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        started = time.monotonic()
        code, report = json_report(address, "--profile", "robustness", tmp_path=tmp_path)
        assert code == 1
        assert report["stopped"] and "unreachable" in report["stopped"]
        assert {r["grade"] for r in report["results"]} <= {"FAIL", "ERROR", "UNSUPPORTED"}
        assert time.monotonic() - started < HANG_GUARD
    finally:
        process.kill()
        process.wait()


def _add_order_fault_with_profile(profile, tmp_path):
    """Exit code and results by case id of ADD-2 and RESP-1 against a server that checks the
    ADD fields in the wrong order (so ADD-2 fails and RESP-1 passes), graded with ``profile``."""
    code, report = json_report(
        "--server-cmd",
        faulty_cmd("add_order"),
        "--case",
        "ADD-2",
        "--case",
        "RESP-1",
        "--implementation-profile",
        str(profile),
        tmp_path=tmp_path,
    )
    return code, by_id(report)


def test_implementation_profile_grades_xfail_and_xpass(tmp_path):
    profile = tmp_path / "profile.toml"
    profile.write_text(
        'format = "distcache-implementation-profile/1"\nimplementation = "faulty"\n'
        '[expected-failures]\n"ADD-2/check-order-and-codes" = "checks the id range first"\n'
        '"RESP-1/*" = "claimed broken, but is not"\n'
    )
    code, results = _add_order_fault_with_profile(profile, tmp_path)
    assert results["ADD-2/check-order-and-codes"]["grade"] == "XFAIL"
    assert results["RESP-1/uid-echo"]["grade"] == "XPASS"
    assert code == 1  # an unexpected pass fails the run


def test_nondeterministic_profile_entries_never_xpass(tmp_path):
    profile = tmp_path / "profile.toml"
    profile.write_text(
        'format = "distcache-implementation-profile/1"\n'
        '[nondeterministic]\n"ADD-2/check-order-and-codes" = "a race"\n"RESP-1/*" = "a race"\n'
    )
    code, results = _add_order_fault_with_profile(profile, tmp_path)
    assert results["ADD-2/check-order-and-codes"]["grade"] == "XFAIL"  # lost the race
    assert results["RESP-1/uid-echo"]["grade"] == "PASS"  # won it: not an XPASS
    assert code == 0


def test_the_legacy_profile_names_only_existing_cases():
    from distcache import conformance_data_path
    from distcache.conformance.grading import load_profile
    from distcache.conformance.registry import all_cases

    profile = load_profile(conformance_data_path() / "profiles" / "legacy-1.5.1.toml")
    ids = [c.id for c in all_cases()]
    for pattern, reason in {**profile.expected, **profile.nondeterministic}.items():
        assert reason.strip()
        assert any(
            i == pattern or (pattern.endswith("*") and i.startswith(pattern[:-1])) for i in ids
        ), pattern


def test_reports_in_all_three_formats_parse(tmp_path):
    args = ("--server-cmd", faulty_cmd("add_order"), "--case", "ADD-2", "--case", "HAVE")
    _, report = json_report(*args, tmp_path=tmp_path)
    assert set(report) >= {"target", "summary", "results"}
    record = by_id(report)["ADD-2/check-order-and-codes"]
    assert {"id", "title", "requirements", "grade", "detail", "duration_ms", "wire"} <= set(record)
    assert record["wire"] and all("hex" in e or "event" in e for e in record["wire"])
    junit = tmp_path / "report.xml"
    done = conformance(*args, "--format", "junit", "--output", str(junit))
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("failures") == "1"
    assert root.findall(".//failure")
    assert (root.get("verdict"), root.get("exit_status")) == ("failed", "1")
    cases = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.find("properties")}
        for case in root.iter("testcase")
    }
    assert cases["ADD-2/check-order-and-codes"]["grade"] == "FAIL"
    assert cases["ADD-2/check-order-and-codes"]["blamed"] == "ADD-2"
    assert {c["grade"] for c in cases.values()} == {"FAIL", "PASS"}
    assert "ADD-2 (MUST)" in done.stdout  # the terminal summary quotes the requirement
    text = conformance(*args)
    assert "FAIL" in text.stdout and "#req-add-2" in text.stdout


def test_list_shows_every_case_with_its_requirements():
    done = conformance("--list")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) > 250
    fields = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert fields["FRAME-6/segmentation-every-offset"][1:4] == ["FRAME-6", "MUST", "core"]
    assert "vector/server-ops-001" in fields and "PROXY-2/no-upstream-empty-reply" in fields


@pytest.mark.parametrize(
    "args",
    [
        ["IP:127.0.0.1:1"],
        ["IP:9001"],
        ["--case", "NO-SUCH-CASE"],
        ["--implementation-profile", "/nonexistent/profile.toml"],
        ["--server-cmd", "no-such-program-xyz -listen {listen}"],
        ["--server-cmd", "dc_server -listen {nowhere}"],
        ["--timeout", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(args):
    done = conformance(*args)
    assert done.returncode == 2, done
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_refusing_address_refuses_and_keeps_its_port_from_other_programs():
    """The absent upstream of the proxy cases: while cases run side by side, no server another
    case starts can be given its port."""
    refusing = RefusingAddress()
    port = int(refusing.address.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    asyncio.run(refusing.close())
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))  # released


def test_target_ports_are_never_handed_out_twice_nor_from_the_kernels_range():
    """Targets started side by side: no two get one port, and no automatic port (a bind to
    port 0, an outgoing connection) can take one before its target listens on it."""
    ports = [int(free_tcp_address().rsplit(":", 1)[1]) for _ in range(500)]
    assert len(set(ports)) == len(ports)
    low = _ephemeral_ports()[0]
    if low > 20000:
        assert all(20000 <= port < low for port in ports)
