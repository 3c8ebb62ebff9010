"""dc_snoop as a program: clients and a server talk through it unchanged while it logs every
message, reports protocol errors without touching the bytes, and writes a pcap of the traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import dpkt
import pytest
from proxyproc import connect_unix
from serverproc import dc_server

from distcache.protocol import NEED_DATA, MessageDecoder, add_request, get_request, have_request
from distcache.wire import Direction


def _accepts(path: str) -> bool:
    """The socket file appears at the bind; the snooper listens only when it serves. (Read from
    the kernel's socket table: a probing connection would show up in the snooper's output.)"""
    with open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True  # __SO_ACCEPTCON: listening
    return False


@contextlib.contextmanager
def dc_snoop(tmp_path, upstream: str, *args: str):
    path = str(tmp_path / "snoop")
    argv = [sys.executable, "-m", "distcache.cli.dc_snoop", "-listen", f"UNIX:{path}"]
    process = subprocess.Popen(
        [*argv, "-server", upstream, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _accepts(path):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "dc_snoop never listened"
        time.sleep(0.02)
    try:
        yield path, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(10)
        process.stdout.close()
        process.stderr.close()


def exchange(sock: socket.socket, stream: bytes, replies: int, chunk: int = 1000) -> bytes:
    """Write ``stream`` in ``chunk``-byte pieces and read until ``replies`` whole replies came."""
    for start in range(0, len(stream), chunk):
        sock.sendall(stream[start : start + chunk])
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    received = b""
    count = 0
    sock.settimeout(5)
    while count < replies:
        data = sock.recv(65536)
        assert data, "closed early"
        received += data
        decoder.receive_data(data)
        while decoder.next_event() is not NEED_DATA:
            count += 1
    return received


def pcap_streams(path: str) -> dict[tuple, bytes]:
    """Payload bytes per (source port, destination port), in capture order."""
    streams: dict[tuple, bytes] = {}
    with open(path, "rb") as capture:
        for _, frame in dpkt.pcap.Reader(capture):
            tcp = dpkt.ethernet.Ethernet(frame).data.data
            key = (tcp.sport, tcp.dport)
            streams[key] = streams.get(key, b"") + tcp.data
    return streams


def test_relays_unchanged_and_logs_every_message(tmp_path):
    session = os.urandom(32_000)  # 16 frames each way

    def requests(session_id: bytes) -> bytes:
        return add_request(1, session_id, session, 60_000) + b"".join(
            get_request(2 + i, session_id) if i % 2 else have_request(2 + i, session_id)
            for i in range(10)
        )

    log_file, pcap_file = tmp_path / "log.jsonl", tmp_path / "c.pcap"
    with dc_server() as server:
        with server.connect() as direct:
            expected = exchange(direct, requests(b"big"), 11)
        # The server now holds "big": the snooped run uses another id (same replies).
        stream = requests(b"BIG")
        with dc_snoop(tmp_path, server.listen, "-format", "json", "-log", str(log_file),
                      "-pcap", str(pcap_file)) as (path, _):  # fmt: skip
            with connect_unix(path) as sock:
                received = exchange(sock, stream, 11)
            time.sleep(0.3)
    assert received == expected
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    messages = [r for r in records if "op" in r]
    assert [
        (r["direction"], r["request_uid"]) for r in messages if r["direction"] == "request"
    ] == [("request", uid) for uid in range(1, 12)]
    replies = [r for r in messages if r["direction"] == "response"]
    assert [r["request_uid"] for r in replies] == list(range(1, 12))
    assert all(r["latency_ms"] >= 0 and r["connection"] == 1 for r in replies)
    assert messages[0]["frames"] == 16 and messages[0]["payload"]["session"] == session.hex()
    assert replies[2]["payload"] == {"session": session.hex()}  # uid 3: a GET hit
    assert {"open", "close"} <= {r.get("event") for r in records}
    streams = pcap_streams(str(pcap_file))
    assert sorted(streams.values(), key=len) == sorted([stream, received], key=len)


def test_protocol_errors_reported_and_still_relayed(tmp_path):
    bad = get_request(5, b"k") + b"HELLO, this is not distcache"
    with dc_server() as server:
        with server.connect() as direct:
            direct.sendall(bad)
            direct.settimeout(5)
            expected = b"".join(iter(lambda: direct.recv(65536), b""))
        with dc_snoop(tmp_path, server.listen) as (path, process):
            with connect_unix(path) as sock:
                sock.sendall(bad)
                sock.settimeout(5)
                received = b"".join(iter(lambda: sock.recv(65536), b""))
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            log = process.stdout.read().decode()
    assert received == expected  # the GET's answer, then the server's close
    lines = log.splitlines()
    assert any("client->server request" in line and "GET" in line for line in lines)
    [error] = [line for line in lines if " error " in line]
    assert "bad_version at offset 15" in error  # right after the 15-byte GET
    assert any("server->client response" in line for line in lines)


def test_many_clients_each_with_their_own_connection(tmp_path):
    with (
        dc_server() as server,
        dc_snoop(tmp_path, server.listen, "-format", "json") as (
            path,
            process,
        ),
    ):

        async def client(index: int) -> None:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(add_request(index, b"id%d" % index, b"s" * index, 60_000))
            writer.write(get_request(index, b"id%d" % index))
            decoder = MessageDecoder(receives=Direction.RESPONSE)
            replies = []
            while len(replies) < 2:
                while (event := decoder.next_event()) is NEED_DATA:
                    decoder.receive_data(await reader.read(65536))
                replies.append(event.payload)
            assert replies == [b"\x00", b"s" * index]
            writer.close()

        async def clients() -> None:
            await asyncio.gather(*(client(i) for i in range(2, 32)))

        asyncio.run(clients())
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        records = [json.loads(line) for line in process.stdout.read().decode().splitlines()]
    assert {r["connection"] for r in records} == set(range(1, 31))
    assert sum(1 for r in records if r.get("direction") == "response") == 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error, must provide -listen and -server"),
        (["-listen", "UNIX:/tmp/x"], "Error, must provide -listen and -server"),
        (
            ["-listen", "UNIX:/tmp/x", "-server", "IP:9001", "-format", "xml"],
            "Error, -format given an invalid argument",
        ),
    ],
)
def test_command_line_errors(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "distcache.cli.dc_snoop", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert message in result.stderr.splitlines()


def test_the_message_log_is_reopened_on_sighup_and_diagnostics_go_to_errlog(tmp_path):
    log, errlog = tmp_path / "snoop.log", tmp_path / "snoop.err"
    with (
        dc_server() as server,
        dc_snoop(tmp_path, server.listen, "-log", str(log), "-errlog", str(errlog)) as (
            path,
            process,
        ),
    ):
        with connect_unix(path) as sock:
            exchange(sock, have_request(1, b"before"), 1)
        assert "dc_snoop " in errlog.read_text() and " relaying UNIX:" in errlog.read_text()
        log.rename(tmp_path / "snoop.log.1")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        with connect_unix(path) as sock:
            exchange(sock, have_request(2, b"after"), 1)
        time.sleep(0.2)
        assert process.poll() is None
    assert "HAVE" in (tmp_path / "snoop.log.1").read_text()
    assert "id=6166746572" in log.read_text()  # "after", in the new file
    assert "6166746572" not in (tmp_path / "snoop.log.1").read_text()


def test_a_message_log_that_cannot_be_reopened_is_kept(tmp_path):
    # logrotate moved the directory away: SIGHUP cannot reopen the path, and the relay goes on
    # writing to the file it has, with one line about it in its diagnostics.
    logs = tmp_path / "logs"
    logs.mkdir()
    errlog = tmp_path / "snoop.err"
    with (
        dc_server() as server,
        dc_snoop(tmp_path, server.listen, "-log", str(logs / "snoop.log"), "-errlog", str(errlog))
        as (path, process),
    ):  # fmt: skip
        with connect_unix(path) as sock:
            exchange(sock, have_request(1, b"before"), 1)
        logs.rename(tmp_path / "old-logs")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        with connect_unix(path) as sock:
            exchange(sock, have_request(2, b"after"), 1)
        time.sleep(0.2)
        assert process.poll() is None
    assert "id=6166746572" in (tmp_path / "old-logs" / "snoop.log").read_text()
    assert errlog.read_text().count("cannot reopen the message log") == 1
