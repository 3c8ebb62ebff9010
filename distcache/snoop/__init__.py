"""The snooper (dc_snoop): a transparent relay that decodes and logs what passes through it."""

from .observer import ConnectionObserver
from .pcap import PcapRecorder
from .relay import Snooper
from .report import FORMATS, json_line, text_line

__all__ = ["FORMATS", "ConnectionObserver", "PcapRecorder", "Snooper", "json_line", "text_line"]
