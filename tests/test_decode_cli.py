"""`distcache decode` as a user runs it: a real process, real files and stdin."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distcache.protocol import add_request, encode_status, get_request
from distcache.wire import Operation, Status

ADD = "0011000000000000020000010 00b000003e8000000026b3176".replace(" ", "")
ADD_REPLY = "001100000100000002000001000100"


def decode(*args, stdin: bytes = b""):
    return subprocess.run(
        [sys.executable, "-m", "distcache", "decode", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
    )


def test_json_records_follow_the_documented_contract():
    result = decode("--format", "json", "--hex", ADD + ADD_REPLY)
    assert result.returncode == 0, result.stderr
    request, reply = (json.loads(line) for line in result.stdout.decode().splitlines())
    assert request == {
        "direction": "request",
        "request_uid": 2,
        "op": "ADD",
        "proto_level": 0x00110000,
        "frames": 1,
        "offset": 0,
        "payload": {"timeout_ms": 1000, "session_id": "6b31", "session": "76"},
    }
    assert reply["payload"] == {"status": "OK", "code": 0}
    assert reply["offset"] == 25


def test_text_output_from_a_file(tmp_path):
    stream = add_request(7, b"session-id", b"x" * 5000, 60000) + get_request(8, b"session-id")
    path = tmp_path / "stream.bin"
    path.write_bytes(stream)
    result = decode(str(path), "--direction", "request")
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0
    assert lines[0].startswith("request  uid=0x00000007 ADD    frames=3 offset=0 timeout_ms=60000")
    assert "id=73657373696f6e2d6964 (10 B)" in lines[1]


def test_stdin_and_gets_ambiguity():
    stream = encode_status(3, Operation.GET, Status.NOTOK)
    result = decode("--format", "json", "-", stdin=stream)
    record = json.loads(result.stdout)
    assert record["payload"] == {"status": "NOTOK", "code": 1, "ambiguous": True}


@pytest.mark.parametrize(
    ("hex_stream", "reason", "offset"),
    [
        ("474554202f", "bad_version", 0),
        (ADD[:-2], "truncated", 0),
        ("0011000000000000020004010000", "bad_operation", 10),
    ],
)
def test_corrupt_input_gives_one_error_record_and_status_1(hex_stream, reason, offset):
    result = decode("--format", "json", "--hex", hex_stream)
    assert result.returncode == 1
    record = json.loads(result.stdout.decode().splitlines()[-1])
    assert (record["error"], record["offset"]) == (reason, offset)
    assert record["detail"]


def test_wrong_direction_is_an_error_when_a_direction_is_asked_for():
    result = decode("--direction", "response", "--format", "json", "--hex", ADD)
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "wrong_direction"


@pytest.mark.parametrize(
    "args", [("--hex", "zz"), ("/nonexistent/stream",), ("--direction", "sideways", "-")]
)
def test_bad_usage_is_one_line_and_status_2(args):
    result = decode(*args)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert result.stderr.strip().count(b"\n") == 0  # one line
