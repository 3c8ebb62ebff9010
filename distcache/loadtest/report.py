"""dc_test's latency report, in redis-benchmark's conventions: requests per second, then
avg/min/p50/p95/p99/max latency in milliseconds, per operation and for all of them; as text,
CSV (redis-benchmark ``--csv`` columns) or JSON."""

from __future__ import annotations

import json
import math

from .runner import Timings

COLUMNS = ("rps", "avg_latency_ms", "min_latency_ms", "p50_latency_ms", "p95_latency_ms",
           "p99_latency_ms", "max_latency_ms")  # fmt: skip


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def rows(timings: Timings) -> list[dict]:
    """One row per operation that ran, then ``ALL``."""
    elapsed = max(timings.finished - timings.started, 1e-9)
    groups = [(op.name, samples) for op, samples in timings.by_operation.items() if samples]
    everything = [sample for _, samples in groups for sample in samples]
    result = []
    for name, samples in [*groups, ("ALL", everything)] if everything else []:
        ordered = sorted(samples)
        values = (
            len(ordered) / elapsed,
            1000 * sum(ordered) / len(ordered),
            1000 * ordered[0],
            1000 * _percentile(ordered, 0.50),
            1000 * _percentile(ordered, 0.95),
            1000 * _percentile(ordered, 0.99),
            1000 * ordered[-1],
        )
        result.append({"test": name, **dict(zip(COLUMNS, values, strict=True))})
    return result


def as_text(timings: Timings, clients: int, persistent: bool) -> str:
    elapsed = timings.finished - timings.started
    table = rows(timings)
    connections = "persistent connections" if persistent else "a connection per request"
    lines = [
        "====== dc_test ======",
        f"  {timings.count} requests completed in {elapsed:.2f} seconds",
        f"  {clients} parallel clients, {connections}",
        "",
        "Summary:",
    ]
    if not table:
        return "\n".join([*lines, "  no requests were made"])
    lines.append(f"  throughput summary: {table[-1]['rps']:.2f} requests per second")
    lines.append("  latency summary (msec):")
    lines.append(f"  {'':>6} {'avg':>9} {'min':>9} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    for row in table:
        figures = " ".join(f"{row[column]:>9.3f}" for column in COLUMNS[1:])
        lines.append(f"  {row['test']:>6} {figures}")
    return "\n".join(lines)


def as_csv(timings: Timings) -> str:
    header = ",".join(f'"{name}"' for name in ("test", *COLUMNS))
    body = [
        ",".join([f'"{row["test"]}"', *(f'"{row[c]:.3f}"' for c in COLUMNS)])
        for row in rows(timings)
    ]
    return "\n".join([header, *body])


def as_json(timings: Timings) -> str:
    return json.dumps(
        [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for r in rows(timings)
        ]
    )
