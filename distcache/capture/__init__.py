"""Decoding distcache traffic in packet captures (pcap, pcapng): TCP reassembly, message
decoding with the sans-IO core, request/response pairing and latency."""

from .decoder import CaptureDecoder, CapturedMessage, CaptureProblem, capture_record, gap_record
from .reader import CaptureError, Segment, capture_format, read_segments
from .summary import CaptureSummary, summary_text
from .tcpstream import Gap, HalfStream

__all__ = [
    "CaptureDecoder",
    "CaptureError",
    "CaptureProblem",
    "CaptureSummary",
    "CapturedMessage",
    "Gap",
    "HalfStream",
    "Segment",
    "capture_format",
    "capture_record",
    "gap_record",
    "read_segments",
    "summary_text",
]
