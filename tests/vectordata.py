"""Read the recorded vectors' byte streams, per connection and direction (test helper)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from distcache import conformance_data_path

VECTOR_DIR = conformance_data_path() / "vectors" / "legacy-1.5.1"


@dataclass
class Streams:
    vector_id: str
    flags: list[str]
    #: per connection: the client's bytes and the target's bytes, each concatenated in order
    sent: list[bytes] = field(default_factory=lambda: [b""])
    received: list[bytes] = field(default_factory=lambda: [b""])
    closes: bool = False
    #: the vector ends waiting in silence (often on bytes that never formed a whole frame)
    waits: bool = False


def load_vectors():
    vectors = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        vectors.extend(json.loads(path.read_text())["vectors"])
    return vectors


def vector_streams(vector) -> Streams:
    streams = Streams(vector["id"], vector["flags"])
    for step in vector["steps"]:
        if "send" in step:
            streams.sent[-1] += bytes.fromhex(step["send"])
        elif "expect" in step:
            streams.received[-1] += bytes.fromhex(step["expect"])
        elif "reconnect" in step:
            streams.sent.append(b"")
            streams.received.append(b"")
        elif "expect_close" in step or "expect_target_dies" in step:
            streams.closes = True
    streams.waits = "expect_silence_ms" in vector["steps"][-1]
    return streams
