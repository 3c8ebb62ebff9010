"""`distcache decode` on real packet captures: tcpdump on loopback while real clients talk to a
real dc_server, and dpkt rewrites of those captures (lost, reordered, repeated segments)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import dpkt
import pytest
from capturing import (
    connect,
    converse,
    distcache,
    hang_up,
    read_packets,
    rewrite,
    tcp_of,
    tcpdump,
    wait_for_fins,
    write_packets,
)
from serverproc import dc_server

from distcache.decoding import decode_stream
from distcache.protocol import (
    add_request,
    encode_message,
    get_request,
    have_request,
    remove_request,
)

BIG = 32000  # bytes per session: 16 frames on the wire, and many TCP segments at MSS 1200
TIMING_KEYS = ("time", "latency_ms")


@dataclass
class Conversation:
    """One client connection: what it sent and received, byte for byte."""

    sock: socket.socket
    sent: bytearray = field(default_factory=bytearray)
    replies: list = field(default_factory=list)
    endpoint: str = ""  #: the client's ip:port

    def __post_init__(self) -> None:
        host, port = self.sock.getsockname()[:2]
        self.endpoint = f"{host}:{port}"

    def ask(self, *requests: bytes) -> list:
        self.sent += b"".join(requests)
        replies = converse(self.sock, list(requests))
        self.replies += replies
        return replies


@dataclass
class Recording:
    lo: str
    any: str
    port: int
    start: float
    end: float
    sessions: list[bytes]
    fragmented: Conversation
    pipelined: Conversation


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    """Two connections captured on lo (Ethernet framing) and on 'any' (Linux cooked) at once."""
    directory = tmp_path_factory.mktemp("captures")
    lo, anywhere = str(directory / "lo.pcap"), str(directory / "any.pcap")
    with dc_server() as server:
        port = int(server.listen.rsplit(":", 1)[1])
        with tcpdump(lo, port), tcpdump(anywhere, port, interface="any"):
            start = time.time()
            sessions = [bytes([65 + i]) * BIG for i in range(3)]
            fragmented = Conversation(connect(port, mss=1200))
            for i, session in enumerate(sessions):  # one at a time: request, then reply
                fragmented.ask(add_request(i + 1, b"big%d" % i, session, 60000))
            for i in range(3):
                fragmented.ask(get_request(10 + i, b"big%d" % i))
            fragmented.ask(get_request(20, b"no such id"))
            pipelined = Conversation(connect(port))
            requests = [add_request(100 + i, b"k%d" % i, b"v%d" % i, 60000) for i in range(20)]
            requests += [get_request(200 + i, b"k%d" % i) for i in range(40)]  # 20 hits, 20 misses
            requests += [have_request(300 + i, b"k%d" % i) for i in range(10)]
            requests += [remove_request(400 + i, b"k%d" % (i * 3)) for i in range(10)]
            pipelined.ask(*requests)
            hang_up(fragmented.sock)
            hang_up(pipelined.sock)
            wait_for_fins(lo, 4)
            wait_for_fins(anywhere, 4)
            end = time.time()
    return Recording(lo, anywhere, port, start, end, sessions, fragmented, pipelined)


def records_of(*args: str, status: int = 0) -> list[dict]:
    result = distcache("decode", "--format", "json", *args)
    assert result.returncode == status, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def expected_records(conversation: Conversation) -> list[dict]:
    """What the stream decoder makes of the bytes the client really sent and received."""
    received = b"".join(reply_bytes(reply) for reply in conversation.replies)
    return list(decode_stream(bytes(conversation.sent))) + list(decode_stream(received))


def reply_bytes(reply) -> bytes:
    return encode_message(reply.direction, reply.request_uid, reply.operation, reply.payload)


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def of_connection(records: list[dict], conversation: Conversation) -> list[dict]:
    """The connection's requests, then its responses (each in stream order), without capture
    keys: comparable with :func:`expected_records`."""
    mine = [r for r in records if conversation.endpoint in (r["src"], r["dst"])]
    ordered = [r for r in mine if r["src"] == conversation.endpoint]
    ordered += [r for r in mine if r["dst"] == conversation.endpoint]
    return [{k: v for k, v in r.items() if k not in (*TIMING_KEYS, "src", "dst")} for r in ordered]


# -- decoding ------------------------------------------------------------------------------


def test_every_message_of_a_real_capture_is_decoded_exactly(recording):
    records = records_of(recording.lo, "--port", str(recording.port))
    for conversation in (recording.fragmented, recording.pipelined):
        assert of_connection(records, conversation) == expected_records(conversation)
    assert len(records) == 2 * (7 + 80)


def test_fragmented_sessions_span_frames_and_segments(recording):
    records = records_of(recording.lo)  # no --port: found by their first bytes
    adds = [r for r in records if r["op"] == "ADD" and r["direction"] == "request"]
    hits = [r for r in records if r["op"] == "GET" and "session" in r["payload"]]
    big_adds = [r for r in adds if r["request_uid"] in (1, 2, 3)]
    big_hits = [r for r in hits if r["request_uid"] in (10, 11, 12)]
    assert [r["payload"]["session"] for r in big_adds] == [s.hex() for s in recording.sessions]
    assert [r["payload"]["session"] for r in big_hits] == [s.hex() for s in recording.sessions]
    assert {r["frames"] for r in big_adds + big_hits} == {16}
    # Loopback offloads segmentation, so the capture holds segments of several MSS; still, the
    # 7 requests took more segments than messages: some were reassembled from several.
    _, packets = read_packets(recording.lo)
    assert len(client_data(packets, recording, recording.fragmented)) > 7


def test_capture_keys_time_endpoints_and_latency(recording):
    records = records_of(recording.lo)
    server = f"127.0.0.1:{recording.port}"
    for record in records:
        assert recording.start <= record["time"] <= recording.end
        if record["direction"] == "request":
            assert record["dst"] == server and "latency_ms" not in record
        else:
            assert record["src"] == server
            assert 0 <= record["latency_ms"] <= (recording.end - recording.start) * 1000
    # A reply is complete after its request: pairing by uid per connection.
    sent = {(r["src"], r["request_uid"]): r["time"] for r in records if r["direction"] == "request"}
    for reply in (r for r in records if r["direction"] == "response"):
        request_time = sent[(reply["dst"], reply["request_uid"])]
        assert reply["latency_ms"] == pytest.approx((reply["time"] - request_time) * 1000, abs=1e-3)


def test_text_output_names_time_endpoints_and_operation(recording):
    result = distcache("decode", recording.lo)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 * (7 + 80)
    first = lines[0]
    assert f"{recording.fragmented.endpoint} > 127.0.0.1:{recording.port} request" in first
    assert "uid=0x00000001 ADD" in first
    assert any("latency=" in line and "status=OK(0)" in line for line in lines)


def test_summary_counts_operations_hits_statuses_and_latency(recording):
    result = distcache("decode", "--summary", "--format", "json", recording.lo)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["connections"] == 2
    assert summary["operations"] == {
        "ADD": {"requests": 23, "responses": 23},
        "GET": {"requests": 44, "responses": 44},
        "REMOVE": {"requests": 10, "responses": 10},
        "HAVE": {"requests": 10, "responses": 10},
    }
    assert (summary["gets"], summary["get_hits"]) == (44, 23)
    assert summary["hit_ratio"] == round(23 / 44, 4)
    # OK: 23 ADDs, 10 HAVEs, 7 REMOVEs of stored ids; NOTOK: 21 misses, 3 REMOVEs of absent ids.
    assert summary["statuses"] == {"OK": 40, "NOTOK": 24}
    latency = summary["latency_ms"]
    assert latency["count"] == 87
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert summary["errors"] == {}
    text = distcache("decode", "--summary", recording.lo).stdout.decode()
    assert "GET hit ratio: 52.27% (23 hits / 44 GETs)" in text
    assert "statuses: OK 40, NOTOK 24" in text
    assert "latency ms (87 replies): p50 " in text


def test_pcapng_decodes_like_pcap(recording, tmp_path):
    editcap = shutil.which("editcap")
    if editcap is None:
        pytest.skip("editcap (from Wireshark) is not installed")
    converted = str(tmp_path / "lo.pcapng")
    subprocess.run([editcap, "-F", "pcapng", recording.lo, converted], check=True, timeout=30)
    with open(converted, "rb") as stream:
        assert stream.read(4) == bytes.fromhex("0a0d0d0a")
    assert records_of(converted) == records_of(recording.lo)
    with open(converted, "rb") as stream:  # and from stdin
        piped = distcache("decode", "--format", "json", "-", stdin=stream.read())
    assert [json.loads(line) for line in piped.stdout.decode().splitlines()] == records_of(
        converted
    )


def test_linux_cooked_capture_of_the_same_traffic(recording):
    with open(recording.any, "rb") as stream:
        linktype = dpkt.pcap.Reader(stream).datalink()
    assert linktype in (dpkt.pcap.DLT_LINUX_SLL, dpkt.pcap.DLT_LINUX_SLL2)
    assert untimed(records_of(recording.any)) == untimed(records_of(recording.lo))


def test_ipv6_raw_and_bsd_loopback_framing(recording, tmp_path):
    """The same segments re-framed: IPv6 in raw-IP and in BSD-loopback link types."""
    _, packets = read_packets(recording.lo)
    loopback6 = socket.inet_pton(socket.AF_INET6, "::1")

    def ipv6(pkt: bytes) -> bytes:
        segment = tcp_of(pkt)
        return bytes(
            dpkt.ip6.IP6(
                src=loopback6, dst=loopback6, nxt=6, hlim=64, plen=len(segment), data=segment
            )
        )

    raw = str(tmp_path / "raw6.pcap")
    write_packets(raw, 101, [(ts, ipv6(pkt)) for ts, pkt in packets])
    null = str(tmp_path / "null6.pcap")
    family = (30).to_bytes(4, "little")  # AF_INET6 as macOS numbers it, in host byte order
    write_packets(null, dpkt.pcap.DLT_NULL, [(ts, family + ipv6(pkt)) for ts, pkt in packets])
    original = records_of(recording.lo)
    for path in (raw, null):
        records = records_of(path)
        assert [r["src"] for r in records] == [
            r["src"].replace("127.0.0.1", "[::1]") for r in original
        ]
        strip = ("src", "dst")
        assert [{k: v for k, v in r.items() if k not in strip} for r in records] == [
            {k: v for k, v in r.items() if k not in strip} for r in original
        ]


# -- damaged captures ----------------------------------------------------------------------


def client_data(packets, recording: Recording, conversation: Conversation) -> list[int]:
    """Indexes of the packets carrying the conversation's requests."""
    port = int(conversation.endpoint.rsplit(":", 1)[1])
    return [
        i
        for i, (_, pkt) in enumerate(packets)
        if tcp_of(pkt).data and tcp_of(pkt).sport == port and tcp_of(pkt).dport == recording.port
    ]


def test_missing_segment_is_reported_as_a_gap_and_stops_that_direction(recording, tmp_path):
    _, packets = read_packets(recording.lo)
    indexes = client_data(packets, recording, recording.fragmented)
    victim = indexes[len(indexes) // 2]
    lost = len(tcp_of(packets[victim][1]).data)
    offset = sum(len(tcp_of(packets[i][1]).data) for i in indexes if i < victim)
    damaged = str(tmp_path / "gap.pcap")
    rewrite(recording.lo, damaged, lambda p: p.pop(victim))

    records = records_of(damaged, status=1)
    gaps = [r for r in records if r.get("error") == "gap"]
    assert len(gaps) == 1
    assert gaps[0]["gap"] == lost and gaps[0]["offset"] == offset
    assert gaps[0]["src"] == recording.fragmented.endpoint
    # Requests before the hole are decoded, none after it; other directions are unaffected.
    requests = [
        r
        for r in records
        if r.get("direction") == "request" and r["src"] == recording.fragmented.endpoint
    ]
    assert requests and all(r["offset"] + 14 <= offset for r in requests)
    assert len([r for r in records if r.get("src") == recording.pipelined.endpoint]) == 80
    text = distcache("decode", damaged)
    assert text.returncode == 1
    assert f"error gap at offset {offset}" in text.stdout.decode()
    summary = json.loads(distcache("decode", "--summary", "--format", "json", damaged).stdout)
    assert summary["errors"] == {"gap": 1}


def test_reordered_repeated_and_overlapping_segments_change_nothing(recording, tmp_path):
    _, packets = read_packets(recording.lo)
    indexes = client_data(packets, recording, recording.fragmented)
    first, second, third = indexes[1], indexes[2], indexes[-2]
    assert second == first + 1 or all(
        not tcp_of(packets[i][1]).data for i in range(first + 1, second)
    )

    def damage(packets):
        frame = dpkt.ethernet.Ethernet(packets[first][1])
        a, b = tcp_of(packets[first][1]), tcp_of(packets[second][1])
        # A retransmission that overlaps both segments: the end of one and the start of the next.
        half = len(a.data) // 2
        frame.data.data.seq = (a.seq + half) & 0xFFFFFFFF
        frame.data.data.data = a.data[half:] + b.data[: len(b.data) // 2]
        frame.data.len = len(frame.data)
        packets.insert(third, (packets[third][0], bytes(frame)))
        packets.insert(third, packets[third - 1])  # a plain duplicate
        packets[first], packets[second] = packets[second], packets[first]  # out of order

    damaged = str(tmp_path / "reordered.pcap")
    rewrite(recording.lo, damaged, damage)
    assert untimed(records_of(damaged)) == untimed(records_of(recording.lo))


# -- bad input -----------------------------------------------------------------------------


def test_truncated_capture_is_a_one_line_error(recording, tmp_path):
    truncated = tmp_path / "cut.pcap"
    with open(recording.lo, "rb") as stream:
        truncated.write_bytes(stream.read()[:-7])
    result = distcache("decode", str(truncated))
    assert result.returncode == 2
    error = result.stderr.decode()
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "truncated capture file" in error


def test_unsupported_link_type_and_capture_options_on_raw_streams(tmp_path):
    odd = str(tmp_path / "odd.pcap")
    write_packets(odd, 147, [(1.0, b"\x00" * 40)])  # a user-defined link type
    result = distcache("decode", odd)
    assert result.returncode == 2
    assert result.stderr.decode() == f"distcache decode: error: {odd}: unsupported link type 147\n"
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"not a capture")
    result = distcache("decode", "--summary", str(raw))
    assert result.returncode == 2
    assert "apply to pcap/pcapng captures only" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
