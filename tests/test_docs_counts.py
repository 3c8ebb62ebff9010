"""Counts shown in the guide are generated from the suite, never written by hand."""

from __future__ import annotations

import re
from pathlib import Path

from distcache.conformance.registry import all_cases
from distcache.sphinxext.conformance_counts import DEFAULT_PROFILES, sample_lines

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"


def test_the_sample_counts_the_cases_a_default_run_selects():
    expected = sum(c.profile in DEFAULT_PROFILES and c.target == "server" for c in all_cases())
    summary = sample_lines("distcache conformance", "x", 1.0)[-2]
    assert summary == f"summary: {expected} PASS ({expected} cases, 1.0 s)"


def test_no_guide_page_writes_a_case_count_by_hand():
    for page in GUIDE.glob("*.rst"):
        assert not re.search(r"summary: \d{2,} PASS", page.read_text()), page.name
