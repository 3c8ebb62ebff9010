"""``distcache decode --summary``: what a whole capture contains, in a few numbers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from ..protocol import Request, interpret_response
from ..wire.enums import Operation
from .decoder import CapturedMessage, CaptureProblem

#: Latency percentiles reported (nearest-rank), besides the maximum.
PERCENTILES = (50, 95, 99)


def percentile(ordered: list[float], pct: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class CaptureSummary:
    """Counts over every message and problem of a capture."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.get_responses = 0
        self.get_hits = 0
        self.latencies: list[float] = []

    def add(self, item: CapturedMessage | CaptureProblem) -> None:
        if type(item) is CaptureProblem:
            self.errors[item.record["error"]] += 1
            return
        message = item.message
        operation = message.operation
        if type(message) is Request:
            self.requests[operation.name] += 1
            return
        self.responses[operation.name] += 1
        if item.latency_ms is not None:
            self.latencies.append(item.latency_ms)
        outcome = interpret_response(operation, message.payload)
        if operation is Operation.GET:
            self.get_responses += 1
            self.get_hits += outcome.session is not None
        if outcome.code is not None:
            self.statuses[outcome.status_name] += 1

    def add_all(self, items: Iterable[CapturedMessage | CaptureProblem]) -> CaptureSummary:
        for item in items:
            self.add(item)
        return self

    def as_dict(self, connections: int) -> dict:
        """The summary as a JSON object."""
        ordered = sorted(self.latencies)
        latency: dict = {"count": len(ordered)}
        for pct in PERCENTILES:
            latency[f"p{pct}"] = round(percentile(ordered, pct), 3) if ordered else None
        latency["max"] = round(ordered[-1], 3) if ordered else None
        operations = {
            op.name: {"requests": self.requests[op.name], "responses": self.responses[op.name]}
            for op in Operation
            if self.requests[op.name] or self.responses[op.name]
        }
        return {
            "connections": connections,
            "requests": sum(self.requests.values()),
            "responses": sum(self.responses.values()),
            "operations": operations,
            "gets": self.get_responses,
            "get_hits": self.get_hits,
            "hit_ratio": round(self.get_hits / self.get_responses, 4)
            if self.get_responses
            else None,
            "statuses": dict(self.statuses.most_common()),
            "latency_ms": latency,
            "errors": dict(self.errors.most_common()),
        }


def summary_text(summary: dict) -> str:
    """The summary object rendered for people."""
    lines = [
        f"{summary['requests']} requests, {summary['responses']} responses on "
        f"{summary['connections']} TCP connections"
    ]
    for name, counts in summary["operations"].items():
        lines.append(
            f"  {name:<7} {counts['requests']:>9} requests {counts['responses']:>9} responses"
        )
    if summary["gets"]:
        lines.append(
            f"GET hit ratio: {summary['hit_ratio']:.2%} "
            f"({summary['get_hits']} hits / {summary['gets']} GETs)"
        )
    if summary["statuses"]:
        lines.append("statuses: " + ", ".join(f"{k} {v}" for k, v in summary["statuses"].items()))
    latency = summary["latency_ms"]
    if latency["count"]:
        figures = " ".join(f"{k} {latency[k]:.3f}" for k in latency if k != "count")
        lines.append(f"latency ms ({latency['count']} replies): {figures}")
    if summary["errors"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items()))
    return "\n".join(lines)
