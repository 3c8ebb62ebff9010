"""The generated Wireshark dissector, run by real tshark on a real capture, agrees with
`distcache decode` message for message; and its generator translates the schema tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import dpkt
import pytest
from capturing import (
    connect,
    converse,
    distcache,
    hang_up,
    tcpdump,
    wait_for_fins,
    write_packets,
)
from serverproc import dc_server

from distcache.dissector import GeneratorError, generate, lua_expression
from distcache.protocol import (
    add_request,
    encode_message,
    get_request,
    have_request,
    remove_request,
)
from distcache.wire import Direction, Operation, Status
from distcache.wire.schema import MESSAGES, FrameHeader, fields_of


def tshark_prefix(script: str) -> list[str]:
    """How to run tshark with a Lua script here: directly, or (where Lua is disabled for root)
    as an unprivileged user."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark is not installed")
    for prefix in ([tshark], ["runuser", "-u", "nobody", "--", tshark]):
        probe = subprocess.run(
            [*prefix, "-G", "protocols", "-X", f"lua_script:{script}"],
            capture_output=True,
            timeout=60,
        )
        if b"\tdistcache\n" in probe.stdout:  # name, short name, filter name
            return prefix
    pytest.skip("tshark does not run Lua scripts here, neither as this user nor as nobody")


@pytest.fixture(scope="module")
def world_readable(tmp_path_factory):
    """A directory an unprivileged tshark can read too."""
    directory = tempfile.mkdtemp(prefix="dissector-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def capture(world_readable):
    """Fragmented 32 KiB sessions, pipelined requests and refused ADDs against dc_server."""
    path = os.path.join(world_readable, "traffic.pcap")
    with dc_server() as server:
        port = int(server.listen.rsplit(":", 1)[1])
        with tcpdump(path, port):
            big = connect(port, mss=1200)
            session = bytes(range(256)) * 125  # 32000 bytes
            converse(big, [add_request(1, b"big", session, 60000)])
            converse(big, [get_request(2, b"big")])
            pipelined = connect(port)
            requests = [add_request(10 + i, b"k%d" % i, b"v%d" % i, 5000) for i in range(5)]
            requests += [
                add_request(20, b"k0", b"again", 5000),  # 101: already stored
                add_request(21, b"x" * 65, b"v", 5000),  # 103: id too long
                get_request(30, b"k1"),
                get_request(31, b"missing"),
                have_request(40, b"k2"),
                remove_request(50, b"k3"),
                remove_request(51, b"missing"),
            ]
            converse(pipelined, requests)
            hang_up(big)
            hang_up(pipelined)
            wait_for_fins(path, 4)
    os.chmod(path, 0o644)
    return path, port


def dissect(script: str, capture: str, *options: str) -> list[dict]:
    """The messages tshark's distcache dissector shows, in order: one dict per final frame."""
    result = subprocess.run(
        [
            *tshark_prefix(script),
            "-X",
            f"lua_script:{script}",
            "-r",
            capture,
            *options,
            "-T",
            "pdml",
        ],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"Lua: Error" not in result.stderr, result.stderr.decode()
    messages = []
    for packet in ET.fromstring(result.stdout).iter("packet"):
        for proto in packet.findall("proto[@name='distcache']"):
            fields: dict[str, ET.Element] = {}
            for element in proto.iter("field"):
                fields.setdefault(element.get("name"), element)
            if "distcache.message" in fields:
                messages.append(fields)
    return messages


def as_comparable_tshark(fields: dict) -> tuple:
    def show(name):
        return fields[name].get("show") if name in fields else None

    def value(name):
        return fields[name].get("value") if name in fields else None

    timeout = show("distcache.add.timeout_ms")
    status = show("distcache.status")
    return (
        "response" if show("distcache.is_response") == "1" else "request",
        int(show("distcache.request_uid"), 16),
        Operation(int(show("distcache.operation"))).name,
        int(show("distcache.frames")),
        None if timeout is None else int(timeout),
        value("distcache.session_id"),
        value("distcache.session"),
        None if status is None else int(status),
    )


def as_comparable_record(record: dict) -> tuple:
    payload = record["payload"]
    return (
        record["direction"],
        record["request_uid"],
        record["op"],
        record["frames"],
        payload.get("timeout_ms"),
        payload.get("session_id"),
        payload.get("session"),
        payload.get("code"),
    )


def test_tshark_with_the_generated_dissector_agrees_with_distcache_decode(capture, world_readable):
    path, port = capture
    script = os.path.join(world_readable, "distcache.lua")
    result = distcache("dissector", "--port", str(port))
    assert result.returncode == 0, result.stderr
    with open(script, "wb") as out:
        out.write(result.stdout)
    decoded = distcache("decode", "--format", "json", "--port", str(port), path)
    assert decoded.returncode == 0, decoded.stderr
    records = [json.loads(line) for line in decoded.stdout.decode().splitlines()]
    assert len(records) == 2 * 14

    shown = dissect(script, path)
    assert [as_comparable_tshark(f) for f in shown] == [as_comparable_record(r) for r in records]
    # The value tables came along: status names as Wireshark shows them.
    names = [f["distcache.status"].get("showname") for f in shown if "distcache.status" in f]
    assert "status: ADD_MATCHING_SESSION (101)" in names
    assert "status: ADD_ID_RANGE (103)" in names
    assert "status: NOTOK (1)" in names
    # The 32 KiB session was reassembled from 16 frames spread over several TCP segments.
    hit = next(f for f in shown if f["distcache.message"].get("show") == "GET response (hit)")
    assert bytes.fromhex(hit["distcache.session"].get("value")) == bytes(range(256)) * 125
    assert hit["distcache.frames"].get("show") == "16"


def test_decode_as_and_the_port_preference_reach_other_ports_alike(capture, world_readable):
    path, port = capture
    script = os.path.join(world_readable, "distcache-9001.lua")
    with open(script, "w") as out:
        out.write(generate([9001]))
    decode_as = dissect(script, path, "-d", f"tcp.port=={port},distcache")
    # Two passes: the second reads what the first stored, as Wireshark's GUI does on every click.
    preference = dissect(script, path, "-2", "-o", f"distcache.ports:{port}")
    assert len(decode_as) == len(preference) == 2 * 14
    assert [as_comparable_tshark(f) for f in decode_as] == [
        as_comparable_tshark(f) for f in preference
    ]


def test_illegal_header_values_are_flagged_malformed(world_readable):
    """A frame whose header breaks the schema's tests: each gets expert info with its reason."""
    frame = bytearray(encode_message(Direction.REQUEST, 7, Operation.GET, b"id"))
    frame[4] = 2  # is_response: not 0 or 1
    frame[9] = 1  # op_class: only 0 exists
    tcp = dpkt.tcp.TCP(sport=40000, dport=9001, seq=1, flags=0x18, data=bytes(frame))
    ip = dpkt.ip.IP(src=b"\x7f\x00\x00\x01", dst=b"\x7f\x00\x00\x01", p=6, data=tcp)
    ip.len = len(ip)
    path = os.path.join(world_readable, "bad.pcap")
    write_packets(path, 101, [(1.0, bytes(ip))])
    os.chmod(path, 0o644)
    script = os.path.join(world_readable, "distcache-bad.lua")
    with open(script, "w") as out:
        out.write(generate([9001]))
    result = subprocess.run(
        [
            *tshark_prefix(script),
            "-X",
            f"lua_script:{script}",
            "-r",
            path,
            "-T",
            "fields",
            "-e",
            "_ws.expert.message",
        ],
        capture_output=True,
        timeout=60,
    )
    messages = result.stdout.decode()
    assert "bad_is_response: 2; legal: 0 REQUEST, 1 RESPONSE" in messages
    assert "bad_op_class: 1; legal: 0 USER" in messages


def test_every_schema_test_translates_to_lua():
    for info in fields_of(FrameHeader):
        test = info.legal.test if info.legal else info.rule.test if info.rule else None
        if test is not None:
            assert (
                "v"
                not in lua_expression(test, {"v": "x", "complete": "c", "data_len": "d"}).split()
            )
    for message in MESSAGES:
        for info in fields_of(message.schema):
            if info.legal is not None:
                lua_expression(info.legal.test, {"v": "x"})
    assert lua_expression("v in [0, 100]", {"v": "x"}) == "(x == 0 or x == 0x64)"
    assert lua_expression("(v & 0xffff0000) == 0x110000", {"v": "x"}) == (
        "(band(x, 0xffff0000) == 0x110000)"
    )
    assert lua_expression("a == 1 or not b <= 2", {"a": "p", "b": "q"}) == (
        "((p == 1) or (not (q <= 2)))"
    )
    for untranslatable in ("v ** 2 == 4", "len(v) < 3", "v.x == 1", "v in range(3)"):
        with pytest.raises(GeneratorError):
            lua_expression(untranslatable, {"v": "x"})


def test_generated_script_names_fields_from_the_schemas():
    script = generate([9001, 9100])
    assert 'local DEFAULT_PORTS = "9001,9100"' in script
    for abbrev in (
        "distcache.request_uid",
        "distcache.operation",
        "distcache.is_response",
        "distcache.data_len",
        "distcache.add.timeout_ms",
        "distcache.add.id_len",
        "distcache.session_id",
        "distcache.status",
        "distcache.session",
    ):
        assert f'"{abbrev}"' in script
    for status in Status:
        assert f'[{int(status)}] = "{status.name}"' in script
    result = distcache("dissector", "--port", "0")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
