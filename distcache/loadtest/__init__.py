"""dc_test: random operations against a server (or proxy), checked against an exact model that
allows for expiry and eviction, with a latency report."""

from .model import OPERATIONS, Presence, SampleSession, SessionModel, Step, random_steps
from .progress import Progress
from .report import as_csv, as_json, as_text, rows
from .runner import LoadTest, TestFailure, Timings, new_rng

__all__ = [
    "OPERATIONS",
    "LoadTest",
    "Presence",
    "Progress",
    "SampleSession",
    "SessionModel",
    "Step",
    "TestFailure",
    "Timings",
    "as_csv",
    "as_json",
    "as_text",
    "new_rng",
    "random_steps",
    "rows",
]
