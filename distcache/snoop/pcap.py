"""Writing what the snooper relayed as a pcap file that Wireshark, tshark and ``distcache decode``
open: synthesised Ethernet/IPv4/TCP framing around the real payload bytes.

Every relayed connection gets its own 4-tuple (client 10.x.y.z, one per connection number, to the
server 192.0.2.1 on the real server port, or 9001 for non-TCP servers), a three-way handshake,
data segments with consistent sequence and acknowledgement numbers, and a FIN per direction. The
packets are built with dpkt (maintained, pure Python, already a dependency for reading captures).
"""

from __future__ import annotations

import socket
import struct
from typing import BinaryIO

import dpkt

__all__ = ["DEFAULT_SERVER_PORT", "PcapRecorder"]

#: Server port written for servers that are not TCP (UNIX sockets).
DEFAULT_SERVER_PORT = 9001
_SERVER_IP = socket.inet_aton("192.0.2.1")
_CLIENT_MAC = b"\x02\x00\x00\x00\x00\x01"
_SERVER_MAC = b"\x02\x00\x00\x00\x00\x02"
#: Payload bytes per synthesised segment (an IPv4 packet holds at most 65535 bytes).
_SEGMENT = 16384
_CLIENT_ISN = 1_000
_SERVER_ISN = 500_000


class _Side:
    __slots__ = ("ip", "mac", "next_seq", "port")

    def __init__(self, ip: bytes, port: int, mac: bytes, isn: int) -> None:
        self.ip, self.port, self.mac, self.next_seq = ip, port, mac, isn


class _Flow:
    """One connection's two sides and their sequence numbers."""

    def __init__(self, number: int, server_port: int) -> None:
        client_ip = struct.pack(">I", (10 << 24) | (number & 0xFFFFFF))
        client_port = 1024 + number % 64000
        self.client = _Side(client_ip, client_port, _CLIENT_MAC, _CLIENT_ISN)
        self.server = _Side(_SERVER_IP, server_port, _SERVER_MAC, _SERVER_ISN)


class PcapRecorder:
    """Appends packets to an open binary file; call the methods in relay order."""

    def __init__(self, stream: BinaryIO, server_port: int | None) -> None:
        self._writer = dpkt.pcap.Writer(stream, linktype=dpkt.pcap.DLT_EN10MB)
        self._stream = stream
        self._server_port = server_port or DEFAULT_SERVER_PORT
        self._flows: dict[int, _Flow] = {}

    def open(self, number: int, when: float) -> None:
        """The three-way handshake of connection ``number``."""
        flow = self._flows[number] = _Flow(number, self._server_port)
        client, server = flow.client, flow.server
        self._packet(when, client, server, dpkt.tcp.TH_SYN, b"", ack=0)
        client.next_seq += 1
        self._packet(when, server, client, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, b"")
        server.next_seq += 1
        self._packet(when, client, server, dpkt.tcp.TH_ACK, b"")

    def data(self, number: int, from_client: bool, payload: bytes, when: float) -> None:
        """Bytes relayed in one direction (split into segments)."""
        sender, receiver = self._sides(number, from_client)
        view = memoryview(payload)
        for start in range(0, len(payload), _SEGMENT):
            chunk = bytes(view[start : start + _SEGMENT])
            self._packet(when, sender, receiver, dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, chunk)
            sender.next_seq += len(chunk)

    def fin(self, number: int, from_client: bool, when: float) -> None:
        """One direction closed: a FIN, acknowledged by the other side."""
        sender, receiver = self._sides(number, from_client)
        self._packet(when, sender, receiver, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, b"")
        sender.next_seq += 1
        self._packet(when, receiver, sender, dpkt.tcp.TH_ACK, b"")

    def forget(self, number: int) -> None:
        self._flows.pop(number, None)

    def flush(self) -> None:
        self._stream.flush()

    def _sides(self, number: int, from_client: bool) -> tuple[_Side, _Side]:
        flow = self._flows[number]
        return (flow.client, flow.server) if from_client else (flow.server, flow.client)

    def _packet(self, when, sender: _Side, receiver: _Side, flags: int, payload: bytes, ack=None):
        tcp = dpkt.tcp.TCP(
            sport=sender.port,
            dport=receiver.port,
            seq=sender.next_seq & 0xFFFFFFFF,
            ack=(receiver.next_seq if ack is None else ack) & 0xFFFFFFFF,
            flags=flags,
            win=65535,
            data=payload,
        )
        ip = dpkt.ip.IP(src=sender.ip, dst=receiver.ip, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=tcp)
        frame = dpkt.ethernet.Ethernet(
            src=sender.mac, dst=receiver.mac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip
        )
        self._writer.writepkt(bytes(frame), ts=when)
