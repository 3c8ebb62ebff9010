"""Printing the snooper's records: one text line, or one JSON line, per record."""

from __future__ import annotations

import json
import time

from ..decoding import record_text

_ARROWS = {"request": "client->server", "response": "server->client"}


def text_line(record: dict) -> str:
    """``HH:MM:SS.mmm #conn direction what``; replies end with their latency."""
    stamp = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    millis = int(record["time"] * 1000) % 1000
    head = f"{stamp}.{millis:03d} #{record['connection']}"
    if "event" in record:
        details = " ".join(
            f"{key}={value}"
            for key, value in record.items()
            if key not in ("time", "connection", "event")
        )
        return f"{head} {record['event']} {details}".rstrip()
    latency = f" latency={record['latency_ms']:.3f}ms" if "latency_ms" in record else ""
    return f"{head} {_ARROWS[record['direction']]} {record_text(record)}{latency}"


def json_line(record: dict) -> str:
    """The record as compact JSON (the ``distcache decode --format json`` keys plus ``time``,
    ``connection`` and, on replies, ``latency_ms``)."""
    return json.dumps(record, separators=(",", ":"))


FORMATS = {"text": text_line, "json": json_line}
