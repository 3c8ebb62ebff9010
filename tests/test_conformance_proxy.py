"""The proxy part of the conformance suite: the safe-behaviour proxy vectors replayed against our
``dc_client`` process, the recorder that made them, and ``--proxy-cmd`` runs end to end."""

from __future__ import annotations

import asyncio
import shlex
import sys

import pytest
from proxyproc import dc_client
from serverproc import ServerThread, address_of, free_port
from test_conformance_runner import FAULTY, by_id, conformance, json_report

from distcache import conformance_data_path
from distcache.conformance import legacy_vector_files, reference_vector_files, replay
from distcache.conformance.vectors import (
    Expect,
    ExpectClose,
    ExpectSilence,
    ExpectTargetDies,
    Reconnect,
    Send,
    Sleep,
)

DC_CLIENT = f"{shlex.quote(sys.executable)} -m distcache.cli.dc_client"
PROXY_CMD = DC_CLIENT + " -listen {listen} -server {upstream} -retry {retry_ms}"
REFERENCE_DIR = conformance_data_path() / "vectors" / "reference"
LEGACY = {v.id: v for f in legacy_vector_files() for v in f}
RECORDED = [v for f in reference_vector_files() if f.target_kind == "proxy" for v in f]


@pytest.fixture(scope="module")
def servers():
    thread = ServerThread()
    yield thread
    thread.close()


def test_every_flagged_proxy_vector_has_a_recording():
    flagged = {v.id for v in LEGACY.values() if v.target_kind == "proxy" and v.unsafe}
    assert flagged and {v.id for v in RECORDED} == flagged


@pytest.mark.parametrize("vector", RECORDED, ids=lambda v: v.id)
def test_recorded_proxy_vector_replays_against_dc_client(servers, vector, tmp_path):
    server = servers.start(vector.sessions or 512) if vector.upstream_running else None
    upstream = address_of(server) if server else f"IP:127.0.0.1:{free_port()}"
    timers = vector.proxy_timers
    args = ("-retry", str(timers["retry_ms"]), "-idle", str(timers["idle_ms"]))
    try:
        with dc_client(str(tmp_path / "px"), upstream, *args) as proxy:
            result = asyncio.run(replay(vector, f"UNIX:{proxy.path}", step_timeout=3.0))
            assert proxy.alive, proxy.stderr
    finally:
        if server is not None:
            servers.stop(server)
    assert result.passed, result.mismatch.describe()
    assert result.steps_played == len(vector.steps)


@pytest.mark.parametrize("vector", RECORDED, ids=lambda v: v.id)
def test_recording_spells_out_the_safe_behaviour(vector):
    """A close is followed by a new connection that is answered; where the legacy proxy died the
    recording ends answered; a withheld tail is sent at the end and answered exactly once."""
    legacy, steps = LEGACY[vector.id], vector.steps
    kinds = [type(step) for step in steps]
    assert not vector.flags and ExpectTargetDies not in kinds
    if ExpectClose in kinds:  # (a pause the legacy recording kept may stay)
        after = [kind for kind in kinds[kinds.index(ExpectClose) :] if kind is not Sleep]
        assert after == [ExpectClose, Reconnect, Send, Expect]
    if legacy.expects_death:
        assert kinds[-1] is Expect
    if "flood" in legacy.title:
        assert kinds[-4:] == [ExpectSilence, Send, Expect, ExpectSilence]


def test_the_recorder_reproduces_the_shipped_files(tmp_path):
    # Some 35 s of waiting (silences, proxy timers) one vector after another, with little CPU:
    # the usual hang guard is too short for it on a busy host.
    done = conformance("--record", str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    shipped = sorted(path.name for path in REFERENCE_DIR.glob("*.json"))
    assert sorted(path.name for path in tmp_path.glob("*.json")) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (REFERENCE_DIR / name).read_bytes(), name


def test_whole_proxy_part_passes_dc_client_with_an_idle_limit(tmp_path):
    command = PROXY_CMD + " -idle {idle_ms} -maxinflight {max_in_flight}"
    code, report = json_report("--proxy-cmd", command, "--profile", "all", tmp_path=tmp_path)
    bad = [(r["id"], r["grade"], r["detail"]) for r in report["results"] if r["grade"] != "PASS"]
    assert code == 0 and not bad, bad
    ids = {r["id"] for r in report["results"]}
    assert {f"vector/{v.id}" for v in RECORDED} <= ids


def test_without_idle_ms_only_the_idle_vectors_are_unsupported(tmp_path):
    code, report = json_report(
        "--proxy-cmd", PROXY_CMD, "--case", "vector/proxy-errors-01", tmp_path=tmp_path
    )
    results = by_id(report)
    unsupported = {i for i, r in results.items() if r["grade"] == "UNSUPPORTED"}
    assert unsupported == {"vector/proxy-errors-014", "vector/proxy-errors-015"}
    assert all("{idle_ms}" in results[i]["detail"] for i in unsupported)
    assert {r["grade"] for i, r in results.items() if i not in unsupported} == {"PASS"}
    assert code == 3  # incomplete: two cases could not run


def test_without_max_in_flight_the_bound_case_is_unsupported(tmp_path):
    code, report = json_report("--proxy-cmd", PROXY_CMD, "--case", "PROXY-9", tmp_path=tmp_path)
    [result] = report["results"]
    assert result["grade"] == "UNSUPPORTED" and "{max_in_flight}" in result["detail"]
    assert code == 3


# A server standing in for a proxy (it ignores the upstream) is transparent enough for these
# vectors, so its faults must show: the twin without a fault passes the same cases.
STAND_IN = "env DISTCACHE_IGNORED={upstream} " + FAULTY + " -listen {listen}"
STAND_IN_FAULTS = [
    ("crash_on_bad_version", "vector/proxy-errors-006"),
    ("reply_partial", "vector/proxy-errors-010"),
]


@pytest.mark.parametrize(("fault", "case_id"), STAND_IN_FAULTS)
def test_a_faulty_stand_in_fails_the_recorded_vector(fault, case_id, tmp_path):
    code, report = json_report(
        "--proxy-cmd", f"{STAND_IN} -fault {fault}", "--case", case_id, tmp_path=tmp_path
    )
    assert by_id(report)[case_id]["grade"] in ("FAIL", "ERROR")
    assert code == 1
    code, report = json_report("--proxy-cmd", STAND_IN, "--case", case_id, tmp_path=tmp_path)
    assert by_id(report)[case_id]["grade"] == "PASS", by_id(report)[case_id]["detail"]
    assert code == 0
