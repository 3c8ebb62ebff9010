"""Real packet captures for the capture and dissector tests: tcpdump on the loopback interface
while real traffic runs against a ``dc_server`` subprocess, and dpkt rewrites of the result."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import dpkt
import pytest

from distcache.capture import CaptureError, read_segments
from distcache.capture.reader import FIN
from distcache.protocol import NEED_DATA, MessageDecoder
from distcache.wire import Direction

READY_TIMEOUT = 10.0


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _fins(path: str) -> int:
    try:
        with open(path, "rb") as stream:
            return sum(1 for segment in read_segments(stream) if segment.flags & FIN)
    except (CaptureError, OSError):
        return -1  # the writer is in the middle of a record (or has not created the file)


@contextlib.contextmanager
def tcpdump(path: str, port: int, interface: str = "lo") -> Iterator[subprocess.Popen]:
    """Capture ``tcp port PORT`` into ``path`` for the duration of a block."""
    process = subprocess.Popen(
        [require("tcpdump"), "-i", interface, "-n", "-U", "-w", path, f"tcp port {port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # tcpdump says "listening on ..." once its filter is installed.
        deadline = time.monotonic() + READY_TIMEOUT
        said = b""
        while b"listening on" not in said:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stderr], [], [], max(remaining, 0))
            chunk = os.read(process.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                raise AssertionError(f"tcpdump did not start: {said.decode(errors='replace')}")
            said += chunk
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        process.wait(READY_TIMEOUT)
        process.stderr.close()


def wait_for_fins(path: str, count: int, timeout: float = 5.0) -> None:
    """Wait until the capture holds ``count`` FIN segments: every closed connection is in it."""
    deadline = time.monotonic() + timeout
    while _fins(path) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: fewer than {count} FINs captured")
        time.sleep(0.05)


def connect(port: int, mss: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if mss is not None:  # small segments: messages span many TCP segments
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def converse(sock: socket.socket, requests: list[bytes]) -> list:
    """Send the requests in one write (pipelined) and read one response for each."""
    sock.sendall(b"".join(requests))
    decoder = MessageDecoder(receives=Direction.RESPONSE)
    responses: list = []
    while len(responses) < len(requests):
        event = decoder.next_event()
        if event is NEED_DATA:
            data = sock.recv(65536)
            assert data, "server closed the connection"
            decoder.receive_data(data)
        else:
            responses.append(event)
    return responses


def hang_up(sock: socket.socket) -> None:
    """Close cleanly: our FIN, then the server's."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


def distcache(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the ``distcache`` command as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "distcache", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def read_packets(path: str) -> tuple[int, list[tuple[float, bytes]]]:
    with open(path, "rb") as stream:
        reader = dpkt.pcap.Reader(stream)
        return reader.datalink(), [(float(ts), bytes(pkt)) for ts, pkt in reader]


def write_packets(path: str, linktype: int, packets: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as stream:
        writer = dpkt.pcap.Writer(stream, linktype=linktype)
        for ts, pkt in packets:
            writer.writepkt(pkt, ts)


def tcp_of(pkt: bytes) -> dpkt.tcp.TCP:
    """The TCP segment of an Ethernet frame (as tcpdump writes loopback traffic)."""
    return dpkt.ethernet.Ethernet(pkt).data.data


def data_packets(packets: list[tuple[float, bytes]], dport: int) -> list[int]:
    """Indexes of the packets carrying data to ``dport``."""
    return [
        i for i, (_, pkt) in enumerate(packets) if tcp_of(pkt).data and tcp_of(pkt).dport == dport
    ]


def rewrite(source: str, target: str, edit) -> None:
    """Write ``target``: the packets of ``source`` after ``edit(list)`` changed them in place."""
    linktype, packets = read_packets(source)
    edit(packets)
    write_packets(target, linktype, packets)
